"""One reference, many candidates: the comparison routine `verify` and `convert` share.

The reference (the torch module, or an ONNX graph) runs once on the sample feeds;
every candidate (an ONNX file or graph, a pass's intermediate model, an engine) runs
on the same feeds and is compared with the reference's outputs. A candidate that
cannot run here (an engine without a GPU) is recorded as skipped, with the reason.
`verdict` turns the comparisons into the reports' shared vocabulary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converter.core.errors import InvalidInputError, UsageError
from converter.core.model_io import load_model
from converter.core.model_spec import Feeds, ModelSpec
from converter.verification.compare import (
    Comparison,
    EngineRunner,
    OnnxRunner,
    Runner,
    TorchRunner,
    collect,
    compare_results,
    skipped,
)
from converter.verification.tolerances import Tolerances

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
# (candidate outputs, reference outputs, feeds) -> {"budget", "value", "met", "metrics"}
Judge = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], list[Feeds]], dict[str, Any]]


def is_engine(path: str | Path) -> bool:
    return Path(path).suffix in ENGINE_SUFFIXES


def candidate_runner(path: Path, backend_name: str, runtime_cache=None) -> tuple[Runner | None, str]:
    """(runner, "") for an ONNX file or an engine file, or (None, why it cannot run here);
    `runtime_cache` (backends.runtime_cache.RuntimeCache) is shared by the engines that run."""
    if is_engine(path):
        if not path.is_file():
            raise InvalidInputError(f"{path}: no such engine file")
        from converter.backends import get_backend

        backend = get_backend(backend_name)
        ok, why = backend.can_run()
        runner = EngineRunner(backend, path, name=path.name, runtime_cache=runtime_cache)
        return (runner, "") if ok else (None, f"engine not executed: {why}")
    load_model(path, load_weights=False)  # one-line error for a missing or broken file
    return OnnxRunner(path, name=path.name), ""


@dataclass
class Reference:
    """The reference's outputs on the sample feeds, and how candidates are compared with them."""

    label: str
    outputs: dict[str, np.ndarray]
    feeds: list[Feeds]
    samples: int
    classify: bool = False  # top-1 agreement for classifiers

    def check_tolerances(self, tol: Tolerances) -> None:
        """A tolerance for an output the reference does not have is a typo, not a check that passed."""
        unknown = sorted(set(tol.per_output) - set(self.outputs))
        if unknown:
            raise UsageError(
                f"tolerance for output(s) {', '.join(unknown)}: {self.label} has no such output "
                f"(outputs: {', '.join(self.outputs)})"
            )

    @classmethod
    def of_runner(cls, runner: Runner, feeds: list[Feeds], samples: int, classify: bool = False) -> Reference:
        return cls(runner.name, collect(runner, feeds), feeds, samples, classify)

    @classmethod
    def of_torch(cls, spec: ModelSpec, feeds: list[Feeds], samples: int) -> Reference:
        runner = TorchRunner(spec.module(), spec.input_names, spec.output_names)
        return cls.of_runner(runner, feeds, samples, spec.task == "classification")

    @classmethod
    def of_onnx(
        cls, model: str | Path | onnx.ModelProto, label: str, feeds: list[Feeds], samples: int, classify: bool = False
    ) -> Reference:
        return cls.of_runner(OnnxRunner(model, label), feeds, samples, classify)

    def compare(self, runner: Runner, tol: Tolerances, judge: Judge | None = None) -> Comparison:
        """Run `runner` on the reference's feeds; its outputs against the reference's (and, with
        `judge`, judged by an accuracy budget: the elementwise numbers stay in the report)."""
        outputs = collect(runner, self.feeds)
        found = compare_results(self.label, self.outputs, runner.name, outputs, tol, self.classify, self.samples)
        if judge is not None:
            found.budget = judge(outputs, self.outputs, self.feeds)
        return found

    def compare_onnx(
        self, model: str | Path | onnx.ModelProto, label: str, tol: Tolerances, judge: Judge | None = None
    ) -> Comparison:
        return self.compare(OnnxRunner(model, label), tol, judge)

    def skipped(self, candidate: str, tol: Tolerances, reason: str) -> Comparison:
        return skipped(self.label, candidate, tol, reason)

    def compare_file(self, path: Path, tol: Tolerances, backend_name: str, runtime_cache=None) -> Comparison:
        """An ONNX or engine file against the reference (skipped, with the reason, where it cannot run)."""
        runner, why = candidate_runner(path, backend_name, runtime_cache)
        return self.skipped(path.name, tol, why) if runner is None else self.compare(runner, tol)


class StageChecks:
    """The graph after each pass against the reference. A pass that changed nothing hands on the
    same graph object (passes/manager.py), and gets the check before it again, renamed: on a
    1.1B graph each check is a ~10 s onnxruntime session."""

    def __init__(self, reference: Reference):
        self.reference = reference
        self._last: tuple[onnx.ModelProto, Tolerances, Comparison] | None = None

    def check(self, model: onnx.ModelProto, label: str, tol: Tolerances) -> Comparison:
        if self._last is not None and self._last[0] is model and self._last[1] == tol:
            return dataclasses.replace(self._last[2], candidate=label)
        comparison = self.reference.compare_onnx(model, label, tol)
        self._last = (model, tol, comparison)
        return comparison


def pass_accuracy(comparison: Comparison) -> dict[str, Any]:
    """What a pass record says about the accuracy after that pass."""
    return {
        "min_cosine": min(o.cosine for o in comparison.outputs),
        "max_abs": max(o.max_abs for o in comparison.outputs),
        "passed": comparison.passed,
    }


def verdict(
    comparisons: list[dict[str, Any]], engines: Collection[str], onnx_files: Collection[str]
) -> tuple[str, bool]:
    """("engine" | "onnx" | "not verified", passed) of a run's comparisons (their to_dict()).

    The level is the furthest stage that was actually compared: an engine among
    `engines`, else an ONNX model among `onnx_files`; a run where none of them could be
    checked is not verified, hence not passed. Passing needs every comparison that ran
    to pass.
    """
    ran = {c["candidate"]: c for c in comparisons if not c["skipped"]}
    if any(name in ran for name in engines):
        level = "engine"
    elif any(name in ran for name in onnx_files):
        level = "onnx"
    else:
        level = "not verified"
    return level, level != "not verified" and all(c["passed"] for c in ran.values())
