"""Block dropping: exact rewiring, scores, selection modes, budgets, the pass, the CLI, TensorRT-RTX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from calibration.block_scores import Costs, GatedSession, OutputMetrics, language_model_io
from calibration.block_selection import DropConfig, Evaluator, select, unit_scores
from converter.verify import OnnxRunner
from passes.base import PassContext
from passes.drop_blocks import plan, remove_units
from passes.manager import PassSpec, run_passes
from passes.transformer_blocks import find_blocks
from tests.transformer_models import (
    bert_feeds,
    decoder_feeds,
    exported,
    hidden_states,
    skip,
    tiny_bert,
    tiny_decoder,
)

BERT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def _torch(module, feeds, names):
    with torch.no_grad():
        return module(*(torch.from_numpy(feeds[n]) for n in names)).numpy()


# --------------------------------------------------------------------------- exact rewiring
@pytest.mark.parametrize("which", ["decoder", "bert"])
def test_removing_nothing_is_bit_identical(which):
    model = onnx.load(exported(which))
    bg = find_blocks(model)
    same = remove_units(model, bg, [])
    assert same.SerializeToString() == model.SerializeToString()
    feeds = (decoder_feeds if which == "decoder" else bert_feeds)(1, 4)[0]
    a, b = OnnxRunner(model).run(feeds), OnnxRunner(same).run(feeds)
    assert all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("which", "exporter"),
    [("decoder", "torchscript"), ("decoder", "dynamo"), ("bert", "torchscript"), ("bert", "dynamo")],
)
def test_removal_equals_the_torch_model_with_the_unit_skipped(which, exporter):
    """Every block, every sub-layer (post-LN: LayerNorm kept) and a mixed set, against torch."""
    model = onnx.load(exported(which, exporter))
    bg = find_blocks(model)
    make, names = (tiny_decoder, ["input_ids"]) if which == "decoder" else (tiny_bert, BERT_INPUTS)
    feeds = (decoder_feeds if which == "decoder" else bert_feeds)(1, 4)[0]
    gated = GatedSession(model, bg)
    sets = [[u.name] for u in bg.units("all")] + [["block0", "attn1", "mlp2"], ["attn1", "mlp1"], ["attn2", "mlp2"]]
    for removed in sets:
        pruned = remove_units(model, bg, removed)
        onnx.checker.check_model(pruned)
        out = next(iter(OnnxRunner(pruned).run(feeds).values()))
        np.testing.assert_allclose(out, _torch(skip(make(), removed), feeds, names), atol=2e-5, rtol=1e-4)
        np.testing.assert_allclose(out, next(iter(gated.run(feeds, removed).values())), atol=1e-5, rtol=1e-5)


def test_dead_weights_leave_the_file():
    model = onnx.load(exported("decoder", "dynamo"))
    bg = find_blocks(model)
    pruned = remove_units(model, bg, ["block1", "mlp2"])
    kept = {t.name for t in pruned.graph.initializer}
    assert not any(n.startswith("blocks.1.") for n in kept)  # block 1's weights and LayerNorms
    assert not any(n.startswith("blocks.2.mlp") or n.startswith("blocks.2.ln2") for n in kept)
    assert any(n.startswith("blocks.2.attn") for n in kept)
    assert len(pruned.graph.node) < len(model.graph.node)
    meta = {p.key: p.value for p in pruned.metadata_props}
    assert meta["trtforge.drop_blocks"] == "block1,mlp2"


def test_pre_ln_block_is_its_two_sublayers_post_ln_is_not():
    dec, bert = find_blocks(onnx.load(exported("decoder"))), find_blocks(onnx.load(exported("bert")))
    assert [u.name for u in plan(dec, ["attn1", "mlp1"])] == ["block1"]
    assert [u.name for u in plan(bert, ["attn1", "mlp1"])] == ["attn1", "mlp1"]  # keeps the LayerNorms
    with pytest.raises(ValueError, match="unknown block/sub-layer"):
        plan(dec, ["block9"])


# --------------------------------------------------------------------------- scores
def _synthetic(dead_mlp: bool = True, head: bool = True) -> tuple[onnx.ModelProto, dict]:
    """2 pre-LN blocks written by hand (Add operands in both orders); numpy weights returned too."""
    rng = np.random.default_rng(3)
    d, f = 4, 8
    w = {n: rng.standard_normal(s).astype(np.float32) * 0.5 for n, s in
         [("q", (d, d)), ("k", (d, d)), ("v", (d, d)), ("o", (d, d)), ("w1", (d, f)), ("w2", (f, d))]}  # fmt: skip
    weights = {i: dict(w) for i in range(2)}
    if dead_mlp:
        weights[1]["w2"] = np.zeros((f, d), np.float32)  # block 1's MLP adds nothing: BI exactly 0
    nodes, inits, x = [], [numpy_helper.from_array(np.float32([d**-0.5]), "scale")], "x"
    for i in range(2):
        inits += [numpy_helper.from_array(a, f"{n}{i}") for n, a in weights[i].items()]
        p = f"b{i}_"
        nodes += [
            helper.make_node("LayerNormalization", [x, "gamma", "beta"], [p + "ln1"], axis=-1),
            *[helper.make_node("MatMul", [p + "ln1", f"{n}{i}"], [p + n]) for n in "qkv"],
            helper.make_node("Transpose", [p + "k"], [p + "kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", [p + "q", p + "kt"], [p + "s"]),
            helper.make_node("Mul", [p + "s", "scale"], [p + "ss"]),
            helper.make_node("Softmax", [p + "ss"], [p + "a"], axis=-1),
            helper.make_node("MatMul", [p + "a", p + "v"], [p + "av"]),
            helper.make_node("MatMul", [p + "av", f"o{i}"], [p + "o"]),
            helper.make_node("Add", [p + "o", x], [p + "x1"]),  # branch first
            helper.make_node("LayerNormalization", [p + "x1", "gamma", "beta"], [p + "ln2"], axis=-1),
            helper.make_node("MatMul", [p + "ln2", f"w1{i}"], [p + "h"]),
            helper.make_node("Relu", [p + "h"], [p + "r"]),
            helper.make_node("MatMul", [p + "r", f"w2{i}"], [p + "m"]),
            helper.make_node("Add", [p + "x1", p + "m"], [p + "x2"]),  # stream first
        ]
        x = p + "x2"
    if head:
        nodes.append(helper.make_node("ReduceMean", [x], ["y"], axes=[1], keepdims=0))
    else:  # the last block's stream is the graph output itself
        nodes[-1].output[0] = "y"
    inits += [
        numpy_helper.from_array(np.ones(d, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(d, np.float32), "beta"),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", d] if head else ["N", "T", d])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), weights


def _numpy_forward(x: np.ndarray, weights: dict, removed: set[str] = frozenset()) -> tuple[np.ndarray, list]:
    """The synthetic graph in numpy: output and per sub-layer (input, output) streams."""

    def ln(t):
        return (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-5)

    streams = []
    for i in range(2):
        w = weights[i]
        h = ln(x)
        s = (h @ w["q"]) @ (h @ w["k"]).transpose(0, 2, 1) * len(w["q"]) ** -0.5
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x1 = x + (0 if f"attn{i}" in removed else a @ (h @ w["v"]) @ w["o"])
        x2 = x1 + (0 if f"mlp{i}" in removed else np.maximum(ln(x1) @ w["w1"], 0) @ w["w2"])
        streams += [(x, x1), (x1, x2)]
        x = x2
    return x.mean(1), streams


def _bi(a: np.ndarray, b: np.ndarray) -> float:
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return float(1 - cos.mean())


def test_block_influence_and_direct_measure_match_hand_computed_values():
    model, weights = _synthetic()
    bg = find_blocks(model)
    assert len(bg.blocks) == 2 and bg.layout == "pre-LN"
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((3, 5, 4)).astype(np.float32)} for _ in range(2)]
    bi = GatedSession(model, bg, probe=True).block_influence(batches)
    x = np.concatenate([b["x"] for b in batches])
    _, streams = _numpy_forward(x.astype(np.float64), weights)
    expected = dict(zip(["attn0", "mlp0", "attn1", "mlp1"], [_bi(a, b) for a, b in streams], strict=True))
    expected["block0"], expected["block1"] = _bi(streams[0][0], streams[1][1]), _bi(streams[2][0], streams[3][1])
    for name, value in expected.items():
        assert bi[name] == pytest.approx(value, abs=1e-6), name
    assert bi["mlp1"] == pytest.approx(0.0, abs=1e-9)  # the dead MLP
    # direct measure: output cosine with attn0 removed, per sample, against numpy
    ev = Evaluator(model, bg, batches, batches)
    reference, _ = _numpy_forward(x.astype(np.float64), weights)
    removed, _ = _numpy_forward(x.astype(np.float64), weights, {"attn0"})
    cos = (reference * removed).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(removed, axis=1)
    assert ev.metrics(["attn0"])["cosine"] == pytest.approx(cos.mean(), abs=1e-6)
    assert ev.metrics(["mlp1"])["cosine"] == pytest.approx(1.0, abs=1e-7)


def test_removing_the_block_that_writes_the_graph_output_keeps_its_name():
    model, weights = _synthetic(dead_mlp=False, head=False)
    bg = find_blocks(model)
    assert bg.blocks[-1].output == "y"
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    gated = GatedSession(model, bg)
    for removed in (["block1"], ["mlp1"], ["block0", "block1"]):
        pruned = remove_units(model, bg, removed)
        assert [o.name for o in pruned.graph.output] == ["y"]
        out = OnnxRunner(pruned).run({"x": x})["y"]
        np.testing.assert_allclose(out, gated.run({"x": x}, removed)["y"], atol=1e-6)
    np.testing.assert_array_equal(OnnxRunner(remove_units(model, bg, ["block0", "block1"])).run({"x": x})["y"], x)


def test_block_influence_skips_padding_tokens():
    model = onnx.load(exported("bert"))
    bg = find_blocks(model)
    feeds = bert_feeds(2, 4)
    assert (feeds[0]["attention_mask"] == 0).any()
    bi = GatedSession(model, bg, probe=True).block_influence(feeds)
    sums, count = np.zeros(3), 0.0
    for f in feeds:
        mask = f["attention_mask"].astype(bool)
        for i, (a, b) in enumerate(hidden_states(tiny_bert(), f, BERT_INPUTS)):
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
            sums[i] += cos[mask].sum()
        count += mask.sum()
    for i in range(3):
        assert bi[f"block{i}"] == pytest.approx(1 - sums[i] / count, abs=1e-5)


def test_perplexity_and_kl_of_a_language_model():
    model = onnx.load(exported("decoder"))
    feeds = decoder_feeds(2, 4)
    acc = OutputMetrics(language_model_io(model))
    module = tiny_decoder()
    for f in feeds:
        out = OnnxRunner(model).run(f)
        acc.add(out, out, f)
    ids = torch.from_numpy(np.concatenate([f["input_ids"] for f in feeds]))
    with torch.no_grad():
        logits = module(ids)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
    result = acc.result()
    assert result["ppl"] == pytest.approx(float(torch.exp(loss)), rel=1e-5)
    assert result["kl"] == pytest.approx(0.0, abs=1e-9) and result["cosine"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- selection
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
    return select(model, bg, calib, val, DropConfig(**config), ev, scores, costs)


def test_oneshot_removes_the_lowest_scores(decoder_setup):
    scores = decoder_setup[5]
    blocks = sorted((n for n in scores if n.startswith("block")), key=lambda n: scores[n]["bi"])
    assert _select(decoder_setup, method="oneshot", remove=2).removed == sorted(blocks[:2])
    attn = sorted((n for n in scores if n.startswith("attn")), key=lambda n: scores[n]["bi"])
    sel = _select(decoder_setup, method="oneshot", granularity="attention", remove=2)
    assert sorted(sel.removed) == sorted(attn[:2])  # "What Matters in Transformers": attention only
    direct = sorted((n for n in scores if n.startswith("block")), key=lambda n: scores[n]["damage"])
    assert _select(decoder_setup, method="oneshot", score="direct", remove=1).removed == [direct[0]]


def test_iterative_rescores_after_every_removal(decoder_setup):
    ev = decoder_setup[4]
    sel = _select(decoder_setup, method="iterative", granularity="sublayer", remove=3)
    chosen: list[str] = []
    for step in sel.steps:  # each pick is the least damaging given what is already removed
        candidates = [u.name for u in decoder_setup[1].units("sublayer") if u.name not in chosen]
        best = min(candidates, key=lambda n: ev.damage([*chosen, n]))
        assert step["removed"] == best
        chosen.append(best)
    assert len(sel.steps) == 3


def test_target_parameter_and_flop_reductions_are_reached(decoder_setup):
    sel = _select(decoder_setup, method="iterative", target_params=0.2)
    assert sel.saved["params_saved_frac"] >= 0.2 and sel.stopped == "goal reached"
    sel = _select(decoder_setup, method="iterative", target_flops=0.3)
    assert sel.saved["flops_saved_frac"] >= 0.3


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


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="say how much"):
        DropConfig().check(is_lm=False)
    with pytest.raises(ValueError, match="language model"):
        DropConfig(max_ppl_increase=0.1).check(is_lm=False)


# --------------------------------------------------------------------------- pass, CLI, TensorRT
def test_pass_in_a_recipe_uses_the_calibration_data():
    model = onnx.load(exported("decoder"))
    ctx = PassContext(opset=17, calibration=decoder_feeds(2, 4))
    spec = PassSpec("drop-blocks", {"method": "oneshot", "remove": 1})
    pruned, records = run_passes(model, [spec], ctx)
    assert records[0].exact is False and sum(records[0].changed.values()) == 1
    assert len(find_blocks(pruned).blocks) == 2
    again, records = run_passes(pruned, [spec], ctx)  # idempotent: applied once
    assert records[0].changed == {} and "already applied" in records[0].notes[0]
    assert len(again.graph.node) == len(pruned.graph.node)
    explicit, records = run_passes(model, [PassSpec("drop-blocks", {"drop": ["attn2"]})], PassContext(opset=17))
    assert records[0].changed == {"attention_removed": 1}
    nothing, records = run_passes(model, [PassSpec("drop-blocks", {"remove": 1})], PassContext(opset=17))
    assert records[0].changed == {} and "no calibration data" in records[0].notes[0]


def test_pass_accepts_calibration_data_objects():
    data_module = pytest.importorskip("calibration.data")
    model = onnx.load(exported("bert"))
    data = data_module.from_feeds(bert_feeds(2, 4), "test")
    spec = PassSpec("drop-blocks", {"method": "oneshot", "granularity": "attention", "remove": 1})
    pruned, records = run_passes(model, [spec], PassContext(opset=17, calibration=data))
    assert records[0].changed == {"attention_removed": 1}
    assert "the recipe's calibration data" in records[0].notes[0]


def test_tensorrt_rtx_parses_fewer_layers_and_builds_a_smaller_engine(tmp_path):
    from converter.backends import BuildConfig, get_backend
    from tests.transformer_models import tiny_decoder_spec

    backend = get_backend("tensorrt-rtx")
    model = onnx.load(exported("decoder"))
    pruned_path = tmp_path / "pruned.onnx"
    onnx.save(remove_units(model, find_blocks(model), ["block1"]), pruned_path)
    before, after = backend.parse(exported("decoder")).num_layers, backend.parse(pruned_path).num_layers
    assert after < before
    config = BuildConfig(profiles=tiny_decoder_spec().profiles, target_gpus=["sm89"])
    small = backend.build(pruned_path, tmp_path / "p.engine", config).sidecar["engine_bytes"]
    big = backend.build(exported("decoder"), tmp_path / "o.engine", config).sidecar["engine_bytes"]
    assert small < big


def test_cli_writes_pruned_model_report_and_chart(tmp_path):
    from converter.cli import main

    calib, val = tmp_path / "calib.npz", tmp_path / "val.npz"
    np.savez(calib, **bert_feeds(1, 8)[0])
    np.savez(val, **bert_feeds(1, 8, offset=4000)[0])
    out = tmp_path / "pruned.onnx"
    args = ["drop-blocks", exported("bert"), "-o", str(out), "--load-inputs", str(calib)]
    args += ["--validation-inputs", str(val), "--method", "oneshot", "--remove", "1", "--json", "--no-build"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert len(report["removed"]) == 1 and report["removed"][0].startswith("block")
    assert (tmp_path / "pruned.drop" / "scores.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "pruned.drop" / "report.json").read_text())["removed"] == report["removed"]
    assert report["tensorrt"]["layers_after"] < report["tensorrt"]["layers_before"]
    written = report["validation"]["written_onnx"]["cosine"]
    assert written == pytest.approx(report["validation"]["after"]["cosine"], abs=1e-6)
    assert set(report["scores"]) == {f"{k}{i}" for i in range(3) for k in ("block", "attn", "mlp")}
    assert len(find_blocks(onnx.load(out)).blocks) == 2


def test_cli_on_a_graph_without_blocks_exits_unsupported(tmp_path):
    from converter.cli import main
    from tests.graphs import redundant_graph

    path = tmp_path / "plain.onnx"
    onnx.save(redundant_graph(), path)
    result = CliRunner().invoke(main, ["drop-blocks", str(path), "-o", str(tmp_path / "o.onnx"), "--remove", "1"])
    assert result.exit_code == 5 and "no transformer blocks" in result.output
    assert not (tmp_path / "o.onnx").exists()


# --------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_minilm_block_and_sublayer_removal_match_torch(tmp_path):
    from converter.export import export_model
    from converter.models import resolve_spec

    spec = resolve_spec("minilm")
    model = onnx.load(export_model(spec, tmp_path / "m.onnx").path)
    bg = find_blocks(model)
    feeds = spec.sample_feeds(1, 4)[0]
    for removed in (["block3"], ["attn2"], ["mlp0", "block4"]):
        out = OnnxRunner(remove_units(model, bg, removed)).run(feeds)["sentence_embedding"]
        np.testing.assert_allclose(out, _torch(skip(spec.factory(), removed), feeds, spec.input_names), atol=1e-5)


@pytest.mark.slow
def test_decoder_lm_removal_matches_torch_and_budget_holds(tmp_path):
    from calibration.block_data import demo_splits
    from converter.export import export_model
    from converter.models import resolve_spec

    spec = resolve_spec("decoder-lm")
    model = onnx.load(export_model(spec, tmp_path / "lm.onnx", exporter="dynamo").path)
    bg = find_blocks(model)
    feeds = spec.sample_feeds(1, 2)[0]
    for removed in (["block2"], ["attn3", "mlp5"]):
        out = OnnxRunner(remove_units(model, bg, removed)).run(feeds)["logits"]
        np.testing.assert_allclose(out, _torch(skip(spec.factory(), removed), feeds, ["input_ids"]), atol=1e-4)
    calib, val, _ = demo_splits("decoder-lm", 32, 64)
    sel = select(model, bg, calib, val, DropConfig(max_ppl_increase=0.08))
    assert sel.removed and sel.after["ppl"] <= sel.before["ppl"] * 1.08
