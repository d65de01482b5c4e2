"""The `trtforge` command line: parse flags, call converter.api, print.

Flags follow trtexec/Polygraphy naming (--shapes, --atol/--rtol, --fp16-style
precision, --load-inputs/--save-inputs). Errors print one line and exit with the
codes in converter.core.errors.ExitCode; --debug shows the traceback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click

from converter import api
from converter.backends import BACKEND_CHOICES

# Captured output (CI logs, pipes) gets a wide console so tables do not truncate.
from converter.cli.options import (
    console,
    emit,
    err_console,
    fail_on_accuracy,
    output_options,
    shapes_option,
    summary,
    target_gpu_option,
    trust_option,
)
from converter.core.errors import AccuracyError, ExitCode, TrtforgeError
from converter.core.profiles import parse_profiles
from converter.core.version import __version__
from converter.demos.models import DEFAULT_DEMO
from converter.pipelines.export import EXPORTERS
from converter.pipelines.recipe import PRECISIONS
from converter.pipelines.report import new_report, print_inspect, write_report
from passes.registry import DESCRIPTIONS, GROUPS


class TrtforgeGroup(click.Group):
    """Maps TrtforgeError to one line + exit code; tracebacks only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TrtforgeError as exc:
            if ctx.meta.get("trtforge.debug"):
                raise
            if not isinstance(exc, AccuracyError):
                err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            else:
                err_console.print(f"[red]{exc}[/red]", highlight=False)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # a bug: one line, or the traceback with --debug
            if ctx.meta.get("trtforge.debug"):
                raise
            err_console.print(
                f"[red]internal error:[/red] {type(exc).__name__}: {exc} (rerun with --debug)",
                highlight=False,
                soft_wrap=True,
            )
            ctx.exit(ExitCode.INTERNAL)


@click.group(cls=TrtforgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="trtforge")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """trtforge: PyTorch/ONNX -> optimized ONNX -> TensorRT engine, verified at every stage.

    \b
    Examples:
      trtforge convert                      # the embedded default: all-MiniLM-L6-v2
      trtforge convert efficientnet-lite0 --precision fp16 -o out/effnet
      trtforge export minilm -o minilm.onnx
      trtforge optimize minilm.onnx -o minilm.opt.onnx --passes cleanup,fold-constants
      trtforge build minilm.opt.onnx -o minilm.engine --shapes input_ids:1x8/4x64/16x256 ...
      trtforge verify minilm minilm.onnx minilm.engine
      trtforge inspect minilm.engine

    \b
    Exit codes: 0 ok, 1 internal error, 2 usage, 3 accuracy check failed,
    4 invalid input, 5 unsupported (op/option), 6 backend unavailable.
    """
    ctx.meta["trtforge.debug"] = debug


# --------------------------------------------------------------------------- convert
@main.command()
@click.argument("model", required=False)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path),
    default=Path("trtforge_out"),
    show_default=True,
    help="Output folder (model.onnx, model.opt.onnx, model.engine + .json, report.json).",
)
@click.option("--recipe", type=click.Path(path_type=Path), help="Recipe YAML/JSON (or a previous report.json).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Compute precision (default: recipe's, else fp32).")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), help="Engine backend (default: auto).")
@target_gpu_option
@click.option("--load-inputs", type=click.Path(path_type=Path), help=".npz of inputs to verify with.")
@shapes_option
@trust_option
@output_options
def convert(model, out, recipe, precision, backend, target_gpus, load_inputs, shapes, trust_model_code, as_json, quiet):
    """Convert MODEL (default: minilm) to a verified TensorRT engine.

    MODEL is a file path (.onnx), a demo name (minilm, efficientnet-lite0) or a
    'package.module:factory' spec.

    \b
    Examples:
      trtforge convert
      trtforge convert efficientnet-lite0 --precision fp16 --target-gpu sm89 -o out/effnet
      trtforge convert model.onnx --shapes x:1x3x224x224 -o out/model
      trtforge convert minilm --recipe out/minilm/report.json     # reproduce a run
    """
    log = (lambda msg: None) if (quiet or as_json) else (lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
    with console.status("converting...") if not (quiet or as_json) else _null():
        result = api.convert(
            model or DEFAULT_DEMO,
            out,
            recipe,
            precision,
            backend,
            list(target_gpus),
            parse_profiles(shapes),
            load_inputs,
            log,
            trust_model_code,
        )
    emit(result.report, as_json, quiet, summary)
    if not (as_json or quiet):
        console.print(f"report: {result.paths['report']}")
    fail_on_accuracy(result.report)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --------------------------------------------------------------------------- export
@main.command()
@click.argument("model")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="torchscript", show_default=True)
@click.option("--opset", type=int, help="ONNX opset (default 17 torchscript, 18 dynamo).")
@click.option("--static", is_flag=True, help="No dynamic axes (default: dynamic batch, and sequence for text).")
@click.option("--dtypes", multiple=True, metavar="NAME:DTYPE", help="Input dtype for module:factory specs.")
@shapes_option
@output_options
def export(model, out, exporter, opset, static, dtypes, shapes, as_json, quiet):
    """Export a torch MODEL (demo name or module:factory) to ONNX.

    \b
    Examples:
      trtforge export minilm -o minilm.onnx
      trtforge export efficientnet-lite0 -o effnet.onnx --exporter dynamo
      trtforge export mypkg.models:make_net --shapes x:1x3x224x224 -o net.onnx
    """
    static_shapes = {name: prof.opt for name, prof in parse_profiles(shapes).items()}
    dtype_map = dict(item.split(":", 1) for item in dtypes)
    result = api.export(model, out, exporter, opset, static_shapes, dtype_map, dynamic=not static)
    data = {
        "path": str(result.path),
        "exporter": result.exporter,
        "opset": result.opset,
        "nodes": result.num_nodes,
        "seconds": result.seconds,
        "external_data": result.external_data,
        "sha256": result.sha256,
    }
    emit(
        data,
        as_json,
        quiet,
        lambda d: console.print(
            f"exported {model} -> {d['path']} ({d['nodes']} nodes, opset {d['opset']}, {d['exporter']}, {d['seconds']} s)"
        ),
    )


# --------------------------------------------------------------------------- optimize
@main.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option(
    "--passes",
    default="fold",
    show_default=True,
    help="Comma-separated pass names (see `trtforge passes`).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="fp16/bf16 append the precision pass.",
)
@click.option("--save-report", type=click.Path(path_type=Path), help="Write the JSON report here.")
@output_options
def optimize(onnx_file, out, passes, precision, save_report, as_json, quiet):
    """Rewrite ONNX_FILE through graph passes.

    \b
    Examples:
      trtforge optimize model.onnx -o model.opt.onnx
      trtforge optimize model.onnx -o model.fp16.onnx --precision fp16
    """
    names = [p.strip() for p in passes.split(",") if p.strip()]
    result = api.optimize(onnx_file, out, names, precision)
    report = new_report("optimize")
    report["passes"] = [r.to_dict() for r in result.records]
    report["stages"]["optimize"] = {
        "seconds": round(sum(r.seconds for r in result.records), 3),
        "summary": f"{result.nodes_before} -> {result.nodes_after} nodes",
    }
    if save_report:
        write_report(report, save_report)
    emit(report, as_json, quiet, summary)


# --------------------------------------------------------------------------- build
@main.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output engine file.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@target_gpu_option
@click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache file (full TensorRT).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    help="Recorded in the sidecar; the graph's types decide (run `optimize --precision` first).",
)
@click.option("--verbose", is_flag=True, help="Print the builder's log.")
@shapes_option
@output_options
def build(onnx_file, out, backend, target_gpus, timing_cache, precision, verbose, shapes, as_json, quiet):
    """Build a TensorRT engine from ONNX_FILE (writes OUT and OUT.json).

    \b
    Examples:
      trtforge build model.onnx -o model.engine --shapes image:1x3x224x224/4x3x224x224/16x3x224x224
      trtforge build model.onnx -o model.engine --backend tensorrt-rtx --target-gpu sm89 --target-gpu sm120
    """
    engine = api.build(
        onnx_file, out, backend, parse_profiles(shapes), list(target_gpus), timing_cache, precision, verbose
    )
    data = {k: v for k, v in engine.sidecar.items() if k != "network"}
    data["network"] = {k: engine.sidecar["network"][k] for k in ("num_layers", "layer_types", "tensor_dtypes")}
    data["engine"] = str(engine.path)
    emit(
        data,
        as_json,
        quiet,
        lambda d: console.print(
            f"built {d['engine']} ({d['engine_bytes'] / 1e6:.1f} MB) with {d['backend']} {d['backend_version']} "
            f"for {', '.join(d.get('targets') or [])} in {d['build_seconds']} s; "
            f"{d['network']['num_layers']} network layers"
        ),
    )


# --------------------------------------------------------------------------- inspect
@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Write the summary as JSON here.")
@click.option("--layers", is_flag=True, help="List every network layer recorded for an engine.")
@output_options
def inspect(path, out, layers, as_json, quiet):
    """Summarise an ONNX file or a TensorRT engine.

    \b
    Examples:
      trtforge inspect model.onnx
      trtforge inspect model.engine --layers
    """
    info = api.inspect(path)
    if out:
        write_report(info, out)
    emit(info, as_json, quiet, functools.partial(print_inspect, console=console, layers=layers))


# --------------------------------------------------------------------------- passes
@main.command(name="passes")
def list_passes():
    """List the registered graph passes."""
    for name, text in DESCRIPTIONS.items():
        console.print(f"{name:<16} {text}")
    for name, members in GROUPS.items():
        console.print(f"{name:<16} group: {', '.join(members)}")


from converter.cli.drop_blocks import drop_blocks  # noqa: E402

main.add_command(drop_blocks)

from converter.cli.quantize import quantize  # noqa: E402

main.add_command(quantize)

from converter.cli.verify import verify  # noqa: E402

main.add_command(verify)
