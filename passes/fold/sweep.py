"""Rewrite to a fixed point: sweep over a graph's nodes until a sweep changes nothing.

One rewrite can make another possible (BN -> BN -> Conv, a chain of linear ops, an Add
tree whose branches merged), and a second run of a pass must change nothing, so the
folding passes repeat their sweep until it finds nothing more to do.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_graphsurgeon as gs

from passes.base import PassResult
from passes.graph_utils import FreshNames

MAX_SWEEPS = 16
Outcome = tuple[bool, str]  # (True, kind) when rewritten, (False, reason) when rejected
Visit = Callable[[gs.Graph, FreshNames, gs.Node], list[Outcome]]  # (graph, names for new tensors, node)


def sweep(graph: gs.Graph, visit: Visit, tidy: bool = False, max_sweeps: int | None = MAX_SWEEPS) -> PassResult:
    """Call `visit` on every node that still has outputs, sweep after sweep, until one changes nothing.

    `visit` says what it did at the node: rewrites are counted by kind under the node's
    name, rejections recorded with their reason, only those of the last sweep (they
    describe what is left). With `tidy`, dead nodes are removed and the graph sorted
    between sweeps (for rewrites that match on readers). `max_sweeps=None` sweeps
    until done, for rewrites that each remove a node and so must end.
    """
    result, names = PassResult(), FreshNames(graph)
    sweeps, rejected = 0, []
    while max_sweeps is None or sweeps < max_sweeps:
        sweeps += 1
        changed, rejected = False, []
        for node in list(graph.nodes):
            for done, text in visit(graph, names, node) if node.outputs else []:  # no outputs: already replaced
                if done:
                    result.count(text, node.name)
                    changed = True
                else:
                    rejected.append((node.name, text))
        if not changed:
            break
        if tidy:
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for node_name, reason in rejected:
        result.reject(node_name, reason)
    return result
