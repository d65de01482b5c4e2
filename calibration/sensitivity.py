"""Sensitivity analysis and mixed precision under an accuracy budget.

- `Evaluator` runs a candidate model in onnxruntime on fixed feeds and scores it
  against the reference model's outputs: per-sample cosine over all float outputs
  (mean and min), or a user metric `metric(candidate_outputs, reference_outputs)`
  returning the drop (higher = worse).
- `layer_sensitivity`: per quantized layer, the drop when only that layer is
  quantized (the issue's definition), on the calibration data.
- `choose_high_precision`: keep the most sensitive layers in high precision, the
  fewest that meet the budget: a binary search over "the k most sensitive kept",
  then a check of the chosen k (the drop is not exactly monotone in k).

Models are built by a callback `build(include, exclude) -> ModelProto`, so this
module does not know how Q/DQ are placed; the quantize pass supplies it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from converter.core.ort_session import cpu_session

Feeds = dict[str, np.ndarray]
Outputs = list[dict[str, np.ndarray]]
Metric = Callable[[Outputs, Outputs], float]


def run_outputs(model: onnx.ModelProto, feeds: list[Feeds]) -> Outputs:
    session = cpu_session(model)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    return [
        dict(zip(names, session.run(None, {k: v for k, v in f.items() if k in inputs}), strict=True)) for f in feeds
    ]


def sample_cosines(candidate: Outputs, reference: Outputs) -> np.ndarray:
    """Cosine per sample (row of axis 0), all float outputs of a sample flattened together."""
    cosines = []
    for cand, ref in zip(candidate, reference, strict=True):
        names = [n for n in ref if np.asarray(ref[n]).dtype.kind == "f"]
        rows = len(ref[names[0]])
        a = np.concatenate([np.asarray(cand[n], np.float64).reshape(rows, -1) for n in names], axis=1)
        b = np.concatenate([np.asarray(ref[n], np.float64).reshape(rows, -1) for n in names], axis=1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines.append(np.where(norms > 0, (a * b).sum(1) / np.maximum(norms, 1e-30), 1.0))
    return np.concatenate(cosines)


def top1_agreement(candidate: Outputs, reference: Outputs) -> float:
    name = next(iter(reference[0]))
    a = np.concatenate([c[name].reshape(len(c[name]), -1).argmax(1) for c in candidate])
    b = np.concatenate([r[name].reshape(len(r[name]), -1).argmax(1) for r in reference])
    return float((a == b).mean())


@dataclass
class Score:
    drop: float  # 1 - mean cosine, or the user metric's drop
    mean_cosine: float
    min_cosine: float

    def to_dict(self) -> dict[str, float]:
        return {
            "drop": round(self.drop, 6),
            "mean_cosine": round(self.mean_cosine, 6),
            "min_cosine": round(self.min_cosine, 6),
        }


class Evaluator:
    """Scores candidate models against a reference on fixed feeds (reference outputs computed once)."""

    def __init__(self, reference: onnx.ModelProto, feeds: list[Feeds], metric: Metric | None = None):
        self.feeds, self.metric = feeds, metric
        self.reference = run_outputs(reference, feeds)
        self.evaluations = 0

    def score(self, model: onnx.ModelProto) -> Score:
        outputs = run_outputs(model, self.feeds)
        self.evaluations += 1
        cos = sample_cosines(outputs, self.reference)
        drop = self.metric(outputs, self.reference) if self.metric else 1.0 - float(cos.mean())
        return Score(float(drop), float(cos.mean()), float(cos.min()))


Build = Callable[[list[str] | None, list[str]], onnx.ModelProto]


@dataclass
class MixedPrecision:
    budget: float
    layers: int
    kept: list[str] = field(default_factory=list)
    score: Score | None = None
    full_score: Score | None = None
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    met: bool = False

    def to_dict(self) -> dict:
        return {
            "max_drop": self.budget,
            "quantized_layers": self.layers - len(self.kept),
            "high_precision_layers": len(self.kept),
            "kept_in_high_precision": self.kept,
            "met": self.met,
            "score": self.score.to_dict() if self.score else None,
            "all_quantized_score": self.full_score.to_dict() if self.full_score else None,
            "sensitivity": [{"layer": n, "drop": round(d, 6)} for n, d in self.sensitivity],
            "evaluations": self.evaluations,
            "seconds": round(self.seconds, 2),
        }


def layer_sensitivity(build: Build, layers: list[str], evaluator: Evaluator) -> list[tuple[str, float]]:
    """(layer, drop with only that layer quantized), most sensitive first."""
    scores = [(name, evaluator.score(build([name], [])).drop) for name in layers]
    return sorted(scores, key=lambda item: -item[1])


def choose_high_precision(build: Build, layers: list[str], evaluator: Evaluator, max_drop: float) -> MixedPrecision:
    """Fewest most-sensitive layers kept in high precision so that the drop is <= max_drop."""
    start = time.perf_counter()
    report = MixedPrecision(max_drop, len(layers))
    report.full_score = evaluator.score(build(None, []))
    if report.full_score.drop <= max_drop:
        report.score, report.met = report.full_score, True
    else:
        report.sensitivity = layer_sensitivity(build, layers, evaluator)
        ranked = [name for name, _ in report.sensitivity]
        scores: dict[int, Score] = {}

        def score_k(k: int) -> Score:
            if k not in scores:
                scores[k] = evaluator.score(build(None, ranked[:k]))
            return scores[k]

        lo, hi = 1, len(ranked)  # invariant: hi meets the budget (all in high precision does)
        scores[len(ranked)] = Score(0.0, 1.0, 1.0)
        while lo < hi:
            mid = (lo + hi) // 2
            if score_k(mid).drop <= max_drop:
                hi = mid
            else:
                lo = mid + 1
        report.kept, report.score = ranked[:hi], score_k(hi)
        report.met = report.score.drop <= max_drop
    report.evaluations = evaluator.evaluations
    report.seconds = time.perf_counter() - start
    return report
