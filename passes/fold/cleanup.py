"""Cleanup: remove nodes that compute nothing at inference time (exact).

- Identity, and Dropout in inference form (no training_mode input set to true, and
  its optional mask output unused);
- Cast to the dtype its input already has, and the second Cast of a round trip
  Cast(Cast(x, wide), x's type) through a type that holds every value of x's (float16
  -> float32 -> float16: HF's fp16 attention writes `softmax(...).to(float32).to(float16)`,
  which keeps Softmax and its MatMul with V apart); its readers read x, and the first
  Cast stays only for readers of its own;
- dead nodes (counted here); unused initializers are dropped by every pass's
  export, and the manager's record shows the initializer count before and after.
Graph input/output names never change.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import bypass
from passes.pattern_utils import numpy_dtype, producer


def _dropout_is_inference(node: gs.Node) -> str | None:
    """None when the Dropout is a no-op at inference, else the reason it is not."""
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return "its mask output is used"
    if len(node.inputs) >= 3:
        mode = node.inputs[2]
        if not isinstance(mode, gs.Constant):
            return "training_mode is not a constant"
        if bool(np.asarray(mode.values).item()):
            return "training_mode is true"
    return None


# x's type -> types that hold each of its values exactly (a Cast there and back is x itself)
_WIDER = {
    np.dtype(t): tuple(np.dtype(w) for w in wider)
    for t, wider in (
        (np.float16, (np.float32, np.float64)),
        (np.float32, (np.float64,)),
        (np.int8, (np.int16, np.int32, np.int64)),
        (np.uint8, (np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)),
        (np.int16, (np.int32, np.int64)),
        (np.uint16, (np.int32, np.uint32, np.int64, np.uint64)),
        (np.int32, (np.int64,)),
        (np.uint32, (np.int64, np.uint64)),
    )
}


def _cast_type(node: gs.Node) -> np.dtype | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    except (TypeError, ValueError, KeyError):
        return None


def _noop_cast_source(node: gs.Node) -> gs.Tensor | None:
    """The tensor a Cast reproduces exactly (module docstring), or None."""
    target, src = _cast_type(node), node.inputs[0]
    if target is None:
        return None
    if numpy_dtype(src) == target:
        return src
    inner = producer(src, "Cast")
    if inner is None or numpy_dtype(inner.inputs[0]) != target or _cast_type(inner) not in _WIDER.get(target, ()):
        return None
    return inner.inputs[0]


@dataclass
class Cleanup(Pass):
    """Remove Identity / inference Dropout / no-op Cast, then dead code."""

    name = "cleanup"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in list(graph.nodes):
            if node.op == "Identity":
                kind = "identity_removed"
            elif node.op == "Dropout":
                reason = _dropout_is_inference(node)
                if reason:
                    result.reject(node.name, f"Dropout kept: {reason}")
                    continue
                kind = "dropout_removed"
            elif node.op == "Cast" and (source := _noop_cast_source(node)) is not None:
                node.inputs[0] = source  # the Cast's own input, or the round trip's start
                kind = "noop_cast_removed"
            else:
                continue
            reason = bypass(graph, node)
            if reason:
                result.reject(node.name, f"{node.op} kept: {reason}")
            else:
                result.count(kind, node.name)

        nodes_before = len(graph.nodes)
        graph.cleanup(remove_unused_graph_inputs=False)  # removals keep the order: no toposort
        dead = (
            nodes_before
            - len(graph.nodes)
            - sum(result.changed.get(k, 0) for k in ("identity_removed", "dropout_removed", "noop_cast_removed"))
        )
        if dead > 0:
            result.count("dead_nodes_removed", n=dead)
        return result
