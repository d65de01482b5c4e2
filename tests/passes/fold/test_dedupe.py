"""dedupe: identical initializers and common subexpressions merge; nothing else changes."""

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
    return make_model(nodes, {"x": ["N", 4]}, {"y": ["N", 4]}, inits, name="chains")


def test_identical_chains_collapse():
    model = chain_graph(["Relu", "Tanh"], copies=3, distinct_weights=False)
    out, records = run_passes(model, [PassSpec("dedupe")], CTX)
    assert records[0].changed == {"initializers_merged": 2, "nodes_merged": 6}
    assert [n.op_type for n in out.graph.node] == ["Relu", "Tanh", "Mul", "Sum"]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))


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
    np.testing.assert_array_equal(first_output(out, {"x": x}), first_output(model, {"x": x}))
    _, again = run_passes(out, [PassSpec("dedupe")], CTX)
    assert again[0].changed == {}
