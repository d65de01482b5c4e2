"""Constant folding, including shape subgraphs (exact).

Every subgraph whose inputs are all constants is evaluated and replaced by its value,
in two tiers:

1. in numpy, exactly (passes/fold/const_eval.py): Constant nodes become initializers; shape
   arithmetic, other data movement and integer math are computed; and static shapes
   fold: Shape of a tensor whose shape is fully known, Gather/Slice picking only known
   dims out of a partly dynamic Shape. That is all an exporter's shape subgraphs need
   (EfficientNet-Lite's 17 "same"-padding computations fold here completely).
2. What is left foldable (float math, other ops, onnx-graphsurgeon's elision of the
   int -> float -> int Casts around shape arithmetic) goes to onnx-graphsurgeon's folder,
   which evaluates it in one onnxruntime session. It runs only when tier 1 left
   something for it: building a session, and the copy of the graph the folder makes
   first, cost more than the folding itself on most models.

Dims that are dynamic stay dynamic: a Shape of them is not a constant. `size_cap_bytes`
stops folding from producing a large constant out of a small expression (e.g.
ConstantOfShape or Tile), which would only bloat the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx_graphsurgeon.logger import G_LOGGER

from passes.base import Pass, PassContext, PassResult
from passes.fold import const_eval
from passes.graph_utils import is_sorted

DEFAULT_SIZE_CAP = 16 << 20
ort.set_default_logger_severity(3)  # its optimizer's notes are not ours to print
NOT_FOLDED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}  # as onnx-graphsurgeon
CAST_ELISION_OPS = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater", "Less", "Concat"}
CONSTANT_ATTRS = {  # Constant node attribute -> dtype of its value (`value` carries its own)
    "value": None,
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


@dataclass
class FoldConstants(Pass):
    """Fold constant subgraphs and static shape computations."""

    name = "fold-constants"
    level = "graph"
    exact = True

    size_cap_bytes: int = DEFAULT_SIZE_CAP
    fold_shapes: bool = True

    def __post_init__(self) -> None:
        if self.size_cap_bytes < 0:
            raise ValueError(f"size_cap_bytes must be >= 0, got {self.size_cap_bytes}")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        before = {node.name for node in graph.nodes}
        count_before = len(graph.nodes)
        declined = _fold_exactly(graph, ctx.opset, self.size_cap_bytes, self.fold_shapes)
        if declined or _left_for_graphsurgeon(graph, self.fold_shapes):
            severity, G_LOGGER.severity = G_LOGGER.severity, G_LOGGER.ERROR
            try:
                self._fold_with_onnxruntime(graph)
            finally:
                G_LOGGER.severity = severity
        graph.cleanup(remove_unused_graph_inputs=False)  # removals keep the order: no toposort
        folded = count_before - len(graph.nodes)
        if folded > 0:
            after = {node.name for node in graph.nodes}
            result.count("nodes_folded", n=folded)
            result.touched.extend(sorted(before - after))
        return result

    def _fold_with_onnxruntime(self, graph: gs.Graph) -> None:
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


def _fold_exactly(graph: gs.Graph, opset: int, size_cap: int, fold_shapes: bool) -> bool:
    """Tier 1, in place. True when it met foldable nodes it does not evaluate exactly."""
    if not is_sorted(graph):  # one sweep in topological order sees every producer first
        graph.toposort()
    declined = False
    values: dict[int, np.ndarray] = {}  # id(tensor) -> value, for tensors computed here

    def value_of(t: gs.Tensor) -> np.ndarray | None:
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        return values.get(id(t))

    for node in graph.nodes:
        if node.op == "Constant":
            declined = not _lower_constant_node(node) or declined
            continue
        if not all(t.is_empty() or isinstance(t, gs.Constant) or id(t) in values for t in node.inputs):
            static = _static_shape(node, opset) if fold_shapes else None
            if static is not None:
                values[id(node.outputs[0])] = static
            continue
        if node.op in NOT_FOLDED or any(isinstance(v, gs.Node.AttributeRef) for v in node.attrs.values()):
            continue
        value = const_eval.evaluate(node, [None if t.is_empty() else value_of(t) for t in node.inputs], opset)
        if value is None:
            declined = True  # foldable, but not here: tier 2's
            continue
        values[id(node.outputs[0])] = value

    for node in graph.nodes:
        for out in list(node.outputs):
            value = values.get(id(out))
            if value is not None and value.nbytes <= size_cap:
                out.to_constant(np.array(value))  # a copy: numpy results may be views of inputs
                out.inputs.clear()
    return declined


def _lower_constant_node(node: gs.Node) -> bool:
    """Turn a Constant node's output into a constant tensor; False when its form is not
    one handled here (string or sparse values)."""
    if len(node.attrs) != 1 or len(node.outputs) != 1:
        return False
    attr, value = next(iter(node.attrs.items()))
    if attr not in CONSTANT_ATTRS or isinstance(value, gs.Node.AttributeRef):
        return False
    values = value._values if isinstance(value, gs.Constant) else np.array(value, CONSTANT_ATTRS[attr])
    out = node.outputs[0]
    out.to_constant(values)
    out.inputs.clear()
    return True


def _static_shape(node: gs.Node, opset: int) -> np.ndarray | None:
    """The value of a Shape, or of a Gather/Slice reading one, when every dim it yields
    is statically known (from the inferred shapes), though some dims of the tensor may not be."""
    shape = node if node.op == "Shape" else None
    if node.op in ("Gather", "Slice") and node.inputs[0].inputs and node.inputs[0].inputs[0].op == "Shape":
        shape = node.inputs[0].inputs[0]
        if not all(isinstance(t, gs.Constant) or t.is_empty() for t in node.inputs[1:]):
            return None
    if shape is None or len(node.outputs) != 1 or shape.inputs[0].shape is None:
        return None
    known = [d if isinstance(d, int) and d >= 0 else None for d in shape.inputs[0].shape]
    # Shape's start/end clamp like Python slicing does.
    dims = np.array(known[shape.attrs.get("start", 0) : shape.attrs.get("end", len(known))], dtype=object)
    if node is not shape:
        rest = [None if t.is_empty() else np.asarray(t.values) for t in node.inputs[1:]]
        dims = const_eval.evaluate(node, [dims, *rest], opset)
    if dims is None or any(d is None for d in np.ravel(dims)):
        return None
    return np.asarray(dims, dtype=np.int64)


def _left_for_graphsurgeon(graph: gs.Graph, fold_shapes: bool) -> bool:
    """True when onnx-graphsurgeon's folder may still change something after tier 1.

    Besides what tier 1 declined (reported by it): subgraphs and local functions, which
    it folds into; with `fold_shapes`, the int -> float -> int Cast pairs around shape
    arithmetic that it elides.
    """
    if graph.functions:
        return True
    for node in graph.nodes:
        if any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            return True
        if fold_shapes and node.op in CAST_ELISION_OPS and _between_casts(node):
            return True
    return False


def _between_casts(node: gs.Node) -> bool:
    """Reads a Cast to float and is read by Casts only: what the folder's cast elision looks for."""
    cast_in = any(
        t.inputs and t.inputs[0].op == "Cast" and t.inputs[0].attrs.get("to") == onnx.TensorProto.FLOAT
        for t in node.inputs
    )
    return cast_in and all(t.outputs and all(r.op == "Cast" for r in t.outputs) for t in node.outputs)
