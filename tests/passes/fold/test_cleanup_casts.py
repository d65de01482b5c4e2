"""cleanup's no-op Casts: a Cast to its input's own type, and the back half of a round trip through
a type that holds every value (fp16 -> fp32 -> fp16) go, outputs equal bit for bit; a round trip
through a narrower or integer type stays."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output, make_model


def _run(nodes, x_shape, y_shape, feed_shape, dtype):
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info("x", elem, x_shape)]
    outputs = [helper.make_tensor_value_info("y", elem, y_shape)]
    model = make_model(nodes, inputs, outputs, [])
    out, records = run_passes(model, [PassSpec("cleanup")], PassContext(opset=17))
    x = np.random.default_rng(0).standard_normal(feed_shape).astype(dtype)
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
    return [n.op_type for n in out.graph.node], records[0].changed


@pytest.mark.parametrize(
    ("dtype", "via", "removed"),
    [
        (np.float16, TensorProto.FLOAT, True),  # HF fp16 attention: softmax(...).to(float32).to(float16)
        (np.float32, TensorProto.DOUBLE, True),
        (np.float32, TensorProto.FLOAT16, False),  # through a narrower type: values change
        (np.float32, TensorProto.INT32, False),  # truncates
        (np.float16, TensorProto.FLOAT16, True),  # Cast to its own type (then the outer Cast too)
    ],
)
def test_a_cast_round_trip_through_a_wider_type_goes(dtype, via, removed):
    back = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["wide"], to=via, name="up"),
        helper.make_node("Cast", ["wide"], ["y"], to=back, name="down"),
    ]
    ops, changed = _run(nodes, ["b", 8], ["b", 8], (3, 8), dtype)
    assert ("Cast" not in ops) == removed, ops
    if removed:
        assert changed.get("noop_cast_removed", 0) >= 1


def test_the_inner_cast_stays_for_its_other_readers():
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["wide"], to=TensorProto.FLOAT, name="up"),
        helper.make_node("Cast", ["wide"], ["back"], to=TensorProto.FLOAT16, name="down"),
        helper.make_node("Cast", ["wide"], ["again"], to=TensorProto.FLOAT16, name="down2"),
        helper.make_node("Add", ["back", "again"], ["y"], name="add"),
    ]
    ops, _ = _run(nodes, ["b", 8], ["b", 8], (3, 8), np.float16)
    assert ops == ["Relu", "Add"]
