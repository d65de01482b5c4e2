"""dedupe: identical initializers and common subexpressions merge; nothing else changes."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from passes.base import PassContext
from passes.manager import PassSpec, run_passes

CTX = PassContext(opset=17)
UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Neg"]


def chain_graph(ops: list[str], copies: int, distinct_weights: bool) -> onnx.ModelProto:
    """`copies` identical chains x -> ops... -> Mul(w_i), summed; w_i identical unless distinct_weights."""
    nodes, inits, outs = [], [], []
    for c in range(copies):
        prev = "x"
        for i, op in enumerate(ops):
            nodes.append(helper.make_node(op, [prev], [f"c{c}_{i}"], name=f"c{c}_{op}_{i}"))
            prev = f"c{c}_{i}"
        w = np.full((4,), 2.0 + (c if distinct_weights else 0), np.float32)
        inits.append(numpy_helper.from_array(w, f"w{c}"))
        nodes.append(helper.make_node("Mul", [prev, f"w{c}"], [f"m{c}"], name=f"c{c}_mul"))
        outs.append(f"m{c}")
    nodes.append(helper.make_node("Sum", outs, ["y"], name="sum"))
    graph = helper.make_graph(
        nodes,
        "chains",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_identical_chains_collapse():
    model = chain_graph(["Relu", "Tanh"], copies=3, distinct_weights=False)
    out, records = run_passes(model, [PassSpec("dedupe")], CTX)
    assert records[0].changed == {"initializers_merged": 2, "nodes_merged": 6}
    assert [n.op_type for n in out.graph.node] == ["Relu", "Tanh", "Mul", "Sum"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))


def test_different_weights_stop_the_merge_at_the_mul():
    model = chain_graph(["Relu"], copies=2, distinct_weights=True)
    out, records = run_passes(model, [PassSpec("dedupe")], CTX)
    assert records[0].changed == {"nodes_merged": 1}
    assert [n.op_type for n in out.graph.node].count("Mul") == 2


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.sampled_from(UNARY), min_size=1, max_size=4),
    copies=st.integers(1, 4),
    distinct=st.booleans(),
    rows=st.integers(1, 3),
)
def test_property_equal_outputs_and_idempotent(ops, copies, distinct, rows):
    model = chain_graph(ops, copies, distinct)
    out, records = run_passes(model, [PassSpec("dedupe")], CTX)
    assert len(out.graph.node) == len(ops) + (copies if distinct else 1) + 1
    x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
    np.testing.assert_array_equal(_run(out, x), _run(model, x))
    _, again = run_passes(out, [PassSpec("dedupe")], CTX)
    assert again[0].changed == {}
