"""Shape manipulation blocks (any rank, kept-shape round trips) and other ops."""

from __future__ import annotations

import numpy as np
from onnx import helper

from scripts.fuzz_graphs.builder import BROADCAST_DIM, INT64_MAX, Builder, Value
from scripts.fuzz_graphs.elementwise import ACTIVATIONS, activation


def split_last(b: Builder, x: Value) -> Value:
    """Reshape the last dim into [2, D/2], Transpose the pair, Reshape back (values permuted)."""
    d = x.shape[-1]
    if d % 2:
        return activation(b, x)
    split = b.reshape(x, (*x.shape[:-1], 2, d // 2), keep=x.rank - 1)
    perm = [*range(x.rank - 1), x.rank, x.rank - 1]
    swapped = b.node("Transpose", [split.name], (*x.shape[:-1], d // 2, 2), perm=perm)
    if b.chance(0.4):  # back to x's own Shape
        return b.node("Reshape", [swapped.name, b.shape_of(x)], x.shape)
    return b.reshape(swapped, x.shape, keep=x.rank - 1)


def slice_rotate(b: Builder, x: Value) -> Value:
    """Concat(x[..., k:], x[..., :k]) on the last axis (INT64_MAX ends sometimes)."""
    d = x.shape[-1]
    if d < 2:
        return activation(b, x)
    k = int(b.rng.integers(1, d))
    axis = b.ints([-1] if b.chance(0.5) else [x.rank - 1], "axes")
    end = INT64_MAX if b.chance(0.3) else d
    head = b.node("Slice", [x.name, b.ints([0]), b.ints([k]), axis], (*x.shape[:-1], k))
    tail = b.node("Slice", [x.name, b.ints([k]), b.ints([end]), axis], (*x.shape[:-1], d - k))
    return b.node("Concat", [tail.name, head.name], x.shape, axis=-1)


def full_slice(b: Builder, x: Value) -> Value:
    """x[..., 0:Shape(x)[-1]]: a Slice that copies its input, end read through Shape."""
    end = b.raw("Gather", [b.shape_of(x), b.ints([x.rank - 1], "idx")], axis=0)[0]
    return b.node("Slice", [x.name, b.ints([0]), end, b.ints([x.rank - 1], "axes")], x.shape)


def gather_perm(b: Builder, x: Value) -> Value:
    """Gather along the last axis with a permutation of its indices."""
    perm = b.rng.permutation(x.shape[-1])
    return b.node("Gather", [x.name, b.ints(perm, "perm")], x.shape, axis=x.rank - 1 if b.chance(0.5) else -1)


def unsqueeze_squeeze(b: Builder, x: Value) -> Value:
    """Unsqueeze a unit axis in, [an activation,] Squeeze it out."""
    axis = int(b.rng.integers(1, x.rank + 1))
    up = Value(b.unsqueeze(x.name, [axis]), (*x.shape[:axis], 1, *x.shape[axis:]))
    if b.chance(0.5):
        up = activation(b, up)
    return b.squeeze(up, [axis])


def expand_noop(b: Builder, x: Value) -> Value:
    """Expand(x, Shape(x)) or Expand(x, [1, ..., D]): it changes nothing."""
    if b.chance(0.5):
        return b.node("Expand", [x.name, b.shape_of(x)], x.shape)
    return b.node("Expand", [x.name, b.ints([1] * (x.rank - 1) + [x.shape[-1]], "shape")], x.shape)


def merge_split(b: Builder, x: Value) -> Value:
    """Split the last dim in two, then merge it back with a target whose last entry is the
    product of two dims: Concat(Shape[:r-1], Mul(Shape[r-1], Shape[r]))."""
    d = x.shape[-1]
    if d % 2:
        return activation(b, x)
    split = b.reshape(x, (*x.shape[:-1], 2, d // 2), keep=x.rank - 1)
    act = activation(b, split)
    head = b.raw("Slice", [b.shape_of(act), b.ints([0]), b.ints([x.rank - 1])])[0]
    product = b.raw("Mul", [b.dim_of(act, x.rank - 1), b.dim_of(act, x.rank)])[0]
    target = b.raw("Concat", [head, product], axis=0)[0]
    return b.node("Reshape", [act.name, target], x.shape)


def expand_broadcast(b: Builder, x: Value) -> Value:
    """x[:, :1] expanded back to x's shape (Expand that changes the shape: not a no-op)."""
    first = b.node("Slice", [x.name, b.ints([0]), b.ints([1]), b.ints([1], "axes")], (x.shape[0], 1, *x.shape[2:]))
    if b.chance(0.5):
        return b.node("Expand", [first.name, b.shape_of(x)], x.shape)
    dims = b.raw("Concat", [b.dim_of(x, 0), b.ints(list(x.shape[1:]), "tail")], axis=0)[0]
    return b.node("Expand", [first.name, dims], x.shape)


def slice_to_other_dim(b: Builder, x: Value) -> Value:
    """x[..., :Shape(x)[1]] on the last axis, where dim 1 differs from it (a real slice), or
    equals it (a no-op)."""
    end = b.dim_of(x, 1)
    size = min(x.shape[1], x.shape[-1])
    return b.node("Slice", [x.name, b.ints([0]), end, b.ints([-1], "axes")], (*x.shape[:-1], size))


def transpose_round_trip(b: Builder, x: Value) -> Value:
    """Swap the last two axes, compute, swap back."""
    perm = [*range(x.rank - 2), x.rank - 1, x.rank - 2]
    shape = (*x.shape[:-2], x.shape[-1], x.shape[-2])
    t = activation(b, b.node("Transpose", [x.name], shape, perm=perm))
    return b.node("Transpose", [t.name], x.shape, perm=perm)


def shape_ops(b: Builder, x: Value) -> Value:
    b.families.add("reshape_ops")
    ops = [split_last, slice_rotate, full_slice, gather_perm, unsqueeze_squeeze, expand_noop, merge_split]
    if x.rank >= 3:
        ops += [transpose_round_trip, expand_broadcast, slice_to_other_dim]
    if x.kind == "vec":
        ops.append(lambda b, x: b.node("Flatten", [x.name], x.shape, axis=1))
    op = b.pick(ops)
    if op in (full_slice, expand_noop, split_last, merge_split, expand_broadcast, slice_to_other_dim):
        b.families.add("shape_arith")
    return op(b, x)


def dynamic_broadcast(b: Builder, x: Value) -> Value:
    """x + y for a second input y [M, 1, ..., D] (M is 1 in the first run, the batch in the second),
    with side outputs whose shapes follow M: Expand(f(y), Shape(x)) and Reshape(x, [Shape(y)[0], -1]).
    Symbolic shape inference may take M for the batch; only M == 1 shows it is not."""
    if not b.dynamic:
        return activation(b, x)
    b.families.add("dynamic_broadcast")
    shape = (1,) * (x.rank - 1) + (x.shape[-1],)
    y = b.add_input(shape, b.fresh("y"), [BROADCAST_DIM, *shape[1:]])
    ry = b.node("Relu", [y.name], shape)
    b.add_output(b.node("Expand", [ry.name, b.shape_of(x)], x.shape))
    target = b.raw("Concat", [b.dim_of(y, 0), b.ints([-1], "tail")], axis=0)[0]
    flat = b.raw("Reshape", [x.name, target])[0]
    b.outputs.append(helper.make_tensor_value_info(flat, b.elem, [BROADCAST_DIM, None]))
    return b.binary("Add", x.name, ry.name, x.shape)


REDUCE_OPS = ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp")


def reduction(b: Builder, x: Value) -> Value:
    """x - Reduce*(x, axes, keepdims=1): axes an input (ReduceSum from 13, the others from 18) or an
    attribute, which the opset upgrade must convert."""
    b.families.add("opset_sensitive")
    op = b.pick(REDUCE_OPS)
    axes = [int(b.rng.integers(1, x.rank))]
    shape = tuple(1 if i == axes[0] else d for i, d in enumerate(x.shape))
    if b.opset >= (13 if op == "ReduceSum" else 18):
        reduced = b.node(op, [x.name, b.ints(axes, "axes")], shape, keepdims=1)
    else:
        reduced = b.node(op, [x.name], shape, axes=axes, keepdims=1)
    return b.node("Sub", [x.name, reduced.name], x.shape)


def split_concat(b: Builder, x: Value) -> Value:
    """Split the last axis in two (split sizes as an input, or num_outputs from 18), one part
    through an activation, Concat back."""
    b.families.add("opset_sensitive")
    d = x.shape[-1]
    if d < 2:
        return activation(b, x)
    k = d // 2 if b.chance(0.6) else int(b.rng.integers(1, d))
    if b.opset >= 18 and d % 2 == 0 and k == d // 2 and b.chance(0.5):
        parts = b.raw("Split", [x.name], n_out=2, axis=-1, num_outputs=2)
    elif b.opset < 18 and d % 2 == 0 and k == d // 2 and b.chance(0.3):  # equal parts, no sizes given
        parts = b.raw("Split", [x.name], n_out=2, axis=-1)
    else:
        parts = b.raw("Split", [x.name, b.ints([k, d - k], "split")], n_out=2, axis=-1)
    first = b.node(b.pick(ACTIVATIONS), [parts[0]], (*x.shape[:-1], k))
    return b.node("Concat", [first.name, parts[1]], x.shape, axis=-1)


def pointwise(b: Builder, x: Value) -> Value:
    """Clip (min/max inputs, one omitted sometimes), LeakyRelu, HardSigmoid, Elu, Softplus, HardSwish,
    Softmax / LogSoftmax on any axis (13's per-axis meaning)."""
    b.families.add("opset_sensitive")
    ops = ["Clip", "Softmax", "LogSoftmax"]
    if b.dtype != np.float64:  # onnxruntime CPU has no double kernels for these (LeakyRelu: some opsets)
        ops += ["LeakyRelu", "HardSigmoid", "Elu", "Softplus"] + (["HardSwish"] if b.opset >= 14 else [])
    op = b.pick(ops)
    if op == "Clip":
        low, high = b.scalar(-0.5, "min", rank0=True), b.scalar(0.5, "max", rank0=True)
        inputs = [x.name, low, high] if b.chance(0.6) else b.pick([[x.name, "", high], [x.name, low]])
        return b.node("Clip", inputs, x.shape)
    if op in ("Softmax", "LogSoftmax"):
        return b.node(op, [x.name], x.shape, axis=int(b.rng.integers(-x.rank, x.rank)))
    if op == "LeakyRelu":
        return b.node(op, [x.name], x.shape, alpha=0.2)
    return b.node(op, [x.name], x.shape)


def resize(b: Builder, x: Value) -> Value:
    """Resize by 2 (nearest or linear; roi empty, scales an input) [-> 2x2 MaxPool back]."""
    b.families.add("opset_sensitive")
    scales = b.array(np.array([1, 1, 2, 2], np.float32), "scales")
    mode = b.pick(["nearest", "linear"])
    y = b.node("Resize", [x.name, "", scales], (*x.shape[:2], x.shape[2] * 2, x.shape[3] * 2), mode=mode)
    if b.chance(0.6):
        return b.node("MaxPool", [y.name], x.shape, kernel_shape=[2, 2], strides=[2, 2])
    return y


def seq_to_vec(b: Builder, x: Value) -> Value:
    """[B, S, D] -> [B, D]: the first token (Gather axis 1), or the mean over the sequence."""
    b.families.add("reshape_ops")
    if b.chance(0.5):
        return b.node("Gather", [x.name, b.ints(0, "idx")], (x.shape[0], x.shape[2]), axis=1)
    return b.reduce_mean(x, [1], keepdims=0)
