"""fold-linear: onnxruntime outputs before/after, what disappears, what is rejected and why."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model

CTX = PassContext(opset=17)
RNG = np.random.default_rng(0)


def build(nodes: list, inits: dict[str, np.ndarray], x_shape: list, opset: int = 17) -> onnx.ModelProto:
    """A model from (op, inputs, outputs, attrs) tuples reading x and writing y."""
    return make_model(
        [helper.make_node(op, i, o, name=f"{op.lower()}_{n}", **a) for n, (op, i, o, a) in enumerate(nodes)],
        {"x": x_shape},
        {"y": None},
        {k: v.astype(np.float32) for k, v in inits.items()},
        opset=opset,
    )


def assert_same(after: np.ndarray, before: np.ndarray) -> None:
    """Equal within 1e-5 relative to the output's magnitude (reassociation moves the last bits)."""
    assert after.shape == before.shape
    scale = max(1.0, float(np.abs(before).max()))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * scale)


def fold(model: onnx.ModelProto, x: np.ndarray, name: str = "fold-linear"):
    """Run the pass, check outputs and idempotence; return (model, record)."""
    out, records = run_passes(model, [PassSpec(name)], CTX)
    assert_same(first_output(out, {"x": x}), first_output(model, {"x": x}))
    assert [o.name for o in out.graph.output] == [o.name for o in model.graph.output]
    _, again = run_passes(out, [PassSpec(name)], CTX)
    assert again[0].changed == {}
    return out, records[0]


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape) / np.sqrt(shape[0])


def test_matmul_add_becomes_gemm_on_2d_input():
    model = build(
        [("MatMul", ["x", "W"], ["m"], {}), ("Add", ["m", "b"], ["y"], {})], {"W": w(4, 3), "b": w(1, 3)}, ["N", 4]
    )
    out, rec = fold(model, RNG.standard_normal((5, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and rec.changed == {"matmul_add_to_gemm": 1}


def test_matmul_add_on_3d_input_stays_with_reason():
    model = build(
        [("MatMul", ["x", "W"], ["m"], {}), ("Add", ["m", "b"], ["y"], {})], {"W": w(4, 3), "b": w(3)}, [2, "S", 4]
    )
    out, rec = fold(model, RNG.standard_normal((2, 5, 4)).astype(np.float32))
    assert ops(out) == ["MatMul", "Add"] and rec.changed == {}
    assert rec.rejected == [{"node": "add_1", "reason": "input rank 3: Gemm needs 2-D"}]


def test_matmul_chain_merges_when_smaller():
    nodes = [("MatMul", ["x", "A"], ["m"], {}), ("MatMul", ["m", "B"], ["y"], {})]
    out, rec = fold(
        build(nodes, {"A": w(8, 8), "B": w(8, 4)}, [2, 3, 8]), RNG.standard_normal((2, 3, 8)).astype(np.float32)
    )
    assert ops(out) == ["MatMul"] and rec.changed == {"linear_chain": 1}


def test_matmul_chain_through_bottleneck_is_rejected():
    nodes = [("MatMul", ["x", "A"], ["m"], {}), ("MatMul", ["m", "B"], ["y"], {})]
    out, rec = fold(
        build(nodes, {"A": w(16, 2), "B": w(2, 16)}, [3, 16]), RNG.standard_normal((3, 16)).astype(np.float32)
    )
    assert ops(out) == ["MatMul", "MatMul"]
    assert "larger than 16x2 plus 2x16" in rec.rejected[0]["reason"]


def test_gemm_chain_with_bias_alpha_beta_trans():
    nodes = [
        ("Gemm", ["x", "A", "a"], ["m"], {"transB": 1, "alpha": 0.5, "beta": 2.0}),
        ("Gemm", ["m", "B", "b"], ["y"], {}),
    ]
    model = build(nodes, {"A": w(6, 4), "a": w(6), "B": w(6, 5), "b": w(1, 5)}, ["N", 4])
    out, rec = fold(model, RNG.standard_normal((3, 4)).astype(np.float32))
    assert ops(out) == ["Gemm"] and rec.changed == {"linear_chain": 1}


def test_gemm_trans_a_chain_keeps_trans_a():
    nodes = [("Gemm", ["x", "A"], ["m"], {"transA": 1}), ("Gemm", ["m", "B", "b"], ["y"], {})]
    out, _ = fold(
        build(nodes, {"A": w(4, 4), "B": w(4, 3), "b": w(3)}, [4, 5]), RNG.standard_normal((4, 5)).astype(np.float32)
    )
    assert ops(out) == ["Gemm"] and out.graph.node[0].attribute[0].name == "transA"


def test_conv1x1_chain_and_kxk_then_pointwise():
    nodes = [
        ("Conv", ["x", "A", "a"], ["c1"], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
        ("Conv", ["c1", "B", "b"], ["c2"], {}),
        ("Conv", ["c2", "C"], ["y"], {"kernel_shape": [1, 1]}),
    ]
    inits = {"A": w(3, 2, 3, 3), "a": w(3), "B": w(3, 3, 1, 1), "b": w(3), "C": w(2, 3, 1, 1)}
    out, rec = fold(build(nodes, inits, [1, 2, 6, 6]), RNG.standard_normal((1, 2, 6, 6)).astype(np.float32))
    assert ops(out) == ["Conv"] and rec.changed == {"conv_chain": 2}


def test_conv_chain_into_grouped_pointwise_is_rejected():
    nodes = [("Conv", ["x", "A"], ["c1"], {}), ("Conv", ["c1", "B"], ["y"], {"group": 2})]
    out, rec = fold(
        build(nodes, {"A": w(4, 4, 1, 1), "B": w(4, 2, 1, 1)}, [1, 4, 5, 5]),
        RNG.standard_normal((1, 4, 5, 5)).astype(np.float32),
    )
    assert ops(out) == ["Conv", "Conv"] and "group 1" in rec.rejected[0]["reason"]


def test_per_channel_scale_and_shift_fold_into_conv():
    nodes = [
        ("Conv", ["x", "A"], ["c"], {"pads": [1, 1, 1, 1]}),
        ("Mul", ["s", "c"], ["m"], {}),
        ("Add", ["m", "t"], ["d"], {}),
        ("Sub", ["d", "u"], ["e"], {}),
        ("Div", ["e", "v"], ["y"], {}),
    ]
    inits = {"A": w(3, 2, 3, 3), "s": w(3, 1, 1), "t": w(1, 3, 1, 1), "u": np.array(0.5), "v": np.full((3, 1, 1), 2.0)}
    out, rec = fold(build(nodes, inits, [1, 2, 5, 5]), RNG.standard_normal((1, 2, 5, 5)).astype(np.float32))
    assert ops(out) == ["Conv"] and rec.changed == {"post_scale": 2, "post_shift": 2}


def test_spatial_constant_is_not_folded_into_conv():
    nodes = [("Conv", ["x", "A"], ["c"], {}), ("Mul", ["c", "s"], ["y"], {})]
    out, rec = fold(
        build(nodes, {"A": w(3, 2, 1, 1), "s": w(1, 1, 5, 5)}, [1, 2, 5, 5]),
        RNG.standard_normal((1, 2, 5, 5)).astype(np.float32),
    )
    assert ops(out) == ["Conv", "Mul"] and "not per output channel" in rec.rejected[0]["reason"]


def test_scale_after_3d_matmul_with_bias_and_before_matmul():
    nodes = [
        ("Mul", ["x", "p"], ["xs"], {}),
        ("MatMul", ["xs", "W"], ["m"], {}),
        ("Add", ["b", "m"], ["a"], {}),
        ("Mul", ["a", "s"], ["y"], {}),
    ]
    inits = {"p": w(4), "W": w(4, 3), "b": w(3), "s": np.array([0.125])}
    out, rec = fold(build(nodes, inits, [2, "S", 4]), RNG.standard_normal((2, 5, 4)).astype(np.float32))
    assert ops(out) == ["MatMul", "Add"] and rec.changed == {"post_scale": 1, "pre_scale": 1}


def test_shared_weight_is_rejected():
    nodes = [
        ("Conv", ["x", "A"], ["c"], {}),
        ("Mul", ["c", "s"], ["m"], {}),
        ("Conv", ["x", "A"], ["d"], {}),
        ("Add", ["d", "m"], ["y"], {}),
    ]
    model = build(nodes, {"A": w(3, 3, 1, 1), "s": w(3, 1, 1)}, [1, 3, 4, 4])
    out, rec = fold(model, RNG.standard_normal((1, 3, 4, 4)).astype(np.float32))
    assert sorted(ops(out)) == sorted(ops(model))
    assert rec.rejected == [{"node": "mul_1", "reason": "weight A is shared with another node"}]


def test_shared_bias_is_fine():
    nodes = [
        ("Gemm", ["x", "A", "c"], ["g"], {}),
        ("Mul", ["g", "s"], ["m"], {}),
        ("Gemm", ["x", "B", "c"], ["h"], {}),
        ("Add", ["h", "t"], ["n"], {}),
        ("Add", ["m", "n"], ["y"], {}),
    ]
    model = build(nodes, {"A": w(4, 3), "B": w(4, 3), "c": w(3), "s": w(3), "t": w(3)}, [2, 4])
    out, rec = fold(model, RNG.standard_normal((2, 4)).astype(np.float32))
    assert sorted(ops(out)) == ["Add", "Gemm", "Gemm"] and rec.changed == {"post_scale": 1, "post_shift": 1}


def test_intermediate_with_other_readers_is_rejected():
    nodes = [
        ("MatMul", ["x", "A"], ["m"], {}),
        ("Mul", ["m", "s"], ["p"], {}),
        ("MatMul", ["m", "B"], ["q"], {}),
        ("Add", ["p", "q"], ["y"], {}),
    ]
    model = build(nodes, {"A": w(4, 4), "s": w(4), "B": w(4, 4)}, [2, 4])
    out, rec = fold(model, RNG.standard_normal((2, 4)).astype(np.float32))
    assert sorted(ops(out)) == sorted(ops(model))
    assert {r["reason"] for r in rec.rejected} == {"m has other readers"}


def test_intermediate_graph_output_stays():
    model = build(
        [("MatMul", ["x", "W"], ["m"], {}), ("Add", ["m", "b"], ["y"], {})], {"W": w(4, 3), "b": w(3)}, [2, 4]
    )
    model.graph.output.append(onnx.helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    out, rec = fold(model, RNG.standard_normal((2, 4)).astype(np.float32))
    assert ops(out) == ["MatMul", "Add"] and rec.rejected[0]["reason"] == "m has other readers"


def test_nonlinearity_blocks_merging():
    nodes = [("MatMul", ["x", "A"], ["m"], {}), ("Relu", ["m"], ["r"], {}), ("MatMul", ["r", "B"], ["y"], {})]
    out, rec = fold(build(nodes, {"A": w(4, 4), "B": w(4, 4)}, [2, 4]), RNG.standard_normal((2, 4)).astype(np.float32))
    assert ops(out) == ["MatMul", "Relu", "MatMul"] and rec.changed == {}


# ---- property tests: random chains of linear ops, constants and nonlinearities ----

LAST_AXIS_SHAPES = [(), (1,), "n", "1n"]
CHANNEL_SHAPES = [(), "c11", "1c11"]


def _const(kind, n: int, rng: np.random.Generator) -> np.ndarray:
    shape = {"n": (n,), "1n": (1, n), "c11": (n, 1, 1), "1c11": (1, n, 1, 1)}.get(kind, kind)
    return rng.uniform(0.5, 1.5, shape) * rng.choice([-1, 1], shape)


@st.composite
def linear_chains(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    two_d = draw(st.booleans())
    k = draw(st.integers(1, 5))
    nodes, inits, cur, n = [], {}, "x", k
    for i in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["MatMul", "Gemm", "Add", "Mul", "Sub", "Div", "Relu"]))
        op = "MatMul" if op == "Gemm" and not two_d else op
        nxt = f"t{i}"
        if op in ("MatMul", "Gemm"):
            m = draw(st.integers(1, 5))
            trans_b = op == "Gemm" and draw(st.booleans())
            inits[f"W{i}"] = w(m, n) if trans_b else w(n, m)
            ins = [cur, f"W{i}"] + ([f"b{i}"] if op == "Gemm" else [])
            if op == "Gemm":
                inits[f"b{i}"] = _const(draw(st.sampled_from(LAST_AXIS_SHAPES)), m, rng)
            nodes.append((op, ins, [nxt], {"transB": 1, "alpha": 0.7} if trans_b else {}))
            n = m
        elif op == "Relu":
            nodes.append((op, [cur], [nxt], {}))
        else:
            inits[f"c{i}"] = _const(draw(st.sampled_from(LAST_AXIS_SHAPES)), n, rng)
            ins = [f"c{i}", cur] if op in ("Add", "Mul") and draw(st.booleans()) else [cur, f"c{i}"]
            nodes.append((op, ins, [nxt], {}))
        cur = nxt
    nodes[-1] = (*nodes[-1][:2], ["y"], nodes[-1][3])
    shape = [3, k] if two_d else [2, 3, k]
    return build(nodes, inits, shape), rng.standard_normal(shape).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(linear_chains())
def test_property_linear_chains(case):
    model, x = case
    out, rec = fold(model, x)
    assert rec.nodes_after <= rec.nodes_before


@st.composite
def conv_chains(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = draw(st.integers(1, 4))
    hw = draw(st.integers(4, 8))
    nodes, inits, cur, ch = [], {}, "x", c
    for i in range(draw(st.integers(1, 5))):
        op = draw(st.sampled_from(["Conv1", "Conv1", "ConvK", "Mul", "Add", "Relu"]))
        nxt = f"t{i}"
        if op.startswith("Conv"):
            out_ch, k = draw(st.integers(1, 4)), (1 if op == "Conv1" else draw(st.sampled_from([3, 5])))
            inits[f"W{i}"] = w(out_ch, ch, k, k)
            ins = [cur, f"W{i}"] + ([f"b{i}"] if draw(st.booleans()) else [])
            if len(ins) == 3:
                inits[f"b{i}"] = w(out_ch)
            nodes.append(("Conv", ins, [nxt], {"pads": [k // 2] * 4}))
            ch = out_ch
        elif op == "Relu":
            nodes.append((op, [cur], [nxt], {}))
        else:
            inits[f"c{i}"] = _const(draw(st.sampled_from(CHANNEL_SHAPES)), ch, rng)
            nodes.append((op, [cur, f"c{i}"], [nxt], {}))
        cur = nxt
    nodes[-1] = (*nodes[-1][:2], ["y"], nodes[-1][3])
    return build(nodes, inits, [1, c, hw, hw]), rng.standard_normal((1, c, hw, hw)).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(conv_chains())
def test_property_conv_chains(case):
    model, x = case
    out, rec = fold(model, x)
    assert rec.nodes_after <= rec.nodes_before
