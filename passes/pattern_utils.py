"""Matching helpers for passes that recognise what a subgraph computes.

They answer semantic questions ("is this tensor a scalar constant close to 0.5?",
"what are the factors of this product?") so patterns do not depend on the order in
which one exporter happened to emit Mul/Div/Add nodes.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs


def producer(tensor: gs.Tensor, op: str | tuple[str, ...] | None = None) -> gs.Node | None:
    """The node writing `tensor` (optionally only if its op is `op`)."""
    if not tensor.inputs:
        return None
    node = tensor.inputs[0]
    ops = (op,) if isinstance(op, str) else op
    return node if ops is None or node.op in ops else None


def only_consumer(tensor: gs.Tensor) -> gs.Node | None:
    readers = list(tensor.outputs)
    return readers[0] if len(readers) == 1 else None


def scalar_value(tensor: gs.Tensor) -> float | None:
    """The value of a constant with a single element (any shape), else None.

    Constants come as initializers or as outputs of Constant nodes (TorchScript).
    """
    const = constant_of(tensor)
    if const is not None:
        values = np.asarray(const.values)
        if values.size == 1 and values.dtype.kind == "f":
            return float(values.ravel()[0])
    return None


def constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None when not constant."""
    const = constant_of(tensor)
    return np.asarray(const.values) if const is not None else None


def constant_of(tensor: gs.Tensor) -> gs.Constant | None:
    """The gs.Constant holding `tensor`'s value, whether an initializer or a Constant node's."""
    if isinstance(tensor, gs.Constant):
        return tensor
    node = producer(tensor, "Constant")
    value = node.attrs.get("value") if node is not None else None
    return value if isinstance(value, gs.Constant) else None


def is_scalar(tensor: gs.Tensor, expected: float, rel: float = 1e-3) -> bool:
    value = scalar_value(tensor)
    return value is not None and abs(value - expected) <= rel * max(abs(expected), 1e-12)


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """For a binary node reading `tensor`, its other input."""
    if len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if a is tensor:
        return b
    if b is tensor:
        return a
    return None


def product_from(start: gs.Tensor, wanted_leaves: int) -> tuple[gs.Node, list[gs.Tensor], list[gs.Node]] | None:
    """Climb the chain of Mul nodes that multiply `start` by other factors.

    Returns (root Mul, factors other than `start`, Mul nodes in the product) once the
    product has `wanted_leaves` factors besides `start`. A factor that is itself a
    single-use Mul is expanded, so x*(t*0.5) and (x*0.5)*t and (x*t)*0.5 look the same.
    """
    tensor, factors, muls = start, [], []
    while len(factors) < wanted_leaves:
        node = only_consumer(tensor)
        if node is None or node.op != "Mul":
            return None
        other = other_input(node, tensor)
        if other is None:
            return None
        inner = producer(other, "Mul")
        if inner is not None and only_consumer(other) is node and not isinstance(other, gs.Constant):
            factors.extend(inner.inputs)
            muls.append(inner)
        else:
            factors.append(other)
        muls.append(node)
        tensor = node.outputs[0]
    return (muls[-1], factors, muls) if len(factors) == wanted_leaves else None


def reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* node, from its attribute (opset < 18) or constant input (>= 18)."""
    if len(node.inputs) > 1:
        axes = node.inputs[1]
        return [int(a) for a in np.asarray(axes.values).ravel()] if isinstance(axes, gs.Constant) else None
    return list(node.attrs["axes"]) if "axes" in node.attrs else None


def is_last_axis(axes: list[int] | None, rank: int | None) -> bool:
    return axes is not None and len(axes) == 1 and (axes[0] == -1 or (rank is not None and axes[0] == rank - 1))


def rank_of(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


# --- appended for fuse-attention: scalar factors, transposes, symbolic dims ---

Dim = int | str  # a static dim, or the name of a symbolic one ('?...' = unknown, equal to nothing)


def scalar_factor(node: gs.Node) -> tuple[gs.Tensor, float] | None:
    """(x, c) when `node` is x * c, c * x or x / c (then c is returned as 1/c) for a scalar constant c.

    The constant must have a single element and no more dims than x (so it cannot
    broadcast x up to a higher rank).
    """
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    orders = [(node.inputs[0], node.inputs[1])]
    if node.op == "Mul":
        orders.append((node.inputs[1], node.inputs[0]))
    for x, c in orders:
        value = scalar_value(c)
        const = constant_array(c)
        if value is None or isinstance(x, gs.Constant) or constant_of(x) is not None:
            continue
        rank = rank_of(x)
        if const is not None and rank is not None and const.ndim > rank:
            continue
        if node.op == "Div":
            return (x, 1.0 / value) if value != 0 else None
        return x, value
    return None


def compose_perms(inner: list[int], outer: list[int]) -> list[int]:
    """The perm p with Transpose(Transpose(x, inner), outer) == Transpose(x, p)."""
    return [inner[i] for i in outer]


def dims_equal(a: Dim | None, b: Dim | None) -> bool:
    """True when two dims are provably equal: equal ints, or the same (known) symbol."""
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return isinstance(a, str) and a == b and not a.startswith("?")


def numpy_dtype(tensor: gs.Tensor) -> np.dtype | None:
    """The tensor's numpy dtype; None when unknown or not a numpy type (e.g. bfloat16 in gs)."""
    try:
        return np.dtype(tensor.dtype) if tensor.dtype is not None else None
    except TypeError:
        return None
