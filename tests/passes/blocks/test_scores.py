"""Block dropping, the graph side: exact rewiring and the scores (selection, pass/CLI: the other test_drop_blocks_*)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from converter.verification.compare import OnnxRunner
from passes.blocks.discovery import find_blocks
from passes.blocks.evaluator import Evaluator
from passes.blocks.rewiring import plan, remove_units
from passes.blocks.scores import GatedSession, OutputMetrics, language_model_io
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
