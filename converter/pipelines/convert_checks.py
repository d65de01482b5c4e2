"""convert's verification stages: the reference on real inputs, then each artifact measured against it.

A mixin of convert's `_Run` (pipelines/convert.py), which owns the stage timing and the
order; what lives here is what every stage is compared with and how: the tolerances
(never tighter than the weights' own precision), a budget recipe's judge, the engine
check where a GPU runs it (with TensorRT-RTX's runtime cache when one was given), and
greedy generation for a decoder with a KV cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx

from converter.backends import Backend, EngineArtifact
from converter.backends.runtime_cache import RuntimeCache
from converter.core.errors import InvalidInputError
from converter.core.metadata import TASK, metadata_value
from converter.core.model_io import weights_precision
from converter.pipelines.budget.check import budget_judge
from converter.pipelines.budget.choose import BudgetSearch
from converter.pipelines.generation_check import (
    cache_layout,
    generation_checks,
    generation_summary,
    torch_reference,
    vocab_size,
)
from converter.pipelines.model_ref import ModelRef
from converter.pipelines.recipe import Recipe
from converter.pipelines.sample_inputs import check_against_graph, resolve_inputs, run_reference
from converter.verification.compare import EngineRunner, OnnxRunner
from converter.verification.localize import localize as localize_layers
from converter.verification.reference import Reference


class VerificationStages:
    """The checks of one conversion; the attributes below are `_Run`'s."""

    ref: ModelRef
    rec: Recipe
    log: Callable[[str], None]
    trust_model_code: bool
    search: BudgetSearch | None
    report: dict[str, Any]
    reference: Reference | None
    runtime_cache: RuntimeCache | None

    def stage(self, name: str, message: str) -> contextlib.AbstractContextManager[dict[str, Any]]:
        raise NotImplementedError  # convert's _Run times and announces its stages

    def verify_setup(self, source_path: Path, source: onnx.ModelProto, inputs: str | Path | None) -> None:
        """The sample inputs and the reference's outputs on them; the exported model.onnx checked."""
        spec, rec = self.ref.spec, self.rec
        what = "torch" if spec is not None else source_path.name
        with self.stage("reference", f"reading sample inputs and running the reference ({what})") as entry:
            sample = resolve_inputs(
                source, spec, inputs, rec.verify_batches, rec.verify_batch_size, rec.shapes, self.trust_model_code
            )
            check_against_graph(sample, source, str(source_path))
            self.report["input"]["samples"] = {"source": sample.source, "count": sample.count}
            if spec is not None:
                self.reference = run_reference(sample, lambda: Reference.of_torch(spec, sample.feeds, sample.count))
                check = self.reference.compare_onnx(source, "model.onnx", self.tolerance(source, "fp32"))
                self.report["verification"].append(check.to_dict())
            else:
                classify = metadata_value(source, TASK) == "classification"
                self.reference = run_reference(
                    sample, lambda: Reference.of_onnx(source, "source.onnx", sample.feeds, sample.count, classify)
                )
            entry["summary"] = f"{what} outputs on {sample.count} samples ({sample.source})"

    def verify_optimized(self, source: onnx.ModelProto, opt_path: Path, optimized: onnx.ModelProto) -> None:
        """model.opt.onnx against the reference, and where along the graph its error entered."""
        tol = self.tolerance(source)
        with self.stage("verify", "verifying model.opt.onnx and localizing its error layer by layer") as entry:
            try:
                final = self.reference.compare_onnx(opt_path, "model.opt.onnx", tol, self.judge(source))
                if self.rec.precision != "fp32":
                    final.note = LOW_PRECISION_NOTE
            except InvalidInputError as exc:
                final = self.reference.skipped("model.opt.onnx", tol, f"onnxruntime CPU cannot run it: {exc}")
            self.report["verification"].append(final.to_dict())
            entry["summary"] = "skipped" if final.skipped else ("pass" if final.passed else "FAIL")
            if not final.skipped:
                self.localize(source, optimized, tol)

    def localize(self, source: onnx.ModelProto, optimized: onnx.ModelProto, tol) -> None:
        """Where along the graph model.opt.onnx's error entered (the report's localization)."""
        found = localize_layers(source, optimized, self.reference.feeds, tol)
        source_name = "model.onnx" if self.ref.is_torch else self.ref.path.name
        self.report["localization"] = {**found.to_dict(), "title": f"model.opt.onnx vs {source_name}"}
        self.report["divergent_layers"] = self.report["localization"]["divergent_layers"]

    def tolerance(self, source: onnx.ModelProto, precision: str | None = None):
        """The recipe's tolerances at `precision` (default: the recipe's), but never tighter than
        the precision the model's own weights compute in: an fp16 model checked against its fp16
        torch module differs by fp16 rounding however fp32 the recipe is."""
        wanted = precision or self.rec.precision
        weights = weights_precision(source)
        return self.rec.tolerance(weights if wanted == "fp32" and weights != "fp32" else wanted)

    def judge(self, source: onnx.ModelProto):
        """Lossy stages of a budget recipe or search pass by the budget, not elementwise (budget/check.py)."""
        return budget_judge(self.search.options.parsed() if self.search else self.rec.budget, source)

    def verify_engine(self, source: onnx.ModelProto, backend: Backend, engine: EngineArtifact) -> None:
        """4. the engine's accuracy, where it can run (a GPU); else skipped with the reason."""
        tol = self.tolerance(source)
        ok, why = backend.can_run()
        check = (
            self.reference.compare(self.engine_runner(backend, engine), tol, self.judge(source))
            if ok
            else self.reference.skipped("model.engine", tol, f"engine not executed: {why}")
        )
        self.report["verification"].append(check.to_dict())

    def engine_runner(self, backend: Backend, engine: EngineArtifact) -> EngineRunner:
        return EngineRunner(backend, engine.path, "model.engine", runtime_cache=self.runtime_cache)

    def verify_generation(self, source: onnx.ModelProto, opt_path: Path, backend: Backend, engine) -> None:
        """5. a decoder with a KV cache: greedy generation by the reference and by every stage
        (model.onnx, model.opt.onnx, the engine where a GPU runs it), token by token."""
        layout, rec = cache_layout(source), self.rec
        if layout is None or rec.generate_tokens == 0:
            return
        message = f"generating {rec.generate_tokens} tokens for {rec.generate_prompts} prompts with each stage"
        with self.stage("generate", message) as entry:
            spec = self.ref.spec
            source_name = "model.onnx" if spec is not None else self.ref.path.name
            reference = torch_reference(spec) if spec is not None else OnnxRunner(source, name=source_name)
            candidates = [OnnxRunner(opt_path, name="model.opt.onnx")]
            if spec is not None:
                candidates.insert(0, OnnxRunner(source, name="model.onnx"))
            ok, why = backend.can_run()
            if ok:
                candidates.append(self.engine_runner(backend, engine))
            found = generation_checks(
                reference, candidates, layout, vocab_size(source), rec.generate_prompts, rec.generate_tokens
            )
            self.report["generation"] = generation_summary(found)
            if not ok:
                self.report["generation"]["engine"] = f"not executed: {why}"
            entry["summary"] = self.report["generation"]["summary"]


LOW_PRECISION_NOTE = (
    "onnxruntime CPU computes some fp16/bf16 ops in fp32: this measures the rounding of weights and "
    "casts, not low-precision arithmetic; the engine's own accuracy needs a GPU"
)
