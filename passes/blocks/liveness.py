"""Liveness in an ONNX graph: what the graph outputs still need, and dropping the rest.

Shared by the removal of blocks (rewiring.py) and of a removed layer's KV cache (cache_io.py).
"""

from __future__ import annotations

import onnx


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Inputs including those a subgraph (If/Loop/Scan body) reads from the outer scope."""
    names = [t for t in node.input if t]
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for graph in graphs:
            for inner in graph.node:
                names += node_inputs(inner)
    return names


def live(
    graph: onnx.GraphProto, subst: dict[str, str] | None = None, roots: list[str] | None = None
) -> tuple[set[int], set[str]]:
    """(live node indices, live tensor names) when readers see `subst` in place of the replaced tensors;
    live = needed by `roots` (default: every graph output)."""
    subst = subst or {}
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    nodes: set[int] = set()
    tensors: set[str] = set()
    stack = [subst.get(name, name) for name in (roots if roots is not None else [o.name for o in graph.output])]
    while stack:
        t = stack.pop()
        if t in tensors:
            continue
        tensors.add(t)
        i = producer.get(t)
        if i is not None and i not in nodes:
            nodes.add(i)
            stack += [subst.get(x, x) for x in node_inputs(graph.node[i])]
    return nodes, tensors


def keep_live(graph: onnx.GraphProto) -> set[str]:
    """Delete the nodes, initializers and value infos no graph output needs; returns the live tensor names."""
    keep, used = live(graph)
    kept = [n for i, n in enumerate(graph.node) if i in keep]
    del graph.node[:]
    graph.node.extend(kept)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    values = [v for v in graph.value_info if v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(values)
    return used
