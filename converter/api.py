"""The embeddable API: export, optimize, build, verify, inspect, convert.

Each function does one stage, takes paths and plain options, returns a result object
and raises TrtforgeError subclasses with one-line messages. The CLI is a thin layer
over these; a deployment build step calls them directly:

    from converter.api import convert
    result = convert("minilm", out="build/minilm", precision="fp16")
    assert result.passed, result.report["verification"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converter.backends import BuildConfig, EngineArtifact, ShapeProfile, get_backend
from converter.core.errors import InvalidInputError
from converter.core.model_io import atomic_path, load_model, opset_of, save_model
from converter.pipelines import inspection
from converter.pipelines.convert import ConvertResult, convert
from converter.pipelines.export import ExportResult, export_model
from converter.pipelines.model_ref import is_torch_spec, resolve_spec
from converter.pipelines.recipe import Recipe, Tolerances
from converter.pipelines.sample_inputs import SampleInputs, check_against_graph, resolve_inputs
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
from passes.manager import PassRecord, PassSpec, run_passes

__all__ = [
    "export",
    "optimize",
    "build",
    "verify",
    "inspect",
    "convert",
    "ConvertResult",
    "OptimizeResult",
    "VerifyResult",
    "save_feeds",
]


# --------------------------------------------------------------------------- export
def export(
    model: str,
    out: str | Path,
    exporter: str = "torchscript",
    opset: int | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    dtypes: dict[str, str] | None = None,
    dynamic: bool = True,
) -> ExportResult:
    """torch -> ONNX for a demo name or a 'module:factory' spec."""
    spec = resolve_spec(model, shapes, dtypes)
    return export_model(spec, out, exporter=exporter, opset=opset, dynamic=dynamic)


# --------------------------------------------------------------------------- optimize
@dataclass
class OptimizeResult:
    path: Path
    records: list[PassRecord]
    nodes_before: int
    nodes_after: int


def optimize(
    onnx_path: str | Path,
    out: str | Path,
    passes: list[str | PassSpec] | None = None,
    precision: str = "fp32",
    on_stage: Callable[[PassRecord, onnx.ModelProto], None] | None = None,
) -> OptimizeResult:
    """ONNX -> ONNX through the named passes (default: cleanup, fold-constants, cleanup)."""
    recipe = Recipe(precision=precision)
    if passes is not None:
        recipe.passes = [p if isinstance(p, PassSpec) else PassSpec(p) for p in passes]
    model = load_model(onnx_path)
    result, records = run_passes(model, recipe.effective_passes(), PassContext(opset=opset_of(model)), on_stage)
    save_model(result, out)
    return OptimizeResult(Path(out), records, len(model.graph.node), len(result.graph.node))


# --------------------------------------------------------------------------- build
def build(
    onnx_path: str | Path,
    out: str | Path,
    backend: str = "auto",
    shapes: dict[str, ShapeProfile] | None = None,
    target_gpus: list[str] | None = None,
    timing_cache: str | Path | None = None,
    precision: str = "fp32",
    verbose: bool = False,
) -> EngineArtifact:
    """ONNX -> engine (+ '<engine>.json' sidecar) through a backend."""
    onnx_path = Path(onnx_path)
    load_model(onnx_path, load_weights=False)  # one-line error for a broken/missing file
    config = BuildConfig(
        profiles=shapes or {},
        target_gpus=list(target_gpus or []),
        timing_cache=str(timing_cache) if timing_cache else None,
        precision=precision,
    )
    return get_backend(backend).build(onnx_path, Path(out), config, verbose=verbose)


# --------------------------------------------------------------------------- verify
@dataclass
class VerifyResult:
    comparisons: list[Comparison]
    sample: SampleInputs
    localizations: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate name -> localization
    pass_records: list[PassRecord] = field(default_factory=list)  # with --passes: what each pass did

    @property
    def inputs_source(self) -> str:
        return self.sample.source

    @property
    def samples(self) -> int:
        return self.sample.count

    @property
    def passed(self) -> bool:
        ran = [c for c in self.comparisons if not c.skipped]
        return bool(ran) and all(c.passed for c in ran)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs_source,
            "samples": self.samples,
            "passed": self.passed,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _candidate_runner(path: Path, backend: str):
    """(runner, reason-it-cannot-run) for an ONNX file or an engine file."""
    if path.suffix in ENGINE_SUFFIXES:
        if not path.is_file():
            raise InvalidInputError(f"{path}: no such engine file")
        engine_backend = get_backend(backend)
        ok, why = engine_backend.can_run()
        return (EngineRunner(engine_backend, path, name=path.name), "") if ok else (None, f"engine not executed: {why}")
    load_model(path, load_weights=False)
    return OnnxRunner(path, name=path.name), ""


def verify(
    reference: str,
    candidates: list[str],
    inputs: str | Path | None = None,
    tolerances: Tolerances | None = None,
    backend: str = "auto",
    shapes: dict[str, tuple[int, ...]] | None = None,
    num_batches: int = 2,
    batch_size: int = 4,
    trust_model_code: bool = False,
    localize: bool = False,
    passes: list[str] | None = None,
) -> VerifyResult:
    """Compare each candidate (ONNX or engine) against the reference (torch spec or ONNX) on real inputs.

    With `localize`, every ONNX candidate is also compared layer by layer with an ONNX
    reference (converter/verification/localize.py) to say where its error entered. With `passes`,
    the ONNX reference is run through those passes and compared after each one.
    """
    if not candidates and not passes:
        raise InvalidInputError("verify needs a candidate (.onnx or .engine file) or --passes")
    if passes and is_torch_spec(reference):
        raise InvalidInputError("--passes needs an ONNX reference (export the torch model first)")
    if Path(reference).suffix in ENGINE_SUFFIXES:
        raise InvalidInputError(f"{reference}: the reference must be a torch model or an ONNX file, not an engine")
    tol = tolerances or Tolerances.for_precision("fp32")
    spec = resolve_spec(reference, shapes) if is_torch_spec(reference) else None
    first_onnx = next((c for c in [reference, *candidates] if str(c).endswith(".onnx")), None)
    graph = load_model(first_onnx, load_weights=False) if first_onnx else None
    sample = resolve_inputs(graph, spec, inputs, num_batches, batch_size, trust_model_code=trust_model_code)
    if graph is not None:
        check_against_graph(sample, graph, first_onnx)
    if spec is not None:
        ref_label, ref_runner = "torch", TorchRunner(spec.module(), spec.input_names, spec.output_names)
    else:
        ref_label, (ref_runner, _) = Path(reference).name, _candidate_runner(Path(reference), backend)
    ref_out = collect(ref_runner, sample.feeds)
    classify = spec.task == "classification" if spec else False
    comparisons = []
    for cand in map(Path, candidates):
        runner, why = _candidate_runner(cand, backend)
        if runner is None:
            comparisons.append(skipped(ref_label, cand.name, tol, why))
            continue
        cand_out = collect(runner, sample.feeds)
        comparisons.append(compare_results(ref_label, ref_out, runner.name, cand_out, tol, classify, sample.count))
    result = VerifyResult(comparisons, sample)
    if passes:
        reference_model = load_model(reference)

        def after_pass(record: PassRecord, stage: onnx.ModelProto) -> None:
            label = f"after {record.name}"
            comp = compare_results(
                ref_label, ref_out, label, collect(OnnxRunner(stage, label), sample.feeds), tol, classify, sample.count
            )
            record.accuracy = {"min_cosine": min(o.cosine for o in comp.outputs), "passed": comp.passed}
            comparisons.append(comp)

        specs = [PassSpec(name) for name in passes]
        _, result.pass_records = run_passes(
            reference_model, specs, PassContext(opset=opset_of(reference_model)), after_pass
        )
    if localize:
        if spec is not None:
            raise InvalidInputError("--localize needs an ONNX reference (export the torch model first)")
        reference_model = load_model(reference)
        for cand in map(Path, candidates):
            if cand.suffix == ".onnx":
                found = localize_layers(reference_model, load_model(cand), sample.feeds, tol)
                result.localizations[cand.name] = {**found.to_dict(), "title": f"{cand.name} vs {Path(reference).name}"}
    return result


# --------------------------------------------------------------------------- inspect
def inspect(path: str | Path) -> dict[str, Any]:
    """Summary of an ONNX file or of an engine (sidecar, size; per-layer detail with a GPU)."""
    return inspection.inspect_path(Path(path))


def save_feeds(sample: SampleInputs, path: str | Path) -> None:
    """Write the first batch of sample inputs as .npz (for --load-inputs elsewhere), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **sample.feeds[0])
