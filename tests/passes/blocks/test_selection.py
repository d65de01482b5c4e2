"""Block dropping, which units to remove: one-shot, the iterative search (beam, refinement), targets, budgets.

All on the tiny pre-LN decoder (3 blocks, 6 sub-layers) with disjoint calibration and
validation text, so exhaustive checks over every removal set stay cheap.
"""

from __future__ import annotations

import itertools

import onnx
import pytest

from converter.verification.compare import OnnxRunner
from passes.blocks.config import DropConfig
from passes.blocks.discovery import find_blocks
from passes.blocks.evaluator import Evaluator
from passes.blocks.rewiring import canonical, remove_units
from passes.blocks.scores import Costs, GatedSession, OutputMetrics
from passes.blocks.search import Scorer, _exchanges, beam_search
from passes.blocks.selection import Scored, select, unit_scores
from tests.transformer_models import decoder_feeds, exported


@pytest.fixture(scope="module")
def decoder_setup():
    model = onnx.load(exported("decoder"))
    bg = find_blocks(model)
    calib, val = decoder_feeds(2, 8), decoder_feeds(2, 8, offset=5000)
    ev = Evaluator(model, bg, calib, val)
    probe = GatedSession(model, bg, probe=True)
    scores = unit_scores(ev, probe, calib)
    costs = Costs.of(model, bg, probe.matmul_flops(calib[0]))
    return model, bg, calib, val, ev, scores, costs


def _select(setup, **config):
    model, bg, calib, val, ev, scores, costs = setup
    return select(model, bg, calib, val, DropConfig(**config), Scored(ev, scores, costs))


def _reaching(setup, config: DropConfig, ev: Evaluator | None = None) -> dict[tuple[str, ...], float]:
    """Every distinct removal set (any units) that reaches the config's goal -> calibration damage."""
    bg, costs = setup[1], setup[6]
    ev = ev or setup[4]
    scorer = Scorer(ev, costs, config)
    names = [u.name for u in bg.units("all")]
    found = {}
    for k in range(1, len(names) + 1):
        for combo in itertools.combinations(names, k):
            key = tuple(canonical(bg, combo))
            if key not in found and scorer.reached(combo):
                found[key] = ev.damage(list(key))
    return found


# --------------------------------------------------------------------------- one-shot
def test_oneshot_removes_the_lowest_scores(decoder_setup):
    scores = decoder_setup[5]
    blocks = sorted((n for n in scores if n.startswith("block")), key=lambda n: scores[n]["bi"])
    assert _select(decoder_setup, method="oneshot", remove=2).removed == sorted(blocks[:2])
    attn = sorted((n for n in scores if n.startswith("attn")), key=lambda n: scores[n]["bi"])
    sel = _select(decoder_setup, method="oneshot", granularity="attention", remove=2)
    assert sorted(sel.removed) == sorted(attn[:2])  # "What Matters in Transformers": attention only
    direct = sorted((n for n in scores if n.startswith("block")), key=lambda n: scores[n]["damage"])
    assert _select(decoder_setup, method="oneshot", score="direct", remove=1).removed == [direct[0]]


# --------------------------------------------------------------------------- iterative search
def test_iterative_rescores_after_every_removal(decoder_setup):
    ev = decoder_setup[4]
    sel = _select(decoder_setup, method="iterative", granularity="sublayer", remove=3)
    chosen: list[str] = []
    for step in sel.steps:  # each pick is the least damaging given what is already removed
        candidates = [u.name for u in decoder_setup[1].units("sublayer") if u.name not in chosen]
        best = min(candidates, key=lambda n: ev.damage([*chosen, n]))
        assert step["removed"] == best
        assert step["calib_damage"] == pytest.approx(ev.damage([*chosen, best]))
        chosen.append(best)
    assert len(sel.steps) == 3


def test_target_parameter_and_flop_reductions_are_reached(decoder_setup):
    for config in ({}, {"beam": 3, "refine": True, "granularity": "all"}):
        sel = _select(decoder_setup, method="iterative", target_params=0.2, **config)
        assert sel.saved["params_saved_frac"] >= 0.2 and sel.stopped == "goal reached"
        sel = _select(decoder_setup, method="iterative", target_flops=0.3, **config)
        assert sel.saved["flops_saved_frac"] >= 0.3


@pytest.mark.parametrize("target", [0.1, 0.25, 0.4])
def test_wider_beams_and_refinement_never_do_more_calibration_damage(decoder_setup, target):
    """Beam 1 is the greedy path; a wider beam keeps it among its candidates, and refinement only improves."""
    ev = decoder_setup[4]
    damage = {}
    for beam, refine in ((1, False), (3, False), (3, True)):
        sel = _select(
            decoder_setup, method="iterative", granularity="all", target_params=target, beam=beam, refine=refine
        )
        assert sel.saved["params_saved_frac"] >= target
        damage[beam, refine] = ev.damage(sel.removed)
    assert damage[3, False] <= damage[1, False] + 1e-12
    assert damage[3, True] <= damage[3, False] + 1e-12
    optimum = min(_reaching(decoder_setup, DropConfig(target_params=target)).values())
    assert damage[3, True] >= optimum - 1e-12  # nothing reaching the target beats the exhaustive optimum


@pytest.mark.parametrize("target", [0.25, 0.4, 0.6])
def test_a_beam_of_three_finds_the_exhaustive_optimum(decoder_setup, target):
    """On KL (damage that grows with removal; this random-weight model's perplexity does not), where greedy can miss it."""
    model, bg, calib, val, _, _, costs = decoder_setup
    ev = Evaluator(model, bg, calib, val, metric="kl")
    config = DropConfig(target_params=target)
    optimum = min(_reaching(decoder_setup, config, ev).values())
    scorer = Scorer(ev, costs, config)
    assert beam_search(scorer, bg.units("all"), width=3)[0].damage == pytest.approx(optimum)
    if target == 0.4:  # greedy takes attn0, mlp1, mlp2; block0 + mlp1 does less damage
        assert beam_search(scorer, bg.units("all"), width=1)[0].damage > optimum * 1.05


def test_refinement_ends_where_no_exchange_helps(decoder_setup):
    bg, ev, costs = decoder_setup[1], decoder_setup[4], decoder_setup[6]
    config = DropConfig(method="iterative", granularity="sublayer", target_params=0.3, refine=True)
    sel = _select(decoder_setup, **config.__dict__)
    scorer, units = Scorer(ev, costs, config), bg.units("sublayer")
    path = [s["removed"] for s in sel.steps if "removed" in s]
    for s in sel.steps:  # replay the exchanges the refinement reports
        if "exchanged" in s:
            path = [n for n in path if n not in s["exchanged"]] + s["for"]
    final = scorer.trial(path)
    assert list(final.names) == sel.removed and final.done
    for neighbour in _exchanges(final, units):
        trial = scorer.trial(neighbour)
        assert not trial.done or trial.damage >= final.damage - 1e-12, neighbour


def test_a_count_counts_what_goes(decoder_setup):
    scorer = Scorer(decoder_setup[4], decoder_setup[6], DropConfig(remove=2))
    assert scorer.effective(("block1", "attn1", "mlp2")) == ("block1", "mlp2")
    assert not scorer.trial(("block1", "attn1")).done and scorer.trial(("block1", "mlp2")).done
    sel = _select(decoder_setup, method="iterative", granularity="all", remove=2)
    assert len([s for s in sel.steps if "removed" in s]) == 2


def test_target_mode_never_looks_at_the_validation_data(decoder_setup):
    """Only calibration chooses; the validation data measures the original and the final set, nothing else."""
    model, bg, calib, val, _, scores, costs = decoder_setup
    ev = Evaluator(model, bg, calib, val)
    sel = select(model, bg, calib, val, DropConfig(target_params=0.3, beam=2, refine=True), Scored(ev, scores, costs))
    validated = {names for split, names in ev.cache if split == "val"}
    assert validated == {(), tuple(sorted(sel.removed))}


# --------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("method", ["iterative", "oneshot"])
def test_budget_is_never_exceeded_on_the_validation_data(decoder_setup, method):
    model, bg, calib, val, ev, *_ = decoder_setup
    base = ev.metrics([], "val")
    for budget in (0.02, 0.1, 0.5):
        sel = _select(decoder_setup, method=method, max_ppl_increase=budget)
        assert sel.after["ppl"] <= base["ppl"] * (1 + budget)
        written = OutputMetrics(ev.lm)
        pruned = OnnxRunner(remove_units(model, bg, sel.removed))
        for feeds, ref in zip(val, ev.refs["val"], strict=True):
            written.add(pruned.run(feeds), ref, feeds)
        assert written.result()["ppl"] <= base["ppl"] * (1 + budget) * (1 + 1e-6)
    for min_cos in (0.9, 0.99):
        sel = _select(decoder_setup, method=method, min_cosine=min_cos)
        assert sel.after["cosine"] >= min_cos


@pytest.mark.parametrize("budget", [0.05, 0.3])
def test_budget_mode_stops_only_when_no_further_unit_keeps_the_budget(decoder_setup, budget):
    bg, ev = decoder_setup[1], decoder_setup[4]
    config = DropConfig(max_ppl_increase=budget)
    sel = _select(decoder_setup, **config.__dict__)
    assert sel.stopped in ("budget: no further removal keeps it", "every candidate removed")
    for u in bg.units("sublayer"):
        grown = canonical(bg, [*sel.removed, u.name])
        if grown != sel.removed:
            assert not ev.within(grown, config), f"{u.name} would still fit"


def test_budget_mode_validates_past_the_best_ranked_candidates(decoder_setup, monkeypatch):
    """A unit that only the calibration ranks last is still taken when it is the one that keeps the budget."""
    model, bg, calib, val, _, scores, costs = decoder_setup
    ev = Evaluator(model, bg, calib, val)
    worst = max(bg.units("sublayer"), key=lambda u: ev.damage([u.name]) / costs.saved([u.name])["params_saved"])
    monkeypatch.setattr(ev, "within", lambda removed, config: list(removed) == [worst.name])
    sel = select(model, bg, calib, val, DropConfig(max_ppl_increase=0.01), Scored(ev, scores, costs))
    assert sel.removed == [worst.name] and sel.stopped == "budget: no further removal keeps it"


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="say how much"):
        DropConfig().check(is_lm=False)
    with pytest.raises(ValueError, match="language model"):
        DropConfig(max_ppl_increase=0.1).check(is_lm=False)
    with pytest.raises(ValueError, match="beam must be at least 1"):
        DropConfig(remove=1, beam=0).check(is_lm=False)
