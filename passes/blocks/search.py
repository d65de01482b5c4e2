"""The iterative search: the removal set that changes the calibration outputs least for a goal.

FinerCut removes one unit at a time, each time the one whose removal changes the
outputs least given what is already gone. With a parameter target and units of
different sizes (an MLP weighs about two attentions, a block three) that step is
myopic: it takes the least damage per parameter first (often an MLP), then whatever
completes the target, and never compares the pair with a block or another pair it
could have taken instead. Two cheap repairs, scored on the calibration data only:

- beam search (`beam` > 1): keep the `beam` best partial removal sets at each depth,
  expand each by every unit, remember every set that reaches the goal, and stop
  expanding sets that already do more damage than the best of those (removing more
  seldom repairs damage; where it does, as for a random-weight model's perplexity,
  a larger set can be missed). Partial sets are
  ranked by damage per parameter (or FLOP) saved, so a small unit and a large one
  compete fairly; for a count goal by damage. Width 1 follows one greedy path (for a
  count goal exactly FinerCut's), and keeps going past the first set that reaches a
  target while a less damaging one may follow.
- refinement (`refine`): exchange one removed unit for one kept unit, or drop one,
  whenever the result still reaches the goal and does less damage; repeat until no
  exchange helps. It repairs an early pick that later ones made unnecessary.

Both only ever lower the calibration damage; whether that carries over to held-out
data is the calibration set's business (scripts/bench_drop_blocks.py measures it).

Budget mode (a budget on the validation data) asks how much can go. It grows the
removal one size at a time (one unit more for a count, else half the smallest unit's
share of parameters/FLOPs more), runs the search above for each size and validates
its sets, plus the current set with any one unit added, in calibration order until
one keeps the budget (all of them, if need be: no fixed number of tries). It stops
at the first size none of them keeps, so no single further unit fits, or at the
count/target. Every accepted set was measured on the validation data, so the result
never exceeds the budget there; the calibration data alone decides the order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from passes.blocks.config import DropConfig
from passes.blocks.discovery import Unit
from passes.blocks.evaluator import Evaluator
from passes.blocks.rewiring import canonical
from passes.blocks.scores import Costs

MAX_REFINE_ROUNDS = 20  # each round evaluates |removed| x |kept| exchanges; it stops far earlier in practice


@dataclass(frozen=True)
class Trial:
    """One removal set as the search sees it."""

    path: tuple[str, ...]  # units in the order the search added them
    names: tuple[str, ...]  # the canonical removal set (what is evaluated and written)
    damage: float  # on the calibration data
    amount: float  # progress toward the goal: parameters / FLOPs saved, or units removed
    done: bool  # the goal is reached


class Scorer:
    """Calibration damage and goal progress of removal sets; each set is evaluated once (Evaluator cache)."""

    def __init__(self, ev: Evaluator, costs: Costs, config: DropConfig):
        self.ev, self.costs, self.config = ev, costs, config
        self.kind = "flops_saved" if config.target_flops is not None else "params_saved"
        targeted = config.target_params is not None or config.target_flops is not None
        # a count goal compares sets of equal size: damage alone; otherwise damage per parameter / FLOP saved
        # (a target, or a budget alone: "as much as the budget allows" is counted in parameters)
        self.per_amount = targeted or config.remove is None
        self.units = {u.name: u for u in ev.bg.units("all")}
        self._saved: dict[tuple[str, ...], dict[str, float]] = {}

    def saved(self, names: Iterable[str]) -> dict[str, float]:
        key = tuple(canonical(self.ev.bg, names))
        if key not in self._saved:
            self._saved[key] = self.costs.saved(key)
        return self._saved[key]

    def reached(self, path: tuple[str, ...]) -> bool:
        return self.config.reached(len(path), self.saved(path))

    def effective(self, path: Iterable[str]) -> tuple[str, ...]:
        """`path` without the sub-layers of blocks it removes whole (so a count counts what goes)."""
        path = tuple(path)
        blocks = {self.units[n].block for n in path if self.units[n].kind == "block"}
        return tuple(n for n in path if self.units[n].kind == "block" or self.units[n].block not in blocks)

    def prefetch(self, paths: Iterable[Iterable[str]]) -> None:
        """Measure the sets of `paths` together (one pass over the blocks for all of them)."""
        self.ev.prefetch(canonical(self.ev.bg, self.effective(p)) for p in paths)

    def trial(self, path: Iterable[str]) -> Trial:
        path = self.effective(path)
        names = tuple(canonical(self.ev.bg, path))
        amount = self.saved(names)[self.kind] if self.per_amount else float(len(path))
        return Trial(path, names, self.ev.damage(list(names)), amount, self.reached(path))

    def rank(self, trial: Trial) -> float:
        """Order of partial sets: damage per parameter/FLOP saved, or damage for a count goal."""
        return trial.damage / max(trial.amount, 1e-9) if self.per_amount else trial.damage

    def steps(self, trial: Trial) -> list[dict[str, Any]]:
        """The path to `trial`, with the calibration damage after each addition (all cached)."""
        return [
            {"removed": name, "calib_damage": self.trial(trial.path[: i + 1]).damage}
            for i, name in enumerate(trial.path)
        ]


def _grown(parent: Trial, units: list[Unit]) -> list[tuple[str, ...]]:
    return [(*parent.path, u.name) for u in units if u.name not in parent.path]


def _children(scorer: Scorer, parent: Trial, units: list[Unit]) -> Iterator[Trial]:
    """`parent` plus one more unit, skipping units that remove nothing more (a sub-layer of a removed block)."""
    for path in _grown(parent, units):
        child = scorer.trial(path)
        if child.names != parent.names:
            yield child


def beam_search(scorer: Scorer, units: list[Unit], width: int = 1) -> list[Trial]:
    """Every set reaching the goal that a beam of `width` visits, least damage first (empty: out of reach)."""
    frontier, found = [scorer.trial(())], {}
    if frontier[0].done:
        return frontier
    while frontier:
        scorer.prefetch(path for parent in frontier for path in _grown(parent, units))
        children: dict[tuple[str, ...], Trial] = {}
        for parent in frontier:
            for child in _children(scorer, parent, units):
                children.setdefault(child.names, child)
        for child in children.values():
            if child.done:
                found.setdefault(child.names, child)
        bound = min((t.damage for t in found.values()), default=float("inf"))
        growing = [c for c in children.values() if not c.done and c.damage < bound]
        frontier = sorted(growing, key=scorer.rank)[:width]
    return sorted(found.values(), key=lambda t: t.damage)


def _exchanges(trial: Trial, units: list[Unit]) -> Iterator[tuple[str, ...]]:
    """Removal paths one step from `trial`: one unit dropped, or exchanged for one not removed."""
    for i in range(len(trial.path)):
        rest = trial.path[:i] + trial.path[i + 1 :]
        yield rest
        for u in units:
            if u.name not in trial.path:
                yield (*rest, u.name)


def refine(scorer: Scorer, units: list[Unit], start: Trial) -> tuple[Trial, list[dict[str, Any]]]:
    """Best-improvement local search over exchanges that keep the goal reached; (result, the exchanges made)."""
    best, moves = start, []
    for _ in range(MAX_REFINE_ROUNDS):
        improved = best
        scorer.prefetch(_exchanges(best, units))
        for path in _exchanges(best, units):
            trial = scorer.trial(path)
            if trial.done and trial.damage < improved.damage:
                improved = trial
        if improved is best:
            break
        gone, back = set(best.path) - set(improved.path), set(improved.path) - set(best.path)
        moves.append({"exchanged": sorted(gone), "for": sorted(back), "calib_damage": improved.damage})
        best = improved
    return best, moves


def candidates(scorer: Scorer, units: list[Unit]) -> tuple[list[Trial], list[dict[str, Any]]]:
    """Sets reaching the scorer's goal, least calibration damage first (the refined best leads); and its steps."""
    found = beam_search(scorer, units, scorer.config.beam)
    if not found:
        return [], []
    steps = scorer.steps(found[0])
    if scorer.config.refine:
        best, moves = refine(scorer, units, found[0])
        steps += moves
        found = [best, *(t for t in found if t.names != best.names)]
    return found, steps


def _next_level(config: DropConfig, scorer: Scorer, chosen: Trial, quantum: float) -> DropConfig:
    """The goal one size up from `chosen` (one more unit, or half the smallest unit's share more), budget-free."""
    free = replace(config, max_ppl_increase=None, min_cosine=None)
    if config.target_params is None and config.target_flops is None and config.remove is not None:
        return replace(free, remove=len(chosen.path) + 1)
    key = "flops_saved_frac" if config.target_flops is not None else "params_saved_frac"
    level = scorer.saved(chosen.names)[key] + quantum / 2
    cap = config.target_flops if config.target_flops is not None else config.target_params
    level = min(level, cap if cap is not None else 1.0)  # a share of the model: at most all of it
    if config.target_flops is not None:
        return replace(free, remove=None, target_params=None, target_flops=level)
    return replace(free, remove=None, target_params=level, target_flops=None)


def budget_search(ev: Evaluator, costs: Costs, units: list[Unit], config: DropConfig) -> tuple[Trial, str, list]:
    """As much as the validation budget allows, one size up at a time.

    Each size's search runs on the calibration data; its sets, and the current set plus
    any one unit (the greedy step), are then validated in calibration order until one
    keeps the budget. It stops at the first size none of them keeps (so no single unit
    more fits), or at the count/target when one is given.
    """
    scorer = Scorer(ev, costs, config)
    key = "flops_saved_frac" if config.target_flops is not None else "params_saved_frac"
    quantum = min((scorer.saved([u.name])[key] for u in units), default=0.0)
    chosen, steps = scorer.trial(()), []
    while not chosen.done:
        level = Scorer(ev, costs, _next_level(config, scorer, chosen, quantum))
        found = {t.names: t for t in candidates(level, units)[0]}
        level.prefetch(_grown(level.trial(chosen.path), units))
        for grown in _children(level, level.trial(chosen.path), units):  # the greedy step's options too
            found.setdefault(grown.names, grown)
        ranked = sorted((t for t in found.values() if t.done), key=lambda t: t.damage)
        if not ranked:
            return chosen, "every candidate removed", steps
        pick = next((t for t in ranked if ev.within(list(t.names), config)), None)
        if pick is None:
            return chosen, "budget: no further removal keeps it", steps
        chosen = scorer.trial(pick.path)
        steps.append(
            {"removed": list(chosen.names), "calib_damage": chosen.damage, "validated": ranked.index(pick) + 1}
        )
    return chosen, "goal reached", steps


def search(ev: Evaluator, costs: Costs, units: list[Unit], config: DropConfig) -> tuple[Trial, str, list]:
    """(chosen set, why the search stopped, its steps) for the iterative method."""
    if config.has_budget:
        return budget_search(ev, costs, units, config)
    scorer = Scorer(ev, costs, config)
    found, steps = candidates(scorer, units)
    if not found:  # the goal is out of reach: remove every candidate
        return scorer.trial(u.name for u in units), "every candidate removed", []
    return found[0], "goal reached", steps


def greedy_path(scorer: Scorer, units: list[Unit], max_steps: int, max_damage: float) -> list[Trial]:
    """FinerCut's order: one unit more at a time, each time the one with the least calibration damage per
    parameter (or FLOP) saved; the set after each step, until `max_steps` units or `max_damage` is passed.
    Nested sets: a caller walking it (the budget search) tries each size once."""
    path, trials = scorer.trial(()), []
    while len(trials) < max_steps:
        scorer.prefetch(_grown(path, units))
        options = list(_children(scorer, path, units))
        if not options:
            break
        path = min(options, key=scorer.rank)
        if path.damage > max_damage:
            break
        trials.append(path)
    return trials
