"""remove-noops: ops whose output is their input, and Reshape chains (exact).

Exporters leave these behind in every decoder LM: after the shape arithmetic folds, a
1-D shape tensor is reshaped to `[-1]` (nine times in a four-layer Llama), rotary
embeddings multiply cos and sin by an `attention_scaling` of 1.0, a head split
reshapes what the previous Reshape produced. Each is a node TensorRT must parse and a
tensor that keeps fusions apart. Removed here, with proof from the graph alone:

- Reshape whose constant target keeps every dim: each entry is 0 (copy, allowzero=0),
  the input's own static dim, or the single -1 standing for the one dim left;
- Reshape of a Reshape (the inner one read by nothing else) -> one Reshape of the
  source, when the outer target has no 0 (a 0 would copy the inner result's dims);
- Mul by a constant 1, Div by a constant 1, when the constant cannot broadcast the
  input to a larger rank and has its dtype: bit-for-bit the input (NaN included);
- Concat of one input (transformers' DynamicCache, filled from a past tensor, exports
  `cat([past])`; the copy sat between the cache input and the Concat that fuse-attention
  recognises as a decode step's).

Graph input/output names never change (passes.graph_utils.bypass).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import bypass, is_graph_io


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


def _reshape_target(node: gs.Node) -> list[int] | None:
    """The constant 1-D target of a Reshape that does not set allowzero, else None."""
    if node.op != "Reshape" or len(node.inputs) < 2 or node.attrs.get("allowzero", 0):
        return None
    target = _constant(node.inputs[1])
    return [int(v) for v in target] if target is not None and target.ndim == 1 else None


def keeps_shape(shape: list | None, target: list[int]) -> bool:
    """Whether Reshape(x, target) (allowzero=0) gives x's own shape, for x of `shape`.

    Every entry must provably keep its dim: 0 copies it, a positive entry equals the
    static dim; a single -1 then stands for the one dim not pinned otherwise.
    """
    if shape is None or len(shape) != len(target) or target.count(-1) > 1:
        return False
    for dim, want in zip(shape, target, strict=True):
        if want == 0 or want == -1:
            continue
        if not isinstance(dim, (int, np.integer)) or int(dim) != want:
            return False
    if -1 in target:  # the -1 is the remaining dim only when no dim is 0-sized (0 / 0 is undefined)
        return all(not isinstance(d, (int, np.integer)) or d > 0 for d in shape)
    return True


def _is_identity_reshape(node: gs.Node) -> bool:
    target = _reshape_target(node)
    return target is not None and keeps_shape(node.inputs[0].shape, target)


def _unit_operand(node: gs.Node) -> int | None:
    """For x*1, 1*x, x/1: the index of the constant 1 (x's index is the other), else None."""
    if node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    for index in (1, 0) if node.op == "Mul" else (1,):
        value, other = _constant(node.inputs[index]), node.inputs[1 - index]
        if value is None or value.size != 1 or not np.all(value == 1) or isinstance(other, gs.Constant):
            continue
        if other.shape is None or value.ndim > len(other.shape):  # broadcasting would add dims
            continue
        if other.dtype is None or np.dtype(other.dtype) != value.dtype:
            continue
        return index
    return None


def _merge_reshape_chain(node: gs.Node, graph: gs.Graph) -> bool:
    """Reshape(Reshape(x, a), b) -> Reshape(x, b) when `b` has no 0 and the inner result is private."""
    target = _reshape_target(node)
    inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    if target is None or 0 in target or inner is None or inner.op != "Reshape":
        return False
    middle = node.inputs[0]
    if len(middle.outputs) != 1 or is_graph_io(graph, middle):
        return False
    node.inputs[0] = inner.inputs[0]
    return True


@dataclass
class RemoveNoops(Pass):
    """Remove identity Reshapes, Reshape chains, one-input Concats and multiplications/divisions by one."""

    name = "remove-noops"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in list(graph.nodes):
            if not node.outputs:  # bypassed earlier in this loop
                continue
            if node.op == "Reshape" and _merge_reshape_chain(node, graph):
                result.count("reshape_chains_merged", node.name)
            if node.op == "Reshape" and _is_identity_reshape(node):
                kind = "identity_reshapes_removed"
            elif node.op == "Concat" and len(node.inputs) == 1:
                kind = "single_input_concats_removed"
            else:
                unit = _unit_operand(node)
                if unit is None:
                    continue
                if unit == 0:  # bypass passes the first input through
                    node.inputs[0], node.inputs[1] = node.inputs[1], node.inputs[0]
                kind = "multiplications_by_one_removed"
            reason = bypass(graph, node)
            if reason:
                result.reject(node.name, f"{node.op} kept: {reason}")
            else:
                result.count(kind, node.name)
        return result
