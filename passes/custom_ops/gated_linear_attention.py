"""Gated linear attention in its parallel form -> trtforge::GatedLinearAttention (exact).

The pattern is what a model author writes for the parallel (prefill) form of gated
linear attention without an initial state (reference.ParallelGLA), as both torch
exporters emit it, q, k, g [B, H, T, Dk] and v [B, H, T, Dv]:

    L      = CumSum(Log(g), axis=2)
    diff   = Unsqueeze(L, 3) - Unsqueeze(L, 2)                  # L_t - L_s, [B, H, T, T, Dk]
    decay  = Exp(Where(mask, ...))                               # diff where s <= t, -inf (or <= -1e4) elsewhere
    scores = ReduceSum(Unsqueeze(q, 3) * Unsqueeze(k, 2) * decay, axes=[-1], keepdims=0)  # any Mul order
    o      = MatMul(scores, v)

The mask is checked for what it is, not how it was built: a constant triangle, or
Trilu of ones (lower with k=0, or upper with k=1) through Not / Cast(bool) / Unsqueeze
onto the [T, T, 1] position. Every intermediate must have a single reader. The rewrite
is GatedLinearAttention(q, k, v, g, zeros [B, H, Dk, Dv]) -> o (state output unused), the
zero state built from the inputs' shapes. Rejected candidates (Log->CumSum chains that
do not end in this pattern) are reported with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.model_utils import graph_to_model, import_graph
from passes.pattern_utils import constant_array, only_consumer, producer, scalar_value
from plugins_cuda.gated_linear_attention import onnx as gla_onnx
from plugins_cuda.onnx_common import MIN_OPSET, attach_functions


def _axes(node: gs.Node) -> list[int] | None:
    if len(node.inputs) > 1:
        values = constant_array(node.inputs[1])
        return None if values is None else [int(a) for a in values.ravel()]
    return list(node.attrs["axes"]) if "axes" in node.attrs else None


def _unsqueezed(tensor: gs.Tensor, axis: int, rank_after: int = 5) -> gs.Tensor | None:
    """x when `tensor` = Unsqueeze(x, [axis]) (negative axes normalised), else None."""
    node = producer(tensor, "Unsqueeze")
    axes = _axes(node) if node is not None else None
    if axes is None or len(axes) != 1 or axes[0] % rank_after != axis:
        return None
    return node.inputs[0]


def _factors(tensor: gs.Tensor) -> list[gs.Tensor]:
    """Leaves of a product of single-reader Mul nodes."""
    node = producer(tensor, "Mul")
    if node is None or (only_consumer(tensor) is None and tensor.outputs):
        return [tensor]
    return [leaf for inp in node.inputs for leaf in _factors(inp)]


def _triangle(tensor: gs.Tensor, rank_pad: int = 0) -> str | None:
    """'lower' (True where s <= t) / 'strict_upper' (True where s > t) for a [T, T] mask, else None."""
    values = constant_array(tensor)
    if values is not None:
        core = np.squeeze(values.astype(bool), axis=tuple(range(values.ndim - 2 - rank_pad, values.ndim - 2)))
        core = core.reshape(core.shape[-2 - rank_pad :])[..., 0] if rank_pad else core
        if core.ndim != 2 or core.shape[0] != core.shape[1]:
            return None
        n = core.shape[0]
        if np.array_equal(core, np.tril(np.ones((n, n), bool))):
            return "lower"
        if np.array_equal(core, np.triu(np.ones((n, n), bool), 1)):
            return "strict_upper"
        return None
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Unsqueeze" and rank_pad == 0 and _axes(node) in ([2], [-1]):
        return _triangle(node.inputs[0])
    if node.op == "Cast" or (node.op == "Identity"):
        return _triangle(node.inputs[0], rank_pad)
    if node.op == "Not":
        inner = _triangle(node.inputs[0], rank_pad)
        return {"lower": "strict_upper", "strict_upper": "lower"}.get(inner or "")
    if node.op == "Trilu":
        ones = constant_array(node.inputs[0])
        ones_node = producer(node.inputs[0], "ConstantOfShape")
        fill = ones_node.attrs.get("value") if ones_node is not None else None
        is_ones = (ones is not None and np.all(ones == 1)) or (
            ones_node is not None and (fill is None or np.all(np.asarray(fill.values) == 1))
        )
        k = int(constant_array(node.inputs[1]).ravel()[0]) if len(node.inputs) > 1 and node.inputs[1].name else 0
        upper = int(node.attrs.get("upper", 1))
        if not is_ones:
            return None
        if upper == 0 and k == 0:
            return "lower"
        if upper == 1 and k == 1:
            return "strict_upper"
    return None


def _masked_diff(where: gs.Node) -> gs.Tensor | None:
    """diff when `where` keeps diff on s <= t and a huge negative constant elsewhere."""
    cond, a, b = where.inputs
    kind = _triangle(cond)
    for keep, other, wanted in ((a, b, "lower"), (b, a, "strict_upper")):
        neg = scalar_value(other)
        if kind == wanted and neg is not None and neg <= -1e4:
            return keep
    return None


@dataclass
class GatedLinearAttention(Pass):
    """Parallel-form gated linear attention -> GatedLinearAttention with a zero initial state."""

    name = "gated-linear-attention"
    level = "model"  # attaches the op's function to the model
    exact = True

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        if not any(n.op_type == "CumSum" for n in model.graph.node):
            return model, result  # nothing to match: no import/export round trip
        graph = import_graph(model)
        for cumsum in [n for n in graph.nodes if n.op == "CumSum"]:
            found = self._match(cumsum, ctx)
            if isinstance(found, str):
                result.reject(cumsum.name, found)
                continue
            q, k, v, g, matmul = found
            self._rewrite(graph, cumsum.name, q, k, v, g, matmul)
            result.count("gated_linear_attention_fused", cumsum.name)
        if not result.changed:
            return model, result
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        fused = graph_to_model(graph, model)
        attach_functions(fused, {gla_onnx.OP: gla_onnx.function_proto})
        return fused, result

    def _match(self, cumsum: gs.Node, ctx: PassContext):
        log = producer(cumsum.inputs[0], "Log")
        axis = constant_array(cumsum.inputs[1]) if len(cumsum.inputs) > 1 else None
        if log is None or axis is None or int(axis.ravel()[0]) % 4 != 2:
            return "not CumSum(Log(g)) over axis 2 of a rank-4 tensor"
        if cumsum.attrs.get("exclusive", 0) or cumsum.attrs.get("reverse", 0):
            return "exclusive/reverse CumSum"
        lcum = cumsum.outputs[0]
        readers = list(lcum.outputs)
        if len(readers) != 2 or any(r.op != "Unsqueeze" for r in readers):
            return "the cumulative log gate is not read by exactly two Unsqueeze nodes"
        sub = only_consumer(readers[0].outputs[0])
        if sub is None or sub.op != "Sub" or only_consumer(readers[1].outputs[0]) is not sub:
            return "no Sub of the two unsqueezed cumulative gates"
        if _unsqueezed(sub.inputs[0], 3) is not lcum or _unsqueezed(sub.inputs[1], 2) is not lcum:
            return "Sub is not L_t - L_s (Unsqueeze axes 3 and 2)"
        where = only_consumer(sub.outputs[0])
        diff = _masked_diff(where) if where is not None and where.op == "Where" else None
        if diff is not sub.outputs[0]:
            return "decay is not masked to s <= t with -inf (or <= -1e4)"
        exp = only_consumer(where.outputs[0])
        if exp is None or exp.op != "Exp":
            return "masked decay is not exponentiated"
        node, tensor = exp, exp.outputs[0]
        while (nxt := only_consumer(tensor)) is not None and nxt.op == "Mul":
            node, tensor = nxt, nxt.outputs[0]
        reduce = only_consumer(tensor)
        if node is exp or reduce is None or reduce.op != "ReduceSum":
            return "decay does not feed a product summed by ReduceSum"
        if _axes(reduce) not in ([-1], [4]) or reduce.attrs.get("keepdims", 1) != 0:
            return "ReduceSum is not over the last axis with keepdims=0"
        leaves = _factors(tensor)
        qs = [x for x in (_unsqueezed(f, 3) for f in leaves) if x is not None]
        ks = [x for x in (_unsqueezed(f, 2) for f in leaves) if x is not None]
        if len(leaves) != 3 or exp.outputs[0] not in leaves or len(qs) != 1 or len(ks) != 1:
            return "the summed product is not Unsqueeze(q, 3) * Unsqueeze(k, 2) * decay"
        matmul = only_consumer(reduce.outputs[0])
        if matmul is None or matmul.op != "MatMul" or matmul.inputs[0] is not reduce.outputs[0]:
            return "scores do not feed MatMul(scores, v)"
        if ctx.opset < MIN_OPSET:
            return f"opset {ctx.opset} < {MIN_OPSET}: run upgrade-opset first"
        return qs[0], ks[0], matmul.inputs[1], log.inputs[0], matmul

    def _rewrite(self, graph: gs.Graph, base: str, q, k, v, g, matmul: gs.Node) -> None:
        def const(name: str, values) -> gs.Constant:
            return gs.Constant(f"{base}_{name}", np.asarray(values, np.int64))

        def shape_slice(tensor, start: int, end: int, name: str) -> gs.Variable:
            shape = graph.layer(op="Shape", inputs=[tensor], outputs=[f"{base}_{name}_shape"])[0]
            return graph.layer(
                op="Slice",
                inputs=[shape, const(f"{name}_s", [start]), const(f"{name}_e", [end])],
                outputs=[f"{base}_{name}_dims"],
            )[0]

        dims = [shape_slice(q, 0, 2, "bh"), shape_slice(q, 3, 4, "dk"), shape_slice(v, 3, 4, "dv")]
        full = graph.layer(op="Concat", inputs=dims, outputs=[f"{base}_state_shape"], attrs={"axis": 0})[0]
        zero = gs.Constant(f"{base}_zero", np.zeros(1, np.float32))
        state = graph.layer(op="ConstantOfShape", inputs=[full], outputs=[f"{base}_state0_f"], attrs={"value": zero})[0]
        state = graph.layer(op="CastLike", inputs=[state, q], outputs=[f"{base}_state0"])[0]
        out = matmul.outputs[0]
        matmul.outputs.clear()
        graph.nodes.append(
            gs.Node(
                gla_onnx.OP,
                name=f"{base}_gla",
                domain="trtforge",
                inputs=[q, k, v, g, state],
                outputs=[out, gs.Variable(f"{base}_state_out")],
            )
        )
