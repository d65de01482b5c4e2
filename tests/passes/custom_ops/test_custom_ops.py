"""The passes that rewrite into trtforge ops: group-quant-matmul and gated-linear-attention."""

from __future__ import annotations

import functools

import ml_dtypes
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from plugins_cuda.gated_linear_attention.reference import ParallelGLA, gated_linear_attention
from tests.onnx_helpers import make_model, run

# onnxruntime's optimizer turns DequantizeLinear->MatMul into MatMulNBits with 8-bit activations:
# the unfused reference graph must run as written
_run = functools.partial(run, optimize=False)


def _dq_matmul_model(codes, scale, zero, *, transposed=False, block=32, opset=21, code_type=None) -> onnx.ModelProto:
    """x [2, K] · DequantizeLinear(codes) (optionally through Transpose)."""
    k = codes.shape[1] if transposed else codes.shape[0]
    n = codes.shape[0] if transposed else codes.shape[1]
    inits = [
        numpy_helper.from_array(codes if code_type is None else codes.astype(code_type), "q"),
        numpy_helper.from_array(scale, "s"),
        numpy_helper.from_array(zero if code_type is None else zero.astype(code_type), "z"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["q", "s", "z"], ["w"], name="dq", axis=1 if transposed else 0, block_size=block
        )
    ]
    if transposed:
        nodes.append(helper.make_node("Transpose", ["w"], ["wt"], name="tr", perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["x", "wt" if transposed else "w"], ["y"], name="mm"))
    return make_model(nodes, {"x": ["M", k]}, {"y": ["M", n]}, inits, opset=opset, ir_version=None)


CASES = {  # name: (code dtype, value range, zero range, opset, expected bits)
    "uint4": (ml_dtypes.uint4, (0, 16), (0, 16), 21, 4),
    "int4": (ml_dtypes.int4, (-8, 8), (-8, 8), 21, 4),
    "uint2": (ml_dtypes.uint2, (0, 4), (0, 4), 25, 2),
    "uint8_2bit": (np.uint8, (0, 4), (1, 3), 21, 2),
    "int8_4bit": (np.int8, (-8, 8), (-2, 2), 21, 4),
    "int4_offset_2bit": (ml_dtypes.int4, ("offset", None), (0, 1), 21, 2),  # quantize issue's int2: c + q in int4
}


@pytest.mark.parametrize("transposed", [False, True], ids=["KxN", "NxK"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_group_quant_matmul_pass_is_exact_and_idempotent(case, transposed):
    code_type, (lo, hi), (zlo, zhi), opset, bits = CASES[case]
    rng = np.random.default_rng(0)
    k, n, block = 128, 24, 32
    shape, sshape = ((n, k), (n, k // block)) if transposed else ((k, n), (k // block, n))
    zero = rng.integers(zlo, zhi, sshape)
    if lo == "offset":  # per group: an offset c in [-8, 4] plus 2-bit codes, no zero point
        per_group = rng.integers(-8, 5, sshape)
        codes = np.repeat(per_group, block, axis=1 if transposed else 0) + rng.integers(0, 4, shape)
    else:
        codes = rng.integers(lo, hi, shape)
    scale = rng.uniform(0.01, 0.1, sshape).astype(np.float32)
    model = _dq_matmul_model(codes, scale, zero, transposed=transposed, block=block, opset=opset, code_type=code_type)
    fused, records = run_passes(model, [PassSpec("group-quant-matmul")], PassContext(opset=opset))
    assert records[0].changed == {f"matmul_w{bits}_g{block}": 1}, records[0].rejected
    assert [n.op_type for n in fused.graph.node] == ["GroupQuantMatMul"]
    packed = next(t for t in fused.graph.initializer if t.name.endswith(f"_packed{bits}"))
    assert packed.data_type == TensorProto.UINT8 and list(packed.dims) == [n, k * bits // 8]
    x = rng.standard_normal((3, k)).astype(np.float32)
    w = (codes - np.repeat(zero, block, axis=1 if transposed else 0)) * np.repeat(scale, block, 1 if transposed else 0)
    expected = x @ (w.T if transposed else w)
    np.testing.assert_allclose(_run(fused, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(fused, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    again, records = run_passes(fused, [PassSpec("group-quant-matmul")], PassContext(opset=opset))
    assert records[0].changed == {} and len(again.graph.node) == 1


@pytest.mark.parametrize(
    "change,reason",
    [
        ({"block": 16}, "block_size 16"),
        ({"codes_hi": 64}, "more than 4 bits"),
        ({"opset": 21, "no_block": True}, "not block-wise"),
    ],
)
def test_group_quant_matmul_pass_rejects_with_a_reason(change, reason):
    rng = np.random.default_rng(1)
    block = change.get("block", 32)
    codes = rng.integers(0, change.get("codes_hi", 16), (64, 8)).astype(np.uint8)
    zero = rng.integers(0, 4, (64 // block, 8)).astype(np.uint8)
    scale = np.full((64 // block, 8), 0.1, np.float32)
    model = _dq_matmul_model(codes, scale, zero, block=block)
    if change.get("no_block"):  # per-channel: scale [N] on axis 1
        dq = model.graph.node[0]
        del dq.attribute[:]
        dq.attribute.extend([helper.make_attribute("axis", 1)])
        model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.full(8, 0.1, np.float32), "s"))
        model.graph.initializer[2].CopyFrom(numpy_helper.from_array(np.zeros(8, np.uint8), "z"))
    out, records = run_passes(model, [PassSpec("group-quant-matmul")], PassContext(opset=21))
    assert records[0].changed == {}
    assert reason in records[0].rejected[0]["reason"]
    assert [n.op_type for n in out.graph.node] == ["DequantizeLinear", "MatMul"]


def _with_bias_add(model, bias, *, first=False, bias_input=False):
    """model's y -> Add(y, bias) (or Add(bias, y)) -> out."""
    graph = model.graph
    graph.node[-1].output[0] = "prod"
    graph.node.append(helper.make_node("Add", ["bias", "prod"] if first else ["prod", "bias"], ["y"], name="add"))
    if bias_input:
        graph.input.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, list(bias.shape)))
    else:
        graph.initializer.append(numpy_helper.from_array(bias, "bias"))
    return model


@pytest.mark.parametrize("first", [False, True], ids=["y+b", "b+y"])
@pytest.mark.parametrize("transposed", [False, True], ids=["KxN", "NxK"])
def test_group_quant_matmul_pass_folds_the_bias_add_exactly(transposed, first):
    rng = np.random.default_rng(2)
    k, n, block = 128, 24, 32
    shape, sshape = ((n, k), (n, k // block)) if transposed else ((k, n), (k // block, n))
    codes, zero = rng.integers(0, 16, shape), rng.integers(0, 16, sshape)
    scale = rng.uniform(0.01, 0.1, sshape).astype(np.float32)
    model = _dq_matmul_model(codes, scale, zero, transposed=transposed, block=block, code_type=ml_dtypes.uint4)
    bias = rng.uniform(-3, 3, n).astype(np.float32)
    model = _with_bias_add(model, bias, first=first)
    fused, records = run_passes(model, [PassSpec("group-quant-matmul")], PassContext(opset=21))
    assert records[0].changed == {"matmul_w4_g32": 1, "bias_folded": 1}, records[0].rejected
    (node,) = fused.graph.node
    assert node.op_type == "GroupQuantMatMul" and node.input[4] == "bias" and node.output[0] == "y"
    assert [len(f.input) for f in fused.functions] == [5]
    x = rng.standard_normal((3, k)).astype(np.float32)
    w = (codes - np.repeat(zero, block, axis=1 if transposed else 0)) * np.repeat(scale, block, 1 if transposed else 0)
    expected = x @ (w.T if transposed else w) + bias
    np.testing.assert_allclose(_run(fused, {"x": x})[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(fused, {"x": x})[0], _run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    again, records = run_passes(fused, [PassSpec("group-quant-matmul")], PassContext(opset=21))
    assert records[0].changed == {} and len(again.graph.node) == 1


def _uint4_model(rng, k=64, n=8):
    codes, zero = rng.integers(0, 16, (k, n)), rng.integers(0, 16, (k // 32, n))
    scale = np.full((k // 32, n), 0.05, np.float32)
    return _dq_matmul_model(codes, scale, zero, code_type=ml_dtypes.uint4)


@pytest.mark.parametrize(
    "case,reason",
    [
        ("row_vector", "is not a [N] vector"),
        ("graph_input", "not an initializer"),
        ("second_reader", "other readers"),
    ],
)
def test_group_quant_matmul_pass_leaves_an_unfoldable_add_with_a_reason(case, reason):
    rng = np.random.default_rng(3)
    bias = rng.standard_normal((1, 8) if case == "row_vector" else 8).astype(np.float32)
    model = _with_bias_add(_uint4_model(rng), bias, bias_input=case == "graph_input")
    if case == "second_reader":
        model.graph.output.append(helper.make_tensor_value_info("prod", TensorProto.FLOAT, ["M", 8]))
    fused, records = run_passes(model, [PassSpec("group-quant-matmul")], PassContext(opset=21))
    assert records[0].changed == {"matmul_w4_g32": 1}
    assert reason in records[0].rejected[0]["reason"]
    assert [n.op_type for n in fused.graph.node] == ["GroupQuantMatMul", "Add"]
    assert [len(n.input) for n in fused.graph.node] == [4, 2] and [len(f.input) for f in fused.functions] == [4]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    feeds = {"x": x, "bias": bias} if case == "graph_input" else {"x": x}
    np.testing.assert_allclose(_run(fused, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)


def test_group_quant_matmul_pass_gives_bias_less_nodes_a_zero_bias_in_a_mixed_graph():
    """One MatMul with a bias, one without: one 5-input function for both (TensorRT-RTX needs one arity)."""
    rng = np.random.default_rng(4)
    model = _with_bias_add(_uint4_model(rng), rng.standard_normal(8).astype(np.float32))
    other = _uint4_model(rng)
    for t in other.graph.initializer:
        t.name = f"o_{t.name}"
    dq, mm = other.graph.node
    dq.input[:] = [f"o_{i}" for i in dq.input]
    dq.output[0], mm.input[1], mm.output[0], dq.name, mm.name = "o_w", "o_w", "y2", "o_dq", "o_mm"
    model.graph.node.extend([dq, mm])
    model.graph.initializer.extend(other.graph.initializer)
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["M", 8]))
    fused, records = run_passes(model, [PassSpec("group-quant-matmul")], PassContext(opset=21))
    assert records[0].changed == {"matmul_w4_g32": 2, "bias_folded": 1}, records[0].rejected
    assert [len(n.input) for n in fused.graph.node] == [5, 5] and [len(f.input) for f in fused.functions] == [5]
    zero = next(t for t in fused.graph.initializer if t.name == fused.graph.node[1].input[4])
    assert not numpy_helper.to_array(zero).any()
    x = rng.standard_normal((2, 64)).astype(np.float32)
    for got, want in zip(_run(fused, {"x": x}), _run(model, {"x": x}), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _export_parallel_gla(path, dynamic=True):
    args = (torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 4), torch.rand(1, 2, 12, 8))
    axes = {name: {0: "batch", 2: "steps"} for name in "qkvg"} if dynamic else None
    torch.onnx.export(
        ParallelGLA(),
        args,
        path,
        input_names=list("qkvg"),
        output_names=["o"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return onnx.load(path)


@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
def test_gated_linear_attention_pass_fuses_the_exported_parallel_form(tmp_path, dynamic):
    model = _export_parallel_gla(tmp_path / "gla.onnx", dynamic)
    fused, records = run_passes(model, [PassSpec("gated-linear-attention")], PassContext(opset=17))
    assert records[0].changed == {"gated_linear_attention_fused": 1}, records[0].rejected
    assert sum(n.op_type == "GatedLinearAttention" for n in fused.graph.node) == 1
    assert len(fused.graph.node) < len(model.graph.node) // 2
    gen = torch.Generator().manual_seed(3)
    steps = 20 if dynamic else 12
    q, k = (
        torch.randn(2 if dynamic else 1, 2, steps, 8, generator=gen),
        torch.randn(2 if dynamic else 1, 2, steps, 8, generator=gen),
    )
    v = torch.randn(q.shape[0], 2, steps, 4, generator=gen)
    g = torch.sigmoid(torch.randn(q.shape[0], 2, steps, 8, generator=gen) + 2)
    feeds = {"q": q.numpy(), "k": k.numpy(), "v": v.numpy(), "g": g.numpy()}
    expected, _ = gated_linear_attention(q, k, v, g, torch.zeros(q.shape[0], 2, 8, 4))
    np.testing.assert_allclose(_run(fused, feeds)[0], expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_run(fused, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)
    _, again = run_passes(fused, [PassSpec("gated-linear-attention")], PassContext(opset=17))
    assert again[0].changed == {}


def test_gated_linear_attention_pass_rejects_an_anticausal_mask(tmp_path):
    class AntiCausal(ParallelGLA):
        def forward(self, q, k, v, g):
            log_cum = torch.cumsum(torch.log(g), dim=2)
            diff = log_cum.unsqueeze(3) - log_cum.unsqueeze(2)
            steps = q.shape[2]
            upper = torch.ones(steps, steps, dtype=torch.bool).triu()  # wrong triangle
            decay = torch.exp(diff.masked_fill(~upper[:, :, None], float("-inf")))
            return torch.matmul((q.unsqueeze(3) * k.unsqueeze(2) * decay).sum(-1), v)

    args = (torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 4), torch.rand(1, 2, 6, 8))
    torch.onnx.export(AntiCausal(), args, tmp_path / "a.onnx", input_names=list("qkvg"), opset_version=17, dynamo=False)
    out, records = run_passes(onnx.load(tmp_path / "a.onnx"), [PassSpec("gated-linear-attention")], PassContext(17))
    assert records[0].changed == {}
    assert "masked" in records[0].rejected[0]["reason"]


def test_convert_refuses_group_quant_matmul_for_a_backend_without_plugins(tmp_path):
    """TensorRT-RTX would inline the function and store the weights at fp16 size: said before any
    work, not found out from a bigger engine."""
    import pytest

    from converter import api
    from converter.core.errors import UnsupportedError
    from converter.pipelines.recipe import Recipe

    recipe = Recipe.from_dict(
        {"passes": ["fold", {"name": "quantize", "options": {"mode": "int4-wo"}}, "group-quant-matmul"]}
    )
    with pytest.raises(UnsupportedError, match="group-quant-matmul.*tensorrt-rtx.*--backend tensorrt"):
        api.convert("minilm", tmp_path / "out", recipe=recipe, backend="tensorrt-rtx")
    assert not (tmp_path / "out").exists()
