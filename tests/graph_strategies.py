"""Hypothesis strategies that generate small random ONNX graphs with redundancy in them.

The graphs mix: elementwise ops on the input, constant subexpressions (folding
targets), Identity/Dropout/no-op Cast (cleanup targets), duplicated chains (dedupe
targets), a dynamic-shape reshape round trip (shape-folding target), and graph outputs
that are behind pass-through chains, read by other nodes, or intermediate tensors.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_helpers import make_model

UNARY = ["Relu", "Sigmoid", "Tanh", "Abs", "Identity", "Dropout", "NoopCast"]
BINARY = ["Add", "Mul", "Sub", "Max"]
WIDTH = 6


@st.composite
def random_graphs(draw) -> onnx.ModelProto:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    nodes, inits = [], []
    live = ["x"]
    counter = iter(range(10_000))

    def fresh(prefix: str) -> str:
        return f"{prefix}{next(counter)}"

    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["unary", "binary_const", "binary_live", "const_expr", "reshape", "duplicate"]))
        src = draw(st.sampled_from(live))
        out = fresh("t")
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            if op == "NoopCast":
                nodes.append(helper.make_node("Cast", [src], [out], name=fresh("cast"), to=TensorProto.FLOAT))
            else:
                nodes.append(helper.make_node(op, [src], [out], name=fresh(op.lower())))
        elif kind == "binary_const":
            c = fresh("c")
            inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, (WIDTH,)).astype(np.float32), c))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [src, c], [out], name=fresh("bc")))
        elif kind == "binary_live":
            other = draw(st.sampled_from(live))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [src, other], [out], name=fresh("bl")))
        elif kind == "const_expr":  # (c1 op c2) op src: the constant part must fold
            c1, c2, folded = fresh("c"), fresh("c"), fresh("k")
            for name in (c1, c2):
                inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, (WIDTH,)).astype(np.float32), name))
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)), [c1, c2], [folded], name=fresh("ce")))
            nodes.append(helper.make_node("Add", [src, folded], [out], name=fresh("ca")))
        elif kind == "reshape":  # view(N, 2, 3) then back, targets computed from Shape
            shape, n, n1, tail, target, mid, back = (fresh(p) for p in ("s", "n", "n1", "tl", "tg", "m", "bk"))
            inits.append(numpy_helper.from_array(np.array(0, np.int64), n + "_idx"))
            inits.append(numpy_helper.from_array(np.array([0], np.int64), n + "_axes"))
            inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), tail))
            inits.append(numpy_helper.from_array(np.array([WIDTH], np.int64), back))
            nodes += [
                helper.make_node("Shape", [src], [shape], name=fresh("shape")),
                helper.make_node("Gather", [shape, n + "_idx"], [n], name=fresh("gather"), axis=0),
                helper.make_node("Unsqueeze", [n, n + "_axes"], [n1], name=fresh("unsq")),
                helper.make_node("Concat", [n1, tail], [target], name=fresh("concat"), axis=0),
                helper.make_node("Reshape", [src, target], [mid], name=fresh("reshape")),
                helper.make_node("Concat", [n1, back], [back + "_t"], name=fresh("concat"), axis=0),
                helper.make_node("Reshape", [mid, back + "_t"], [out], name=fresh("reshape")),
            ]
        else:  # duplicate: the same op on the same input twice, summed
            op = draw(st.sampled_from(["Relu", "Sigmoid", "Tanh"]))
            a, b = fresh("d"), fresh("d")
            nodes += [
                helper.make_node(op, [src], [a], name=fresh("dup")),
                helper.make_node(op, [src], [b], name=fresh("dup")),
                helper.make_node("Add", [a, b], [out], name=fresh("dsum")),
            ]
        live.append(out)
    # The graph output, behind a chain of pass-throughs (cleanup must keep its name and producer).
    last = live[-1]
    for index in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["Identity", "Dropout"]))
        nodes.append(helper.make_node(op, [last], [f"chain{index}"], name=fresh("chain")))
        last = f"chain{index}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out_identity"))
    outputs = ["y"]
    if draw(st.booleans()):  # a graph output that other nodes also read
        c = fresh("c")
        inits.append(numpy_helper.from_array(rng.uniform(0.5, 1.5, (WIDTH,)).astype(np.float32), c))
        nodes.append(helper.make_node("Mul", ["y", c], ["z"], name="reads_output"))
        outputs.append("z")
    intermediates = [t for t in live[1:-1] if t not in outputs]
    if intermediates:  # intermediate tensors exposed as outputs too (and still read downstream)
        outputs += draw(st.lists(st.sampled_from(intermediates), max_size=2, unique=True))
    shapes = {name: ["N", WIDTH] for name in outputs}
    return make_model(nodes, {"x": ["N", WIDTH]}, shapes, inits, name="random")
