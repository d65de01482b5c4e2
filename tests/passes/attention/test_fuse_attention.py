"""fuse-attention: every variant hand-built and from real exports, look-alikes that must not fuse,
FP32 equality with the unfused graph, idempotence, the precision pass around it, TensorRT-RTX."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.attention_graphs import HEADS, attention_graph, feeds
from tests.onnx_helpers import first_output, make_model

CTX = PassContext(opset=17)


def _fuse(model: onnx.ModelProto, **options):
    fused, records = run_passes(model, [PassSpec("fuse-attention", options)], CTX)
    return fused, records[0]


def _attention_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Attention"]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dims(model: onnx.ModelProto, name: str) -> list:
    infos = {i.name: i for i in [*model.graph.value_info, *model.graph.input]}
    return [d.dim_value or d.dim_param for d in infos[name].type.tensor_type.shape.dim]


def _assert_exact_and_idempotent(model, fused, atol=1e-5):
    for seq in (1, 5):
        inputs = feeds(model, seq=seq)
        np.testing.assert_allclose(first_output(fused, inputs), first_output(model, inputs), atol=atol, rtol=0)
    again, record = _fuse(fused)
    assert record.changed == {}
    assert again.SerializeToString() == fused.SerializeToString()


VARIANTS = [
    # (options, expected count key, scale, is_causal, number of Attention inputs)
    ({}, "attention_fused_plain", 0.5, 0, 3),
    ({"scale": "div"}, "attention_fused_plain", 0.5, 0, 3),
    ({"scale": "q"}, "attention_fused_plain", 0.5, 0, 3),
    ({"scale": "split"}, "attention_fused_plain", 0.5, 0, 3),  # SDPA: sqrt(scale) on Q and on Kᵀ
    ({"scale": "none"}, "attention_fused_plain", 1.0, 0, 3),  # 1/sqrt(d) already folded into Q's weights
    ({"k_layout": "two"}, "attention_fused_plain", 0.5, 0, 3),
    ({"k_layout": "sdpa3d", "scale": "split"}, "attention_fused_plain", 0.5, 0, 3),
    ({"packed": True, "mask": "padding"}, "attention_fused_bert", 0.5, 0, 4),
    ({"mask": "padding"}, "attention_fused_bert", 0.5, 0, 4),  # BERT: + Where(mask, 0, finfo.min)
    ({"mask": "fill_min"}, "attention_fused_bert", 0.5, 0, 4),  # masked_fill(finfo.min)
    ({"mask": "bool", "nan_guard": True}, "attention_fused_bert", 0.5, 0, 4),  # SDPA export with its NaN guard
    ({"mask": "causal_where"}, "attention_fused_causal", 0.5, 1, 3),  # masked_fill(~tril, -inf)
    ({"mask": "causal_cast"}, "attention_fused_causal", 0.5, 1, 3),
    ({"mask": "causal_add"}, "attention_fused_causal", 0.5, 1, 3),  # + triu(full(-inf), 1)
    ({"mask": "causal_padding"}, "attention_fused_causal_masked", 0.5, 0, 4),
    ({"kv_heads": 2, "mask": "causal_where"}, "attention_fused_causal_gqa", 0.5, 1, 3),
    ({"kv_heads": 2, "repeat": "tile"}, "attention_fused_plain_gqa", 0.5, 0, 3),
    ({"kv_heads": 1, "mask": "padding"}, "attention_fused_bert_gqa", 0.5, 0, 4),  # multi-query
]


@pytest.mark.parametrize("options, key, scale, causal, n_inputs", VARIANTS, ids=lambda v: str(v))
def test_variant_fuses_exactly(options, key, scale, causal, n_inputs):
    model = attention_graph(**options)
    fused, record = _fuse(model)
    assert record.changed == {key: 1, "opset_upgraded": 1}, record.rejected
    assert fused.opset_import[0].version == 23
    (node,) = _attention_nodes(fused)
    attrs = _attrs(node)
    assert attrs["scale"] == pytest.approx(scale, rel=1e-6) and attrs["is_causal"] == causal
    assert len(node.input) == n_inputs
    assert not any(n.op_type == "Softmax" for n in fused.graph.node)
    if options.get("k_layout") == "sdpa3d":  # Kᵀ's Reshape/Transpose/Reshape chain is read through and dies
        assert sum(n.op_type == "Reshape" for n in fused.graph.node) == 4  # q, k, v heads and the output
    if key.endswith("_gqa"):  # K and V reach the op un-repeated
        kv_heads = options["kv_heads"]
        assert _dims(fused, node.input[1])[1] == kv_heads and _dims(fused, node.input[2])[1] == kv_heads
    _assert_exact_and_idempotent(model, fused)


def test_opset23_graph_fuses_without_upgrade():
    model = attention_graph(mask="causal_where", opset=23)
    fused, record = _fuse(model)
    assert record.changed == {"attention_fused_causal": 1}
    _assert_exact_and_idempotent(model, fused)


def test_old_opset_without_upgrade_is_rejected_with_reason():
    model = attention_graph(mask="padding")
    fused, record = _fuse(model, upgrade_opset=False)
    assert record.changed == {} and fused.opset_import[0].version == 17
    assert "opset 17 < 23" in record.rejected[0]["reason"]
    assert record.notes == ["attention blocks found: 1 (bert=1), fused: 0"]


def test_graph_without_attention_keeps_its_opset():
    model = attention_graph(softmax_axis=2)
    fused, record = _fuse(model)
    assert fused.opset_import[0].version == 17 and len(fused.graph.node) == len(model.graph.node)
    assert record.changed == {}


NEGATIVES = [
    ({"softmax_axis": 2}, "Softmax over axis 2"),
    ({"mask": "padding", "mask_after_softmax": True}, "goes through Add"),
    ({"vector_scale": True}, "not by a constant scalar"),
]


@pytest.mark.parametrize("options, reason", NEGATIVES, ids=lambda v: str(v))
def test_look_alikes_do_not_fuse(options, reason):
    model = attention_graph(**options)
    fused, record = _fuse(model)
    assert record.changed == {} and not _attention_nodes(fused)
    assert reason in record.rejected[0]["reason"]


@pytest.mark.parametrize("inner", ["Softmax", "MatMul"])
def test_intermediate_graph_outputs_block_fusion(inner):
    """Attention probabilities or raw scores that the model also returns (output_attentions) stay."""
    model = attention_graph(mask="padding")
    node = next(
        n for n in model.graph.node if n.op_type == inner and (inner == "Softmax" or not n.input[1].startswith("c"))
    )  # QK, not a weight
    model.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    fused, record = _fuse(model)
    assert record.changed == {} and "graph output" in record.rejected[0]["reason"]
    inputs = feeds(model)
    np.testing.assert_array_equal(first_output(fused, inputs), first_output(model, inputs))


def test_heads_tiled_in_the_other_order_is_not_gqa():
    """k.repeat(1, g, 1, 1) orders heads k0 k1 k0 k1: fused with K/V as they are, never un-repeated."""
    model = attention_graph(kv_heads=2, repeat="heads_tile")
    fused, record = _fuse(model)
    assert record.changed == {"attention_fused_plain": 1, "opset_upgraded": 1}
    (node,) = _attention_nodes(fused)
    assert _dims(fused, node.input[1])[1] == HEADS
    _assert_exact_and_idempotent(model, fused)


@pytest.mark.parametrize("size", [1, 5])
def test_tril_not_proved_to_be_seq_by_seq_stays_a_mask(size):
    """A static tril broadcast over dynamic [S, S] is not is_causal (a [1, 1] one masks nothing)."""
    model = attention_graph(mask="causal_where", tril_size=size)
    fused, record = _fuse(model)
    assert record.changed == {"attention_fused_bert": 1, "opset_upgraded": 1}
    (node,) = _attention_nodes(fused)
    assert _attrs(node)["is_causal"] == 0 and len(node.input) == 4
    inputs = feeds(model, seq=5)
    np.testing.assert_allclose(first_output(fused, inputs), first_output(model, inputs), atol=1e-5, rtol=0)


def test_rank3_attention_is_rejected():
    """Heads folded into the batch ([B*H, S, d]): not the op's 4-D layout."""
    q, k, v = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["BH", "S", 4]) for n in "qkv")
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "c"], ["ss"]),
        helper.make_node("Softmax", ["ss"], ["p"], axis=-1, name="softmax3d"),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    c = numpy_helper.from_array(np.array(0.5, np.float32), "c")
    model = make_model(nodes, [q, k, v], {"y": None}, [c], ir_version=None)
    fused, record = _fuse(model)
    assert record.changed == {} and "rank 3" in record.rejected[0]["reason"]


def test_fp32_softmax_in_fp16_graph_sets_softmax_precision():
    model = attention_graph(fp16_softmax=True)
    fused, record = _fuse(model)
    assert record.changed == {"attention_fused_plain": 1, "opset_upgraded": 1}
    (node,) = _attention_nodes(fused)
    assert _attrs(node)["softmax_precision"] == TensorProto.FLOAT
    inputs = feeds(model)
    fused_out, unfused_out = first_output(fused, inputs), first_output(model, inputs)
    np.testing.assert_allclose(fused_out, unfused_out, atol=5e-3, rtol=0)  # fp16 rounding
    dropped, _ = _fuse(model, softmax_precision=False)  # for TensorRT-RTX, which rejects the attribute
    assert "softmax_precision" not in _attrs(_attention_nodes(dropped)[0])


# ------------------------------------------------------------------ precision pass around attention


def test_precision_keeps_sensitive_ops_in_fp32_and_reports_them():
    model, _ = run_passes(attention_graph(mask="padding"), [PassSpec("fold-constants")], CTX)  # unfused
    low, records = run_passes(model, [PassSpec("precision")], CTX)
    nodes = {n.output[0]: n for n in low.graph.node}
    softmax = next(n for n in low.graph.node if n.op_type == "Softmax")
    upcast = nodes[softmax.input[0]]
    assert upcast.op_type == "Cast" and upcast.attribute[0].i == TensorProto.FLOAT
    note = " ".join(records[0].notes)
    assert "Softmax x1 (softmax input)" in note and "Where x1 (constant outside the fp16 range)" in note
    again, records2 = run_passes(low, [PassSpec("precision")], CTX)
    assert records2[0].changed == {} and again.SerializeToString() == low.SerializeToString()
    inputs = feeds(model)
    np.testing.assert_allclose(first_output(low, inputs), first_output(model, inputs), atol=2e-2, rtol=2e-2)
    plain, plain_records = run_passes(model, [PassSpec("precision", {"keep_sensitive": False})], CTX)
    softmax = next(n for n in plain.graph.node if n.op_type == "Softmax")
    assert {n.output[0]: n for n in plain.graph.node}[softmax.input[0]].op_type != "Cast"
    assert not plain_records[0].notes


def test_fused_graph_to_fp16_keeps_attention_low_and_close():
    model = attention_graph(kv_heads=2, mask="causal_where")
    fused, _ = _fuse(model)
    low, records = run_passes(fused, [PassSpec("precision")], PassContext(opset=23))
    (node,) = _attention_nodes(low)
    types = {i.name: i.type.tensor_type.elem_type for i in [*low.graph.value_info, *low.graph.input]}
    assert all(types[name] == TensorProto.FLOAT16 for name in node.input[:3])
    inputs = feeds(model)
    np.testing.assert_allclose(first_output(low, inputs), first_output(model, inputs), atol=2e-2, rtol=2e-2)
    _, again = run_passes(low, [PassSpec("precision")], PassContext(opset=23))
    assert again[0].changed == {}


# ------------------------------------------------------------------ real exports (slow)


def _real_spec(name: str, attn: str = "eager"):
    import dataclasses
    import functools

    from converter.demos.models import _minilm_module
    from converter.pipelines.model_ref import resolve_spec

    spec = resolve_spec(name)
    return dataclasses.replace(spec, factory=functools.partial(_minilm_module, attn)) if attn != "eager" else spec


def _export(tmp_path, name: str, exporter: str, attn: str = "eager") -> onnx.ModelProto:
    from converter.pipelines.export import export_model

    path = tmp_path / f"{name}_{exporter}_{attn}.onnx"
    export_model(_real_spec(name, attn), path, exporter=exporter)
    return onnx.load(str(path))


def _assert_fused_exactly(model, fused, record, blocks, key, name):
    from converter.pipelines.model_ref import resolve_spec
    from converter.verification.compare import OnnxRunner

    assert record.changed.get(key) == blocks and len(_attention_nodes(fused)) == blocks, record.rejected
    before, after = OnnxRunner(model), OnnxRunner(fused)
    for batch in resolve_spec(name).sample_feeds(2, 4):
        np.testing.assert_allclose(
            after.run(batch)[after.output_names[0]], before.run(batch)[before.output_names[0]], atol=1e-5, rtol=0
        )
    _, again = run_passes(fused, [PassSpec("fuse-attention")], CTX)
    assert again[0].changed == {}


@pytest.mark.slow
@pytest.mark.parametrize("exporter, attn", [("torchscript", "sdpa"), ("dynamo", "eager"), ("dynamo", "sdpa")])
def test_minilm_exports_fuse_one_attention_per_layer(tmp_path, exporter, attn):
    model = _export(tmp_path, "minilm", exporter, attn)
    fused, record = _fuse(model)
    _assert_fused_exactly(model, fused, record, 6, "attention_fused_bert", "minilm")


@pytest.mark.slow
def test_minilm_fold_fuse_fp16_builds_fused_attention_in_tensorrt_rtx(tmp_path):
    from converter.backends import BuildConfig, get_backend
    from converter.pipelines.model_ref import resolve_spec

    model = _export(tmp_path, "minilm", "torchscript")
    folded, _ = run_passes(model, [PassSpec("fold")], CTX)
    fused, record = _fuse(folded)
    _assert_fused_exactly(model, fused, record, 6, "attention_fused_bert", "minilm")
    backend = get_backend("tensorrt-rtx")
    onnx.save(fused, tmp_path / "fused.onnx")
    layers = backend.parse(tmp_path / "fused.onnx").layer_types
    assert layers["ATTENTION_INPUT"] == 6 and layers["ATTENTION_OUTPUT"] == 6
    low, _ = run_passes(fused, [PassSpec("precision")], CTX)
    onnx.save(low, tmp_path / "fused16.onnx")
    config = BuildConfig(profiles=resolve_spec("minilm").profiles, target_gpus=["sm86"])
    engine = backend.build(tmp_path / "fused16.onnx", tmp_path / "fused16.engine", config)
    layers = engine.sidecar["network"]["layer_types"]
    assert layers["ATTENTION_INPUT"] == 6 and layers["ATTENTION_OUTPUT"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_decoder_lm_fuses_causal_gqa_and_builds_fp16(tmp_path, exporter):
    from converter.backends import BuildConfig, get_backend
    from converter.pipelines.model_ref import resolve_spec

    model = _export(tmp_path, "decoder-lm", exporter)
    fused, record = _fuse(model)
    _assert_fused_exactly(model, fused, record, 8, "attention_fused_causal_gqa", "decoder-lm")
    assert all(_attrs(n)["is_causal"] == 1 and len(n.input) == 3 for n in _attention_nodes(fused))
    if exporter == "torchscript":
        low, _ = run_passes(fused, [PassSpec("precision")], CTX)
        onnx.save(low, tmp_path / "fused16.onnx")
        config = BuildConfig(profiles=resolve_spec("decoder-lm").profiles, target_gpus=["sm86"])
        engine = get_backend("tensorrt-rtx").build(tmp_path / "fused16.onnx", tmp_path / "fused16.engine", config)
        layers = engine.sidecar["network"]["layer_types"]
        assert layers["ATTENTION_INPUT"] == 8 and layers["ATTENTION_OUTPUT"] == 8
