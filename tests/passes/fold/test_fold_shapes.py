"""fold-shapes: dynamic reshape targets proven by symbolic shapes become constants."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model

CTX = PassContext(opset=17)


def split_heads_graph(heads: int, dim: int, use_minus_one: bool, allowzero: int, with_expand: bool) -> onnx.ModelProto:
    """x[B,S,heads*dim] -> Relu -> view(B, S, heads, dim) computed from Shape(x), as exporters write it."""
    tail = [-1, dim] if use_minus_one else [heads, dim]
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Shape", ["r"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "i0"], ["b"], name="gather_b", axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["s"], name="gather_s", axis=0),
        helper.make_node("Unsqueeze", ["b", "axes0"], ["b1"], name="unsq_b"),
        helper.make_node("Unsqueeze", ["s", "axes0"], ["s1"], name="unsq_s"),
        helper.make_node("Concat", ["b1", "s1", "tail"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["r", "target"], ["heads"], name="split_heads", allowzero=allowzero),
    ]
    out = "heads"
    if with_expand:
        nodes += [
            helper.make_node("Shape", ["heads"], ["hshape"], name="shape2"),
            helper.make_node("Expand", ["heads", "hshape"], ["expanded"], name="noop_expand"),
        ]
        out = "expanded"
    nodes.append(helper.make_node("Sigmoid", [out], ["y"], name="sigmoid"))
    inits = {"i0": np.int64(0), "i1": np.int64(1), "axes0": np.array([0], np.int64), "tail": np.array(tail, np.int64)}
    return make_model(nodes, {"x": ["B", "S", heads * dim]}, {"y": ["B", "S", heads, dim]}, inits, name="split_heads")


def _check_equal(model, folded, heads, dim, shapes):
    rng = np.random.default_rng(0)
    for b, s in shapes:
        x = rng.standard_normal((b, s, heads * dim)).astype(np.float32)
        np.testing.assert_array_equal(first_output(folded, {"x": x}), first_output(model, {"x": x}))


def test_split_heads_target_becomes_constant():
    model = split_heads_graph(4, 8, use_minus_one=False, allowzero=0, with_expand=True)
    folded, records = run_passes(model, [PassSpec("fold-shapes")], CTX)
    assert records[0].changed == {"reshape_targets_folded": 1, "noop_expands_removed": 1}
    ops = [n.op_type for n in folded.graph.node]
    assert ops == ["Relu", "Reshape", "Sigmoid"]
    target = next(i for i in folded.graph.initializer if i.name.endswith("_shape"))
    assert numpy_helper.to_array(target).tolist() == [0, 0, 4, 8]
    _check_equal(model, folded, 4, 8, [(1, 3), (2, 7), (5, 1)])


def test_allowzero_target_without_literal_zero_is_folded():
    model = split_heads_graph(2, 3, use_minus_one=True, allowzero=1, with_expand=False)
    folded, records = run_passes(model, [PassSpec("fold-shapes")], CTX)
    assert records[0].changed == {"reshape_targets_folded": 1}
    reshape = next(n for n in folded.graph.node if n.op_type == "Reshape")
    assert all(a.i == 0 for a in reshape.attribute if a.name == "allowzero")
    _check_equal(model, folded, 2, 3, [(3, 2), (1, 1)])


def test_unprovable_target_is_rejected_with_reason():
    # target [S, B, ...] from Shape(x): the dims are not at their own positions
    model = split_heads_graph(2, 3, use_minus_one=False, allowzero=0, with_expand=False)
    concat = next(n for n in model.graph.node if n.op_type == "Concat")
    concat.input[0], concat.input[1] = concat.input[1], concat.input[0]
    folded, records = run_passes(model, [PassSpec("fold-shapes")], CTX)
    assert records[0].changed == {}
    assert "not dims of the input" in records[0].rejected[0]["reason"]


@settings(max_examples=200, deadline=None)
@given(
    heads=st.integers(1, 4),
    dim=st.integers(1, 5),
    minus_one=st.booleans(),
    allowzero=st.integers(0, 1),
    expand=st.booleans(),
    batch=st.integers(1, 3),
    seq=st.integers(1, 4),
)
def test_property_equal_outputs_and_idempotent(heads, dim, minus_one, allowzero, expand, batch, seq):
    model = split_heads_graph(heads, dim, minus_one, allowzero, expand)
    folded, records = run_passes(model, [PassSpec("fold-shapes")], CTX)
    assert not any(n.op_type in ("Shape", "Concat", "Gather") for n in folded.graph.node)
    _check_equal(model, folded, heads, dim, [(batch, seq), (batch + 1, seq + 2)])
    _, again = run_passes(folded, [PassSpec("fold-shapes")], CTX)
    assert again[0].changed == {}


def _torch_expand_graph():
    """x[N, 1, S, 4] expanded to [N, 2, S, 4] the way torch exports `expand`: a shape built by
    Shape/Gather/Concat, reshaped to [-1], then `Where(shape == -1, 1, shape)`."""
    consts = {
        "i0": np.array([0], np.int64),
        "i2": np.array([2], np.int64),
        "two": np.array([2], np.int64),
        "four": np.array([4], np.int64),
        "minus_one": np.array([-1], np.int64),
        "ones": np.ones(4, np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["n"], axis=0),
        helper.make_node("Gather", ["shape", "i2"], ["s"], axis=0),
        helper.make_node("Concat", ["n", "two", "s", "four"], ["target"], axis=0),
        helper.make_node("Reshape", ["target", "minus_one"], ["flat"]),
        helper.make_node("Equal", ["flat", "minus_one"], ["is_minus_one"]),
        helper.make_node("Where", ["is_minus_one", "ones", "flat"], ["dims"]),
        helper.make_node("Expand", ["x", "dims"], ["y"]),
    ]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    return make_model(nodes, {"x": ["N", 1, "S", 4]}, {"y": ["N", 2, "S", 4]}, inits)


def test_torch_expand_target_folds_to_a_constant():
    model = _torch_expand_graph()
    out, records = run_passes(model, [PassSpec("fold-shapes")], CTX)
    assert records[0].changed.get("expand_targets_folded") == 1, records[0].changed
    expand = next(n for n in out.graph.node if n.op_type == "Expand")
    target = next(i for i in out.graph.initializer if i.name == expand.input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [1, 2, 1, 4]  # 1 = the input's own dim
    assert [n.op_type for n in out.graph.node] == ["Expand"]  # the shape arithmetic is dead
    for n, s in ((1, 3), (3, 7)):
        x = np.random.default_rng(n).standard_normal((n, 1, s, 4)).astype(np.float32)
        np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
