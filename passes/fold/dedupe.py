"""Deduplication: identical initializers and common subexpressions (exact).

- Initializers with the same dtype, shape and bytes become one (exporters often
  emit the same small constant per layer, e.g. the 1.0 of every GELU). Weights are
  compared on their stored bytes, without loading them into arrays: only constants
  of one layout that also agree on a small sample of bytes are hashed in full;
- two nodes with the same op, domain, attributes and the *same* input tensors
  compute the same thing: the second one's readers are pointed at the first one's
  outputs. Repeated until nothing merges, so whole duplicated chains collapse
  (Shape(x) -> Gather(0) written three times becomes one). Nodes with random
  outputs or side effects, and nodes with subgraph attributes, are never merged.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues

from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import redirect

NONDETERMINISTIC = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Dropout",
}
MAX_DEDUPE_BYTES = 64 << 20
SAMPLE_BYTES = 64  # from each end and the middle of a constant's bytes


def _constant_key(const: gs.Constant) -> tuple | None:
    values = np.asarray(const.values)
    if values.nbytes > MAX_DEDUPE_BYTES:
        return None
    return (str(values.dtype), values.shape, hashlib.sha256(values.tobytes()).hexdigest())


def _stored_bytes(const: gs.Constant) -> bytes | np.ndarray | None:
    """The constant's values as bytes (native order), read without loading lazy ones.

    A constant still backed by its TensorProto's raw_data (little-endian) is read from
    there: converting it to an array costs more, and makes every later export slower.
    Other forms go through numpy. None when larger than MAX_DEDUPE_BYTES, or for
    object arrays (strings), which have no bytes to compare.
    """
    values = const._values
    if values.nbytes > MAX_DEDUPE_BYTES:
        return None
    lazy = isinstance(values, LazyValues) and not isinstance(values, SparseValues)
    if lazy and sys.byteorder == "little":
        proto = values.tensor
        if proto.HasField("raw_data") and proto.data_location != onnx.TensorProto.EXTERNAL:
            return proto.raw_data
    array = np.ascontiguousarray(const.values)
    return None if array.dtype.hasobject else array.reshape(-1).view(np.uint8)


def _sample(data: bytes | np.ndarray) -> bytes:
    """A few bytes that differ between almost any two different weights: a cheap first key."""
    n, k = len(data), SAMPLE_BYTES
    return bytes(data[:k]) + bytes(data[n // 2 : n // 2 + k]) + bytes(data[-k:])


def _attr_key(value) -> object:
    if isinstance(value, gs.Constant):
        return ("const", _constant_key(value))
    if isinstance(value, (list, tuple)):
        return tuple(_attr_key(v) for v in value)
    if isinstance(value, gs.Graph):
        raise TypeError("subgraph")
    return value if isinstance(value, (int, float, str, bytes, type(None))) else repr(value)


def _node_key(node: gs.Node) -> tuple | None:
    if node.op in NONDETERMINISTIC or not node.outputs:
        return None
    try:
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items()))
    except TypeError:
        return None
    return (node.op, node.domain, attrs, tuple(id(t) for t in node.inputs), len(node.outputs))


@dataclass
class Dedupe(Pass):
    """Merge identical initializers, then common subexpressions, to a fixed point."""

    name = "dedupe"
    level = "graph"
    exact = True
    keeps_types = True  # merged tensors carried equal values: inference would learn nothing new

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        self._merge_constants(graph, result)
        while self._merge_nodes(graph, result):
            pass
        return result

    def _merge_constants(self, graph: gs.Graph, result: PassResult) -> None:
        outputs = {id(t) for t in graph.outputs}
        constants = [t for t in graph.tensors().values() if isinstance(t, gs.Constant) and id(t) not in outputs]
        # Only constants sharing dtype, shape and a sample of bytes can be equal: hash just
        # those (hashing every weight of a large model would cost more than the pass saves).
        layouts: dict[tuple, int] = {}
        for tensor in constants:
            layout = (str(tensor.dtype), tuple(tensor.shape))
            layouts[layout] = layouts.get(layout, 0) + 1
        samples: dict[tuple, list[gs.Constant]] = {}
        for tensor in constants:
            layout = (str(tensor.dtype), tuple(tensor.shape))
            data = _stored_bytes(tensor) if layouts[layout] > 1 else None
            if data is not None:
                samples.setdefault((layout, _sample(data)), []).append(tensor)
        canonical: dict[tuple, gs.Constant] = {}
        for (layout, _), group in samples.items():
            for tensor in group if len(group) > 1 else []:
                key = (layout, hashlib.sha256(_stored_bytes(tensor)).hexdigest())
                keep = canonical.setdefault(key, tensor)
                if keep is not tensor:
                    redirect(tensor, keep, list(tensor.outputs))
                    result.count("initializers_merged")

    def _merge_nodes(self, graph: gs.Graph, result: PassResult) -> bool:
        seen: dict[tuple, gs.Node] = {}
        graph_outputs = {id(t) for t in graph.outputs}
        merged = False
        for node in list(graph.nodes):
            key = _node_key(node)
            if key is None:
                continue
            first = seen.setdefault(key, node)
            if first is node or any(id(t) in graph_outputs for t in node.outputs):
                continue
            for mine, theirs in zip(node.outputs, first.outputs, strict=True):
                redirect(mine, theirs, list(mine.outputs))
            node.inputs.clear()
            node.outputs.clear()
            result.count("nodes_merged", node.name)
            merged = True
        if merged:
            # Readers moved to an earlier node's outputs: the order stays topological.
            graph.cleanup(remove_unused_graph_inputs=False)
        return merged
