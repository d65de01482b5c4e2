"""The `trtforge` command line: parse flags, call converter.api, print.

Flags follow trtexec/Polygraphy naming (--shapes, --atol/--rtol, --fp16-style
precision, --load-inputs/--save-inputs). Errors print one line and exit with the
codes in converter.errors.ExitCode; --debug shows the traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from converter import api
from converter.backends import BACKEND_CHOICES
from converter.errors import AccuracyError, ExitCode, InvalidInputError, TrtforgeError
from converter.export import EXPORTERS
from converter.html_report import write_html
from converter.models import DEFAULT_DEMO, parse_profiles
from converter.recipe import PRECISIONS, Tolerances
from converter.report import new_report, print_inspect, print_summary, to_json, write_report
from passes.registry import DESCRIPTIONS, GROUPS

# Captured output (CI logs, pipes) gets a wide console so tables do not truncate.
console = Console() if sys.stdout.isatty() else Console(width=130)
err_console = Console(stderr=True)


def output_options(func):
    """--json and --quiet, shared by every command."""
    func = click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(func)
    return func


def shapes_option(func):
    return click.option(
        "--shapes",
        multiple=True,
        metavar="NAME:MIN/OPT/MAX",
        help="Input shapes, e.g. input_ids:1x8/4x128/16x256 (profile) or image:1x3x224x224 (static). Repeatable.",
    )(func)


def target_gpu_option(func):
    return click.option(
        "--target-gpu",
        "target_gpus",
        multiple=True,
        metavar="SM",
        help="Compute capability to build for, e.g. sm86 (repeatable; tensorrt-rtx; default sm86, sm89, sm120).",
    )(func)


def emit(result: dict[str, Any], as_json: bool, quiet: bool, summary=None) -> None:
    """Print a command's result as JSON, as a rich summary, or not at all."""
    if as_json:
        click.echo(to_json(result))
    elif not quiet:
        (summary or (lambda r: console.print_json(to_json(r))))(result)


def fail_on_accuracy(report: dict[str, Any]) -> None:
    if report.get("verified") == "not verified":
        raise AccuracyError("not verified: nothing could be checked on this machine (see the skipped reasons)")
    if not report.get("passed"):
        raise AccuracyError("accuracy check failed: see the verification table/report")


def summary(report: dict[str, Any]) -> None:
    print_summary(report, console)


def trust_option(func):
    return click.option(
        "--trust-model-code",
        is_flag=True,
        help="Let an ONNX file's metadata name a module:factory to import for sample data/profiles.",
    )(func)


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
@click.version_option("0.1.0", prog_name="trtforge")
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


# --------------------------------------------------------------------------- verify
def parse_tolerances(precision: str, atol: tuple[str, ...], rtol: tuple[str, ...], min_cosine: tuple[str, ...]):
    """`--atol 1e-3` sets the default; `--atol logits:1e-2` one output's (Polygraphy style)."""
    defaults: dict[str, float] = {}
    per_output: dict[str, dict[str, float]] = {}
    for key, items in (("atol", atol), ("rtol", rtol), ("min_cosine", min_cosine)):
        for item in items:
            name, _, value = item.rpartition(":")
            try:
                number = float(value)
            except ValueError as exc:
                raise InvalidInputError(
                    f"--{key.replace('_', '-')} '{item}': expected a number or NAME:NUMBER"
                ) from exc
            if name:
                per_output.setdefault(name, {})[key] = number
            else:
                defaults[key] = number
    tol = Tolerances.for_precision(precision, defaults)
    tol.per_output = per_output
    return tol


@main.command()
@click.argument("reference")
@click.argument("candidates", nargs=-1)
@click.option("--load-inputs", type=click.Path(path_type=Path), help=".npz of inputs (one array per input).")
@click.option("--save-inputs", type=click.Path(path_type=Path), help="Write the inputs used to this .npz.")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Selects the default tolerances.",
)
@click.option("--atol", multiple=True, metavar="[OUT:]X", help="Absolute tolerance, default or per output.")
@click.option("--rtol", multiple=True, metavar="[OUT:]X", help="Relative tolerance, default or per output.")
@click.option("--min-cosine", multiple=True, metavar="[OUT:]X", help="Minimum cosine, default or per output.")
@click.option("--passes", help="Also compare the reference ONNX after each of these passes (e.g. fold,precision).")
@click.option("--localize", is_flag=True, help="Compare ONNX candidates layer by layer: where did error enter?")
@click.option("--html", type=click.Path(path_type=Path), help="Write a self-contained HTML report here.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Write the JSON report here.")
@shapes_option
@trust_option
@output_options
def verify(
    reference,
    candidates,
    load_inputs,
    save_inputs,
    precision,
    atol,
    rtol,
    min_cosine,
    passes,
    localize,
    html,
    backend,
    out,
    shapes,
    trust_model_code,
    as_json,
    quiet,
):
    """Compare CANDIDATES (.onnx / .engine) against REFERENCE (torch model or .onnx) on real inputs.

    REFERENCE is a demo name (minilm, efficientnet-lite0, decoder-lm), a
    'package.module:factory' spec or an .onnx file. Exit code 0 when every comparison
    passes, 3 when one fails or nothing could be run.

    \b
    Examples:
      trtforge verify minilm out/model.onnx out/model.opt.onnx
      trtforge verify ref.onnx cand.onnx --atol 1e-3 --min-cosine logits:0.999 --json
      trtforge verify ref.onnx --passes fold,precision          # accuracy after each pass
      trtforge verify ref.onnx cand.onnx --localize --html r.html  # where did error enter?
    """
    tol = parse_tolerances(precision, atol, rtol, min_cosine)
    static = {name: prof.opt for name, prof in parse_profiles(shapes).items()}
    pass_names = [p.strip() for p in (passes or "").split(",") if p.strip()]
    result = api.verify(
        reference,
        list(candidates),
        load_inputs,
        tol,
        backend,
        static,
        trust_model_code=trust_model_code,
        localize=localize,
        passes=pass_names,
    )
    report = new_report("verify")
    report["input"] = {
        "reference": reference,
        "candidates": list(candidates),
        "samples": {"source": result.inputs_source, "count": result.samples},
    }
    report["passes"] = [r.to_dict() for r in result.pass_records]
    report["verification"] = [c.to_dict() for c in result.comparisons]
    if result.localizations:
        report["localizations"] = result.localizations
        first = next(iter(result.localizations.values()))
        report["divergent_layers"] = first["divergent_layers"]  # the first candidate's, at the top level
        report["localization"] = first
    report["verified"] = "yes" if any(not c.skipped for c in result.comparisons) else "not verified"
    report["passed"] = result.passed
    if out:
        write_report(report, out)
    if html:
        write_html(report, html)
    if save_inputs:
        api.save_feeds(result.sample, save_inputs)
    emit(report, as_json, quiet, summary)
    fail_on_accuracy(report)


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


if __name__ == "__main__":
    main()

from converter.commands.drop_blocks import drop_blocks  # noqa: E402

main.add_command(drop_blocks)

from converter.commands.quantize import quantize  # noqa: E402

main.add_command(quantize)
