"""Masks of attention fusion: what was found between QK and Softmax -> the Attention op's attn_mask.

A mask term is found in one of these forms (on the scores path, any order):
- `Add(scores, M)`: M is an additive float mask ("add"; BERT's padding mask
  Where(mask, 0, finfo.min) stays additive);
  `M = Where(c, 0, -inf)` / `Where(c, -inf, 0)` is read as the boolean mask c / not c;
- `Where(c, -inf, scores)` / `Where(c, scores, -inf)` (masked_fill): a boolean keep-mask
  (not c / c);
- `Where(c, fill, scores)` with a finite fill at most half the dtype's lowest value
  (masked_fill(finfo.min)): the additive mask Where(c, fill, 0) (scores + fill rounds
  to fill for any scores below 1e31 in magnitude, so this is exact; rows with every key
  masked aside, see fuse_attention.py).

Causal: a keep-mask tril(all-true [a, a]) (or not triu(all-true, k=1)) or an additive
triu(full(-inf), k=1), whose square shape [a, a] is proved by symbolic shapes to be
[Sq, Skv], becomes `is_causal=1`. TensorRT-RTX cannot parse is_causal together with an
attn_mask, so when another mask is present the causal mask is kept as a mask term.

Several terms combine into one attn_mask: keep-masks with And, additive masks summed
(a padding mask plus a relative-position bias, ALiBi slopes plus a causal mask), then
Where(keep, sum, -inf). The sum is taken before it meets the scores, so the op computes
scores + (a + b) where the graph computed (scores + a) + b: equal for 0/-inf masks, within
one rounding of the bias otherwise. The bias computation itself stays outside the op.
Terms must share one float type. onnxruntime
needs the mask's last two dims to be exactly [Sq, Skv] (no broadcasting there): unless
symbolic shapes prove it, the mask is Expanded to [1, 1, Sq, Skv] (read from Q and K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.attention.kv import ShapeFacts, filled_with
from passes.pattern_utils import constant_of, dims_equal, producer, scalar_value

NEG_INF = -math.inf


@dataclass
class MaskTerm:
    """One mask on the scores path. kind: 'keep' (bool, True = attend), 'add' (float) or 'fill'."""

    kind: str
    tensor: gs.Tensor
    dtype: np.dtype
    negate: bool = False  # keep-mask is Not(tensor); for 'fill', the fill goes where tensor is True
    fill: float = 0.0


def _float_dtype(tensor: gs.Tensor) -> np.dtype:
    try:
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
    except TypeError:  # bfloat16 is an ONNX enum in onnx-graphsurgeon
        return np.dtype(np.float32)
    return dtype if dtype.kind == "f" else np.dtype(np.float32)


def _strip_bool_casts(tensor: gs.Tensor) -> gs.Tensor:
    node = producer(tensor, "Cast")
    while node is not None and node.attrs.get("to") == onnx.TensorProto.BOOL and node.inputs[0].dtype == np.bool_:
        tensor = node.inputs[0]
        node = producer(tensor, "Cast")
    return tensor


def _normal(term: MaskTerm) -> MaskTerm:
    """Keep-masks without no-op bool Casts and double negations (Not(Not(c)) is c)."""
    if term.kind != "keep":
        return term
    tensor, negate = _strip_bool_casts(term.tensor), term.negate
    while (node := producer(tensor, "Not")) is not None:
        tensor, negate = _strip_bool_casts(node.inputs[0]), not negate
    return MaskTerm("keep", tensor, term.dtype, negate)


def where_term(node: gs.Node) -> tuple[MaskTerm, gs.Tensor] | str:
    """(term, scores input) for a masked_fill Where on the scores path, or why not."""
    cond, a, b = node.inputs
    for fill, path, fill_where_true in ((a, b, True), (b, a, False)):
        value = scalar_value(fill)
        if value is None or constant_of(path) is not None:
            continue
        dtype = _float_dtype(path)
        if value == NEG_INF:
            return _normal(MaskTerm("keep", cond, dtype, negate=fill_where_true)), path
        if value <= 0.5 * float(np.finfo(dtype).min):
            return MaskTerm("fill", cond, dtype, negate=fill_where_true, fill=value), path
        return f"Where fills the scores with {value:g}, not -inf or the float minimum"
    return "Where on the scores has no scalar fill value"


def add_term(mask: gs.Tensor) -> MaskTerm:
    """The term for `scores + mask`."""
    where = producer(mask, "Where")
    if where is not None:
        cond, a, b = where.inputs
        va, vb = scalar_value(a), scalar_value(b)
        if va == 0.0 and vb == NEG_INF:
            return _normal(MaskTerm("keep", cond, _float_dtype(mask)))
        if va == NEG_INF and vb == 0.0:
            return _normal(MaskTerm("keep", cond, _float_dtype(mask), negate=True))
    return MaskTerm("add", mask, _float_dtype(mask))


def check_terms(terms: list[MaskTerm], facts: ShapeFacts) -> str | None:
    """Why these terms cannot become one attn_mask, or None."""
    additive = {t.dtype for t in terms if t.kind in ("add", "fill")}
    if len(additive) > 1:
        return f"additive masks on the scores of different types {sorted(str(d) for d in additive)}"
    for term in terms:
        rank = facts.rank(term.tensor)
        if rank is not None and rank > 4:
            return f"mask {term.tensor.name} has rank {rank} > 4"
    return None


def _trilu(tensor: gs.Tensor, upper: int, k: int) -> gs.Node | None:
    node = producer(tensor, "Trilu")
    if node is None or node.attrs.get("upper", 1) != upper:
        return None
    offset = scalar_value(node.inputs[1]) if len(node.inputs) > 1 else 0
    if offset is None and len(node.inputs) > 1:
        const = constant_of(node.inputs[1])
        offset = int(np.asarray(const.values).ravel()[0]) if const is not None else None
    return node if offset == k else None


def is_causal(term: MaskTerm, facts: ShapeFacts, sq, skv) -> bool:
    """Whether the term is exactly the square lower-triangular mask over [Sq, Skv]."""
    shape = None
    if term.kind == "keep":
        tril = _trilu(term.tensor, upper=1, k=1) if term.negate else _trilu(term.tensor, upper=0, k=0)
        shape = filled_with(tril.inputs[0], facts, lambda v: v.astype(bool)) if tril is not None else None
    elif term.kind == "add":
        triu = _trilu(term.tensor, upper=1, k=1)
        shape = filled_with(triu.inputs[0], facts, lambda v: v == NEG_INF) if triu is not None else None
    return (
        shape is not None
        and len(shape) == 2
        and dims_equal(shape[0], shape[1])
        and dims_equal(shape[0], sq)
        and dims_equal(shape[1], skv)
    )


class MaskBuilder:
    """Creates the nodes that turn mask terms into one attn_mask (only once the match is final)."""

    def __init__(self, graph: gs.Graph, name: str, unique):
        self.graph, self.name, self.unique = graph, name, unique

    def node(self, op: str, inputs: list[gs.Tensor], dtype, attrs=None) -> gs.Variable:
        out = gs.Variable(self.unique(f"{self.name}_{op.lower()}"), dtype=dtype)
        self.graph.nodes.append(gs.Node(op, self.unique(f"{self.name}_{op}"), attrs or {}, inputs, [out]))
        return out

    def const(self, base: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.unique(f"{self.name}_{base}"), value)

    def keep(self, term: MaskTerm) -> gs.Tensor:
        return self.node("Not", [term.tensor], np.bool_) if term.negate else term.tensor

    def additive(self, term: MaskTerm) -> gs.Tensor:
        if term.kind == "add":
            return term.tensor
        fill = self.const("fill", np.array(term.fill, term.dtype))
        zero = self.const("zero", np.array(0, term.dtype))
        inputs = [term.tensor, fill, zero] if term.negate else [term.tensor, zero, fill]
        return self.node("Where", inputs, term.dtype)

    def combine(self, terms: list[MaskTerm]) -> gs.Tensor:
        keeps = [self.keep(t) for t in terms if t.kind == "keep"]
        adds = [self.additive(t) for t in terms if t.kind != "keep"]
        keep = keeps[0] if keeps else None
        for other in keeps[1:]:
            keep = self.node("And", [keep, other], np.bool_)
        if not adds:
            return keep
        dtype = next(t.dtype for t in terms if t.kind != "keep")
        total = adds[0]
        for other in adds[1:]:
            total = self.node("Add", [total, other], dtype)
        if keep is None:
            return total
        return self.node("Where", [keep, total, self.const("neg_inf", np.array(NEG_INF, dtype))], dtype)

    def fit(self, mask: gs.Tensor, facts: ShapeFacts, q: gs.Tensor, k: gs.Tensor, sq, skv) -> gs.Tensor:
        """The mask broadcast to [..., Sq, Skv] (a no-op unless symbolic shapes cannot prove it)."""
        dims = facts.dims(mask)  # None for the tensors this pass just created
        if dims and len(dims) >= 2 and dims_equal(dims[-2], sq) and dims_equal(dims[-1], skv):
            return mask
        sizes = [self.node("Shape", [t], np.int64, {"start": 2, "end": 3}) for t in (q, k)]
        ones = self.const("ones", np.array([1, 1], np.int64))
        shape = self.node("Concat", [ones, *sizes], np.int64, {"axis": 0})
        return self.node("Expand", [mask, shape], mask.dtype)
