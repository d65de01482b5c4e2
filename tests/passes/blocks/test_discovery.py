"""Transformer block discovery (passes/blocks/discovery.py) on graphs from both exporters.

Boundaries are checked by value: the tensors discovery names as each block's input and
output hold exactly the hidden states torch passes into and out of that block.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from converter.verification.compare import OnnxRunner
from passes.base import PassContext
from passes.blocks.discovery import find_blocks
from passes.manager import PassSpec, run_passes
from tests.graphs import redundant_graph
from tests.transformer_models import bert_feeds, decoder_feeds, exported, hidden_states, tiny_bert, tiny_decoder


def _values(model: onnx.ModelProto, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in names:
        if name not in {o.name for o in model.graph.output}:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return OnnxRunner(model).run(feeds)


def _check_boundaries(model: onnx.ModelProto, module, feeds: dict, input_names: list[str], atol: float = 1e-5):
    bg = find_blocks(model)
    states = hidden_states(module, feeds, input_names)
    assert len(bg.blocks) == len(states)
    names = [t for b in bg.blocks for t in (b.input, b.output)]
    values = _values(model, feeds, names)
    for block, (torch_in, torch_out) in zip(bg.blocks, states, strict=True):
        np.testing.assert_allclose(values[block.input], torch_in, atol=atol, rtol=1e-4)
        np.testing.assert_allclose(values[block.output], torch_out, atol=atol, rtol=1e-4)
        assert block.sublayers[0].input == block.input and block.sublayers[-1].output == block.output
        assert block.sublayers[0].output == block.sublayers[1].input  # one stream through the block
    return bg


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_pre_ln_decoder_blocks_and_boundaries(exporter):
    model = onnx.load(exported("decoder", exporter))
    bg = _check_boundaries(model, tiny_decoder(), decoder_feeds(1, 3)[0], ["input_ids"])
    assert bg.layout == "pre-LN" and [b.kinds for b in bg.blocks] == [["attention", "mlp"]] * 3
    assert [u.name for u in bg.units("all")] == ["block0", "block1", "block2"] + [
        f"{k}{i}" for i in range(3) for k in ("attn", "mlp")
    ]
    for b in bg.blocks:  # pre-LN: the attention's stream output is its residual Add's output
        assert b.sublayers[0].output == b.sublayers[0].add_output and not b.sublayers[0].post_norm
    assert "3 pre-LN transformer blocks" in bg.message and not bg.rejected


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_post_ln_encoder_blocks_and_boundaries(exporter):
    model = onnx.load(exported("bert", exporter))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    bg = _check_boundaries(model, tiny_bert(), bert_feeds(1, 4)[0], names)
    assert bg.layout == "post-LN" and len(bg.blocks) == 3
    for b in bg.blocks:  # post-LN: every sub-layer's stream output is behind its LayerNorm
        for s in b.sublayers:
            assert s.post_norm and s.output != s.add_output


def test_discovery_survives_the_fold_passes():
    model = onnx.load(exported("bert", "torchscript"))
    folded, _ = run_passes(model, [PassSpec("fold")], PassContext(opset=17))
    bg = find_blocks(folded)
    assert len(bg.blocks) == 3 and bg.layout == "post-LN"


def test_discovery_after_attention_fusion():
    from passes.registry import PASSES

    if "fuse-attention" not in PASSES:
        pytest.skip("no fuse-attention pass registered")
    model = onnx.load(exported("decoder", "torchscript"))
    fused, _ = run_passes(model, [PassSpec("fold"), PassSpec("fuse-attention")], PassContext(opset=17))
    bg = find_blocks(fused)
    assert len(bg.blocks) == 3 and bg.layout == "pre-LN"
    assert any(n.op_type == "Attention" for n in fused.graph.node)


def test_graph_without_blocks_says_so():
    bg = find_blocks(redundant_graph())
    assert not bg.found and bg.blocks == []
    assert bg.message.startswith("no transformer blocks in 'redundant'")
    assert "residual" in bg.message


class _ResidualCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 1))

    def forward(self, x):
        x = self.stem(x)
        return (x + self.body(x)).mean((2, 3))


def test_cnn_residuals_are_not_transformer_blocks(tmp_path):
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(_ResidualCNN().eval(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    bg = find_blocks(onnx.load(path))
    assert not bg.found
    assert "no transformer blocks" in bg.message and "Conv branch" in bg.message
    assert bg.rejected and "CNN residual" in bg.rejected[0][1]


def _residual_mlp_graph() -> onnx.ModelProto:
    """x -> 2 x (x + W2 relu(W1 x)): residual sub-layers, but no attention."""
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(2):
        inits += [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), f"w1_{i}")]
        inits += [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), f"w2_{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w1_{i}"], [f"h{i}"]),
            helper.make_node("Relu", [f"h{i}"], [f"r{i}"]),
            helper.make_node("MatMul", [f"r{i}", f"w2_{i}"], [f"m{i}"]),
            helper.make_node("Add", [x, f"m{i}"], [f"x{i + 1}"], name=f"residual{i}"),
        ]
        x = f"x{i + 1}"
    graph = helper.make_graph(
        nodes,
        "mlp_stack",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_residual_mlps_without_attention_are_reported():
    bg = find_blocks(_residual_mlp_graph())
    assert not bg.found
    assert "2 residual sub-layers" in bg.message and "no attention" in bg.message
    assert [r[0] for r in bg.rejected] == ["residual0", "residual1"]


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_minilm_has_six_post_ln_blocks(tmp_path, exporter):
    from converter.pipelines.export import export_model
    from converter.pipelines.model_ref import resolve_spec

    spec = resolve_spec("minilm")
    model = onnx.load(export_model(spec, tmp_path / "m.onnx", exporter=exporter).path)
    feeds = spec.sample_feeds(1, 4)[0]
    bg = _check_boundaries(model, spec.module(), feeds, spec.input_names, atol=1e-4)
    assert len(bg.blocks) == 6 and bg.layout == "post-LN"
    assert bg.message.startswith("6 post-LN transformer blocks (attention, mlp each)")


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_decoder_lm_has_eight_pre_ln_blocks(tmp_path, exporter):
    from converter.pipelines.export import export_model
    from converter.pipelines.model_ref import resolve_spec

    spec = resolve_spec("decoder-lm")
    model = onnx.load(export_model(spec, tmp_path / "lm.onnx", exporter=exporter).path)
    bg = _check_boundaries(model, spec.module(), spec.sample_feeds(1, 2)[0], spec.input_names, atol=1e-4)
    assert len(bg.blocks) == 8 and bg.layout == "pre-LN"


def test_a_graph_with_a_dropped_attention_is_discovered_again_with_unique_names():
    """Dropping attn1 leaves mlp1 right after block0's MLP: it is a block of its own, and every unit
    keeps one name (two blocks once shared its sub-layer objects, and a gated twin of the pruned graph
    then had two nodes of one name), so drop-blocks can run again on its own output."""
    from passes.blocks.rewiring import remove_units
    from passes.blocks.scores import GatedSession

    model = onnx.load(exported("decoder"))
    pruned = remove_units(model, find_blocks(model), ["attn1"])
    bg = find_blocks(pruned)
    names = [u.name for u in bg.units("all")]
    assert len(names) == len(set(names))
    assert [b.kinds for b in bg.blocks][:3] == [["attention", "mlp"], ["mlp"], ["attention", "mlp"]]
    feeds = decoder_feeds(1, 2)[0]
    np.testing.assert_allclose(
        GatedSession(pruned, bg).run(feeds)[pruned.graph.output[0].name],
        OnnxRunner(pruned).run(feeds)[pruned.graph.output[0].name],
        atol=1e-5,
    )
