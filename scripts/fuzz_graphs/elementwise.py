"""Elementwise, pass-through, duplicate and constant-expression blocks (any rank)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from scripts.fuzz_graphs.builder import Builder, Value

ACTIVATIONS = ("Relu", "Sigmoid", "Tanh", "Abs", "Neg")


def activation(b: Builder, x: Value) -> Value:
    return b.node(b.pick(ACTIVATIONS), [x.name], x.shape)


def passthrough(b: Builder, x: Value) -> Value:
    """Identity, inference Dropout or no-op Cast, one to three in a row."""
    b.families.add("passthrough")
    for _ in range(int(b.rng.integers(1, 4))):
        kind = b.pick(["Identity", "Dropout", "Cast"])
        if kind == "Cast":
            x = b.node("Cast", [x.name], x.shape, to=b.elem)
        elif kind == "Dropout":
            inputs = [x.name]
            if b.chance(0.5):
                inputs.append(b.scalar(float(b.rng.uniform(0.1, 0.5)), "ratio", rank0=True))
                if b.chance(0.5):
                    inputs.append(b.array(np.array(False), "training"))
            n_out = 2 if b.chance(0.3) else 1  # the mask output, unused
            outs = b.raw("Dropout", inputs, n_out=n_out)
            x = Value(outs[0], x.shape)
        else:
            x = b.node("Identity", [x.name], x.shape)
    return x


def duplicate(b: Builder, x: Value) -> Value:
    """The same computation twice on one input (a common subexpression), combined."""
    b.families.add("duplicate")
    if x.kind in ("seq", "vec") and b.chance(0.4):
        w = b.weight(x.shape[-1], x.shape[-1])
        w2 = w if b.chance(0.5) else b.array(numpy_helper.to_array(_init(b, w)).copy(), "w")
        left = b.node("MatMul", [x.name, w], x.shape)
        right = b.node("MatMul", [x.name, w2], x.shape)
    else:
        op = b.pick(["Relu", "Sigmoid", "Tanh"])
        left, right = b.node(op, [x.name], x.shape), b.node(op, [x.name], x.shape)
    return b.binary(b.pick(["Add", "Mul", "Max", "Sub"]), left.name, right.name, x.shape)


def near_duplicate(b: Builder, x: Value) -> Value:
    """Two nodes with one op and one input but different attributes (not common subexpressions),
    combined: Softmax / LeakyRelu / ReduceMean / Transpose pairs."""
    b.families.add("near_miss")
    kinds = (
        ["softmax", "reduce"] + (["leaky"] if b.dtype != np.float64 else []) + (["transpose"] if x.rank >= 3 else [])
    )
    kind = b.pick(kinds)
    if kind == "softmax":
        left = b.node("Softmax", [x.name], x.shape, axis=-1)
        right = b.node("Softmax", [x.name], x.shape, axis=1 if b.chance(0.7) else x.rank - 1)
    elif kind == "leaky":
        left = b.node("LeakyRelu", [x.name], x.shape, alpha=0.1)
        right = b.node("LeakyRelu", [x.name], x.shape, alpha=float(b.pick([0.1, 0.2])))
    elif kind == "reduce":
        left, right = b.reduce_mean(x, [-1]), b.reduce_mean(x, [1])
        return b.binary("Add", x.name, b.binary("Add", left.name, right.name, x.shape).name, x.shape)
    else:
        perm = [*range(x.rank - 2), x.rank - 1, x.rank - 2]
        shape = (*x.shape[:-2], x.shape[-1], x.shape[-2])
        left = b.node("Transpose", [x.name], shape, perm=perm)
        right = b.node("Transpose", [x.name], shape, perm=perm)
        back = b.node("Transpose", [b.binary("Add", left.name, right.name, shape).name], x.shape, perm=perm)
        return back
    return b.binary("Add", left.name, right.name, x.shape)


def _init(b: Builder, name: str) -> onnx.TensorProto:
    return next(t for t in b.initializers if t.name == name)


def const_expr(b: Builder, x: Value) -> Value:
    """x op (c1 op c2): the constant part folds."""
    b.families.add("const_expr")
    n = x.shape[-1]
    c1 = b.const(b.rng.uniform(0.5, 1.5, n), share=False)
    c2 = b.const(b.rng.uniform(0.5, 1.5, n), share=False)
    folded = b.node(b.pick(["Add", "Mul", "Sub", "Div"]), [c1, c2], (n,))
    if b.chance(0.3):
        folded = b.node("Sqrt", [b.node("Abs", [folded.name], (n,)).name], (n,))
    return b.binary(b.pick(["Add", "Mul"]), x.name, folded.name, x.shape)


def channel_const(b: Builder, x: Value, values: np.ndarray) -> str:
    """A per-channel constant for x: axis 1 for images ([C,1,1] or [1,C,1,1]), the last axis otherwise."""
    if x.kind == "image":
        shape = (values.size, 1, 1) if b.chance(0.5) else (1, values.size, 1, 1)
    else:
        shape = b.pick([(values.size,), (1, values.size), (1,) * (x.rank - 1) + (values.size,)])
    return b.const(values.reshape(shape))


def unit_ops(b: Builder, x: Value) -> Value:
    """x * 1, 1 * x, x / 1 (one-element ones of rank <= x's), and near misses: ones of a higher
    rank (they broadcast x up; squeezed back), 1 / x."""
    kind = b.pick(["mul", "mul", "div", "higher_rank", "reciprocal"])
    one = b.array(np.ones((1,) * int(b.rng.integers(0, x.rank + 1)), b.dtype), "one")
    if kind == "mul":
        return b.binary("Mul", x.name, one, x.shape)
    if kind == "div":
        return b.node("Div", [x.name, one], x.shape)
    b.families.add("near_miss")
    if kind == "reciprocal":
        return b.node("Div", [one, b.node("Sigmoid", [x.name], x.shape).name], x.shape)
    ones = b.array(np.ones((1,) * (x.rank + 1), b.dtype), "ones")
    return b.squeeze(b.binary("Mul", x.name, ones, (1, *x.shape)), [0])


def reshape_noops(b: Builder, x: Value) -> Value:
    """Constant Reshapes that keep the shape ([0, ..., -1] or static dims) and Reshape chains
    (the outer target with or without a 0, which copies the inner result's dims)."""
    if b.chance(0.5):
        dims = [0 if i == 0 or b.chance(0.5) else d for i, d in enumerate(x.shape)]
        if b.chance(0.5):
            dims[int(b.rng.integers(1, x.rank)) if x.rank > 1 else 0] = -1
        return b.node("Reshape", [x.name, b.ints(dims, "shape")], x.shape)
    flat = int(np.prod(x.shape[1:]))
    keep_batch = b.chance(0.5)
    inner = b.raw("Reshape", [x.name, b.ints([0, flat] if keep_batch else [-1], "shape")])[0]
    if keep_batch and b.chance(0.4):
        outer = [0, *x.shape[1:]]  # the 0 copies the inner result's batch dim
    else:
        outer = [-1, *x.shape[1:]] if b.dynamic or b.chance(0.5) else list(x.shape)
    return b.node("Reshape", [inner, b.ints(outer, "shape")], x.shape)


def scale_shift(b: Builder, x: Value) -> Value:
    """x * s, x / s, x + c or x - c by a scalar or per-channel constant."""
    b.families.add("scale_bias")
    channels = x.shape[1] if x.kind == "image" else x.shape[-1]
    op = b.pick(["Mul", "Div", "Add", "Sub"])
    low, high = (0.5, 2.0) if op in ("Mul", "Div") else (-0.5, 0.5)
    if b.chance(0.3):
        c = b.scalar(float(b.rng.uniform(low, high)), "s")
    else:
        c = channel_const(b, x, b.rng.uniform(low, high, channels))
    if op in ("Sub", "Div"):
        return b.node(op, [x.name, c], x.shape)
    return b.binary(op, x.name, c, x.shape)
