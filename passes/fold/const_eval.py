"""Exact numpy evaluation of the ONNX ops that exporters write shape arithmetic with.

fold-constants evaluates these itself and leaves everything else to onnxruntime:
exporters spell shape computations (Shape -> Gather -> Concat -> Reshape, padding
amounts, masks) as hundreds of tiny int64 nodes, and for those building an
onnxruntime session costs far more than the arithmetic. Only forms whose numpy result
is bit-identical to onnxruntime's are here:

- data movement of any dtype: Identity, Reshape, Transpose, Concat, Gather, Slice,
  Unsqueeze, Squeeze, Shape (of a constant), ConstantOfShape;
- integer (and bool) arithmetic: Add, Sub, Mul on integers, Cast between integer and
  bool types (both wrap on overflow like numpy).

Float arithmetic is not (numpy and onnxruntime may round differently), nor are edge
forms where implementations disagree (e.g. a reversing Slice that starts before the
first element: numpy gives nothing, onnxruntime the first element). For those, and
for anything malformed, `evaluate` returns None and the caller falls back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Values = list[np.ndarray | None]  # per node input; None for an omitted optional input
INT32_MAX, INT64_MAX = np.iinfo(np.int32).max, np.iinfo(np.int64).max


def _ints(value: np.ndarray | None) -> list[int] | None:
    if value is None or value.dtype.kind not in "iu" or value.ndim > 1:
        return None
    return [int(v) for v in value.ravel()]


def _axes(node: gs.Node, inputs: Values, opset: int, since: int) -> list[int] | None:
    """Axes from the `axes` input (opset >= since) or attribute; None when given neither."""
    if opset >= since:
        return _ints(inputs[1]) if len(inputs) > 1 and inputs[1] is not None else None
    return [int(a) for a in node.attrs["axes"]] if "axes" in node.attrs else None


def _shape(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    dims = inputs[0].shape
    return np.array(dims[node.attrs.get("start", 0) : node.attrs.get("end", len(dims))], np.int64)


def _cast(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    x = inputs[0]
    target = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    if x.dtype == target:
        return x
    return x.astype(target) if x.dtype.kind in "iub" and target.kind in "iub" else None


def _unsqueeze(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    axes = _axes(node, inputs, opset, since=13)
    return np.expand_dims(inputs[0], tuple(axes)) if axes else None


def _squeeze(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    axes = _axes(node, inputs, opset, since=13)
    if axes == []:  # numpy squeezes nothing, onnxruntime every size-1 dim
        return None
    return np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))


def _concat(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    if len({x.dtype for x in inputs}) != 1 or any(x.ndim == 0 for x in inputs):
        return None
    return np.concatenate(inputs, axis=int(node.attrs["axis"]))


def _gather(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    data, indices = inputs
    if indices.dtype.kind not in "iu":
        return None
    return np.take(data, indices, axis=int(node.attrs.get("axis", 0)))


def _reshape(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    x, target = inputs[0], _ints(inputs[1])
    if target is None:
        return None
    if not node.attrs.get("allowzero", 0):  # 0 copies the input's dim at that position
        if any(d == 0 and i >= x.ndim for i, d in enumerate(target)):
            return None
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return np.reshape(x, target)


def _transpose(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    perm = node.attrs.get("perm")
    return np.transpose(inputs[0], None if perm is None else [int(p) for p in perm])


def _slice(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    x = inputs[0]
    if opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        axes, steps = list(node.attrs.get("axes", range(len(starts)))), [1] * len(starts)
    else:
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
        if starts is None or ends is None:
            return None
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return None
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis + x.ndim if axis < 0 else axis
        if not 0 <= axis < x.ndim or index[axis] != slice(None) or step == 0:
            return None
        dim = x.shape[axis]
        # Backwards, onnxruntime clamps a start outside the dim and treats INT_MAX ends
        # its own way; only the forms where it agrees with Python slicing are evaluated.
        if step < 0 and (not -dim <= start < dim or end >= dim or end in (INT32_MAX, INT64_MAX)):
            return None
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


def _constant_of_shape(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    dims = _ints(inputs[0])
    value = node.attrs.get("value")
    fill = np.zeros(1, np.float32) if value is None else np.asarray(value.values)
    if dims is None or any(d < 0 for d in dims) or fill.size != 1:
        return None
    return np.full(dims, fill.ravel()[0], dtype=fill.dtype)


def _integer_op(func: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable[..., np.ndarray | None]:
    def evaluate(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
        a, b = inputs
        if a.dtype != b.dtype or a.dtype.kind not in "iu":
            return None
        with np.errstate(over="ignore"):  # wraps, as onnxruntime's integer arithmetic does
            return np.asarray(func(a, b))

    return evaluate


EVALUATORS: dict[str, Callable[[gs.Node, Values, int], np.ndarray | None]] = {
    "Identity": lambda node, inputs, opset: inputs[0],
    "Shape": _shape,
    "Cast": _cast,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Concat": _concat,
    "Gather": _gather,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "Slice": _slice,
    "ConstantOfShape": _constant_of_shape,
    "Add": _integer_op(np.add),
    "Sub": _integer_op(np.subtract),
    "Mul": _integer_op(np.multiply),
}


def evaluate(node: gs.Node, inputs: Values, opset: int) -> np.ndarray | None:
    """The single output of `node` computed from constant `inputs`, or None when this
    module does not evaluate that op or form exactly (the caller then falls back)."""
    evaluator = EVALUATORS.get(node.op) if node.domain in (None, "", "ai.onnx") else None
    if evaluator is None or len(node.outputs) != 1 or any(v is None for v in inputs[:1]):
        return None
    try:
        value = evaluator(node, inputs, opset)
    except (ValueError, IndexError, TypeError, KeyError):
        return None  # a malformed node: leave it to the fallback, which reports it
    return None if value is None else np.asarray(value)  # numpy may hand back a scalar
