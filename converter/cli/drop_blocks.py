"""`trtforge drop-blocks`: score transformer blocks and sub-layers on real data and remove the most redundant.

`run_drop_blocks` is the Python entry point (the CLI is a thin shell over it):
find the blocks (passes/blocks/discovery.py), score every block and sub-layer
(passes/blocks/scores.py), choose (passes/blocks/selection.py), rewire and
clean the graph (passes/blocks/drop_blocks.py), measure the written ONNX on the validation
data, build TensorRT-RTX engines before/after, and write report.json + scores.png.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx

from converter.core.errors import BackendUnavailableError, BuildError, InvalidInputError, UnsupportedError
from converter.core.metadata import SAMPLE_DATA, metadata_value
from converter.core.model_io import load_model, save_model
from converter.core.profiles import parse_profiles
from converter.pipelines.block_report import bar_chart, print_summary
from converter.pipelines.export import EXPORTERS, export_model
from converter.pipelines.model_ref import feeds_for_source, is_torch_spec, resolve_spec, spec_from_metadata
from converter.pipelines.report import new_report, to_json, write_report
from converter.pipelines.sample_inputs import load_inputs_file
from converter.verification.compare import OnnxRunner
from passes.blocks.data import demo_splits
from passes.blocks.discovery import find_blocks
from passes.blocks.drop_blocks import canonical, remove_units
from passes.blocks.scores import Costs, GatedSession, OutputMetrics
from passes.blocks.selection import DropConfig, Evaluator, Selection, select, unit_scores

DEMO_SPLITS = ("minilm", "decoder-lm")


def _data(model: onnx.ModelProto, calib_inputs, val_inputs, calib_samples: int, val_samples: int, batch_size: int):
    """(calibration feeds, validation feeds, description) of real data, or (None, None, why not)."""
    if calib_inputs:
        calib = load_inputs_file(calib_inputs)
        val = load_inputs_file(val_inputs) if val_inputs else calib
        return calib, val, f"calibration {calib_inputs}, validation {val_inputs or 'the same file'}"
    source = metadata_value(model, SAMPLE_DATA)
    demo = source.removeprefix("demo:")
    if source.startswith("demo:") and demo in DEMO_SPLITS:
        return demo_splits(demo, calib_samples, val_samples, batch_size)
    batches = max(2, (calib_samples + val_samples) // batch_size)
    feeds = feeds_for_source(source, batches, batch_size) if source else None
    if feeds:
        half = len(feeds) // 2
        return feeds[:half], feeds[half:], f"{source}: first {half} batches calibration, the rest validation"
    return None, None, f"no real sample data named by the model (trtforge.sample_data={source!r}); give --load-inputs"


def _tensorrt(original: Path, pruned: Path, profiles: dict, target_gpus: list[str], build: bool) -> dict[str, Any]:
    """Parsed network layers (and engine sizes when `build`) before and after, with TensorRT-RTX."""
    from converter.backends import BuildConfig, get_backend

    try:
        backend = get_backend("tensorrt-rtx")
    except BackendUnavailableError as exc:
        return {"skipped": str(exc)}
    info: dict[str, Any] = {"backend": f"tensorrt-rtx {backend.version()}"}
    try:
        info["layers_before"] = backend.parse(original).num_layers
        info["layers_after"] = backend.parse(pruned).num_layers
        if build:
            config = BuildConfig(profiles=profiles, target_gpus=target_gpus or ["sm89"])
            with tempfile.TemporaryDirectory(prefix="trtforge-drop-") as tmp:
                for label, path in (("before", original), ("after", pruned)):
                    start = time.perf_counter()
                    engine = backend.build(path, Path(tmp) / f"{label}.engine", config)
                    info[f"engine_bytes_{label}"] = engine.sidecar["engine_bytes"]
                    info[f"build_seconds_{label}"] = round(time.perf_counter() - start, 2)
            info["targets"] = config.target_gpus
    except (BuildError, UnsupportedError, InvalidInputError) as exc:
        info["failed"] = str(exc)
    return info


def _profiles(model: onnx.ModelProto, spec, shapes: dict, feeds: dict[str, np.ndarray]) -> dict:
    from converter.backends import ShapeProfile

    spec = spec or spec_from_metadata(model)
    profiles = dict(spec.profiles) if spec else {n: ShapeProfile(a.shape, a.shape, a.shape) for n, a in feeds.items()}
    profiles.update(shapes or {})
    return profiles


def run_drop_blocks(
    model: str | Path,
    out: str | Path,
    config: DropConfig | None = None,
    drop: list[str] | None = None,
    exporter: str = "torchscript",
    calib_inputs: str | Path | None = None,
    val_inputs: str | Path | None = None,
    calib_samples: int = 64,
    val_samples: int = 128,
    batch_size: int = 16,
    report_dir: str | Path | None = None,
    build: bool = True,
    shapes: dict | None = None,
    target_gpus: list[str] | None = None,
    log=lambda msg: None,
) -> dict[str, Any]:
    """Score, choose, remove, verify, build; returns the report (also written to report_dir/report.json)."""
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + ".drop")
    report = new_report("drop-blocks")
    with tempfile.TemporaryDirectory(prefix="trtforge-drop-src-") as tmp:
        spec = None
        if is_torch_spec(str(model)):
            spec = resolve_spec(str(model))
            log(f"exporting {spec.name} ({exporter})")
            source_path = export_model(spec, Path(tmp) / "model.onnx", exporter=exporter).path
        else:
            source_path = Path(model)
        source = load_model(source_path)
        bg = find_blocks(source)
        report["discovery"] = {"message": bg.message, "blocks": bg.summary(), "notes": bg.notes}
        if not bg.found:
            raise UnsupportedError(f"{model}: {bg.message}")
        log(bg.message)
        calib, val, data_note = _data(source, calib_inputs, val_inputs, calib_samples, val_samples, batch_size)
        report["data"] = data_note
        if calib is None and not drop:
            raise InvalidInputError(f"{model}: {data_note}")
        config = config or DropConfig(remove=1)
        scores, unit_costs, selection = {}, {}, None
        if calib is not None:
            log(f"scoring {len(bg.units('all'))} units on {data_note}")
            ev = Evaluator(source, bg, calib, val, config.metric)
            probe = GatedSession(source, bg, probe=True)
            scores = unit_scores(ev, probe, calib)
            costs = Costs.of(source, bg, probe.matmul_flops(calib[0]))
            unit_costs = {u.name: costs.saved([u.name]) for u in bg.units("all")}
            if drop:
                names = canonical(bg, drop)
                selection = Selection(
                    "explicit",
                    names,
                    "named by --drop",
                    [],
                    ev.metrics([], "val"),
                    ev.metrics(names, "val"),
                    costs.saved(names),
                )
            else:
                selection = select(source, bg, calib, val, config, ev, scores, costs)
        removed = selection.removed if selection else canonical(bg, drop or [])
        pruned = remove_units(source, bg, removed)
        save_model(pruned, out)
        report["scores"], report["unit_costs"], report["removed"] = scores, unit_costs, removed
        report["config"] = dict(config.__dict__)
        report["output"] = str(out)
        if selection is not None:
            report["selection"] = {"method": selection.method, "stopped": selection.stopped, "steps": selection.steps}
            report["saved"] = selection.saved
            report["validation"] = {"before": selection.before, "after": selection.after}
            acc = OutputMetrics(ev.lm)
            runner = OnnxRunner(out, "pruned")
            for feeds, ref in zip(ev.data["val"], ev.refs["val"], strict=True):
                acc.add(runner.run(feeds), ref, feeds)
            report["validation"]["written_onnx"] = acc.result()
        report["nodes"] = {"before": len(source.graph.node), "after": len(pruned.graph.node)}
        log("TensorRT-RTX parse/build before and after")
        profiles = _profiles(source, spec, shapes or {}, (calib or [{}])[0])
        report["tensorrt"] = _tensorrt(source_path, out, profiles, list(target_gpus or []), build)
    report_dir.mkdir(parents=True, exist_ok=True)
    if scores:
        report["chart"] = str(bar_chart(scores, removed, report_dir / "scores.png", f"{model}: {bg.message}"))
    report["passed"] = True
    write_report(report, report_dir / "report.json")
    report["report"] = str(report_dir / "report.json")
    return report


@click.command("drop-blocks")
@click.argument("model")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Pruned .onnx to write.")
@click.option(
    "--method",
    type=click.Choice(["iterative", "oneshot", "attention-only"]),
    default="iterative",
    show_default=True,
    help="iterative: re-scored search over blocks and sub-layers (FinerCut + beam); oneshot: rank once (ShortGPT); "
    "attention-only: oneshot over attention sub-layers by BI.",
)
@click.option(
    "--granularity",
    type=click.Choice(["block", "sublayer", "attention", "mlp", "all"]),
    help="Units to choose from (default: block for oneshot, all = blocks and sub-layers for iterative).",
)
@click.option("--score", type=click.Choice(["bi", "direct"]), default="bi", show_default=True, help="oneshot ranking.")
@click.option("--remove", type=int, help="Number of units to remove.")
@click.option("--target-params", type=float, help="Fraction of parameters to remove, e.g. 0.2.")
@click.option("--target-flops", type=float, help="Fraction of estimated FLOPs to remove.")
@click.option(
    "--max-ppl-increase", type=float, help="Budget: relative perplexity increase on validation data (0.1 = 10%)."
)
@click.option("--min-cosine", type=float, help="Budget: mean output cosine to the original on validation data.")
@click.option("--metric", type=click.Choice(["auto", "cosine", "ppl", "kl"]), default="auto", show_default=True)
@click.option(
    "--beam", type=int, default=3, show_default=True, help="iterative: partial sets kept per step (1 = greedy)."
)
@click.option(
    "--refine/--no-refine",
    default=True,
    show_default=True,
    help="iterative: exchange removed units for kept ones while that lowers the calibration damage.",
)
@click.option("--drop", "drop_names", help="Remove exactly these units, e.g. block3,attn5 (no search).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="torchscript", show_default=True)
@click.option("--load-inputs", type=click.Path(path_type=Path), help="Calibration inputs (.npz).")
@click.option("--validation-inputs", type=click.Path(path_type=Path), help="Validation inputs (.npz).")
@click.option("--calibration-samples", type=int, default=64, show_default=True)
@click.option("--validation-samples", type=int, default=128, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option(
    "--report-dir", type=click.Path(path_type=Path), help="Where report.json and scores.png go (default OUT.drop/)."
)
@click.option("--build/--no-build", default=True, show_default=True, help="Build TensorRT-RTX engines before/after.")
@click.option("--shapes", multiple=True, metavar="NAME:MIN/OPT/MAX", help="Build profiles.")
@click.option("--target-gpu", "target_gpus", multiple=True, metavar="SM", help="Build target (default sm89).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def drop_blocks(model, out, method, granularity, score, remove, target_params, target_flops, max_ppl_increase,
                min_cosine, metric, beam, refine, drop_names, exporter, load_inputs, validation_inputs, calibration_samples,
                validation_samples, batch_size, report_dir, build, shapes, target_gpus, as_json, quiet):  # fmt: skip
    """Remove redundant transformer blocks / sub-layers from MODEL (.onnx, demo or module:factory).

    \b
    Examples:
      trtforge drop-blocks minilm -o minilm.pruned.onnx --min-cosine 0.95
      trtforge drop-blocks decoder-lm -o lm.pruned.onnx --max-ppl-increase 0.1
      trtforge drop-blocks decoder-lm -o lm.pruned.onnx --method oneshot --remove 2      # ShortGPT
      trtforge drop-blocks minilm -o m.onnx --method attention-only --remove 3
      trtforge drop-blocks model.onnx -o p.onnx --target-params 0.2 --load-inputs calib.npz
      trtforge drop-blocks model.onnx -o p.onnx --drop block3,attn5
    """
    from rich.console import Console

    if method == "attention-only":
        method, granularity, score = "oneshot", "attention", score
    config = DropConfig(
        method=method, granularity=granularity, score=score, remove=remove, target_params=target_params,
        target_flops=target_flops, max_ppl_increase=max_ppl_increase, min_cosine=min_cosine, metric=metric,
        beam=beam, refine=refine,
    )  # fmt: skip
    drop = [n.strip() for n in drop_names.split(",") if n.strip()] if drop_names else None
    if not drop:
        try:
            config.check(is_lm=True)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    console = Console(stderr=True)
    log = (lambda m: None) if (quiet or as_json) else (lambda m: console.print(f"[dim]{m}[/dim]"))
    try:
        report = run_drop_blocks(
            model, out, config, drop, exporter, load_inputs, validation_inputs, calibration_samples,
            validation_samples, batch_size, report_dir, build, parse_profiles(shapes), list(target_gpus), log,
        )  # fmt: skip
    except ValueError as exc:
        raise InvalidInputError(f"drop-blocks: {exc}") from exc
    if as_json:
        click.echo(to_json(report))
    elif not quiet:
        print_summary(report, Console())
