"""Cleanup: remove nodes that compute nothing at inference time (exact).

- Identity, and Dropout in inference form (no training_mode input set to true, and
  its optional mask output unused);
- Cast to the dtype its input already has;
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


def _cast_is_noop(node: gs.Node) -> bool:
    src = node.inputs[0]
    if src.dtype is None:
        return False
    target = node.attrs.get("to")
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(int(target))) == np.dtype(src.dtype)
    except (TypeError, ValueError, KeyError):
        return False


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
            elif node.op == "Cast" and _cast_is_noop(node):
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
