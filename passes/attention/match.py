"""Finding attention blocks (pattern and check of fuse-attention): Softmax-anchored, by what they compute.

`match(softmax)` walks back from the Softmax to the QK MatMul through scalar scalings
(Mul/Div by a constant), masks (Add, Where: attention_masks.py) and float32 upcasts,
forward to the PV MatMul through the downcast and the SDPA NaN guard, then peels the
scalings off Q and the Transposes/scalings off Kᵀ. Every tensor on the way must have
one reader. It returns a `Match` or the reason there is none; nothing is modified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.attention.kv import ShapeFacts, peel_transposes
from passes.attention.masks import MaskTerm, add_term, check_terms, where_term
from passes.pattern_utils import producer, scalar_factor, scalar_value

FLOAT = onnx.TensorProto.FLOAT
LOW_FLOATS = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
SCORE_OPS = ("Mul", "Div", "Add", "Where", "Cast")


def onnx_type(tensor: gs.Tensor) -> int | None:
    if tensor.dtype is None or isinstance(tensor.dtype, int):
        return tensor.dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    except (TypeError, KeyError, ValueError):
        return None


@dataclass
class Match:
    """One attention block: where its pieces are and what the Attention node needs."""

    softmax: gs.Node
    pv: gs.Node
    q: gs.Tensor
    kt: gs.Tensor  # what the QK MatMul reads: Kᵀ == Transpose(k_base, k_perm) * constant
    k_base: gs.Tensor
    k_perm: list[int]
    v: gs.Tensor
    scale: float
    masks: list[MaskTerm]
    softmax_fp32: bool


def _reaches_matmul(tensor: gs.Tensor, depth: int = 8) -> bool:
    node = producer(tensor)
    if node is None or depth == 0:
        return False
    if node.op == "MatMul":
        return True
    return node.op in SCORE_OPS and any(_reaches_matmul(t, depth - 1) for t in node.inputs if t.inputs)


def _scores(softmax: gs.Node, outputs: set[int]) -> tuple[gs.Node, float, list[MaskTerm], bool] | str:
    """(QK MatMul, scale on the scores, masks, softmax upcast) walking back from Softmax, or why not."""
    tensor, scale, terms, upcast, scaled = softmax.inputs[0], 1.0, [], False, False
    while True:
        node = producer(tensor)
        if node is None:
            return "the Softmax input is not computed from a MatMul"
        if len(tensor.outputs) != 1 or id(tensor) in outputs:
            return f"'{tensor.name}' between the QK MatMul and Softmax is read elsewhere (or a graph output)"
        if node.op == "MatMul":
            return node, scale, terms, upcast
        if node.op == "Cast":
            source_type = onnx_type(node.inputs[0])
            if node.attrs.get("to") != FLOAT or source_type not in (FLOAT, *LOW_FLOATS):
                return f"Cast {node.name} on the scores is not a float32 (up)cast"
            if source_type in LOW_FLOATS and tensor is not softmax.inputs[0]:
                return f"the scores are upcast by {node.name} before other ops, not right before Softmax"
            upcast = upcast or source_type in LOW_FLOATS
            tensor = node.inputs[0]
        elif node.op in ("Mul", "Div"):
            found = scalar_factor(node)
            if found is None:
                return f"the scores go through {node.op} {node.name}, not by a constant scalar"
            tensor, factor = found
            if factor <= 0:
                return f"the scores are scaled by {factor:g} <= 0"
            scale, scaled = scale * factor, True
        elif node.op == "Add":
            paths = [i for i, t in enumerate(node.inputs) if _reaches_matmul(t)]
            if len(paths) != 1:
                return (
                    f"Add {node.name}: cannot tell the scores from the mask ({len(paths)} operands come from a MatMul)"
                )
            term = add_term(node.inputs[1 - paths[0]])
            if scaled and term.kind == "add":
                return f"the scores are scaled after the additive mask of Add {node.name}"
            terms.append(term)
            tensor = node.inputs[paths[0]]
        elif node.op == "Where":
            found = where_term(node)
            if isinstance(found, str):
                return f"{found} ({node.name})"
            term, tensor = found
            terms.append(term)
        else:
            return f"{node.op} {node.name} between the QK MatMul and Softmax"


def _nan_guard(tensor: gs.Tensor) -> gs.Node | None:
    """The Where of Where(IsNaN(P), 0, P) when that is all that reads P."""
    readers = {n.op: n for n in tensor.outputs}
    if len(tensor.outputs) != 2 or set(readers) != {"IsNaN", "Where"}:
        return None
    isnan, where = readers["IsNaN"], readers["Where"]
    cond, zero, value = where.inputs
    ok = cond is isnan.outputs[0] and len(cond.outputs) == 1 and value is tensor and scalar_value(zero) == 0.0
    return where if ok else None


def _probabilities_matmul(softmax: gs.Node, low_type: int | None, outputs: set[int]) -> gs.Node | str:
    """The MatMul(P, V) that reads the Softmax output (through its downcast and NaN guard), or why not."""
    tensor, downcast = softmax.outputs[0], False
    while True:
        guard = _nan_guard(tensor)
        if guard is not None:
            tensor = guard.outputs[0]
            continue
        if id(tensor) in outputs:
            return "the attention probabilities are a graph output"
        if len(tensor.outputs) != 1:
            return f"the attention probabilities are read by {len(tensor.outputs)} nodes"
        node = tensor.outputs[0]
        if node.op == "Cast" and not downcast and node.attrs.get("to") == (low_type or FLOAT):
            tensor, downcast = node.outputs[0], low_type is not None
            continue
        if node.op == "MatMul" and node.inputs[0] is tensor and node.inputs[1] is not tensor:
            if low_type is not None and not downcast:
                return "Softmax runs in float32 but its output is not cast back before the MatMul with V"
            return node
        return f"the Softmax output goes through {node.op} {node.name} before the MatMul with V"


def _peel_scales(tensor: gs.Tensor) -> tuple[gs.Tensor, float]:
    scale = 1.0
    while (node := producer(tensor)) is not None and (found := scalar_factor(node)) is not None:
        tensor, factor = found
        scale *= factor
    return tensor, scale


def match(softmax: gs.Node, opset: int, facts: ShapeFacts, outputs: set[int] = frozenset()) -> Match | str:
    """An attention block around `softmax`, or the reason it is not one we can fuse.

    `outputs`: ids of the graph's output tensors (intermediates must not be among them).
    """
    rank = facts.rank(softmax.inputs[0])
    axis = softmax.attrs.get("axis", -1 if opset >= 13 else 1)
    if rank is None:
        return "the rank of the Softmax input is unknown"
    if axis % rank != rank - 1:
        return f"Softmax over axis {axis}, not the last of {rank}"
    if rank != 4:
        return f"Softmax input has rank {rank}, not 4 ([batch, heads, q, kv])"
    found = _scores(softmax, outputs)
    if isinstance(found, str):
        return found
    qk, scale, terms, upcast = found
    low_type = onnx_type(qk.outputs[0]) if upcast else None
    pv = _probabilities_matmul(softmax, low_type, outputs)
    if isinstance(pv, str):
        return pv
    q, q_scale = _peel_scales(qk.inputs[0])
    k_base, k_perm, k_scale = peel_transposes(qk.inputs[1], facts)
    v = pv.inputs[1]
    ranks = {name: facts.rank(t) for name, t in (("Q", q), ("Kᵀ", qk.inputs[1]), ("V", v))}
    if any(r != 4 for r in ranks.values()):
        return "Q, Kᵀ and V must be rank 4, got " + ", ".join(f"{n} {r}" for n, r in ranks.items())
    types = {onnx_type(t) for t in (q, k_base, v)} - {None}
    if len(types) > 1:
        return f"Q, K and V have different element types {sorted(types)}"
    problem = check_terms(terms, facts)
    if problem:
        return problem
    return Match(softmax, pv, q, qk.inputs[1], k_base, k_perm, v, scale * q_scale * k_scale, terms, upcast)
