"""The drop-blocks use case: score transformer blocks and sub-layers on real data and remove the most redundant.

Find the blocks (passes/blocks/discovery.py), score every block and sub-layer and
choose (passes/blocks/selection.py), rewire and clean the graph (rewiring.py), measure
the written ONNX on the validation data, parse / build TensorRT-RTX engines before and
after, and write report.json + scores.png. Where the data comes from is decided here:
the caller's .npz files, else the disjoint calibration / validation splits of the demo
the model's metadata names, else the model's own sample data cut in two halves
(never random data).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from converter.core.errors import BackendUnavailableError, BuildError, InvalidInputError, UnsupportedError
from converter.core.metadata import KV_CACHE, SAMPLE_DATA, metadata_value
from converter.core.model_io import load_model, save_model
from converter.core.model_spec import Feeds, ModelSpec
from converter.core.outputs import Outputs
from converter.core.profiles import ShapeProfile
from converter.demos.splits import DEMO_SPLITS, demo_splits
from converter.pipelines.block_report import bar_chart
from converter.pipelines.export import export_model
from converter.pipelines.generation_check import cache_layout, engine_shapes
from converter.pipelines.model_ref import feeds_for_source, resolve_model, spec_from_metadata
from converter.pipelines.report import new_report, write_report
from converter.pipelines.sample_inputs import load_inputs_file
from converter.verification.compare import OnnxRunner
from passes.blocks.config import DropConfig
from passes.blocks.discovery import BlockGraph, find_blocks
from passes.blocks.rewiring import canonical, remove_units
from passes.blocks.scores import language_model_io
from passes.blocks.segmented import SegmentedSession
from passes.blocks.selection import Scored, Selection, explicit, score_units, select

Data = tuple[list[Feeds] | None, list[Feeds] | None, str]


@dataclass
class DropBlocksResult:
    """The report (also written to `report_path`) and the pruned ONNX at `path`."""

    report: dict[str, Any]
    path: Path
    report_path: Path

    @property
    def removed(self) -> list[str]:
        return list(self.report["removed"])

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))


def _source(model: str | Path, exporter: str, tmp: Path, log: Callable[[str], None]) -> tuple[Path, ModelSpec | None]:
    """The ONNX to prune (a torch model is exported first) and the spec it came from, if any."""
    ref = resolve_model(model)
    if ref.spec is None:
        return ref.path, None
    log(f"exporting {ref.spec.name} ({exporter})")
    return export_model(ref.spec, tmp / "model.onnx", exporter=exporter).path, ref.spec


def _data(
    model: onnx.ModelProto,
    calib_inputs: str | Path | None,
    val_inputs: str | Path | None,
    calib_samples: int,
    val_samples: int,
    batch_size: int,
    trust_model_code: bool,
) -> Data:
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
    feeds = feeds_for_source(source, batches, batch_size, trust_model_code) if source else None
    if feeds:
        half = len(feeds) // 2
        return feeds[:half], feeds[half:], f"{source}: first {half} batches calibration, the rest validation"
    return None, None, f"no real sample data named by the model (trtforge.sample_data={source!r}); give --load-inputs"


def _choose(
    source: onnx.ModelProto,
    bg: BlockGraph,
    data: Data,
    config: DropConfig,
    drop: list[str] | None,
    log: Callable[[str], None],
) -> tuple[Scored | None, Selection | None]:
    """Score every unit on the data and choose per `config`, or measure the `drop`ped units; (None, None) without data."""
    calib, val, note = data
    if calib is None:
        return None, None
    log(f"scoring {len(bg.units('all'))} units on {note}")
    scored = score_units(source, bg, calib, val, config.metric, progress=log)
    if drop:
        return scored, explicit(scored, drop, "named by --drop")
    log(f"choosing what to remove ({config.method})")
    return scored, select(source, bg, calib, val, config, scored)


def _validation(report: dict[str, Any], selection: Selection, scored: Scored, out: Path) -> None:
    """The choice, what it saves, and the validation metrics as scored and of the written ONNX."""
    report["selection"] = {"method": selection.method, "stopped": selection.stopped, "steps": selection.steps}
    report["saved"] = selection.saved
    report["validation"] = {"before": selection.before, "after": selection.after}
    scored.ev.close()  # one model's weights in onnxruntime at a time
    report["validation"]["written_onnx"] = scored.ev.measure(_runner(out), "val")


def _runner(path: Path) -> Callable[[Feeds], dict]:
    """The written ONNX, run as the scoring ran: cut after each block it still has (onnxruntime then
    holds a few blocks' weights, not the model's: passes/blocks/segmented.py), else whole."""
    written = load_model(path)
    bg = find_blocks(written)
    if not bg.found:
        return OnnxRunner(path, "pruned").run
    return SegmentedSession(written, [b.output for b in bg.blocks]).run


def _profiles(
    model: onnx.ModelProto, spec: ModelSpec | None, shapes: dict, feeds: Feeds, trust_model_code: bool
) -> dict[str, ShapeProfile]:
    """Build profiles: the model's spec (or the shapes of the data), overridden by `shapes`."""
    spec = spec or spec_from_metadata(model, trust_model_code)
    profiles = dict(spec.profiles) if spec else {n: ShapeProfile(a.shape, a.shape, a.shape) for n, a in feeds.items()}
    profiles.update(shapes or {})
    return profiles


def _check_targets(target_gpus: list[str]) -> None:
    """A target TensorRT-RTX cannot build fails now, not after the search."""
    from converter.backends import BuildConfig, get_backend

    try:
        backend = get_backend("tensorrt-rtx")
    except BackendUnavailableError:
        return  # the build is skipped with that reason anyway
    backend.check_config(BuildConfig(profiles={}, target_gpus=target_gpus))


def _cache_report(source: onnx.ModelProto, pruned: onnx.ModelProto) -> dict[str, Any] | None:
    """The pruned decoder's cache layout: its layer count and what became of each old layer."""
    before, after = cache_layout(source), cache_layout(pruned)
    if before is None or after is None:
        return None
    renumbered = json.loads(metadata_value(pruned, KV_CACHE) or "{}").get("renumbered", {})
    removed = sorted((int(k) for k, v in renumbered.items() if v == "removed"))
    summary = f"{before.num_layers} -> {after.num_layers} layers"
    if removed:
        summary += f" (layers {', '.join(map(str, removed))} removed, the rest renumbered 0..{after.num_layers - 1})"
    return {
        "layers_before": before.num_layers,
        "layers_after": after.num_layers,
        "renumbered": renumbered,
        "summary": summary,
    }


def _build_config(path: Path, profiles: dict[str, ShapeProfile], target_gpus: list[str]):
    """The engine build of one side: the profiles of the inputs it has; a decoder with a KV
    cache gets its own prefill + decode profiles (the pruned one has fewer cache layers)."""
    from converter.backends import BuildConfig

    graph = load_model(path, load_weights=False)
    return BuildConfig(**engine_shapes(graph, profiles), target_gpus=target_gpus)  # [] = default targets


def _tensorrt(original: Path, pruned: Path, profiles: dict, target_gpus: list[str], build: bool) -> dict[str, Any]:
    """Parsed network layers (and engine sizes when `build`) before and after, with TensorRT-RTX."""
    from converter.backends import get_backend

    try:
        backend = get_backend("tensorrt-rtx")
    except BackendUnavailableError as exc:
        return {"skipped": str(exc)}
    info: dict[str, Any] = {"backend": f"tensorrt-rtx {backend.version()}"}
    try:
        info["layers_before"] = backend.parse(original).num_layers
        info["layers_after"] = backend.parse(pruned).num_layers
        if build:
            with tempfile.TemporaryDirectory(prefix="trtforge-drop-") as tmp:
                for label, path in (("before", original), ("after", pruned)):
                    config = _build_config(path, profiles, target_gpus)
                    start = time.perf_counter()
                    engine = backend.build(path, Path(tmp) / f"{label}.engine", config)
                    info[f"engine_bytes_{label}"] = engine.sidecar["engine_bytes"]
                    info[f"build_seconds_{label}"] = round(time.perf_counter() - start, 2)
            info["targets"] = engine.sidecar.get("targets", config.target_gpus)
    except (BuildError, UnsupportedError, InvalidInputError) as exc:
        info["failed"] = str(exc)
    return info


def drop_blocks(
    model: str | Path,
    out: str | Path,
    *,
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
    shapes: dict[str, ShapeProfile] | None = None,
    target_gpus: list[str] | None = None,
    trust_model_code: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> DropBlocksResult:
    """Score, choose, remove, verify, build; the report is also written to report_dir/report.json.

    `model` is an .onnx file, a demo or a `module:factory`; `config` says how to choose
    (default: remove one unit), unless `drop` names the units (then the data, if any,
    only measures them). `calib_inputs` / `val_inputs` are .npz files; without them the
    model's own real sample data is used (`calib_samples` / `val_samples` samples of
    the demos' disjoint splits). `shapes` / `target_gpus` are for the engine builds.
    """
    out = Path(out)
    report_dir = Path(report_dir) if report_dir else out.with_name(out.stem + ".drop")
    if build and target_gpus:
        _check_targets(list(target_gpus))
    config = config or DropConfig(remove=1)
    report = new_report("drop-blocks")
    inputs = [Path(p) for p in (model, calib_inputs, val_inputs) if p and Path(p).exists()]
    try:
        with tempfile.TemporaryDirectory(prefix="trtforge-drop-src-") as tmp, Outputs(inputs) as outputs:
            source_path, spec = _source(model, exporter, Path(tmp), log)
            source = load_model(source_path)
            bg = find_blocks(source)
            report["discovery"] = {"message": bg.message, "blocks": bg.summary(), "notes": bg.notes}
            if not bg.found:
                raise UnsupportedError(f"{model}: {bg.message}")
            log(bg.message)
            data = _data(source, calib_inputs, val_inputs, calib_samples, val_samples, batch_size, trust_model_code)
            report["data"] = data[2]
            if not drop:
                if data[0] is None:
                    raise InvalidInputError(f"{model}: {data[2]}")
                config.check(language_model_io(source) is not None)  # before scoring, not after
            scored, selection = _choose(source, bg, data, config, drop, log)
            removed = selection.removed if selection else canonical(bg, drop or [])
            pruned = remove_units(source, bg, removed)
            written = save_model(pruned, outputs.path(out))  # published with the report, at the end
            report["scores"] = scored.scores if scored else {}
            report["unit_costs"] = scored.unit_costs() if scored else {}
            report["removed"], report["config"], report["output"] = removed, dict(config.__dict__), str(out)
            if selection is not None:
                _validation(report, selection, scored, written)
            report["nodes"] = {"before": len(source.graph.node), "after": len(pruned.graph.node)}
            report["kv_cache"] = _cache_report(source, pruned)
            del scored, selection  # their onnxruntime session (fp32 copies of fp16 weights) goes before the parses
            log("TensorRT-RTX parse/build before and after")
            profiles = _profiles(source, spec, shapes or {}, (data[0] or [{}])[0], trust_model_code)
            report["tensorrt"] = _tensorrt(source_path, written, profiles, list(target_gpus or []), build)
            report_path = report_dir / "report.json"
            if report["scores"]:
                title = f"{model}: {bg.message}"
                bar_chart(report["scores"], removed, outputs.path(report_dir / "scores.png"), title)
                report["chart"] = str(report_dir / "scores.png")
            report["passed"] = True
            write_report(report, outputs.path(report_path))
    except ValueError as exc:  # a bad unit name or an option the model cannot meet: the caller's input
        raise InvalidInputError(f"drop-blocks: {exc}") from exc
    report["report"] = str(report_path)
    return DropBlocksResult(report, out, report_path)
