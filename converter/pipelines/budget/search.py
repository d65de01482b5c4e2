"""The joint search: the smallest configuration (drop x quantize x precision) that keeps the budget.

Two orderings steer it, computed on the calibration data:
- the drop ladder, on the gated twin graph: for a cosine or perplexity budget the sets
  drop-blocks' own budget mode accepts, one size level after another (each also kept
  within the budget on the validation data, as `drop-blocks --min-cosine` does), so the
  joint search drops at least what dropping alone can; otherwise FinerCut's greedy order
  (passes/blocks/search.greedy_path);
- per quantization format, its layers ranked by sensitivity, computed only when the
  format misses the budget with every layer quantized: for W8A8 formats the damage with
  that layer alone quantized (calibration/sensitivity.py), for weight-only formats each
  layer's relative output error as the quantize pass reports it (one quantization).

Then, measured (every point on the rewritten graph, on the validation data):
1. the precision: fp16 for everything unquantized, unless fp16 alone misses the budget;
2. each format alone; int8/fp8 at each SmoothQuant alpha, the most accurate one kept;
3. a staircase per format, formats in order of their objective alone: at drop level k,
   the fewest most-sensitive layers kept out of the format that keep the budget (counts
   0, 1, 2, 4, 8, ..., then a bisection of the last gap); more drops never need fewer
   keeps, so the count only grows along k. A format stops where no allowed keep count (at
   most half its layers) keeps the budget, where its objective has grown for two levels
   running, or at the first level where dropping alone missed the budget (a format only
   adds error). Dropping alone (no format) is the first staircase.
The best point is the smallest objective that meets the budget (ties: better accuracy).
A deadline (`seconds`) stops it before the next measurement; the best so far is returned.
The points, in order, are the report's table; the non-dominated ones its Pareto front.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from calibration.data import CalibrationData
from converter.core.model_io import opset_of
from converter.core.progress import Step
from converter.pipelines.budget.candidates import (
    FOUR_BIT,
    INT4_ALGORITHM,
    Config,
    Measure,
    Point,
    has_embedding_tables,
)
from converter.pipelines.budget.spec import Budget
from passes.base import PassContext
from passes.blocks.config import DropConfig
from passes.blocks.discovery import find_blocks
from passes.blocks.evaluator import Evaluator as DropEvaluator
from passes.blocks.scores import Costs
from passes.blocks.search import Scorer, budget_search, greedy_path
from passes.quant.quantize import WEIGHT_ONLY, Quantize

ALPHAS = (None, 0.5, 0.8)
LADDER_DAMAGE_FACTOR = 3.0  # the ladder stops at 3x the budget's damage on calibration data
SENSITIVITY_SAMPLES = 32
EMBEDDING_TRIES = 3  # best configurations that also get their embedding tables quantized
EMBEDDING_TIME_SHARE = 0.2  # of --search-seconds, kept for that step when the model has tables
Log = Callable[[str], None]


class OutOfTime(Exception):
    """The search's deadline passed: stop before the next measurement."""


def ladder_damage_cap(budget: Budget) -> float:
    """How much calibration damage (1 - cosine, or relative perplexity) a drop ladder climbs to."""
    if budget.metric in ("cosine", "top1"):
        return (1.0 - budget.limit) * LADDER_DAMAGE_FACTOR
    if budget.metric == "ppl":
        return budget.limit * LADDER_DAMAGE_FACTOR
    return float("inf")


def drop_ladder(
    source: onnx.ModelProto, data: tuple[list, list], budget: Budget, objective: str, flops: dict[str, float]
) -> tuple[list[tuple[str, ...]], str]:
    """Drop sets of growing size (the empty set first); and what the block discovery found.

    A cosine or perplexity budget: the sets drop-blocks' own budget mode accepts, one size level
    after another (chosen on the calibration data, each kept within the budget on the validation
    data), so the joint search can drop at least what dropping alone can. Other budgets: FinerCut's
    greedy order on the calibration data, up to 3x the budget's damage.
    """
    bg = find_blocks(source)
    if not bg.found:
        return [()], bg.message
    calib, val = data
    metric = "ppl" if budget.metric == "ppl" else ("cosine" if budget.metric != "task" else "auto")
    ev = DropEvaluator(source, bg, calib, val, metric)
    try:
        per_flop = objective in ("flops", "latency")
        costs, units = Costs.of(source, bg, flops if per_flop else None), bg.units("all")
        if budget.metric in ("cosine", "ppl"):
            limit = {"min_cosine": budget.limit} if budget.metric == "cosine" else {"max_ppl_increase": budget.limit}
            config = DropConfig(**limit, target_flops=1.0 if per_flop else None)  # levels in FLOPs or parameters
            _, _, steps = budget_search(ev, costs, units, config)
            return [(), *(tuple(step["removed"]) for step in steps)], bg.message
        goal = DropConfig(target_flops=1.0) if per_flop else DropConfig(target_params=1.0)
        scorer = Scorer(ev, costs, replace(goal, beam=1, refine=False))
        path = greedy_path(scorer, units, max(len(bg.blocks) // 2, 1), ladder_damage_cap(budget))
    finally:
        ev.close()
    return [(), *(trial.names for trial in path)], bg.message


def rank_layers(source: onnx.ModelProto, calib: CalibrationData, mode: str) -> list[str]:
    """The layers `mode` quantizes, most sensitive first, on calibration data.

    Weight-only formats: by each layer's relative output error (the quantize pass's own report,
    on the calibration inputs' Gram matrix for calibrated rounding), from one quantization. W8A8
    formats: by the final outputs' damage with that layer alone quantized (one model per layer).
    """
    ctx = PassContext(opset=opset_of(source), calibration=calib)
    algorithm = INT4_ALGORITHM if mode in FOUR_BIT else "rtn"
    quantize = Quantize(mode=mode, method="minmax", algorithm=algorithm, sensitivity_samples=SENSITIVITY_SAMPLES)
    if mode not in WEIGHT_ONLY:
        return quantize.ranked_layers(source, ctx)
    errors = quantize.run_model(source, ctx)[1].details.get("weight_only", {})
    return sorted(errors, key=lambda name: -errors[name]["error"])


@dataclass
class SearchResult:
    points: list[Point]
    best: Point | None
    stopped: str
    seconds: float
    ladder: list[tuple[str, ...]] = field(default_factory=list)
    rankings: dict[str, list[str]] = field(default_factory=dict)

    def pareto(self) -> list[Point]:
        """Points no other point beats on both objective and accuracy (smaller objective first)."""
        front, best_value = [], None
        for p in sorted(self.points, key=lambda p: (p.objective, -p.goodness)):
            if best_value is None or p.goodness > best_value:
                front.append(p)
                best_value = p.goodness
        return front

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated": [p.to_dict() for p in self.points],
            "pareto": [p.index for p in self.pareto()],
            "chosen": self.best.to_dict() if self.best else None,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
            "drop_ladder": [list(step) for step in self.ladder],
            "sensitivity_order": self.rankings,
        }


class JointSearch:
    """See the module docstring; `formats` are quantize modes tried, `precision` fixes the base precision."""

    def __init__(
        self,
        measure: Measure,
        ladder: list[tuple[str, ...]],
        formats: list[str],
        precision: str | None,
        seconds: float,
        log: Log,
    ):
        self.measure, self.ladder, self.formats = measure, ladder, formats
        self.fixed_precision, self.log = precision, log
        self.deadline = time.perf_counter() + seconds
        self.started = time.perf_counter()
        self.rankings: dict[str, list[str]] = {}

    def point(self, config: Config) -> Point:
        measured = self.measure.points
        if config not in measured and measured and time.perf_counter() > self.deadline:
            raise OutOfTime  # the first point (the source) is always measured: a best-so-far exists
        known = config in self.measure.points
        point = self.measure(config)
        if not known:
            verdict = "meets" if point.met else "misses"
            budget, objective = self.measure.budget.metric, self.measure.objective
            text = f"{config.describe()}: {budget} {point.value:.5f} ({verdict}), {objective} {point.objective:.4g}"
            self.log(Step("budget search", point.index + 1, None, text))
        return point

    def run(self) -> SearchResult:
        stopped = "searched every format"
        tables, deadline = self._searches_tables(), self.deadline
        if tables:  # the walk leaves the tables step its share of the time
            self.deadline = self.started + (deadline - self.started) * (1.0 - EMBEDDING_TIME_SHARE)
        try:
            base = self._precision()
            alone = self._alone(base)
            self._staircase(Config(precision=base))
            for fmt in sorted(alone, key=lambda f: alone[f].objective):
                self._staircase(alone[fmt].config)
        except OutOfTime:
            stopped = "time budget (--search-seconds) reached: best so far"
        self.deadline = deadline
        try:
            if tables:
                self._embeddings()
        except OutOfTime:
            stopped = "time budget (--search-seconds) reached: best so far"
        points = list(self.measure.points.values())
        met = [p for p in points if p.met]
        best = min(met, key=lambda p: (p.objective, -p.goodness)) if met else None
        if best is None:
            stopped += "; no configuration met the budget"
        return SearchResult(
            points, best, stopped, time.perf_counter() - self.started, list(self.ladder), dict(self.rankings)
        )

    def _searches_tables(self) -> bool:
        """Whether embedding tables are searched: the tables hold weight bytes only (a Gather reads a
        few rows), so only the bytes objectives ask, and only where there are tables."""
        return self.measure.objective in ("weight-bytes", "engine-size") and has_embedding_tables(self.measure.source)

    def _embeddings(self) -> None:
        """The best configurations found with their embedding tables in 8, then 4 bits."""
        met = sorted((p for p in self.measure.points.values() if p.met), key=lambda p: (p.objective, -p.goodness))
        for base in [p.config for p in met[:EMBEDDING_TRIES]]:  # the best sits at the budget's edge: a few
            for bits in (8, 4):
                if not self.point(replace(base, embeddings=bits)).met:
                    break

    def _precision(self) -> str:
        """fp16 for what stays unquantized, unless it alone misses the budget (or the caller fixed one)."""
        if self.fixed_precision:
            self.point(Config(precision=self.fixed_precision))
            return self.fixed_precision
        self.point(Config())  # the source itself: the objective's starting value
        return "fp16" if self.point(Config(precision="fp16")).met else "fp32"

    def _alone(self, precision: str) -> dict[str, Point]:
        """Each format with every layer quantized; int8/fp8 at the SmoothQuant alpha that keeps most accuracy."""
        alone = {}
        for fmt in self.formats:
            alphas = ALPHAS if fmt in ("int8", "fp8") else (None,)
            tried = [self.point(Config(quant=fmt, alpha=a, precision=precision)) for a in alphas]
            alone[fmt] = max(tried, key=lambda p: p.goodness)
        return alone

    def _staircase(self, start: Config) -> None:
        """Drop levels along the ladder, each with the fewest kept layers that keep the budget."""
        keep_count, previous, grew = 0, None, 0
        for drop in self.ladder:
            if start.quant and not self._drop_alone_met(drop, start.precision):
                return  # quantizing adds error: where dropping alone misses, so does dropping plus a format
            found = self._fewest_keeps(replace(start, drop=drop), keep_count)
            if found is None:
                return
            keep_count, point = found
            grew = grew + 1 if previous is not None and point.objective >= previous else 0
            if grew >= 2:
                return
            previous = point.objective

    def _fewest_keeps(self, config: Config, start: int) -> tuple[int, Point] | None:
        """(count, point): the fewest most-sensitive layers kept out of the format, at least `start`,
        that keep the budget: doubling (0, 1, 2, 4, ...: at most half the layers), then halving the
        last gap; None when no allowed count keeps it."""

        def measured(count: int) -> Point:
            ranked = self._ranking(config.quant) if count else []
            return self.point(replace(config, keep=tuple(ranked[:count])))

        count, failed, point = start, None, measured(start)
        while not point.met:
            if not config.quant:
                return None
            failed, count = count, (1 if count == 0 else count * 2)
            if count > len(self._ranking(config.quant)) // 2:
                return None
            point = measured(count)
        while failed is not None and count - failed > 1:  # the fewest in (failed, count]
            middle = (failed + count) // 2
            trial = measured(middle)
            count, point, failed = (middle, trial, failed) if trial.met else (count, point, middle)
        return count, point

    def _drop_alone_met(self, drop: tuple[str, ...], precision: str) -> bool:
        point = self.measure.points.get(Config(drop=drop, precision=precision))
        return point is not None and point.met

    def _ranking(self, fmt: str | None) -> list[str]:
        if fmt is None:
            return []
        if fmt not in self.rankings:
            if time.perf_counter() > self.deadline:
                raise OutOfTime
            self.log(f"ranking the layers {fmt} quantizes by sensitivity (calibration data)")
            self.rankings[fmt] = rank_layers(self.measure.source, self.measure.calib, fmt)
        return self.rankings[fmt]
