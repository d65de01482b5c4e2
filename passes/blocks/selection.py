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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx

from passes.blocks.config import DropConfig
from passes.blocks.discovery import BlockGraph, Unit
from passes.blocks.evaluator import Evaluator
from passes.blocks.rewiring import canonical
from passes.blocks.scores import Costs, Feeds, GatedSession, language_model_io
from passes.blocks.search import search


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


def oneshot(ev: Evaluator, costs: Costs, units: list[Unit], ranking: dict[str, float], config: DropConfig) -> Selection:
    """Remove units in ascending score order until the goal is met or the budget would break."""
    chosen: list[str] = []
    stopped = "every candidate removed"
    for u in sorted(units, key=lambda u: ranking[u.name]):
        if config.reached(len(chosen), costs.saved(chosen)):
            stopped = "goal reached"
            break
        if config.has_budget and not ev.within([*chosen, u.name], config):
            stopped = f"budget: removing {u.name} next would exceed it"
            break
        chosen.append(u.name)
    else:
        stopped = "goal reached" if config.reached(len(chosen), costs.saved(chosen)) else stopped
    return Selection("oneshot", chosen, stopped)


def iterative(ev: Evaluator, costs: Costs, units: list[Unit], config: DropConfig) -> Selection:
    """FinerCut-style search re-scored after every removal (beam and refinement: passes/blocks/search.py)."""
    chosen, stopped, steps = search(ev, costs, units, config)
    return Selection("iterative", list(chosen.names), stopped, steps)


def unit_scores(ev: Evaluator, probe: GatedSession, calib: list[Feeds]) -> dict[str, dict[str, float]]:
    """Per unit: Block Influence and the direct measure (outputs with only that unit removed)."""
    bi = probe.block_influence(calib)
    ev.prefetch([u.name] for u in ev.bg.units("all"))
    scores = {}
    for u in ev.bg.units("all"):
        metrics = ev.metrics([u.name])
        scores[u.name] = {"kind": u.kind, "block": u.block, "bi": bi[u.name], "damage": ev.damage([u.name]), **metrics}
    return scores


@dataclass
class Scored:
    """One model scored once: its evaluator (every removal set it measures is cached), unit scores, costs."""

    ev: Evaluator
    scores: dict[str, dict[str, float]]
    costs: Costs

    def unit_costs(self) -> dict[str, dict[str, float]]:
        """What removing each unit alone saves (parameters, FLOPs)."""
        return {u.name: self.costs.saved([u.name]) for u in self.ev.bg.units("all")}


def score_units(
    model: onnx.ModelProto,
    bg: BlockGraph,
    calib: list[Feeds],
    val: list[Feeds],
    metric: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> Scored:
    """Score every block and sub-layer on `calib` (Block Influence, the direct measure) and price it."""
    probe = GatedSession(model, bg, probe=True)  # runs the plain outputs as fast when asked only those
    ev = Evaluator(model, bg, calib, val, metric, progress, session=probe)
    return Scored(ev, unit_scores(ev, probe, calib), Costs.of(model, bg, probe.matmul_flops(calib[0])))


def _measured(sel: Selection, scored: Scored) -> Selection:
    """`sel` spelled canonically, with the validation metrics before/after and what it saves."""
    ev = scored.ev
    sel.removed = canonical(ev.bg, sel.removed)
    sel.before, sel.after = ev.metrics([], "val"), ev.metrics(sel.removed, "val")
    sel.saved = scored.costs.saved(sel.removed)
    return sel


def explicit(scored: Scored, names: list[str], why: str) -> Selection:
    """A removal set named by the caller (no search), measured on the validation data like a chosen one."""
    return _measured(Selection("explicit", list(names), why), scored)


def select(
    model: onnx.ModelProto,
    bg: BlockGraph,
    calib: list[Feeds],
    val: list[Feeds],
    config: DropConfig,
    scored: Scored | None = None,
) -> Selection:
    """Score (unless `scored` is given), choose per `config`, and measure the choice on the validation data."""
    config.check(language_model_io(model) is not None)
    scored = scored or score_units(model, bg, calib, val, config.metric)
    ev, costs, units = scored.ev, scored.costs, bg.units(config.units)
    if config.method == "oneshot":
        key = "bi" if config.score == "bi" else "damage"
        sel = oneshot(ev, costs, units, {n: s[key] for n, s in scored.scores.items()}, config)
    else:
        sel = iterative(ev, costs, units, config)
    return _measured(sel, scored)
