"""Hand-built ONNX graphs with known redundancies, for pass tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_helpers import make_model


def redundant_graph() -> onnx.ModelProto:
    """x[N,4] -> Identity -> Dropout -> Cast(float->float) -> MatMul(W) -> Add(c1 + c2)
    -> Reshape(by a shape computed from a static dim) -> y; plus an unused initializer."""
    w = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(4, 8) / 32, "W")
    c1 = numpy_helper.from_array(np.full((8,), 0.5, np.float32), "c1")
    c2 = numpy_helper.from_array(np.full((8,), 0.25, np.float32), "c2")
    unused = numpy_helper.from_array(np.zeros((3,), np.float32), "unused")
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    idx = numpy_helper.from_array(np.array([1], np.int64), "idx")
    nodes = [
        helper.make_node("Identity", ["x"], ["x_id"], name="identity"),
        helper.make_node("Dropout", ["x_id"], ["x_drop"], name="dropout"),
        helper.make_node("Cast", ["x_drop"], ["x_cast"], name="noop_cast", to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x_cast", "W"], ["mm"], name="matmul"),
        helper.make_node("Add", ["c1", "c2"], ["bias"], name="const_add"),
        helper.make_node("Add", ["mm", "bias"], ["biased"], name="bias_add"),
        helper.make_node("Shape", ["biased"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "idx"], ["dim1"], name="gather", axis=0),
        helper.make_node("Concat", ["minus_one", "dim1"], ["new_shape"], name="concat", axis=0),
        helper.make_node("Reshape", ["biased", "new_shape"], ["reshaped"], name="reshape"),
        helper.make_node("Identity", ["reshaped"], ["y"], name="final_identity"),
    ]
    return make_model(nodes, {"x": ["N", 4]}, {"y": ["N", 8]}, [w, c1, c2, unused, minus_one, idx], name="redundant")


def unsupported_op_graph() -> onnx.ModelProto:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("FancyOp", ["r"], ["y"], name="my_fancy_node", domain="example.custom"),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.custom", 1)]
    )
