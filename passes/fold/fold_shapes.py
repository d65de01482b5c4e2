"""Simplify dynamic shape arithmetic using symbolic shapes (exact).

Exporters compute reshape targets at run time: `x.view(B, S, 12, 32)` becomes
Shape(x) -> Gather(0), Gather(1) -> Unsqueeze -> Concat(.., 12, 32) -> Reshape. The
dims are dynamic, so plain constant folding cannot remove that subgraph. With
symbolic shapes (onnxruntime's symbolic shape inference names every dim, e.g.
'batch', 'sequence', and proves equalities through MatMul/Transpose/...), we know
that entry 0 of the target *is* dim 0 of the Reshape's own input, and Reshape's
"0 = copy this dim" rule expresses exactly that: the target becomes the constant
[0, 0, 12, 32]. Dims that inference merges where they broadcast count as equal only
when a valid run forces them to be (passes/model_utils.py, checked_symbolic_dims): an
input [M, D] added to [N, D] may have M = 1. What this pass rewrites:

- Reshape whose target's entries are all known (ints, or dims of some tensor): an
  entry equal to the data input's dim at the same position becomes 0, static dims
  their value, and at most one remaining dynamic entry becomes -1 (only when the
  target has no -1 already; allowzero=1 targets qualify when they hold no literal 0);
- Expand whose target shape leaves its input unchanged (every entry 1 or equal to
  the input's dim) is removed;
- Slice on a dim from 0 to that dim's own size (read through Shape), step 1, is
  removed;
- any shape-arithmetic tensor whose value is fully static becomes a constant.
The subgraphs that computed the old targets die and are cleaned up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import bypass, redirect
from passes.symbolic_shapes import checked_symbolic_dims

Dim = int | str  # an int, or the name of a symbolic dim


@dataclass
class ShapeValue:
    """The symbolic content of a small int64 tensor (a shape or a dim)."""

    dims: list[Dim]
    scalar: bool = False

    @property
    def static(self) -> bool:
        return all(isinstance(d, int) for d in self.dims)


def _const_ints(tensor: gs.Tensor) -> ShapeValue | None:
    # dtype and rank first: they are known without loading the values (an embedding
    # table read by Gather is a Constant too, and loading it costs more than this pass).
    if not isinstance(tensor, gs.Constant) or len(tensor.shape) > 1:
        return None
    if not isinstance(tensor.dtype, np.dtype) or tensor.dtype.kind not in "iu":
        return None
    values = np.asarray(tensor.values)
    if values.dtype.kind not in "iu" or values.ndim > 1:
        return None
    return ShapeValue([int(v) for v in values.ravel()], scalar=values.ndim == 0)


class ShapeEvaluator:
    """Evaluates int64 shape subgraphs to ShapeValues, memoised per tensor."""

    def __init__(self, shapes: dict[str, list[Dim]]):
        self.shapes = shapes
        self.cache: dict[str, ShapeValue | None] = {}

    def value(self, tensor: gs.Tensor) -> ShapeValue | None:
        if tensor.name not in self.cache:
            self.cache[tensor.name] = None  # guards cycles
            self.cache[tensor.name] = self._evaluate(tensor)
        return self.cache[tensor.name]

    def _evaluate(self, tensor: gs.Tensor) -> ShapeValue | None:
        const = _const_ints(tensor)
        if const is not None or not tensor.inputs:
            return const
        node = tensor.inputs[0]
        handler = getattr(self, f"_op_{node.op}", None)
        return handler(node) if handler and len(node.outputs) == 1 else None

    def _op_Shape(self, node: gs.Node) -> ShapeValue | None:
        dims = self.shapes.get(node.inputs[0].name)
        if dims is None:
            return None
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return ShapeValue(list(dims[start:end]))

    def _op_Gather(self, node: gs.Node) -> ShapeValue | None:
        data, index = self.value(node.inputs[0]), _const_ints(node.inputs[1])
        if data is None or index is None or node.attrs.get("axis", 0) != 0 or data.scalar:
            return None
        try:
            return ShapeValue([data.dims[i] for i in index.dims], scalar=index.scalar)
        except IndexError:
            return None

    def _op_Unsqueeze(self, node: gs.Node) -> ShapeValue | None:
        data = self.value(node.inputs[0])
        axes = _const_ints(node.inputs[1]) if len(node.inputs) > 1 else ShapeValue(node.attrs.get("axes", []))
        if data is None or not data.scalar or axes is None or axes.dims not in ([0], [-1]):
            return None
        return ShapeValue(list(data.dims))

    def _op_Squeeze(self, node: gs.Node) -> ShapeValue | None:
        data = self.value(node.inputs[0])
        return ShapeValue(list(data.dims), scalar=True) if data is not None and len(data.dims) == 1 else None

    def _op_Concat(self, node: gs.Node) -> ShapeValue | None:
        parts = [self.value(t) for t in node.inputs]
        if node.attrs.get("axis", 0) not in (0, -1) or any(p is None or p.scalar for p in parts):
            return None
        return ShapeValue([d for p in parts for d in p.dims])

    def _op_Cast(self, node: gs.Node) -> ShapeValue | None:
        if node.attrs.get("to") not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return None
        return self.value(node.inputs[0])

    def _op_Reshape(self, node: gs.Node) -> ShapeValue | None:
        """A 1-D shape reshaped to [-1] (what exporters write around Concat): the same value."""
        data, target = self.value(node.inputs[0]), _const_ints(node.inputs[1])
        if data is None or data.scalar or target is None or target.dims != [-1]:
            return None
        return ShapeValue(list(data.dims))

    def _op_Equal(self, node: gs.Node) -> ShapeValue | None:
        """Elementwise ==, as 0/1, where every pair is decided: two ints, or a dim (never
        negative) against a negative constant (torch's expand: `Where(shape == -1, 1, shape)`)."""
        a, b = (self.value(t) for t in node.inputs)
        if a is None or b is None or a.scalar or b.scalar or len(b.dims) not in (1, len(a.dims)):
            return None
        decided = []
        for x, y in zip(a.dims, b.dims * len(a.dims) if len(b.dims) == 1 else b.dims, strict=True):
            if isinstance(x, int) and isinstance(y, int):
                decided.append(int(x == y))
            elif isinstance(y, int) and y < 0 or isinstance(x, int) and x < 0:
                decided.append(0)  # a dim is >= 0: it never equals a negative number
            else:
                return None
        return ShapeValue(decided)

    def _op_Where(self, node: gs.Node) -> ShapeValue | None:
        """Elementwise choice by a decided condition (1-D, equal lengths or length 1)."""
        cond, a, b = (self.value(t) for t in node.inputs)
        if cond is None or a is None or b is None or any(v.scalar for v in (cond, a, b)) or not cond.static:
            return None
        size = max(len(cond.dims), len(a.dims), len(b.dims))
        if any(len(v.dims) not in (1, size) for v in (cond, a, b)):
            return None

        def at(v: ShapeValue, i: int) -> Dim:
            return v.dims[0] if len(v.dims) == 1 else v.dims[i]

        return ShapeValue([at(a, i) if at(cond, i) else at(b, i) for i in range(size)])

    def _op_Slice(self, node: gs.Node) -> ShapeValue | None:
        data = self.value(node.inputs[0])
        bounds = [_const_ints(t) for t in node.inputs[1:]]
        if data is None or data.scalar or any(b is None for b in bounds) or len(bounds) < 2:
            return None
        starts, ends = bounds[0].dims, bounds[1].dims
        steps = bounds[3].dims if len(bounds) > 3 else [1]
        if len(starts) != 1 or len(ends) != 1 or steps != [1]:
            return None
        return ShapeValue(data.dims[starts[0] : ends[0]])


def _reshape_target(data_dims: list[Dim] | None, target: ShapeValue) -> list[int] | str:
    """A constant Reshape target equivalent to `target`, or the reason there is none."""
    result: list[int] = []
    unknown = []
    for j, dim in enumerate(target.dims):
        if isinstance(dim, int):
            result.append(dim)
        elif data_dims is not None and j < len(data_dims) and data_dims[j] == dim:
            result.append(0)
        else:
            unknown.append(j)
            result.append(-1)
    if len(unknown) > 1:
        return f"{len(unknown)} target dims are dynamic and not dims of the input at the same position"
    if unknown and result.count(-1) > 1:
        return "target already has a -1 and another dynamic dim"
    return result


def _expand_target(data_dims: list[Dim], target: ShapeValue) -> list[int] | None:
    """A constant Expand target equivalent to `target`, or None.

    Expand broadcasts: a target dim of 1 keeps the input's dim. So a symbolic target dim
    equal to the input's dim at the same (right-aligned) position becomes 1; an int stays;
    any other symbol (a dim the input does not have there) keeps the target dynamic.
    """
    if target.scalar:
        return None
    offset = len(target.dims) - len(data_dims)
    folded = []
    for j, dim in enumerate(target.dims):
        i = j - offset
        if isinstance(dim, int):
            folded.append(dim)
        elif 0 <= i < len(data_dims) and data_dims[i] == dim:
            folded.append(1)
        else:
            return None
    return folded


def _reads_dims(graph: gs.Graph) -> bool:
    """True when some node is one whose rewrite consults symbolic dims."""
    for node in graph.nodes:
        if node.op in ("Shape", "Expand"):
            return True
        if node.op == "Reshape" and not isinstance(node.inputs[1], gs.Constant):
            return True
        if node.op == "Slice" and len(node.inputs) > 2 and not isinstance(node.inputs[2], gs.Constant):
            return True
    return False


@dataclass
class FoldShapes(Pass):
    """Replace dynamic shape subgraphs by constants where symbolic shapes prove them."""

    name = "fold-shapes"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        # Symbolic inference is most of this pass's cost; only the ops below ever read a
        # dim, so a graph without them (e.g. one whose shapes all folded) skips it. Its
        # merges of dims at broadcasts count only where a valid run forces them equal.
        shapes, unmerged = checked_symbolic_dims(graph) if _reads_dims(graph) else ({}, None)
        if unmerged:
            result.notes.append(unmerged)
        evaluator = ShapeEvaluator(shapes)
        for node in list(graph.nodes):
            if node.op == "Reshape":
                self._reshape(node, evaluator, shapes, result)
            elif node.op == "Expand":
                self._expand(graph, node, evaluator, shapes, result)
            elif node.op == "Slice":
                self._slice(graph, node, evaluator, shapes, result)
        self._freeze_static(graph, evaluator, result)
        return result

    def _reshape(self, node, evaluator, shapes, result) -> None:
        target_tensor = node.inputs[1]
        if isinstance(target_tensor, gs.Constant):
            return
        target = evaluator.value(target_tensor)
        if target is None:
            result.reject(node.name, "Reshape target is not a known shape expression")
            return
        folded = _reshape_target(shapes.get(node.inputs[0].name), target)
        if isinstance(folded, str):
            result.reject(node.name, f"Reshape kept dynamic: {folded}")
            return
        if node.attrs.get("allowzero", 0) and 0 in target.dims:
            result.reject(node.name, "Reshape kept dynamic: allowzero=1 with a literal 0 in the target")
            return
        # allowzero=1 only changes the meaning of literal zeros, and there are none:
        # the new target's zeros must mean "copy", so allowzero goes back to its default 0
        # (dropped, not written: Reshape has no allowzero attribute before opset 14).
        node.attrs.pop("allowzero", None)
        node.inputs[1] = gs.Constant(f"{node.name}_shape", np.array(folded, dtype=np.int64))
        result.count("reshape_targets_folded", node.name)

    def _expand(self, graph, node, evaluator, shapes, result) -> None:
        data_dims = shapes.get(node.inputs[0].name)
        target = evaluator.value(node.inputs[1])
        if data_dims is None or target is None:
            return
        if len(target.dims) > len(data_dims):  # Expand may add leading dims: only a fold then
            folded = _expand_target(data_dims, target)
            if folded is not None and not isinstance(node.inputs[1], gs.Constant):
                node.inputs[1] = gs.Constant(f"{node.name}_shape", np.array(folded, dtype=np.int64))
                result.count("expand_targets_folded", node.name)
            return
        tail = data_dims[len(data_dims) - len(target.dims) :]
        noop = all(t == 1 or t == d for t, d in zip(target.dims, tail, strict=True))
        if noop and bypass(graph, node) is None:
            result.count("noop_expands_removed", node.name)
            return
        folded = _expand_target(data_dims, target)
        if folded is not None and not isinstance(node.inputs[1], gs.Constant):
            node.inputs[1] = gs.Constant(f"{node.name}_shape", np.array(folded, dtype=np.int64))
            result.count("expand_targets_folded", node.name)

    def _slice(self, graph, node, evaluator, shapes, result) -> None:
        data_dims = shapes.get(node.inputs[0].name)
        if data_dims is None or len(node.inputs) < 3:
            return
        starts, ends = _const_ints(node.inputs[1]), evaluator.value(node.inputs[2])
        axes = _const_ints(node.inputs[3]) if len(node.inputs) > 3 else ShapeValue([0])
        steps = _const_ints(node.inputs[4]) if len(node.inputs) > 4 else ShapeValue([1])
        if None in (starts, ends, axes, steps) or isinstance(node.inputs[2], gs.Constant):
            return
        full = all(
            s == 0 and st == 1 and -len(data_dims) <= a < len(data_dims) and data_dims[a] == e
            for s, e, a, st in zip(starts.dims, ends.dims, axes.dims, steps.dims, strict=False)
        )
        full = full and len(starts.dims) == len(ends.dims) == len(axes.dims)
        if full and bypass(graph, node) is None:
            result.count("noop_slices_removed", node.name)

    def _freeze_static(self, graph, evaluator, result) -> None:
        """Shape expressions that turned out fully static become constants."""
        for node in list(graph.nodes):
            if node.op not in ("Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast"):
                continue
            out = node.outputs[0] if len(node.outputs) == 1 else None
            if out is None or not out.outputs or any(t is out for t in graph.outputs):
                continue
            value = evaluator.value(out)
            if value is None or not value.static:
                continue
            dtype = np.int32 if out.dtype is not None and np.dtype(out.dtype) == np.int32 else np.int64
            array = np.array(value.dims[0] if value.scalar else value.dims, dtype=dtype)
            redirect(out, gs.Constant(f"{out.name}_static", array), list(out.outputs))
            result.count("static_shapes_frozen", node.name)
