"""`convert`: model -> optimized ONNX -> engine, with accuracy measured at every stage.

The stages are the API's own (export_model, run_passes, build); this module only
orders them, measures each one against the reference (torch, or the source ONNX)
on the same real inputs, and writes the report. A failed run removes what it wrote.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.backends import BuildConfig, ShapeProfile, get_backend
from converter.core.errors import InvalidInputError
from converter.core.metadata import TASK, metadata_value
from converter.core.model_io import load_model, opset_of, save_model
from converter.demos.models import DEFAULT_DEMO
from converter.pipelines.export import export_model
from converter.pipelines.html_report import write_html
from converter.pipelines.model_ref import is_torch_spec, resolve_spec, spec_from_metadata
from converter.pipelines.recipe import Recipe, Tolerances, load_recipe
from converter.pipelines.report import artifact, new_report, write_report
from converter.pipelines.sample_inputs import check_against_graph, resolve_inputs
from converter.verification.compare import (
    Comparison,
    EngineRunner,
    OnnxRunner,
    TorchRunner,
    collect,
    compare_results,
    skipped,
)
from converter.verification.localize import localize as localize_layers
from passes.base import PassContext
from passes.manager import PassRecord, run_passes

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class ConvertResult:
    report: dict[str, Any]
    out_dir: Path
    engine: Path | None = None
    onnx: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))


def _as_recipe(recipe: Recipe | str | Path | None) -> Recipe:
    if recipe is None:
        return Recipe()
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def convert(
    model: str | None = None,
    out: str | Path = "trtforge_out",
    recipe: Recipe | str | Path | None = None,
    precision: str | None = None,
    backend: str | None = None,
    target_gpus: list[str] | None = None,
    shapes: dict[str, ShapeProfile] | None = None,
    inputs: str | Path | None = None,
    log: Log = _quiet,
    trust_model_code: bool = False,
) -> ConvertResult:
    """Model (demo, 'module:factory' or .onnx) -> optimized ONNX -> engine, verified at every stage.

    Flags given here override the recipe; the recipe actually used is in the report.
    `trust_model_code` lets an ONNX file's metadata name a `module:factory` whose
    code is imported for sample data and profiles (off: only built-in demos).
    """
    model = model or DEFAULT_DEMO
    rec = _as_recipe(recipe)
    if precision:
        rec.precision = precision
    if backend:
        rec.backend = backend
    if target_gpus:
        rec.target_gpus = list(target_gpus)
    if shapes:
        rec.shapes.update(shapes)
    Recipe.from_dict(rec.to_dict())  # validates the merged recipe

    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir}: exists and is not a folder")
    if not is_torch_spec(model):
        if not Path(model).exists() and Path(model).suffix != ".onnx":
            resolve_spec(model)  # raises the "not a file, demo or spec" message
        load_model(model, load_weights=False)  # fail before anything is written
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.resolve().name}.trtforge-", dir=parent))
    except OSError as exc:
        raise InvalidInputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc
    # Everything is written into a staging folder beside the output and moved into
    # place only when the whole run succeeded: a failure leaves the output folder
    # (and any input inside it) exactly as it was.
    try:
        result = _convert(model, stage, rec, inputs, log, trust_model_code)
        _publish(stage, out_dir, result)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_report(result.report, result.paths["report"])
    write_html(result.report, out_dir / "report.html")
    result.paths["html"] = out_dir / "report.html"
    return result


def _publish(stage: Path, out_dir: Path, result: ConvertResult) -> None:
    """Move the staged files into `out_dir` and point the result at their final paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(stage.iterdir()):
        os.replace(item, out_dir / item.name)
        if not (stage / f"{item.name}.data").exists():
            (out_dir / f"{item.name}.data").unlink(missing_ok=True)  # stale weights of an older run
    for entry in result.report["artifacts"]:
        entry["path"] = str(out_dir / Path(entry["path"]).name)
    result.out_dir = out_dir
    result.onnx = out_dir / "model.opt.onnx"
    result.engine = out_dir / "model.engine"
    result.paths = {"onnx": result.onnx, "engine": result.engine, "report": out_dir / "report.json"}


def _convert(
    model: str, out_dir: Path, rec: Recipe, inputs: str | Path | None, log: Log, trust_model_code: bool
) -> ConvertResult:
    report = new_report("convert")
    report["recipe"] = rec.to_dict()
    result = ConvertResult(report=report, out_dir=out_dir)
    stages = report["stages"]

    # 1. source: torch (export) or ONNX file
    spec = None
    if is_torch_spec(model):
        spec = resolve_spec(model, {k: v.opt for k, v in rec.shapes.items()})
        log(f"exporting {spec.name} ({rec.exporter})")
        exported = export_model(spec, out_dir / "model.onnx", exporter=rec.exporter, opset=rec.opset)
        source_path = exported.path
        stages["export"] = {
            "seconds": exported.seconds,
            "summary": f"{exported.num_nodes} nodes, opset {exported.opset}",
            "exporter": exported.exporter,
            "opset": exported.opset,
            "nodes": exported.num_nodes,
        }
        report["artifacts"].append(artifact(source_path, "onnx"))
    else:
        source_path = Path(model)
    source = load_model(source_path)
    report["input"] = {"model": model, "kind": "torch" if spec else "onnx"}

    sample = resolve_inputs(
        source, spec, inputs, rec.verify_batches, rec.verify_batch_size, rec.shapes, trust_model_code
    )
    check_against_graph(sample, source, str(source_path))
    report["input"]["samples"] = {"source": sample.source, "count": sample.count}
    classify = (spec.task if spec else metadata_value(source, TASK)) == "classification"

    ref_label = "torch" if spec else "source.onnx"
    ref_runner = (
        TorchRunner(spec.module(), spec.input_names, spec.output_names) if spec else OnnxRunner(source, "source.onnx")
    )
    ref_out = collect(ref_runner, sample.feeds)
    fp32_tol = Tolerances.for_precision("fp32", rec.tolerances)
    final_tol = Tolerances.for_precision(rec.precision, rec.tolerances)

    def check(label: str, runner, tol: Tolerances) -> Comparison:
        return compare_results(ref_label, ref_out, label, collect(runner, sample.feeds), tol, classify, sample.count)

    if spec:
        report["verification"].append(check("model.onnx", OnnxRunner(source), fp32_tol).to_dict())

    # 2. passes, with accuracy after each one (lossy passes switch to the recipe's tolerance)
    lowered = False

    def measure(record: PassRecord, stage_model: onnx.ModelProto) -> None:
        nonlocal lowered
        lowered = lowered or not record.exact
        try:
            comp = check(record.name, OnnxRunner(stage_model, record.name), final_tol if lowered else fp32_tol)
            record.accuracy = {
                "min_cosine": min(o.cosine for o in comp.outputs),
                "max_abs": max(o.max_abs for o in comp.outputs),
                "passed": comp.passed,
            }
        except InvalidInputError as exc:
            record.accuracy = {"skipped": str(exc)}
        log(f"pass {record.name}: {record.nodes_before} -> {record.nodes_after} nodes")

    start = time.perf_counter()
    # quantization hook: real calibration data (disjoint from the verification batches) for
    # recipes with quantize/smoothquant passes; None otherwise.
    from converter.pipelines.quantize import calibration_for_convert

    calib = calibration_for_convert(rec.passes, source, spec, rec.verify_batches, rec.verify_batch_size)
    ctx = PassContext(opset=opset_of(source), calibration=calib)
    optimized, records = run_passes(source, rec.effective_passes(), ctx, measure)
    opt_path = save_model(optimized, out_dir / "model.opt.onnx")
    stages["optimize"] = {
        "seconds": round(time.perf_counter() - start, 3),
        "summary": f"{len(source.graph.node)} -> {len(optimized.graph.node)} nodes",
    }
    report["passes"] = [r.to_dict() for r in records]
    report["artifacts"].append(artifact(opt_path, "onnx"))
    try:
        final = check("model.opt.onnx", OnnxRunner(opt_path, "model.opt.onnx"), final_tol)
        if rec.precision != "fp32":
            final.note = LOW_PRECISION_NOTE
    except InvalidInputError as exc:
        final = skipped(ref_label, "model.opt.onnx", final_tol, f"onnxruntime CPU cannot run it: {exc}")
    report["verification"].append(final.to_dict())
    if not final.skipped:  # where along the graph did the passes' error enter?
        found = localize_layers(source, optimized, sample.feeds, final_tol)
        report["localization"] = {
            **found.to_dict(),
            "title": f"model.opt.onnx vs {'model.onnx' if spec else Path(model).name}",
        }
        report["divergent_layers"] = report["localization"]["divergent_layers"]

    # 3. engine
    log(f"building engine ({rec.backend}, {rec.precision})")
    default_spec = spec or spec_from_metadata(source, trust_model_code)
    profiles = dict(default_spec.profiles) if default_spec else {}
    profiles.update(rec.shapes)
    config = BuildConfig(profiles=profiles, target_gpus=list(rec.target_gpus), precision=rec.precision)
    backend = get_backend(rec.backend)
    engine = backend.build(opt_path, out_dir / "model.engine", config, source_label="model.opt.onnx")
    network = engine.sidecar["network"]
    stages["build"] = {
        "seconds": engine.sidecar["build_seconds"],
        "backend": engine.sidecar["backend"],
        "targets": engine.sidecar.get("targets"),
        "engine_bytes": engine.sidecar["engine_bytes"],
        "summary": f"{engine.sidecar['backend']} {engine.sidecar.get('targets')}, "
        f"{network['num_layers']} network layers, {engine.sidecar['engine_bytes'] / 1e6:.1f} MB",
    }
    report["network"] = {k: network[k] for k in ("num_layers", "layer_types", "tensor_dtypes", "inputs", "outputs")}
    report["artifacts"] += [artifact(engine.path, "engine"), artifact(engine.sidecar_path, "sidecar")]

    # 4. engine accuracy, where it can run
    ok, why = backend.can_run()
    engine_check = (
        check("model.engine", EngineRunner(backend, engine.path), final_tol)
        if ok
        else skipped(ref_label, "model.engine", final_tol, f"engine not executed: {why}")
    )
    report["verification"].append(engine_check.to_dict())

    report["verified"], report["passed"] = verdict(report["verification"])
    return result


LOW_PRECISION_NOTE = (
    "onnxruntime CPU computes some fp16/bf16 ops in fp32: this measures the rounding of weights and "
    "casts, not low-precision arithmetic; the engine's own accuracy needs a GPU"
)


def verdict(comparisons: list[dict[str, Any]]) -> tuple[str, bool]:
    """("engine" | "onnx" | "not verified", passed): passing needs the final artifact checked.

    The final artifact is the engine, or at least the optimized ONNX it was built
    from; a run where neither could be checked is not verified, hence not passed.
    """
    ran = {c["candidate"]: c for c in comparisons if not c["skipped"]}
    level = "engine" if "model.engine" in ran else ("onnx" if "model.opt.onnx" in ran else "not verified")
    return level, level != "not verified" and all(c["passed"] for c in ran.values())
