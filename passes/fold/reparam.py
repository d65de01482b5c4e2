"""Structural re-parameterization (RepVGG, ACNet, RepMLP) found in the graph (exact).

A tree of Adds (inner Adds read by their parent alone, not graph outputs) sums leaves.
Leaves that are parallel linear branches of the SAME input x merge into one op:

- conv branches: Conv(x, W_i, b_i) with constant weights, read by the tree alone, with
  one rank, channel counts, strides, dilations and group, auto_pad NOTSET or VALID, and
  pads that align the kernels. Per spatial axis, with K the largest kernel and (P0, P1)
  the pads of a branch that has it, a branch with kernel k and pads (p0, p1) sits at
  offsets (P0 - p0)/d and (P1 - p1)/d from the two ends, both whole, >= 0 and summing
  to K - k. "Same" centred pads (k-1)/2*d satisfy this, for any mix of kernel sizes,
  square or not (ACNet's 3x3 + 1x3 + 3x1). Smaller kernels are zero-padded to K at that
  offset, weights and biases summed; pads (P0, P1), strides, dilations, group kept.
- linear branches (RepMLP-style): MatMul(x, W) or Gemm(x, W, c) (transA=0) with constant
  W of one shape [K, N]; weights and biases summed; Gemm when x is 2-D, else MatMul (+Add).
- identity branches: x itself, Mul(x, s) with constant s scalar or per channel (conv:
  axis 1; linear: last axis), or, for conv groups, an inference BatchNormalization(x)
  (s = scale/sqrt(var+eps), shift = B - mean*s). They need Cin == Cout (K == N) and
  stride 1, and put s on the diagonal at the tap that reads x[o] (offset P0/d, whole,
  with P0 + P1 == d*(K-1)); channel c sits at input c mod Cin/group, so groups hold.
- constant leaves per output channel (conv) or along the last axis (linear) fold into
  the bias of the first merged op.

A merge needs two or more conv/linear/identity branches of one x, one a conv or linear
op. A group whose ops disagree is left whole; identity branches that cannot join are
left apart while the ops still merge; both are recorded with the reason. Other leaves
stay and are added to the merged outputs; the root keeps its output tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.fold.fold_batchnorm import bn_affine
from passes.fold.fold_linear import (
    Affine,
    conv_at,
    emit,
    parse_linear,
    per_axis,
    rank,
    remove,
    single_reader,
    split_const,
    values,
)
from passes.fold.sweep import Outcome, sweep
from passes.graph_utils import FreshNames


@dataclass
class Branch:
    """One summand: kind 'conv' / 'linear' (node computes it), 'scale' (s * x + shift) or 'const'."""

    kind: str
    x: gs.Tensor | None
    nodes: list[gs.Node] = field(default_factory=list)
    w: np.ndarray | None = None
    b: np.ndarray | None = None
    shift: np.ndarray | None = None  # BatchNormalization's, per channel
    leaf: gs.Tensor | None = None
    dtype: np.dtype | None = None


def _tree(graph: gs.Graph, root: gs.Node) -> tuple[list[gs.Node], list[gs.Tensor]]:
    """The Adds of the tree rooted at `root` and its leaf tensors."""
    adds, leaves, stack = [root], [], list(root.inputs)
    while stack:
        t = stack.pop()
        node = t.inputs[0] if len(t.inputs) == 1 else None
        if node is not None and node.op == "Add" and single_reader(graph, t):
            adds.append(node)
            stack.extend(node.inputs)
        else:
            leaves.append(t)
    return adds, leaves


def _branch(graph: gs.Graph, t: gs.Tensor) -> Branch:
    """What the leaf `t` computes from which x; by default x itself (t is its own x)."""
    c = values(t)
    if c is not None:
        return Branch("const", None, w=c, leaf=t)
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is not None and single_reader(graph, t) and node.inputs and values(node.inputs[0]) is None:
        op = conv_at(node) or parse_linear(node)
        if isinstance(op, Affine) and not op.trans_a:
            return Branch("conv" if op.conv else "linear", op.x, [node], op.w, op.b, leaf=t, dtype=op.dtype)
        split = split_const(node) if node.op == "Mul" else None
        if split is not None:
            return Branch("scale", split[0], [node], w=split[1].astype(np.float64), leaf=t)
        bn = bn_affine(graph, node) if node.op == "BatchNormalization" else None
        if bn is not None and not isinstance(bn, str):
            return Branch("scale", node.inputs[0], [node], w=bn[0], shift=bn[1], leaf=t)
    return Branch("scale", t, w=np.ones(()), leaf=t)


def _conv_attrs(node: gs.Node, spatial: int) -> tuple[int, list[int], list[int], list[int]] | str:
    """(group, strides, dilations, pads) of a Conv with explicit pads, or why not."""
    a = node.attrs
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"{node.name} uses auto_pad {a['auto_pad']}"
    pads = list(a.get("pads", [0] * 2 * spatial)) if a.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * spatial
    return a.get("group", 1), list(a.get("strides", [1] * spatial)), list(a.get("dilations", [1] * spatial)), pads


def _merge_convs(convs: list[Branch], scales: list[Branch]) -> tuple[np.ndarray, np.ndarray, dict] | str:
    """One Conv weight, bias and attributes for the conv and identity branches, or why not."""
    spatial = convs[0].w.ndim - 2
    if any(c.w.ndim != spatial + 2 or c.w.shape[:2] != convs[0].w.shape[:2] for c in convs):
        return "the conv branches differ in rank or channel counts"
    attrs = [_conv_attrs(c.nodes[0], spatial) for c in convs]
    if reason := next((a for a in attrs if isinstance(a, str)), None):
        return reason
    for i, what in enumerate(("groups", "strides", "dilations")):
        if any(a[i] != attrs[0][i] for a in attrs):
            return f"{what} differ: {[a[i] for a in attrs]}"
    group, strides, dil, _ = attrs[0]
    big = [max(range(len(convs)), key=lambda j, d=d: convs[j].w.shape[2 + d]) for d in range(spatial)]
    kernel = [convs[j].w.shape[2 + d] for d, j in enumerate(big)]
    p0 = [attrs[j][3][d] for d, j in enumerate(big)]
    p1 = [attrs[j][3][spatial + d] for d, j in enumerate(big)]
    cout, cin_g = convs[0].w.shape[:2]
    w, b = np.zeros((cout, cin_g, *kernel)), np.zeros(cout)
    for conv, (_, _, _, pads) in zip(convs, attrs, strict=True):
        where = [slice(None), slice(None)]
        for d in range(spatial):
            k = conv.w.shape[2 + d]
            lo, hi = divmod(p0[d] - pads[d], dil[d]), divmod(p1[d] - pads[spatial + d], dil[d])
            if lo[1] or hi[1] or lo[0] < 0 or hi[0] < 0 or lo[0] + hi[0] != kernel[d] - k:
                return f"padding of {conv.nodes[0].name} {pads} does not centre with the {kernel} kernel's {p0 + p1}"
            where.append(slice(lo[0], lo[0] + k))
        w[tuple(where)] += conv.w
        b += 0 if conv.b is None else conv.b
    if scales:
        tap = [p // dd for p, dd in zip(p0, dil, strict=True)]
        if any(s != 1 for s in strides) or cout != cin_g * group:
            return "an identity branch needs stride 1 and Cin == Cout"
        if any(p % dd or p + q != dd * (k - 1) for p, q, dd, k in zip(p0, p1, dil, kernel, strict=True)):
            return f"an identity branch does not align with pads {p0 + p1}"
        for s in scales:
            bn = s.shift is not None and s.w.shape == (cout,)
            vec = s.w if bn else None if s.shift is not None else per_axis(s.w, 1, spatial + 2, cout)
            if vec is None:
                return f"identity scale of shape {list(s.w.shape)} is not per channel"
            for ch in range(cout):
                w[(ch, ch % cin_g, *tap)] += vec[ch]
            b += 0 if s.shift is None else s.shift
    keep = {k: v for k, v in convs[0].nodes[0].attrs.items() if k not in ("auto_pad", "pads", "kernel_shape")}
    return w, b, {**keep, "kernel_shape": kernel, "pads": p0 + p1}


def _merge_linears(
    lins: list[Branch], scales: list[Branch], x: gs.Tensor
) -> tuple[np.ndarray, np.ndarray | None] | str:
    """One [K, N] weight and bias for the linear and identity branches, or why not."""
    if any(lin.w.shape != lins[0].w.shape for lin in lins):
        return f"weights of different shapes {[list(lin.w.shape) for lin in lins]}"
    w = sum(lin.w for lin in lins)
    biases = [lin.b for lin in lins if lin.b is not None]
    for s in scales:
        vec = per_axis(s.w, -1, rank(x), w.shape[0]) if s.shift is None else None
        if vec is None or w.shape[0] != w.shape[1]:
            return "an identity branch needs K == N and a scale along the last axis"
        w = w + np.diag(vec)
    return w, (sum(biases) if biases else None)


def _may_share_input(leaves: list[gs.Tensor]) -> bool:
    """Structure only, before any weight is read: a merge needs two leaves computed from
    one x, and a leaf's x is itself or an input of the node producing it."""
    seen: set[int] = set()
    for t in leaves:
        candidates = {id(t)} | ({id(i) for i in t.inputs[0].inputs} if len(t.inputs) == 1 else set())
        if candidates & seen:
            return True
        seen |= candidates
    return False


def _rewrite(graph: gs.Graph, names: FreshNames, root: gs.Node) -> list[Outcome]:
    """Merge the branch groups of the Add tree at `root`: one outcome per group merged or left."""
    adds, leaves = _tree(graph, root)
    if not _may_share_input(leaves):
        return []
    branches = [_branch(graph, t) for t in leaves]
    out = root.outputs[0]
    groups: dict[int, list[Branch]] = {}
    for br in branches:
        if br.x is not None:
            groups.setdefault(id(br.x), []).append(br)
    merged: list[tuple[list[Branch], gs.Tensor]] = []  # (branches replaced, merged output)
    outcomes: list[Outcome] = []
    for group in groups.values():
        convs = [br for br in group if br.kind == "conv"]
        ops = convs or [br for br in group if br.kind == "linear"]
        scales = [br for br in group if br.kind == "scale"]
        if not ops or len(ops) + len(scales) < 2:
            continue
        x, name = ops[0].x, ops[0].nodes[0].name
        done = _merge_convs(ops, scales) if convs else _merge_linears(ops, scales, x)
        if isinstance(done, str) and scales and len(ops) > 1:  # merge the ops, keep the identity
            retry = _merge_convs(ops, []) if convs else _merge_linears(ops, [], x)
            if not isinstance(retry, str):
                outcomes.append((False, f"identity branch of {x.name} kept apart: {done}"))
                done, scales = retry, []
        if isinstance(done, str):
            outcomes.append((False, f"branches of {x.name}: {done}"))
            continue
        kind = "conv" if convs else "linear"
        consts = [br for br in branches if br.kind == "const" and not merged]  # first group takes them
        axis, r = (1, done[0].ndim) if convs else (-1, rank(out))
        vecs = [(br, per_axis(br.w, axis, r, done[0].shape[0 if convs else 1])) for br in consts]
        vecs = [(br, v) for br, v in vecs if v is not None]
        bias = done[1]
        if vecs:
            bias = (0 if bias is None else bias) + sum(v for _, v in vecs)
        target = gs.Variable(names(name + "_reparam"), dtype=out.dtype)
        replaced = ops + scales + [br for br, _ in vecs]
        merged.append((replaced, target))
        remove([n for br in ops + scales for n in br.nodes])
        nodes = [n for br in ops for n in br.nodes]
        emit(
            graph,
            names,
            Affine(x, done[0], bias, nodes, [], target, ops[0].dtype, conv=nodes[0] if convs else None),
            *done[2:],
        )
        outcomes.append((True, f"{kind}_branches_merged"))
    if not merged:
        return outcomes
    gone = {id(br) for replaced, _ in merged for br in replaced}
    terms = [t for _, t in merged] + [br.leaf for br in branches if id(br) not in gone]
    remove(adds)
    if len(terms) == 1:
        terms[0].inputs[0].outputs[0] = out
        return outcomes
    acc = terms[0]
    for i, term in enumerate(terms[1:], start=1):
        last = i == len(terms) - 1
        nxt = out if last else gs.Variable(names(root.name + "_sum"), dtype=out.dtype)
        graph.nodes.append(gs.Node("Add", names(root.name), inputs=[acc, term], outputs=[nxt]))
        acc = nxt
    return outcomes


def _merge_at_root(graph: gs.Graph, names: FreshNames, node: gs.Node) -> list[Outcome]:
    """Rewrite at the root Add of a tree (an Add whose output is not read by another Add alone)."""
    out = node.outputs[0] if node.op == "Add" else None
    is_root = out is not None and not (single_reader(graph, out) and out.outputs[0].op == "Add")
    return _rewrite(graph, names, node) if is_root else []


@dataclass
class Reparam(Pass):
    """Merge parallel conv / linear / identity branches summed by Adds (see the module doc).

    Sweeps until nothing merges (a second run must change nothing), tidying in between:
    a merge rewires the graph the next Add trees are found in.
    """

    name = "reparam"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return sweep(graph, _merge_at_root, tidy=True)
