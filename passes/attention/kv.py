"""Key/value side of attention fusion: symbolic shape facts, Kᵀ -> K, and GQA un-repeating.

- `ShapeFacts`: dims of graph tensors from one symbolic shape inference (onnxruntime's,
  without auto-merging dims), computed on first use.
- `key_from_transposed`: the QK MatMul reads Kᵀ; the Attention op wants K [B, Hk, Skv, d].
  Kᵀ = Transpose(X, p) (p composed over any chain of Transposes, and over the SDPA
  exporters' Reshape-to-3-D / Transpose / Reshape-back spelling of a transpose) gives
  K = Transpose(X, p with its last two entries swapped): no node when that is the
  identity, else one Transpose. Exact for any layout.
- `unrepeat`: torch's `repeat_interleave(g, dim=1)` and HF's `repeat_kv` export as
  Unsqueeze(axis 2) -> Expand or Tile (g along axis 2 only) -> Reshape (merge axes 1
  and 2). When the symbolic dims prove each step, the un-repeated tensor is returned
  and the Attention op does the grouping itself (q head i reads kv head i // g, the
  same order). `k.repeat(1, g, 1, 1)` (Tile on the head axis: a different order) is not
  this pattern and stays repeated.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from passes.pattern_utils import Dim, compose_perms, constant_array, constant_of, dims_equal, producer, scalar_factor
from passes.symbolic_shapes import symbolic_dims

IDENTITY4 = [0, 1, 2, 3]


def strict_symbolic_dims(graph: gs.Graph) -> dict[str, list[Dim]]:
    """Symbolic dims *without* auto-merging: fold-shapes merges conflicting dims at
    broadcasts, assuming the runtime dim is never 1; a causal-mask proof must not
    (a [1, 1] mask broadcast over [Sq, Skv] masks nothing)."""
    return symbolic_dims(graph, auto_merge=False)


class ShapeFacts:
    """Symbolic dims of a graph's tensors, inferred once on first use."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self._dims: dict[str, list[Dim]] | None = None

    def load(self) -> None:
        if self._dims is None:
            self._dims = strict_symbolic_dims(self.graph)

    def dims(self, tensor: gs.Tensor) -> list[Dim] | None:
        if isinstance(tensor, gs.Constant):
            return [int(d) for d in tensor.shape]
        self.load()
        return self._dims.get(tensor.name)

    def rank(self, tensor: gs.Tensor) -> int | None:
        if tensor.shape is not None:
            return len(tensor.shape)
        dims = self.dims(tensor)
        return len(dims) if dims is not None else None


def _dims_are(actual: list[Dim] | None, expected: list[Dim | None]) -> bool:
    return (
        actual is not None
        and len(actual) == len(expected)
        and all(dims_equal(a, e) for a, e in zip(actual, expected, strict=True))
    )


def _swapped_through_3d(reshape: gs.Node, facts: ShapeFacts) -> gs.Tensor | None:
    """X when `reshape` computes X.transpose(-1, -2) the way SDPA exports do for a rank-4 X:
    Reshape(Transpose(Reshape(X, [B*H, S, d]), [0, 2, 1]), [B, H, d, S]).

    Row-major reshapes that keep the trailing dims only merge / split the leading ones,
    so matching dims prove it: X [b, h, s, d] -> [n, s, d] -> [n, d, s] -> [b, h, d, s].
    """
    transpose = producer(reshape.inputs[0], "Transpose")
    inner = producer(transpose.inputs[0], "Reshape") if transpose is not None else None
    if inner is None or list(transpose.attrs.get("perm", [])) != [0, 2, 1]:
        return None
    source = inner.inputs[0]
    x, flat, out = facts.dims(source), facts.dims(inner.outputs[0]), facts.dims(reshape.outputs[0])
    if x is None or flat is None or len(x) != 4 or len(flat) != 3:
        return None
    b, h, s, d = x
    return source if _dims_are(flat[1:], [s, d]) and _dims_are(out, [b, h, d, s]) else None


def peel_transposes(tensor: gs.Tensor, facts: ShapeFacts) -> tuple[gs.Tensor, list[int], float]:
    """(X, p, c) with tensor == c * Transpose(X, p), through Transposes and scalar Mul/Div in any order."""
    perm, scale = list(IDENTITY4), 1.0
    while True:
        node = producer(tensor)
        if node is None:
            break
        if node.op in ("Transpose", "Reshape"):
            inner = list(node.attrs.get("perm", [3, 2, 1, 0])) if node.op == "Transpose" else [0, 1, 3, 2]
            source = node.inputs[0] if node.op == "Transpose" else _swapped_through_3d(node, facts)
            if len(inner) != 4 or source is None:
                break
            perm, tensor = compose_perms(inner, perm), source
            continue
        found = scalar_factor(node)
        if found is None:
            break
        tensor, factor = found
        scale *= factor
    return tensor, perm, scale


def key_needs_no_transpose(perm: list[int]) -> bool:
    """Whether Kᵀ = Transpose(base, perm) means K is `base` itself."""
    return [perm[0], perm[1], perm[3], perm[2]] == IDENTITY4


def key_from_transposed(graph: gs.Graph, base: gs.Tensor, perm: list[int], name: str, unique) -> gs.Tensor:
    """K = Kᵀ with its last two axes swapped, where Kᵀ = Transpose(base, perm)."""
    want = [perm[0], perm[1], perm[3], perm[2]]
    if want == IDENTITY4:
        return base
    out = gs.Variable(unique(f"{name}_key"), dtype=base.dtype)
    graph.nodes.append(gs.Node("Transpose", unique(f"{name}_key_transpose"), {"perm": want}, [base], [out]))
    return out


def _unsqueeze_axes(node: gs.Node) -> list[int] | None:
    if len(node.inputs) > 1:
        axes = constant_array(node.inputs[1])
        return [int(a) for a in axes.ravel()] if axes is not None else None
    return list(node.attrs.get("axes", [])) or None


def unrepeat(tensor: gs.Tensor, facts: ShapeFacts) -> tuple[gs.Tensor, int] | None:
    """(X, g) when `tensor` is repeat_interleave(X, g, dim=1) for a rank-4 X, else None.

    Proved from dims: Unsqueeze(X, 2) is [B, H, 1, S, d]; the Expand/Tile output is
    [B, H, g, S, d] (only axis 2 grew, so it is the broadcast); the Reshape output is
    [B, H*g, S, d], which in row-major order can only be axes 1 and 2 merged.
    """
    reshape = producer(tensor, "Reshape")
    repeat = producer(reshape.inputs[0], ("Expand", "Tile")) if reshape is not None else None
    unsqueeze = producer(repeat.inputs[0], "Unsqueeze") if repeat is not None else None
    if unsqueeze is None or _unsqueeze_axes(unsqueeze) not in ([2], [-3]):
        return None
    source = unsqueeze.inputs[0]
    b, h, s, d = facts.dims(source) or [None] * 4
    repeated = facts.dims(repeat.outputs[0])
    groups = repeated[2] if repeated is not None and len(repeated) == 5 else None
    if not isinstance(h, int) or not isinstance(groups, int) or groups < 2:
        return None
    if _dims_are(repeated, [b, h, groups, s, d]) and _dims_are(facts.dims(tensor), [b, h * groups, s, d]):
        return source, groups
    return None


def unrepeat_pair(key: gs.Tensor, value: gs.Tensor, facts: ShapeFacts) -> tuple[gs.Tensor, gs.Tensor, int]:
    """K and V un-repeated with the same group count, or both as they are (groups 1)."""
    k, v = unrepeat(key, facts), unrepeat(value, facts)
    if k is not None and v is not None and k[1] == v[1] and k[1] > 1:
        return k[0], v[0], k[1]
    return key, value, 1


def filled_with(tensor: gs.Tensor, facts: ShapeFacts, predicate) -> list[Dim] | None:
    """The dims of a tensor whose every element satisfies `predicate` (ConstantOfShape, Expand of
    a one-element constant, or a constant), else None."""
    node = producer(tensor, ("ConstantOfShape", "Expand"))
    if node is not None:
        value = node.attrs.get("value") if node.op == "ConstantOfShape" else constant_of(node.inputs[0])
        values = np.asarray(value.values) if isinstance(value, gs.Constant) else None
        if values is None or values.size != 1 or not predicate(values).all():
            return None
        return facts.dims(tensor)
    const = constant_array(tensor)
    ok = const is not None and const.size and predicate(const).all()
    return [int(d) for d in const.shape] if ok else None
