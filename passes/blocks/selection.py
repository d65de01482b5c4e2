"""Which blocks / sub-layers to remove: one-shot ranking, greedy re-scoring, budgets and targets.

- oneshot (ShortGPT): rank the units once by a score (Block Influence, or the direct
  measure) and remove the best-ranked ones; "What Matters in Transformers" is this
  over attention sub-layers only (granularity "attention").
- iterative (FinerCut): remove one unit at a time, each time the one whose removal
  changes the outputs least on the calibration data given what is already removed
  (re-scored after every removal). By default over whole blocks and attention / MLP
  sub-layers together (granularity "all": for post-LN blocks the block's identity
  differs from removing both sub-layers, which keeps the LayerNorms), with a beam of
  partial sets and a refinement by exchanges (passes/blocks/search.py: why the
  plain greedy step is myopic when units differ in size); `beam=1, refine=False,
  granularity="sublayer"` is FinerCut's plain greedy search.
- how much: a count (`remove`), a target fraction of parameters or FLOPs, and/or a
  budget on the validation data (`min_cosine`, `max_ppl_increase`). Every removal set
  a budget accepts has been measured on the validation data, so the result never
  exceeds the budget there; with a budget and no count/target it removes as much as
  the budget allows (one size at a time, until no set of the next size keeps it).
  Without a budget the validation data only measures the final choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx

from passes.blocks.discovery import BlockGraph, Unit
from passes.blocks.drop_blocks import canonical
from passes.blocks.scores import Costs, Feeds, GatedSession, OutputMetrics, language_model_io
from passes.blocks.search import search

METHODS = ("oneshot", "iterative")
GRANULARITIES = ("block", "sublayer", "attention", "mlp", "all")


@dataclass
class DropConfig:
    method: str = "iterative"
    granularity: str | None = None  # default: block for oneshot; all (blocks and sub-layers) for iterative
    score: str = "bi"  # oneshot ranking: "bi" | "direct"
    remove: int | None = None
    target_params: float | None = None  # fraction of the model's parameters to remove
    target_flops: float | None = None
    max_ppl_increase: float | None = None  # relative: 0.1 = at most 10 % higher perplexity
    min_cosine: float | None = None  # mean per-sample cosine of the outputs to the original
    metric: str = "auto"  # damage measure: "cosine" | "ppl" | "kl" (auto: ppl for LMs, else cosine)
    beam: int = 3  # iterative: partial removal sets kept per depth (1: one greedy path, FinerCut)
    refine: bool = True  # iterative: exchange removed units for kept ones while that lowers the damage

    def check(self, is_lm: bool) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' not in {METHODS}")
        if self.granularity not in (None, *GRANULARITIES):
            raise ValueError(f"granularity '{self.granularity}' not in {GRANULARITIES}")
        if self.score not in ("bi", "direct"):
            raise ValueError(f"score '{self.score}' not in ('bi', 'direct')")
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")
        if self.metric not in ("auto", "cosine", "ppl", "kl"):
            raise ValueError(f"metric '{self.metric}' not in ('auto', 'cosine', 'ppl', 'kl')")
        if not is_lm and (self.max_ppl_increase is not None or self.metric in ("ppl", "kl")):
            raise ValueError("perplexity/KL need a language model (ONNX metadata trtforge.task=language-model)")
        goals = [self.remove, self.target_params, self.target_flops, self.max_ppl_increase, self.min_cosine]
        if all(g is None for g in goals):
            raise ValueError(
                "say how much to remove: remove, target_params, target_flops, max_ppl_increase or min_cosine"
            )

    @property
    def units(self) -> str:
        return self.granularity or ("block" if self.method == "oneshot" else "all")

    @property
    def has_budget(self) -> bool:
        return self.max_ppl_increase is not None or self.min_cosine is not None


class Evaluator:
    """Output metrics of any removal set on the calibration and validation data (cached)."""

    def __init__(
        self, model: onnx.ModelProto, bg: BlockGraph, calib: list[Feeds], val: list[Feeds], metric: str = "auto"
    ):
        self.bg, self.lm = bg, language_model_io(model)
        self.metric = metric if metric != "auto" else ("ppl" if self.lm else "cosine")
        self.session = GatedSession(model, bg)
        self.data = {"calib": calib, "val": val}
        self.refs = {"calib": [self.session.run(f) for f in calib]}
        self.refs["val"] = self.refs["calib"] if val is calib else [self.session.run(f) for f in val]
        self.cache: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.runs = 0

    def metrics(self, removed: list[str], split: str = "calib") -> dict[str, float]:
        split = "calib" if self.data["val"] is self.data["calib"] else split
        key = (split, tuple(sorted(canonical(self.bg, removed))))
        if key not in self.cache:
            acc = OutputMetrics(self.lm)
            for feeds, ref in zip(self.data[split], self.refs[split], strict=True):
                acc.add(self.session.run(feeds, removed), ref, feeds)
            self.cache[key] = acc.result()
            self.runs += 1
        return self.cache[key]

    def damage(self, removed: list[str], split: str = "calib") -> float:
        """How much worse the outputs get: 1 - cosine, relative perplexity increase, or KL."""
        m = self.metrics(removed, split)
        if self.metric == "ppl":
            return m["ppl"] / self.metrics([], split)["ppl"] - 1.0
        return m["kl"] if self.metric == "kl" else 1.0 - m["cosine"]

    def within(self, removed: list[str], config: DropConfig) -> bool:
        """The validation metrics of `removed` keep the config's budget."""
        m = self.metrics(removed, "val")
        if config.min_cosine is not None and m["cosine"] < config.min_cosine:
            return False
        base = self.metrics([], "val")
        return config.max_ppl_increase is None or m["ppl"] <= base["ppl"] * (1.0 + config.max_ppl_increase)


@dataclass
class Selection:
    method: str
    removed: list[str]
    stopped: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    before: dict[str, float] = field(default_factory=dict)  # validation metrics of the original
    after: dict[str, float] = field(default_factory=dict)  # validation metrics after removal
    saved: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        key = "ppl" if "ppl" in self.after else "cosine"
        return (
            f"{self.method}: removed {self.removed or 'nothing'} ({self.stopped}); "
            f"params -{self.saved.get('params_saved_frac', 0):.1%}, validation {key} "
            f"{self.before.get(key, float('nan')):.4f} -> {self.after.get(key, float('nan')):.4f}"
        )


def _goal(config: DropConfig, costs: Costs, chosen: list[str]) -> bool:
    saved = costs.saved(chosen)
    return (
        (config.remove is not None and len(chosen) >= config.remove)
        or (config.target_params is not None and saved["params_saved_frac"] >= config.target_params)
        or (config.target_flops is not None and saved["flops_saved_frac"] >= config.target_flops)
    )


def oneshot(ev: Evaluator, costs: Costs, units: list[Unit], ranking: dict[str, float], config: DropConfig) -> Selection:
    """Remove units in ascending score order until the goal is met or the budget would break."""
    chosen: list[str] = []
    stopped = "every candidate removed"
    for u in sorted(units, key=lambda u: ranking[u.name]):
        if _goal(config, costs, chosen):
            stopped = "goal reached"
            break
        if config.has_budget and not ev.within([*chosen, u.name], config):
            stopped = f"budget: removing {u.name} next would exceed it"
            break
        chosen.append(u.name)
    else:
        stopped = "goal reached" if _goal(config, costs, chosen) else stopped
    return Selection("oneshot", chosen, stopped)


def iterative(ev: Evaluator, costs: Costs, units: list[Unit], config: DropConfig) -> Selection:
    """FinerCut-style search re-scored after every removal (beam and refinement: passes/blocks/search.py)."""
    chosen, stopped, steps = search(ev, costs, units, config)
    return Selection("iterative", list(chosen.names), stopped, steps)


def unit_scores(ev: Evaluator, probe: GatedSession, calib: list[Feeds]) -> dict[str, dict[str, float]]:
    """Per unit: Block Influence and the direct measure (outputs with only that unit removed)."""
    bi = probe.block_influence(calib)
    scores = {}
    for u in ev.bg.units("all"):
        metrics = ev.metrics([u.name])
        scores[u.name] = {"kind": u.kind, "block": u.block, "bi": bi[u.name], "damage": ev.damage([u.name]), **metrics}
    return scores


def select(
    model: onnx.ModelProto,
    bg: BlockGraph,
    calib: list[Feeds],
    val: list[Feeds],
    config: DropConfig,
    ev: Evaluator | None = None,
    scores: dict[str, dict[str, float]] | None = None,
    costs: Costs | None = None,
) -> Selection:
    """Score (unless given), choose per `config`, and measure the choice on the validation data."""
    config.check(language_model_io(model) is not None)
    ev = ev or Evaluator(model, bg, calib, val, config.metric)
    if scores is None or costs is None:
        probe = GatedSession(model, bg, probe=True)
        scores = scores or unit_scores(ev, probe, calib)
        costs = costs or Costs.of(model, bg, probe.matmul_flops(calib[0]))
    units = bg.units(config.units)
    if config.method == "oneshot":
        key = "bi" if config.score == "bi" else "damage"
        sel = oneshot(ev, costs, units, {n: s[key] for n, s in scores.items()}, config)
    else:
        sel = iterative(ev, costs, units, config)
    sel.removed = canonical(bg, sel.removed)
    sel.before, sel.after = ev.metrics([], "val"), ev.metrics(sel.removed, "val")
    sel.saved = costs.saved(sel.removed)
    return sel
