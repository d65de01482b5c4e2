"""Fold linear chains into fewer linear ops (exact within float tolerance).

A linear op here is Gemm, MatMul, or MatMul followed by an Add of a constant bias, read
as y = x @ W + b over the last axis (W a constant 2-D [K, N], b scalar or along the last
axis: [N], [1, N], ...), or a Conv with constant weight and bias (b per output channel).
Constants are initializers or Constant nodes. Rewrites, repeated until a sweep changes
nothing (so a second run changes nothing):

- matmul_add_to_gemm: MatMul(x, W) -> Add(b) becomes Gemm(x, W, b) only when x is known
  to be 2-D. Other ranks keep MatMul + Add, recorded as "input rank 3: Gemm needs 2-D":
  Gemm takes 2-D only, and TensorRT and onnxruntime fuse MatMul + Add themselves.
- post_scale / post_shift: a linear op followed by Mul/Div (scale) or Add/Sub (shift) by
  a constant c takes c into W and b. c is scalar or per output channel (Conv: [C,1,1],
  [1,C,1,1], ...; others: [N], [1,N], ...) and does not raise the output's rank; Div
  needs c free of zeros; Sub and Div only with c as the second operand.
- pre_scale: Mul(x, c) -> MatMul/Gemm (transA=0) with c scalar or per input feature
  ([K], [1,K], ...; not raising x's rank) scales the rows of W.
- linear_chain: linear op -> MatMul/Gemm (transA=0) becomes one op with W = A @ B and
  b = a @ B + b2, only when A @ B has no more elements than A and B together (a
  bottleneck such as 768->64->768 would cost memory and FLOPs merged).
- conv_chain: Conv (group 1; any kernel, stride, pads, dilation) -> pointwise Conv
  (kernel 1, stride 1, pads 0, group 1) becomes one Conv with W[n, c] = sum_m B[n, m] A[m, c]
  and b = B @ a + b2, under the same size rule. Exact at padded borders too: the
  pointwise conv acts per position, on the bias as well.

Every rewrite needs: float weights; no weight matrix read by another node (the rewrite
would have to copy it; a shared bias is fine: a new vector is written); each tensor that disappears read once and not a graph output.
The merged op writes the last op's output tensor, so graph outputs keep their names.
Arithmetic runs in float64 for float32/64 weights and in float32 for float16 ones (24
mantissa bits before one rounding to 11: as exact, at a quarter of the memory on an LLM's
weights), and is cast back to the weight's dtype.

Order: run pattern fusions (fuse-gelu, fuse-norms) before this pass; pre_scale would
otherwise absorb GELU's 0.5 or a decomposed LayerNorm's gamma into the next MatMul.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.fold.sweep import Outcome, sweep
from passes.graph_utils import FreshNames, is_graph_io

FLOAT_KINDS = ("float16", "float32", "float64")


@dataclass
class Affine:
    """y = x @ w + b over the last axis (w [K, N], b [N]; x transposed when trans_a), or, when
    `conv` is set, that Conv with weight w [Cout, Cin/g, k...] and bias b [Cout]. `nodes`
    compute it from x to `out`; `weights` are the weight tensors they read (biases are small:
    a rewrite writes a new vector and a shared one stays for its other readers)."""

    x: gs.Tensor
    w: np.ndarray
    b: np.ndarray | None
    nodes: list[gs.Node]
    weights: list[gs.Tensor]
    out: gs.Tensor
    dtype: np.dtype
    trans_a: int = 0
    conv: gs.Node | None = None

    @property
    def n_out(self) -> int:
        return self.w.shape[0 if self.conv else 1]


def working(w: np.ndarray) -> np.ndarray:
    """`w` in the dtype the folding arithmetic runs in (module docstring)."""
    return w.astype(np.float32 if w.dtype == np.float16 else np.float64)


def values(t: gs.Tensor) -> np.ndarray | None:
    """A constant's value, whether an initializer or a Constant node's output."""
    node = t.inputs[0] if len(t.inputs) == 1 and t.inputs[0].op == "Constant" else None
    const = t if isinstance(t, gs.Constant) else node.attrs.get("value") if node else None
    return np.asarray(const.values) if isinstance(const, gs.Constant) else None


def rank(t: gs.Tensor) -> int | None:
    return len(t.shape) if t.shape is not None else None


def per_axis(c: np.ndarray, axis: int, out_rank: int | None, size: int) -> np.ndarray | None:
    """c as a float64 [size] vector when it varies along `axis` only of a rank-`out_rank`
    result and does not raise that rank; None otherwise. Unknown rank: scalars and 1-D only."""
    r = out_rank if out_rank is not None else 1
    if c.ndim > r or (out_rank is None and axis not in (-1, 0)):
        return None
    full = c.reshape((1,) * (r - c.ndim) + c.shape)
    ax = axis % r
    if any(d != 1 for i, d in enumerate(full.shape) if i != ax) or full.shape[ax] not in (1, size):
        return None
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (size,)).copy()


def single_reader(graph: gs.Graph, t: gs.Tensor) -> bool:
    """True when t can disappear: one reader and not a graph output."""
    return len(t.outputs) == 1 and not is_graph_io(graph, t)


def split_const(node: gs.Node) -> tuple[gs.Tensor, np.ndarray, int] | None:
    """(variable input, constant value, constant's index) for a binary op with one constant."""
    found = [(i, values(t)) for i, t in enumerate(node.inputs)]
    consts = [(i, v) for i, v in found if v is not None]
    if len(node.inputs) != 2 or len(consts) != 1:
        return None
    return node.inputs[1 - consts[0][0]], consts[0][1], consts[0][0]


def _weight(node: gs.Node) -> np.ndarray | None:
    """The constant float weight (input 1) of an op whose data input 0 is not constant."""
    w = values(node.inputs[1]) if len(node.inputs) > 1 and values(node.inputs[0]) is None else None
    return w if w is not None and w.dtype.name in FLOAT_KINDS else None


def conv_at(node: gs.Node) -> Affine | None:
    """A Conv with constant weight and (absent or constant) bias."""
    w = _weight(node) if node.op == "Conv" else None
    has_b = len(node.inputs) > 2 and node.inputs[2].name
    b = values(node.inputs[2]) if has_b else None
    if w is None or (has_b and b is None):
        return None
    b = None if b is None else b.astype(np.float64)
    return Affine(node.inputs[0], working(w), b, [node], [node.inputs[1]], node.outputs[0], w.dtype, conv=node)


def parse_linear(node: gs.Node) -> Affine | str | None:
    """A bare MatMul or a Gemm; a reason when it is one but unusable; None if not."""
    w = _weight(node) if node.op in ("MatMul", "Gemm") else None
    if w is None or w.ndim != 2:
        return None
    unit = Affine(node.inputs[0], working(w), None, [node], [node.inputs[1]], node.outputs[0], w.dtype)
    if node.op == "MatMul":
        return unit
    unit.w = node.attrs.get("alpha", 1.0) * (unit.w.T if node.attrs.get("transB", 0) else unit.w)
    unit.trans_a = int(node.attrs.get("transA", 0))
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = values(node.inputs[2])
        vec = per_axis(c, -1, 2, unit.n_out) if c is not None else None
        if vec is None:
            return "Gemm bias C is not a constant vector over the columns"
        unit.b = node.attrs.get("beta", 1.0) * vec
    return unit


def _with_bias(graph: gs.Graph, unit: Affine, add: gs.Node) -> Affine | None:
    """The MatMul `unit` extended by `add` when that Add adds a constant bias to it alone."""
    split = split_const(add) if add.op == "Add" and unit.nodes[0].op == "MatMul" else None
    if split is None or split[0] is not unit.out or not single_reader(graph, unit.out):
        return None
    vec = per_axis(split[1], -1, rank(unit.out), unit.n_out)
    if vec is None:
        return None
    return replace(unit, b=vec, nodes=[*unit.nodes, add], out=add.outputs[0])


def linear_at(graph: gs.Graph, node: gs.Node) -> Affine | str | None:
    """The linear op starting at `node`, a MatMul taking its bias Add along."""
    unit = parse_linear(node)
    if isinstance(unit, Affine) and len(unit.out.outputs) == 1:
        return _with_bias(graph, unit, unit.out.outputs[0]) or unit
    return unit


def affine_producing(graph: gs.Graph, t: gs.Tensor) -> Affine | str | None:
    """The Conv, Gemm, MatMul or MatMul + bias Add whose output is exactly `t`."""
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None or node.op != "Add":
        return None if node is None else conv_at(node) or parse_linear(node)
    inner = [parse_linear(src.inputs[0]) for src in node.inputs if len(src.inputs) == 1]
    unit = next((u for u in inner if isinstance(u, Affine) and u.nodes[0].op == "MatMul"), None)
    return _with_bias(graph, unit, node) if unit else None


def _shared(ts: list[gs.Tensor]) -> str | None:
    names = [t.name for t in ts if len(t.outputs) > 1]
    return f"weight {names[0]} is shared with another node" if names else None


def _two_d(unit: Affine) -> bool:
    """x is 2-D: from its shape, or because a Gemm read it or a tensor of the same rank."""
    return rank(unit.x) == 2 or any(n.op == "Gemm" for n in unit.nodes)


def emit(graph: gs.Graph, names: FreshNames, unit: Affine, attrs: dict | None = None) -> None:
    """Write `unit` into unit.out: Conv; Gemm when x is 2-D or transposed; else MatMul [+ Add]."""
    base = unit.nodes[0].name
    weight = gs.Constant(names(base + "_weight"), np.ascontiguousarray(unit.w.astype(unit.dtype)))
    if unit.conv is not None or (unit.b is None and not unit.trans_a):
        op, attrs = ("Conv", dict(attrs or unit.conv.attrs)) if unit.conv is not None else ("MatMul", {})
        bias = [] if unit.b is None else [gs.Constant(names(base + "_bias"), unit.b.astype(unit.dtype))]
        graph.nodes.append(gs.Node(op, names(base), attrs, [unit.x, weight, *bias], [unit.out]))
        return
    b = unit.b if unit.b is not None else np.zeros(unit.n_out)
    bias = gs.Constant(names(base + "_bias"), b.astype(unit.dtype))
    if unit.trans_a or _two_d(unit):
        attrs = {"transA": 1} if unit.trans_a else {}
        graph.nodes.append(gs.Node("Gemm", names(base), attrs, [unit.x, weight, bias], [unit.out]))
        return
    mid = gs.Variable(names(base + "_matmul"), dtype=unit.out.dtype, shape=unit.out.shape)
    graph.nodes.append(gs.Node("MatMul", names(base), inputs=[unit.x, weight], outputs=[mid]))
    graph.nodes.append(gs.Node("Add", names(base + "_add"), inputs=[mid, bias], outputs=[unit.out]))


def remove(nodes: list[gs.Node]) -> None:
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()


def _affine_constant(op: gs.Node) -> tuple[gs.Tensor, str, np.ndarray] | None:
    """(y, 'scale' | 'shift', c') with op(y, c) == y * c' or y + c'; None when not that."""
    split = split_const(op) if op.op in ("Mul", "Div", "Add", "Sub") else None
    if split is None or (op.op in ("Sub", "Div") and split[2] != 1):
        return None
    y, c = split[0], split[1].astype(np.float64)
    if op.op == "Div":
        return (y, "scale", 1.0 / c) if np.all(c != 0) else None
    return y, "scale" if op.op == "Mul" else "shift", -c if op.op == "Sub" else c


def _post_fold(graph: gs.Graph, names: FreshNames, op: gs.Node) -> Outcome | None:
    """Conv/linear op -> Mul/Div/Add/Sub by a constant: absorb the constant into W and b."""
    found = _affine_constant(op)
    unit = affine_producing(graph, found[0]) if found else None
    if not isinstance(unit, Affine):
        return (False, unit) if isinstance(unit, str) else None
    y, how, c = found
    if not single_reader(graph, y):
        return False, f"{y.name} has other readers"
    axis, out_rank = (1, unit.w.ndim) if unit.conv else (-1, rank(y))
    vec = per_axis(c, axis, out_rank, unit.n_out)
    if vec is None:
        where = "per output channel" if unit.conv else "along the last axis"
        return False, f"constant of shape {list(c.shape)} is not {where}"
    if reason := _shared(unit.weights):
        return False, reason
    gemm = how == "shift" and unit.b is None and unit.nodes[0].op == "MatMul"
    if gemm and not _two_d(unit):
        return False, f"input rank {rank(unit.x) or 'unknown'}: Gemm needs 2-D"
    if how == "scale":
        keep = [i for i in range(unit.w.ndim) if i != (0 if unit.conv else 1)]
        scale = np.expand_dims(vec.astype(unit.w.dtype), keep)
        new = replace(unit, w=unit.w * scale, b=None if unit.b is None else unit.b * vec)
    else:
        new = replace(unit, b=vec if unit.b is None else unit.b + vec)
    new.out = op.outputs[0]
    remove([*unit.nodes, op])
    emit(graph, names, new)
    return True, "matmul_add_to_gemm" if gemm else f"post_{how}"


def _may_pre_scale(reader: gs.Node, c: np.ndarray, x_rank: int | None) -> bool:
    """From shapes alone: `reader` is a MatMul/Gemm with a 2-D constant weight whose input
    features `c` could scale (so a 65M-weight lm_head is not converted just to be refused)."""
    weight = reader.inputs[1] if reader.op in ("MatMul", "Gemm") and len(reader.inputs) > 1 else None
    shape = weight.shape if weight is not None else None
    if shape is None or len(shape) != 2 or not all(isinstance(d, int) for d in shape):
        return weight is not None  # unknown shape: let the full check decide
    features = shape[1] if reader.op == "Gemm" and reader.attrs.get("transB", 0) else shape[0]
    return per_axis(c, -1, x_rank, features) is not None


def _pre_scale(graph: gs.Graph, names: FreshNames, mul: gs.Node) -> Outcome | None:
    """Mul(x, c) -> MatMul/Gemm: scale W's rows by c (per input feature)."""
    split, t = split_const(mul), mul.outputs[0]
    reader = t.outputs[0] if split and len(t.outputs) == 1 else None
    if reader is None or reader.inputs[0] is not t or not _may_pre_scale(reader, split[1], rank(split[0])):
        return None
    unit = linear_at(graph, reader)  # reads (and converts) the weight: only once the shapes allow
    if not isinstance(unit, Affine):
        return (False, unit) if isinstance(unit, str) else None
    if unit.trans_a:
        return False, "Gemm transA=1: the constant would scale its rows, not its features"
    if not single_reader(graph, t):
        return False, f"{t.name} is a graph output"
    vec = per_axis(split[1], -1, rank(split[0]), unit.w.shape[0])
    if vec is None:
        return False, f"constant of shape {list(split[1].shape)} is not per input feature"
    if reason := _shared(unit.weights):
        return False, reason
    remove([mul, *unit.nodes])
    scaled = unit.w  # the working copy linear_at made: scaled in place (an lm_head is 65M floats)
    scaled *= vec.astype(unit.w.dtype)[:, None]
    emit(graph, names, replace(unit, x=split[0], w=scaled, nodes=[*unit.nodes, mul]))
    return True, "pre_scale"


def _too_big(k: int, m: int, n: int, taps: int = 1) -> str | None:
    """Why merging [k x m] then [m x n] into [k x n] (times `taps`) would cost more."""
    if k * n * taps <= k * m * taps + m * n:
        return None
    t = f"x{taps}" if taps > 1 else ""
    return f"merged weight {k}x{n}{t} is larger than {k}x{m}{t} plus {m}x{n}: it would cost memory and FLOPs"


def _may_chain(node: gs.Node) -> bool:
    """Structure only, before any weight is read (reading converts it to an array): a
    chain needs x produced by a linear op, and a Conv second in line must be pointwise."""
    x = node.inputs[0] if node.inputs else None
    if x is None or len(x.inputs) != 1 or x.inputs[0].op not in ("Conv", "MatMul", "Gemm", "Add"):
        return False
    if node.op != "Conv" or len(node.inputs) < 2 or node.inputs[1].shape is None:
        return True
    return all(k == 1 for k in node.inputs[1].shape[2:])


def _chain(graph: gs.Graph, names: FreshNames, node: gs.Node) -> Outcome | None:
    """Linear op -> MatMul/Gemm, or Conv -> pointwise Conv: one op with the composed weight."""
    if not _may_chain(node):
        return None
    second = conv_at(node) if node.op == "Conv" else linear_at(graph, node)
    if not isinstance(second, Affine) or second.trans_a or len(second.x.inputs) != 1:
        return None
    first = conv_at(second.x.inputs[0]) if second.conv else affine_producing(graph, second.x)
    if not isinstance(first, Affine) or bool(first.conv) != bool(second.conv):
        return None
    a = node.attrs
    if second.conv and any(k != 1 for k in second.w.shape[2:]):
        return None
    if second.conv and (a.get("group", 1) != 1 or any(s != 1 for s in a.get("strides", [])) or any(a.get("pads", []))):
        return False, "pointwise Conv needs group 1, stride 1 and no pads"
    if second.conv and (
        a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or first.conv.attrs.get("group", 1) != 1
    ):
        return False, "auto_pad set on the pointwise Conv, or the first Conv is grouped"
    if not single_reader(graph, second.x):
        return False, f"{second.x.name} has other readers"
    # As matrices: first [k, m] (conv: [m, k x taps]) then second [m, n] (conv: [n, m]).
    w1, w2 = first.w, second.w.reshape(second.w.shape[:2])
    taps = int(np.prod(w1.shape[2:], dtype=np.int64))
    k, m, n = (w1.shape[1], w1.shape[0], w2.shape[0]) if first.conv else (*w1.shape, w2.shape[1])
    if reason := _shared(first.weights + second.weights) or _too_big(k, m, n, taps):
        return False, reason
    w = np.tensordot(w2, w1, axes=1) if first.conv else w1 @ w2
    b = None if first.b is None else (w2 @ first.b if first.conv else first.b @ w2)
    b = second.b if b is None else b if second.b is None else b + second.b
    remove([*first.nodes, *second.nodes])
    emit(graph, names, replace(first, w=w, b=b, nodes=first.nodes + second.nodes, out=second.out))
    return True, "conv_chain" if first.conv else "linear_chain"


def _fold_at(graph: gs.Graph, names: FreshNames, node: gs.Node) -> list[Outcome]:
    outcome = None
    if node.op in ("Mul", "Div", "Add", "Sub"):
        outcome = _post_fold(graph, names, node)
        if node.op == "Mul" and (outcome is None or not outcome[0]):
            outcome = _pre_scale(graph, names, node) or outcome
    elif node.op in ("MatMul", "Gemm", "Conv"):
        outcome = _chain(graph, names, node)
    return [outcome] if outcome else []


@dataclass
class FoldLinear(Pass):
    """Merge linear ops and the constant scales/shifts around them (see the module doc)."""

    name = "fold-linear"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return sweep(graph, _fold_at, tidy=True)
