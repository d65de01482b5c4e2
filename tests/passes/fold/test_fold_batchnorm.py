"""fold-batchnorm: onnxruntime outputs before/after on random inputs, rejections, properties."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from passes.base import PassContext
from passes.manager import PassRecord, PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model


def _model(nodes, inputs: dict[str, list], inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    return make_model(nodes, inputs, {"y": None}, inits, opset=opset, name="bn")


def _bn(rng: np.random.Generator, c: int, prefix: str = "bn") -> dict[str, np.ndarray]:
    """Non-trivial statistics: signed scales, shifted means, variances away from 1."""
    sign = rng.choice([-1.0, 1.0], c)
    return {
        f"{prefix}_scale": (sign * rng.uniform(0.5, 1.5, c)).astype(np.float32),
        f"{prefix}_B": rng.standard_normal(c).astype(np.float32),
        f"{prefix}_mean": rng.standard_normal(c).astype(np.float32),
        f"{prefix}_var": rng.uniform(0.3, 2.0, c).astype(np.float32),
    }


def _bn_node(x: str, y: str, prefix: str = "bn", **attrs) -> onnx.NodeProto:
    ins = [x] + [f"{prefix}_{p}" for p in ("scale", "B", "mean", "var")]
    return helper.make_node("BatchNormalization", ins, [y], name=prefix, epsilon=1e-3, **attrs)


CTX13 = PassContext(opset=13)


def _fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, PassRecord]:
    out, records = run_passes(model, [PassSpec("fold-batchnorm")], PassContext(opset=17))
    return out, records[0]


def _assert_close(after: np.ndarray, before: np.ndarray) -> None:
    """Relative 1e-5, measured against the output's magnitude (near-zero entries cancel)."""
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(before).max())))


def _check_folded(model: onnx.ModelProto, feeds: dict[str, np.ndarray], kind: str) -> onnx.ModelProto:
    """Fold, then: same outputs, fewer nodes, no BN left, and a second run changes nothing."""
    out, record = _fold(model)
    # no onnxruntime fusions: compare the graphs as written
    _assert_close(first_output(out, feeds, optimize=False), first_output(model, feeds, optimize=False))
    assert record.changed.get(kind, 0) >= 1, (record.changed, record.rejected)
    assert len(out.graph.node) < len(model.graph.node)
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]
    assert [o.name for o in out.graph.output] == ["y"]
    assert _fold(out)[1].changed == {}
    return out


def _conv_model(rng, cin, cout, group, k, spatial, pads, strides, bias, transpose=False, rank=2):
    wshape = (cin, cout // group) if transpose else (cout, cin // group)
    inits = {"W": rng.standard_normal(wshape + (k,) * rank).astype(np.float32), **_bn(rng, cout)}
    ins = ["x", "W"]
    if bias:
        inits["b"] = rng.standard_normal(cout).astype(np.float32)
        ins.append("b")
    op = "ConvTranspose" if transpose else "Conv"
    conv = helper.make_node(op, ins, ["c"], name="conv", group=group, pads=pads, strides=strides)
    model = _model([conv, _bn_node("c", "y")], {"x": [2, cin] + [spatial] * rank}, inits)
    feeds = {"x": rng.standard_normal((2, cin) + (spatial,) * rank).astype(np.float32)}
    return model, feeds


@pytest.mark.parametrize("group, bias, rank", [(1, True, 2), (2, False, 2), (4, True, 2), (2, True, 1), (1, False, 3)])
def test_conv_then_bn(group, bias, rank):
    rng = np.random.default_rng(group + rank)
    model, feeds = _conv_model(rng, 4, 8, group, 3, 6, [1, 0] * rank, [2] * rank, bias, rank=rank)
    _check_folded(model, feeds, "batchnorm_into_conv")


@pytest.mark.parametrize("group, bias", [(1, True), (2, False), (4, True)])
def test_conv_transpose_then_bn(group, bias):
    rng = np.random.default_rng(10 + group)
    model, feeds = _conv_model(rng, 4, 8, group, 3, 5, [1, 0, 0, 1], [2, 2], bias, transpose=True)
    _check_folded(model, feeds, "batchnorm_into_convtranspose")


@pytest.mark.parametrize("trans_a, trans_b, c_shape", [(0, 0, (5,)), (0, 1, (1, 5)), (1, 1, (3, 5)), (0, 1, None)])
def test_gemm_then_bn(trans_a, trans_b, c_shape):
    rng = np.random.default_rng(20 + trans_b)
    inits = {"B": rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32), **_bn(rng, 5)}
    ins = ["x", "B"]
    if c_shape:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        ins.append("C")
    gemm = helper.make_node("Gemm", ins, ["g"], name="gemm", alpha=0.7, beta=1.3, transA=trans_a, transB=trans_b)
    model = _model([gemm, _bn_node("g", "y")], {"x": [4, 3] if trans_a else [3, 4]}, inits)
    feeds = {"x": rng.standard_normal((4, 3) if trans_a else (3, 4)).astype(np.float32)}
    _check_folded(model, feeds, "batchnorm_into_gemm")


@pytest.mark.parametrize("bias_first", [False, True])
def test_matmul_add_then_bn(bias_first):
    rng = np.random.default_rng(30)
    inits = {
        "W": rng.standard_normal((4, 6)).astype(np.float32),
        "c": rng.standard_normal(6).astype(np.float32),
    }
    add_in = ["c", "m"] if bias_first else ["m", "c"]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
        helper.make_node("Add", add_in, ["a"], name="add"),
        _bn_node("a", "y"),
    ]
    model = _model(nodes, {"x": ["N", 4]}, {**inits, **_bn(rng, 6)})
    _check_folded(model, {"x": rng.standard_normal((3, 4)).astype(np.float32)}, "batchnorm_into_matmul_add")


def test_matmul_then_bn_becomes_gemm():
    rng = np.random.default_rng(31)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"), _bn_node("m", "y")]
    model = _model(nodes, {"x": ["N", 4]}, {"W": rng.standard_normal((4, 6)).astype(np.float32), **_bn(rng, 6)})
    out = _check_folded(model, {"x": rng.standard_normal((3, 4)).astype(np.float32)}, "batchnorm_into_matmul")
    assert [n.op_type for n in out.graph.node] == ["Gemm"]


@pytest.mark.parametrize("group", [1, 2])
def test_bn_then_conv_without_padding(group):
    rng = np.random.default_rng(40 + group)
    inits = {"W": rng.standard_normal((6, 4 // group, 3, 3)).astype(np.float32), **_bn(rng, 4)}
    nodes = [_bn_node("x", "n"), helper.make_node("Conv", ["n", "W"], ["y"], name="conv", group=group)]
    model = _model(nodes, {"x": [2, 4, 7, 7]}, inits)
    out = _check_folded(
        model, {"x": rng.standard_normal((2, 4, 7, 7)).astype(np.float32)}, "batchnorm_into_following_conv"
    )
    assert [n.op_type for n in out.graph.node] == ["Conv"]


def test_bn_without_shift_folds_into_padded_conv():
    """b = B - mean*a is exactly 0, so the padded borders see 0 either way."""
    rng = np.random.default_rng(45)
    params = {**_bn(rng, 4), "bn_B": np.zeros(4, np.float32), "bn_mean": np.zeros(4, np.float32)}
    inits = {"W": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), **params}
    nodes = [_bn_node("x", "n"), helper.make_node("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1])]
    model = _model(nodes, {"x": [1, 4, 6, 6]}, inits)
    feeds = {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)}
    _check_folded(model, feeds, "batchnorm_into_following_conv")


def test_bn_chain_folds_in_one_run():
    rng = np.random.default_rng(50)
    inits = {
        "W": rng.standard_normal((3, 4, 1, 1)).astype(np.float32),
        **_bn(rng, 4, "bn1"),
        **_bn(rng, 4, "bn2"),
    }
    nodes = [
        _bn_node("x", "n1", "bn1"),
        _bn_node("n1", "n2", "bn2"),
        helper.make_node("Conv", ["n2", "W"], ["y"]),
    ]
    model = _model(nodes, {"x": [1, 4, 5, 5]}, inits)
    out = _check_folded(
        model, {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float32)}, "batchnorm_into_following_conv"
    )
    assert len(out.graph.node) == 1


def test_shared_bias_still_folds():
    """A bias vector read by two Convs is copied (cheap); each Conv gets its own."""
    rng = np.random.default_rng(55)
    inits = {
        "W1": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
        **_bn(rng, 4, "bn1"),
        **_bn(rng, 4, "bn2"),
    }
    inits |= {"W2": rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "b": np.zeros(4, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b"], ["c1"], pads=[1, 1, 1, 1]),
        _bn_node("c1", "n1", "bn1"),
        helper.make_node("Conv", ["n1", "W2", "b"], ["c2"]),
        _bn_node("c2", "y", "bn2"),
    ]
    model = _model(nodes, {"x": [1, 4, 6, 6]}, inits)
    out = _check_folded(model, {"x": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)}, "batchnorm_into_conv")
    assert [n.op_type for n in out.graph.node] == ["Conv", "Conv"]


def _rejected(model: onnx.ModelProto) -> str:
    out, record = _fold(model)
    assert record.changed == {} and len(out.graph.node) == len(model.graph.node)
    assert "BatchNormalization" in [n.op_type for n in out.graph.node]
    assert record.rejected and record.rejected[0]["node"] == "bn"
    return record.rejected[0]["reason"]


def test_rejects_shared_weight():
    rng = np.random.default_rng(60)
    inits = {"W": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), **_bn(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        _bn_node("c", "n"),
        helper.make_node("Conv", ["n", "W"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    reason = _rejected(_model(nodes, {"x": [1, 4, 8, 8]}, inits))
    assert "shared by 2 consumers" in reason and "zero-pads" in reason


def test_rejects_training_mode():
    rng = np.random.default_rng(61)
    inits = {"W": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), **_bn(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), _bn_node("c", "y", training_mode=1)]
    assert "training_mode=1" in _rejected(_model(nodes, {"x": [1, 4, 8, 8]}, inits))


def test_rejects_bn_with_nothing_to_fold_into():
    rng = np.random.default_rng(62)
    nodes = [helper.make_node("Relu", ["x"], ["r"]), _bn_node("r", "y")]
    reason = _rejected(_model(nodes, {"x": [1, 4, 8, 8]}, _bn(rng, 4)))
    assert "produced by Relu" in reason and "not read by a node" in reason


def test_rejects_rank3_matmul_and_non_constant_weight():
    rng = np.random.default_rng(63)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), _bn_node("m", "y")]
    model = _model(nodes, {"x": [2, 4, 4]}, {"W": rng.standard_normal((4, 4)).astype(np.float32), **_bn(rng, 4)})
    assert "rank 3" in _rejected(model)
    nodes = [helper.make_node("Conv", ["x", "w_in"], ["c"]), _bn_node("c", "y")]
    model = _model(nodes, {"x": [1, 4, 8, 8], "w_in": [4, 4, 1, 1]}, _bn(rng, 4))
    assert "'w_in' is not a constant" in _rejected(model)


def test_rejects_following_conv_with_padding():
    rng = np.random.default_rng(64)
    inits = {"W": rng.standard_normal((4, 4, 3, 3)).astype(np.float32), **_bn(rng, 4)}
    nodes = [_bn_node("x", "n"), helper.make_node("Conv", ["n", "W"], ["y"], pads=[1, 1, 1, 1])]
    assert "zero-pads its input" in _rejected(_model(nodes, {"x": [1, 4, 8, 8]}, inits))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_cases(draw):
    kind = draw(st.sampled_from(["conv", "convtranspose", "following"]))
    group = draw(st.sampled_from(_divisors(draw(st.integers(1, 4)))))
    cin, cout = group * draw(st.integers(1, 4 // group)), group * draw(st.integers(1, 4 // group))
    k, spatial, stride = draw(st.integers(1, 3)), draw(st.integers(4, 8)), draw(st.integers(1, 2))
    some_pads = st.lists(st.integers(0, k - 1 if kind == "convtranspose" else 2), min_size=4, max_size=4)
    pads = draw(st.one_of(st.just([0, 0, 0, 0]), some_pads))  # unpadded often: the exact following case
    return (
        kind,
        cin,
        cout,
        group,
        k,
        spatial,
        pads,
        stride,
        draw(st.booleans()),
        draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=200, deadline=None)
@given(conv_cases())
def test_property_conv_bn(case):
    kind, cin, cout, group, k, spatial, pads, stride, bias, seed = case
    rng = np.random.default_rng(seed)
    if kind == "following":
        inits = {"W": rng.standard_normal((cout, cin // group, k, k)).astype(np.float32), **_bn(rng, cin)}
        conv = helper.make_node("Conv", ["n", "W"], ["y"], group=group, pads=pads, strides=[stride] * 2)
        model = _model([_bn_node("x", "n"), conv], {"x": [1, cin, spatial, spatial]}, inits)
        feeds = {"x": rng.standard_normal((1, cin, spatial, spatial)).astype(np.float32)}
    else:
        transpose = kind == "convtranspose"
        model, feeds = _conv_model(rng, cin, cout, group, k, spatial, pads, [stride] * 2, bias, transpose)
    if kind == "following" and any(pads):
        assert "zero-pads its input" in _rejected(model)
        return
    _check_folded(model, feeds, {"following": "batchnorm_into_following_conv"}.get(kind, f"batchnorm_into_{kind}"))


@st.composite
def linear_cases(draw):
    kind = draw(st.sampled_from(["gemm", "matmul", "matmul_add"]))
    m, k, n = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c_shape = draw(st.sampled_from([None, (n,), (1, n), (m, n), (m, 1), (1,)]))
    if kind == "matmul_add" and c_shape is None:
        c_shape = (n,)
    flags = draw(st.tuples(st.integers(0, 1), st.integers(0, 1), st.floats(0.5, 2.0), st.floats(0.5, 2.0)))
    return kind, m, k, n, c_shape, flags, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=200, deadline=None)
@given(linear_cases())
def test_property_linear_bn(case):
    kind, m, k, n, c_shape, (trans_a, trans_b, alpha, beta), seed = case
    rng = np.random.default_rng(seed)
    inits = _bn(rng, n)
    if c_shape:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
    if kind == "gemm":
        inits["W"] = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        ins = ["x", "W"] + (["C"] if c_shape else [])
        ops = [helper.make_node("Gemm", ins, ["g"], alpha=alpha, beta=beta, transA=trans_a, transB=trans_b)]
        x_shape = (k, m) if trans_a else (m, k)
    else:
        inits["W"] = rng.standard_normal((k, n)).astype(np.float32)
        ops = [helper.make_node("MatMul", ["x", "W"], ["g" if kind == "matmul" else "mm"])]
        ops += [helper.make_node("Add", ["mm", "C"], ["g"])] if kind == "matmul_add" else []
        x_shape = (m, k)
    model = _model([*ops, _bn_node("g", "y")], {"x": list(x_shape)}, inits)
    _check_folded(model, {"x": rng.standard_normal(x_shape).astype(np.float32)}, f"batchnorm_into_{kind}")
