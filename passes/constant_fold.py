"""Constant folding, including shape subgraphs (exact).

Evaluates every subgraph whose inputs are all constants (onnxruntime does the
arithmetic, through onnx-graphsurgeon's folder) and replaces it by its value.
Shape arithmetic (Shape -> Gather -> Concat -> Reshape ...) folds wherever the dims it
reads are static; dims that are dynamic stay dynamic because their Shape output is
not a constant. `size_cap_bytes` stops folding from producing a large constant out
of a small expression (e.g. ConstantOfShape or Tile), which would only bloat the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx_graphsurgeon.logger import G_LOGGER

from passes.base import PassContext, PassResult

DEFAULT_SIZE_CAP = 16 << 20
ort.set_default_logger_severity(3)  # its optimizer's notes are not ours to print


@dataclass
class ConstantFold:
    """Fold constant subgraphs and static shape computations."""

    size_cap_bytes: int = DEFAULT_SIZE_CAP
    fold_shapes: bool = True
    name: str = "fold-constants"
    exact: bool = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        before = {node.name for node in graph.nodes}
        count_before = len(graph.nodes)
        severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR
        try:
            try:  # one onnxruntime session for the whole graph: the fast path
                graph.fold_constants(fold_shapes=self.fold_shapes, size_threshold=self.size_cap_bytes, error_ok=False)
            except Exception:
                # A subgraph onnxruntime cannot evaluate: partition, so that failure only
                # stops folding there, not everywhere.
                graph.fold_constants(
                    fold_shapes=self.fold_shapes,
                    size_threshold=self.size_cap_bytes,
                    partitioning="basic",
                    error_ok=True,
                )
        finally:
            G_LOGGER.severity = severity
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        folded = count_before - len(graph.nodes)
        if folded > 0:
            after = {node.name for node in graph.nodes}
            result.count("nodes_folded", n=folded)
            result.touched.extend(sorted(before - after))
        return result
