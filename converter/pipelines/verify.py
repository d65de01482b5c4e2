"""`verify`: compare candidates (ONNX or engine files) with a reference (torch or ONNX) on real inputs.

The reference runs once on the sample inputs (converter/pipelines/sample_inputs.py);
each candidate is compared with it (converter/verification/reference.py). With
`passes`, the ONNX reference is also run through those passes and compared after
each one; with `localize`, every ONNX candidate is compared layer by layer to say
where its error entered. The report uses convert's vocabulary: `verified` is
"engine" | "onnx" | "not verified" (the furthest kind of candidate that actually
ran), `passed` needs something to have run and every comparison that ran to pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.backends import runtime_cache_for
from converter.backends.runtime_cache import RuntimeCache
from converter.core.errors import InvalidInputError, UsageError
from converter.core.model_io import load_model, opset_of
from converter.pipelines import calibration_source
from converter.pipelines.generation_check import (
    cache_layout,
    generation_checks,
    generation_summary,
    torch_reference,
    vocab_size,
)
from converter.pipelines.html_report import write_html
from converter.pipelines.model_ref import ModelRef, resolve_model
from converter.pipelines.optimize import check_passes
from converter.pipelines.report import new_report, write_report
from converter.pipelines.sample_inputs import (
    SampleInputs,
    check_against_graph,
    resolve_inputs,
    run_reference,
    save_feeds,
)
from converter.verification.compare import Comparison, OnnxRunner
from converter.verification.localize import localize as localize_layers
from converter.verification.reference import (
    Reference,
    StageChecks,
    candidate_runner,
    is_engine,
    pass_accuracy,
    verdict,
)
from converter.verification.tolerances import Tolerances
from passes.base import PassContext
from passes.manager import PassRecord, run_passes
from passes.registry import PassSpec


@dataclass
class VerifyResult:
    comparisons: list[Comparison]
    sample: SampleInputs
    localizations: dict[str, dict[str, Any]] = field(default_factory=dict)  # candidate name -> localization
    pass_records: list[PassRecord] = field(default_factory=list)  # with `passes`: what each pass did
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs_source(self) -> str:
        return self.sample.source

    @property
    def samples(self) -> int:
        return self.sample.count

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))


def _check_arguments(reference: str, candidates: list[str], passes: list[str]) -> None:
    if not candidates and not passes:
        raise InvalidInputError("verify needs a candidate (.onnx or .engine file) or --passes")
    if is_engine(reference):
        raise InvalidInputError(f"{reference}: the reference must be a torch model or an ONNX file, not an engine")


def _sample(
    ref: ModelRef, candidates: list[str], inputs, num_batches: int, batch_size: int, trust_model_code: bool
) -> SampleInputs:
    """The sample inputs (shaped for the first ONNX graph among the reference and candidates),
    checked against every ONNX graph: a candidate that takes other inputs is named before anything runs."""
    onnx_files = [c for c in [ref.text, *candidates] if str(c).endswith(".onnx")]
    graphs = {str(c): load_model(c, load_weights=False) for c in onnx_files}
    first = next(iter(graphs.values()), None)
    sample = resolve_inputs(first, ref.spec, inputs, num_batches, batch_size, trust_model_code=trust_model_code)
    for where, graph in graphs.items():
        check_against_graph(sample, graph, where)
    return sample


def _reference(ref: ModelRef, sample: SampleInputs) -> Reference:
    if ref.spec is not None:
        return run_reference(sample, lambda: Reference.of_torch(ref.spec, sample.feeds, sample.count))
    return run_reference(sample, lambda: Reference.of_onnx(ref.path, ref.path.name, sample.feeds, sample.count))


def _after_each_pass(
    ref: ModelRef,
    reference: Reference,
    passes: list[PassSpec],
    tol: Tolerances | None,
    comparisons: list[Comparison],
) -> list[PassRecord]:
    """Run the ONNX reference through `passes`, comparing the graph after each one with the reference.

    Without explicit tolerances, each stage is held to its precision's defaults: fp32 until a
    pass lowers the graph (`precision` to fp16), that precision's from then on, as convert does.
    """
    model = load_model(ref.path)
    lowered: list[str] = []
    checks = StageChecks(reference)

    def after_pass(record: PassRecord, stage: onnx.ModelProto) -> None:
        if record.precision:
            lowered.append(record.precision)
        stage_tol = tol or Tolerances.for_precision(lowered[-1] if lowered else "fp32")
        comparison = checks.check(stage, f"after {record.name}", stage_tol)
        record.accuracy = pass_accuracy(comparison)
        comparisons.append(comparison)

    ctx = PassContext(opset=opset_of(model), calibration=calibration_source.for_optimize(passes, model))
    return run_passes(model, passes, ctx, after_pass)[1]


def _localize(ref: ModelRef, candidates: list[Path], sample: SampleInputs, tol: Tolerances) -> dict[str, Any]:
    """Layer-by-layer comparison of every ONNX candidate with the ONNX reference."""
    reference_model = load_model(ref.path)
    found = {}
    for cand in candidates:
        if cand.suffix == ".onnx":
            where = localize_layers(reference_model, load_model(cand), sample.feeds, tol)
            found[cand.name] = {**where.to_dict(), "title": f"{cand.name} vs {ref.path.name}"}
    return found


def _generation(
    report: dict[str, Any],
    ref: ModelRef,
    files: list[Path],
    backend: str,
    steps: int,
    prompts: int,
    minimum: float,
    runtime_cache: RuntimeCache | None,
) -> None:
    """`--generate`: greedy generation by the reference and every candidate that runs here, compared."""
    layout = ref.spec.cache if ref.spec is not None else cache_layout(load_model(ref.path, load_weights=False))
    if layout is None:
        raise InvalidInputError(
            f"--generate: {ref.text} is not a decoder with a KV cache (export it with --task text-generation-with-past)"
        )
    reference = torch_reference(ref.spec) if ref.spec is not None else OnnxRunner(ref.path, name=ref.path.name)
    runners, skipped = [], []
    for path in files:
        runner, why = candidate_runner(path, backend, runtime_cache)
        if runner is None:
            skipped.append(f"{path.name}: {why}")
        else:
            runners.append(runner)
    graphs = [p for p in [*([ref.path] if ref.path else []), *files] if p.suffix == ".onnx"]
    vocab = vocab_size(load_model(graphs[0], load_weights=False)) if graphs else 256
    report["generation"] = generation_summary(generation_checks(reference, runners, layout, vocab, prompts, steps))
    report["generation"]["skipped"] = skipped
    agreement = [c["agreement_per_step"][-1] for c in report["generation"]["checks"]]
    report["generation"]["min_token_agreement"] = minimum
    if report.get("passed") is not None and agreement:
        report["passed"] = bool(report["passed"]) and min(agreement) >= minimum


def verify(
    reference: str,
    candidates: list[str],
    *,
    inputs: str | Path | None = None,
    tolerances: Tolerances | None = None,
    backend: str = "auto",
    shapes: dict[str, tuple[int, ...]] | None = None,
    num_batches: int = 2,
    batch_size: int = 4,
    trust_model_code: bool = False,
    localize: bool = False,
    passes: list[str] | None = None,
    report_path: str | Path | None = None,
    html: str | Path | None = None,
    save_inputs: str | Path | None = None,
    task: str | None = None,
    generate: int = 0,
    generate_prompts: int = 8,
    min_token_agreement: float = 1.0,
    runtime_cache: str | Path | None = None,
) -> VerifyResult:
    """Compare each candidate against the reference (see module docstring); writes the requested files.

    `tolerances` None: fp32 defaults for the candidates, and for `passes` the defaults of
    the precision each stage computes in. `generate` N > 0 (a decoder with a KV cache):
    each candidate also decodes N greedy tokens for `generate_prompts` real prompts, its
    cache fed back, and passes only if at least `min_token_agreement` of the prompts
    agree with the reference's tokens at every step (report key `generation`).
    `runtime_cache` (TensorRT-RTX): a file keeping the kernels the engines JIT-compile on the
    GPU between runs (report key `runtime_cache`).
    """
    passes = list(passes or [])
    _check_arguments(reference, candidates, passes)
    ref = resolve_model(reference, shapes, task=task)
    if ref.is_torch and (passes or localize):
        flag = "--passes" if passes else "--localize"
        raise InvalidInputError(f"{flag} needs an ONNX reference (export the torch model first)")
    specs = [PassSpec(name) for name in passes]
    check_passes(specs)
    if runtime_cache is not None and not any(is_engine(c) for c in candidates):
        raise UsageError("--runtime-cache keeps an engine's kernels: no engine among the candidates")
    kernels = runtime_cache_for(backend, runtime_cache)
    tol = tolerances or Tolerances.for_precision("fp32")
    sample = _sample(ref, candidates, inputs, num_batches, batch_size, trust_model_code)
    compared = _reference(ref, sample)
    compared.check_tolerances(tol)
    files = [Path(c) for c in candidates]
    comparisons = [compared.compare_file(cand, tol, backend, kernels) for cand in files]
    result = VerifyResult(comparisons, sample)
    if specs:
        result.pass_records = _after_each_pass(ref, compared, specs, tolerances, comparisons)
    if localize:
        result.localizations = _localize(ref, files, sample, tol)
    result.report = verify_report(result, reference, candidates, engines=[f.name for f in files if is_engine(f)])
    if generate:
        _generation(result.report, ref, files, backend, generate, generate_prompts, min_token_agreement, kernels)
    if kernels is not None:
        result.report["runtime_cache"] = kernels.status()
    if report_path:
        write_report(result.report, report_path)
    if html:
        write_html(result.report, html)
    if save_inputs:
        save_feeds(sample, save_inputs)
    return result


def verify_report(result: VerifyResult, reference: str, candidates: list[str], engines: list[str]) -> dict[str, Any]:
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
    onnx_files = [c["candidate"] for c in report["verification"] if c["candidate"] not in engines]
    report["verified"], report["passed"] = verdict(report["verification"], engines, onnx_files)
    return report
