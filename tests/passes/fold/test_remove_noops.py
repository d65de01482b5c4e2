"""remove-noops: identity Reshapes, Reshape chains, x*1 and x/1 go; anything that changes a
shape or a value stays, with outputs equal bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.fold.remove_noops import keeps_shape
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model

CTX = PassContext(opset=17)


def _run(nodes, inits, x_shape, y_shape, feed_shape, dtype=np.float32):
    inputs = [helper.make_tensor_value_info("x", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), x_shape)]
    outputs = [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), y_shape)]
    model = make_model(nodes, inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    out, records = run_passes(model, [PassSpec("remove-noops")], CTX)
    x = np.random.default_rng(0).standard_normal(feed_shape).astype(dtype)
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
    return [n.op_type for n in out.graph.node], records[0].changed


def _relu_then(node):
    """x -> Relu -> r -> node -> y (the no-op sits between two real ops' tensors)."""
    return [helper.make_node("Relu", ["x"], ["r"], name="relu"), node]


@pytest.mark.parametrize(
    ("target", "x_shape", "removed"),
    [
        ([-1], [12], True),  # a 1-D tensor reshaped to [-1]: the exporters' favourite
        ([0, 0, -1], ["b", "s", 8], True),
        ([0, 3, 4], ["b", 3, 4], True),
        ([0, -1, 4], ["b", 3, 4], True),
        ([0, 4, 3], ["b", 3, 4], False),  # same size, other shape
        ([-1, 4], ["b", 3, 4], False),  # rank changes
        ([0, -1], ["b", "s"], True),
    ],
)
def test_reshape_that_keeps_the_shape_is_removed(target, x_shape, removed):
    feed = [2 if isinstance(d, str) else d for d in x_shape]
    out_shape = list(feed) if removed else None
    nodes = _relu_then(helper.make_node("Reshape", ["r", "t"], ["y"], name="reshape"))
    ops, changed = _run(nodes, {"t": np.array(target, np.int64)}, x_shape, out_shape, feed)
    assert ("Reshape" not in ops) is removed, (ops, changed)


def test_reshape_chain_becomes_one_reshape():
    nodes = _relu_then(helper.make_node("Reshape", ["r", "a"], ["m"], name="inner"))
    nodes.append(helper.make_node("Reshape", ["m", "b"], ["y"], name="outer"))
    inits = {"a": np.array([6, 4], np.int64), "b": np.array([2, 12], np.int64)}
    ops, changed = _run(nodes, inits, [2, 3, 4], [2, 12], (2, 3, 4))
    assert ops == ["Relu", "Reshape"] and changed == {"reshape_chains_merged": 1}


def test_reshape_chain_with_a_copied_dim_stays():
    """Outer target 0 copies the inner result's dim 0 (6), not the source's (2)."""
    nodes = _relu_then(helper.make_node("Reshape", ["r", "a"], ["m"], name="inner"))
    nodes.append(helper.make_node("Reshape", ["m", "b"], ["y"], name="outer"))
    inits = {"a": np.array([6, 4], np.int64), "b": np.array([0, 2, 2], np.int64)}
    ops, _ = _run(nodes, inits, [2, 3, 4], [6, 2, 2], (2, 3, 4))
    assert ops.count("Reshape") == 2


@pytest.mark.parametrize(
    ("op", "order", "one", "removed"),
    [
        ("Mul", "x1", np.array(1.0, np.float32), True),
        ("Mul", "1x", np.array([1.0], np.float32), True),
        ("Div", "x1", np.array(1.0, np.float32), True),
        ("Div", "1x", np.array(1.0, np.float32), False),  # 1/x
        ("Mul", "x1", np.array([[[1.0]]], np.float32), False),  # would broadcast [4] to [1, 1, 4]
        ("Mul", "x1", np.array(2.0, np.float32), False),
        ("Mul", "x1", np.array([1.0, 1.0, 1.0, 1.0], np.float32), False),  # not a scalar: not checked
    ],
)
def test_multiplying_by_one_is_removed(op, order, one, removed):
    inputs = ["r", "one"] if order == "x1" else ["one", "r"]
    nodes = _relu_then(helper.make_node(op, inputs, ["y"], name="arith"))
    out_shape = [4] if removed or one.ndim <= 1 else None
    ops, _ = _run(nodes, {"one": one}, [4], out_shape, (4,))
    assert (op not in ops) is removed, ops


def test_a_graph_output_keeps_its_name():
    nodes = _relu_then(helper.make_node("Mul", ["r", "one"], ["y"], name="arith"))
    model = make_model(nodes, {"x": [4]}, {"y": [4]}, [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    out, _ = run_passes(model, [PassSpec("remove-noops")], CTX)
    assert [o.name for o in out.graph.output] == ["y"] and [n.op_type for n in out.graph.node] == ["Relu"]


def test_keeps_shape_needs_proof():
    assert keeps_shape(["b", 0, 4], [0, -1, 4]) is False  # 0-sized dim: -1 is undefined
    assert keeps_shape(None, [-1]) is False
    assert keeps_shape([3, "s"], [3, -1]) is True
    assert keeps_shape(["s", "t"], [-1, -1]) is False


def test_int64_shape_arithmetic_is_handled_too():
    nodes = _relu_then(helper.make_node("Mul", ["r", "one"], ["y"], name="arith"))
    nodes[0] = helper.make_node("Abs", ["x"], ["r"], name="abs")
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [3])],
        [numpy_helper.from_array(np.array(1, np.int64), "one")],
    )
    out, records = run_passes(model, [PassSpec("remove-noops")], CTX)
    assert records[0].changed == {"multiplications_by_one_removed": 1}


def test_a_concat_of_one_input_is_removed():
    """transformers' DynamicCache filled from a past tensor exports cat([past]): a copy."""
    nodes = _relu_then(helper.make_node("Concat", ["r"], ["c"], name="cat", axis=2))
    nodes.append(helper.make_node("Concat", ["c", "r"], ["y"], name="cat2", axis=2))
    ops, changed = _run(nodes, {}, [1, 2, "s", 4], None, (1, 2, 3, 4))
    assert ops == ["Relu", "Concat"] and changed == {"single_input_concats_removed": 1}
