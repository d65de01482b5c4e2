"""Small graph-surgery helpers shared by passes (onnx-graphsurgeon graphs)."""

from __future__ import annotations

import onnx_graphsurgeon as gs


class FreshNames:
    """Names for the tensors and nodes a pass adds: `base` when the graph does not use it,
    else `base_1`, `base_2`, ...; every name handed out counts as used.

    A new name differs from every tensor and node name of the graph. Those are collected
    once: listing the graph's tensors for every new name made passes quadratic in the
    model size.
    """

    def __init__(self, graph: gs.Graph):
        self.used = set(graph.tensors()) | {node.name for node in graph.nodes}

    def __call__(self, base: str) -> str:
        name, n = base, 0
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    return list(tensor.outputs)


def drop_inputs_after_first(node: gs.Node) -> None:
    """Detach all inputs but the first (gs lists do not support slice assignment)."""
    while len(node.inputs) > 1:
        node.inputs.pop()


def redirect(tensor: gs.Tensor, replacement: gs.Tensor, readers: list[gs.Node]) -> None:
    """Make `readers` read `replacement` wherever they read `tensor`."""
    for reader in readers:
        for i, t in enumerate(reader.inputs):
            if t is tensor:
                reader.inputs[i] = replacement


def is_graph_io(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in graph.inputs) or any(t is tensor for t in graph.outputs)


def bypass(graph: gs.Graph, node: gs.Node) -> str | None:
    """Remove a single-input pass-through node (Identity-like) by rewiring its consumers.

    Graph input/output names are part of the model's interface and must not change.
    When the node's output is a graph output, its input tensor takes over that name,
    unless the input is itself graph I/O or a constant (then we cannot, and say why).
    Returns None on success, else the reason the node was kept.
    """
    src, dst = node.inputs[0], node.outputs[0]
    if any(t is dst for t in graph.outputs) and (is_graph_io(graph, src) or isinstance(src, gs.Constant)):
        return "its output is a graph output fed directly by graph I/O or a constant"
    drop_inputs_after_first(node)
    if any(t is dst for t in graph.outputs):
        # `src` takes over the output's name; the nodes that read the output read `src`
        # (under that same name), and every place the output is listed points at `src`.
        # Other consumers of `src` keep reading it under its new name: still exact.
        redirect(dst, src, consumers(dst))
        name = dst.name
        node.outputs.clear()
        dst.name = name + "__removed"
        src.name = name
        for index, tensor in enumerate(graph.outputs):
            if tensor is dst:
                graph.outputs[index] = src
        # The output keeps what it declared where `src` knows less (e.g. a shape inference
        # could not follow): graph outputs must have a type and a shape.
        if src.dtype is None:
            src.dtype = dst.dtype
        if src.shape is None:
            src.shape = dst.shape
        node.inputs.clear()
        return None
    redirect(dst, src, consumers(dst))
    node.inputs.clear()
    node.outputs.clear()
    return None


def is_sorted(graph: gs.Graph) -> bool:
    """True when every node comes after the producers of its inputs (outer graph only).

    Much cheaper than gs's toposort, so callers sort only when this says they must.
    """
    done: set[int] = set()
    for node in graph.nodes:
        if any(t.inputs and id(t.inputs[0]) not in done for t in node.inputs):
            return False
        done.add(id(node))
    return True
