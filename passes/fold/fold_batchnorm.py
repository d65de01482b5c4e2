"""Fold inference BatchNormalization into a neighbouring linear op (exact).

At inference a BatchNormalization is the per-channel affine map y = a*x + b along
axis 1, with a = scale / sqrt(var + eps) and b = B - mean * a. A linear op next to it
can absorb that map into its weights, which removes the BN node.

A BN is a candidate only when:
- scale, B, mean and var are constants (initializers or Constant nodes), 1-D, all of
  one length C, and var + epsilon > 0;
- it is in inference form: training_mode absent or 0, spatial absent or 1, and its
  optional running-statistics outputs are unused. Before opset 14 there is no
  training_mode: a BN with those outputs (5 of them; what torch.onnx.export writes
  for a model in training mode) IS the training form, normalizing with the batch's
  own statistics (onnxruntime computes it so), and is never folded, used or not.

It folds into the PRECEDING op when the BN input is read by the BN alone (not a graph
output) and is produced by:
- Conv: W[Cout, Cin/g, k...] *= a per output channel; bias = bias*a + b;
- ConvTranspose: W[Cin, Cout/g, k...] *= a per output channel (channel j of group g
  is output g*Cout/g + j); bias = bias*a + b;
- Gemm with constant B (and constant C if present): the columns of op(B) scale by a
  (rows of B when transB=1); C becomes beta*C*a + b and beta becomes 1; alpha stays;
- MatMul X[M, K] @ W[K, N] with constant 2-D W and a rank-2 X (BN's channel axis 1
  must be the MatMul's last axis): W *= a per column, and either the Add of a
  constant bias (rank <= 2) between them, whose MatMul output it alone reads,
  becomes c*a + b, or, with no Add, the MatMul becomes Gemm(X, W*a, b).

Otherwise it folds into the FOLLOWING Conv when the BN output is read by that Conv
alone, as its data input: W *= a per input channel and bias += sum(W * b). Zero
padding would see b at the borders in the folded form but 0 in the original, so this
requires pads all 0 (auto_pad NOTSET or VALID), unless b is exactly 0.

Weights are computed in float64 and cast back to their dtype. A weight that another
node also reads is never rewritten (the fold would have to copy it); a shared bias
is (the fold writes a new vector and the old one stays for its other readers).
Nothing is folded when a shape or rank the fold depends on is unknown. A BN with
nothing to fold into stays as it is: rewriting it as Mul+Add would not lower the node
count. Every BN left in place is recorded with the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.fold.sweep import Outcome, sweep
from passes.graph_utils import FreshNames
from passes.pattern_utils import constant_array

Affine = tuple[np.ndarray, np.ndarray]  # (a, b) in float64, y = a*x + b per channel


def _present(node: gs.Node, index: int) -> gs.Tensor | None:
    """The optional input at `index`, or None when omitted (absent or named '')."""
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def _sole_reader(graph: gs.Graph, tensor: gs.Tensor, reader: gs.Node) -> bool:
    """True when `reader` is the only node reading `tensor` and it is not a graph output."""
    only = len(tensor.outputs) == 1 and tensor.outputs[0] is reader
    return only and all(t is not tensor for t in graph.outputs)


def _owned(tensor: gs.Tensor | None, what: str, shared_ok: bool = False) -> np.ndarray | str:
    """The float value of a constant, else why it cannot be rewritten.

    The fold writes new constants and never edits one in place, so sharing is never
    wrong; but a weight read by another node would have to be copied, growing the
    model, so weights must be owned. A shared bias vector is cheap to copy: allowed.
    """
    if tensor is None:
        return f"{what} is absent"
    value = constant_array(tensor)
    if value is None:
        return f"{what} '{tensor.name}' is not a constant"
    if len(tensor.outputs) > 1 and not shared_ok:
        return f"{what} '{tensor.name}' is shared by {len(tensor.outputs)} consumers"
    if not np.issubdtype(value.dtype, np.floating):
        return f"{what} '{tensor.name}' is {value.dtype}, not floating point"
    return value


def _bias(node: gs.Node, index: int, what: str, size: int) -> np.ndarray | str:
    """An optional bias input in float64 (zeros when omitted), or why it cannot be used."""
    tensor = _present(node, index)
    value = np.zeros(size) if tensor is None else _owned(tensor, what, shared_ok=True)
    return value if isinstance(value, str) else value.astype(np.float64)


def bn_affine(graph: gs.Graph, bn: gs.Node) -> Affine | str:
    """(a, b) of an inference BN, or the reason it is not one."""
    attrs = bn.attrs
    if int(attrs.get("training_mode", 0)) != 0:
        return "training_mode=1"
    if graph.opset < 14 and sum(1 for t in bn.outputs if t.name) > 1:
        return "training mode (opset < 14 and running-statistics outputs present): it uses batch statistics"
    if int(attrs.get("spatial", 1)) != 1:
        return "spatial=0 (per-element statistics)"
    if any(t.outputs or any(o is t for o in graph.outputs) for t in bn.outputs[1:]):
        return "its running mean/var outputs are used (training graph)"
    params = [constant_array(t) for t in bn.inputs[1:5]]
    if len(params) != 4 or any(p is None for p in params):
        return "scale, B, mean or var is not a constant"
    scale, bias, mean, var = (np.asarray(p, np.float64) for p in params)
    if scale.ndim != 1 or any(p.shape != scale.shape for p in (bias, mean, var)):
        return "scale, B, mean and var are not 1-D vectors of one length"
    denom = var + float(attrs.get("epsilon", 1e-5))
    if not np.all(denom > 0):
        return "var + epsilon <= 0"
    a = scale / np.sqrt(denom)
    return a, bias - mean * a


def _const(names: FreshNames, base: str, values: np.ndarray, like: np.dtype) -> gs.Constant:
    """A new constant cast back to the weight dtype, with a name not yet in the graph."""
    return gs.Constant(names(base), np.ascontiguousarray(values.astype(like)))


def _set_bias(names: FreshNames, node: gs.Node, index: int, values: np.ndarray, like: np.dtype) -> None:
    bias = _const(names, f"{node.name}_bias_bnfold", values, like)
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    node.inputs[index] = bias


def _into_conv(names: FreshNames, conv: gs.Node, a: np.ndarray, b: np.ndarray) -> str | None:
    """Scale a preceding Conv/ConvTranspose's output channels; None on success."""
    w = _owned(conv.inputs[1], "weight")
    if isinstance(w, str):
        return w
    group = int(conv.attrs.get("group", 1))
    if w.ndim < 3 or w.shape[0] % group:
        return f"weight shape {w.shape} does not fit group={group}"
    cout = w.shape[0] if conv.op == "Conv" else w.shape[1] * group
    old_bias = _bias(conv, 2, "bias", cout)
    if cout != a.size or isinstance(old_bias, str):
        return old_bias if isinstance(old_bias, str) else f"BN has {a.size} channels, {conv.op} outputs {cout}"
    spatial = (1,) * (w.ndim - 2)
    if conv.op == "Conv":
        scaled = w.astype(np.float64) * a.reshape((-1, 1) + spatial)
    else:  # ConvTranspose: W[Cin, Cout/group, k...]; output channel = g * Cout/group + j
        grouped = w.astype(np.float64).reshape((group, w.shape[0] // group) + w.shape[1:])
        scaled = (grouped * a.reshape((group, 1, w.shape[1]) + spatial)).reshape(w.shape)
    conv.inputs[1] = _const(names, f"{conv.inputs[1].name}_bnfold", scaled, w.dtype)
    _set_bias(names, conv, 2, old_bias * a + b, w.dtype)
    return None


def _into_gemm(names: FreshNames, gemm: gs.Node, a: np.ndarray, b: np.ndarray) -> str | None:
    """Y*a + b = alpha * op(A) (op(B) diag(a)) + (beta*C*a + b); None on success."""
    w = _owned(gemm.inputs[1], "B")
    if isinstance(w, str):
        return w
    c = _bias(gemm, 2, "C", 1)
    if isinstance(c, str):
        return c
    trans_b = int(gemm.attrs.get("transB", 0))
    if w.ndim != 2 or w.shape[0 if trans_b else 1] != a.size:
        return f"BN has {a.size} channels, Gemm weight {w.shape} with transB={trans_b} does not match"
    scaled = w.astype(np.float64) * (a[:, None] if trans_b else a[None, :])
    new_c = float(gemm.attrs.get("beta", 1.0)) * c * a + b
    gemm.inputs[1] = _const(names, f"{gemm.inputs[1].name}_bnfold", scaled, w.dtype)
    _set_bias(names, gemm, 2, new_c, w.dtype)
    gemm.attrs["beta"] = 1.0
    return None


def _into_matmul(names: FreshNames, mm: gs.Node, add: gs.Node | None, a: np.ndarray, b: np.ndarray) -> str | None:
    """X[M,K] @ (W diag(a)) + (c*a + b) for a rank-2 X; None on success.

    With a bias Add, the Add's constant absorbs the shift. Without one, the MatMul
    becomes Gemm(X, W*a, b): Gemm is MatMul + Add of a broadcast C on rank-2 inputs.
    """
    w = _owned(mm.inputs[1], "MatMul weight (input 1)")
    if isinstance(w, str):
        return w
    if w.ndim != 2 or w.shape[1] != a.size:
        return f"MatMul weight shape {w.shape} does not output the BN's {a.size} channels"
    ranks = {len(t.shape) for t in (mm.inputs[0], mm.outputs[0]) if t.shape is not None}
    if not ranks:
        return "MatMul input rank is unknown"
    if ranks != {2}:
        return f"MatMul output rank {max(ranks)}: BN axis 1 is not the weight's output axis"
    c = np.zeros(1)
    if add is not None:
        const_side = [t for t in add.inputs if t is not mm.outputs[0]]
        c = _owned(const_side[0] if len(const_side) == 1 else None, "Add bias", shared_ok=True)
        if isinstance(c, str):
            return c
        if c.ndim > 2 or c.shape[-1:] not in ((), (1,), (a.size,)):
            return f"Add bias shape {c.shape} does not broadcast per output channel"
    mm.inputs[1] = _const(names, f"{mm.inputs[1].name}_bnfold", w.astype(np.float64) * a[None, :], w.dtype)
    new_c = _const(names, f"{mm.name}_bias_bnfold", c.astype(np.float64) * a + b, w.dtype)
    if add is None:
        mm.op = "Gemm"
        mm.inputs.append(new_c)
    else:
        index = next(i for i, t in enumerate(add.inputs) if t is not mm.outputs[0])
        add.inputs[index] = new_c
    return None


def _into_producer(graph: gs.Graph, names: FreshNames, bn: gs.Node, a: np.ndarray, b: np.ndarray) -> str | None:
    """Fold the BN into the op that produces its input; None on success, else why not."""
    x = bn.inputs[0]
    if not x.inputs:
        return "its input is a graph input or constant"
    producer = x.inputs[0]
    if not _sole_reader(graph, x, bn):
        return f"{producer.op} output is also read elsewhere"
    if producer.op in ("Conv", "ConvTranspose"):
        reason = _into_conv(names, producer, a, b)
    elif producer.op == "Gemm":
        reason = _into_gemm(names, producer, a, b)
    elif producer.op == "MatMul":
        reason = _into_matmul(names, producer, None, a, b)
    elif producer.op == "Add":
        mms = [t.inputs[0] for t in producer.inputs if t.inputs and t.inputs[0].op == "MatMul"]
        if len(mms) != 1 or not _sole_reader(graph, mms[0].outputs[0], producer):
            return "Add is not fed by a MatMul read by the Add alone"
        reason = _into_matmul(names, mms[0], producer, a, b)
    else:
        return f"produced by {producer.op}, which has no per-channel weights"
    if reason is None:
        y = bn.outputs[0]
        bn.outputs.clear()
        bn.inputs.clear()
        producer.outputs[0] = y  # the BN's output (maybe a graph output) keeps its name
    return reason


def _into_following_conv(graph: gs.Graph, names: FreshNames, bn: gs.Node, a: np.ndarray, b: np.ndarray) -> str | None:
    """Conv(a*x + b) = Conv'(x) with W' = W*a (per input channel), bias' = bias + sum(W*b)."""
    y = bn.outputs[0]
    if not y.outputs:
        return "its output is not read by a node"
    conv = y.outputs[0]
    if conv.op != "Conv" or not _sole_reader(graph, y, conv) or any(t is y for t in conv.inputs[1:]):
        return "its output is not read by one Conv alone, as its data input"
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    padded = auto_pad not in ("NOTSET", "VALID") or any(int(p) for p in conv.attrs.get("pads", []))
    if padded and np.any(b != 0):
        return "the following Conv zero-pads its input, where the BN shift would not be exact"
    w = _owned(conv.inputs[1], "following Conv weight")
    if isinstance(w, str):
        return w
    group = int(conv.attrs.get("group", 1))
    cout, cin_g = (w.shape[0], w.shape[1]) if w.ndim >= 3 else (0, 0)
    if w.ndim < 3 or cout % group or cin_g * group != a.size:
        return f"following Conv weight {w.shape} with group={group} does not read {a.size} channels"
    # input channel read by weight [o, i] is (o // (cout/group)) * cin_g + i
    index = (np.arange(cout) // (cout // group))[:, None] * cin_g + np.arange(cin_g)[None, :]
    spatial = (1,) * (w.ndim - 2)
    w64 = w.astype(np.float64)
    shift = (w64 * b[index].reshape(index.shape + spatial)).sum(axis=tuple(range(1, w.ndim)))
    old_bias = _bias(conv, 2, "following Conv bias", cout)
    if isinstance(old_bias, str):
        return old_bias
    conv.inputs[1] = _const(
        names, f"{conv.inputs[1].name}_bnfold", w64 * a[index].reshape(index.shape + spatial), w.dtype
    )
    _set_bias(names, conv, 2, old_bias + shift, w.dtype)
    conv.inputs[0] = bn.inputs[0]
    bn.inputs.clear()
    bn.outputs.clear()
    return None


def _fold(graph: gs.Graph, names: FreshNames, node: gs.Node) -> list[Outcome]:
    """[(True, kind of fold)] or [(False, why the BN stays)] for a BatchNormalization; [] for other nodes."""
    if node.op != "BatchNormalization":
        return []
    affine = bn_affine(graph, node)
    if isinstance(affine, str):
        return [(False, f"BatchNormalization kept: {affine}")]
    a, b = affine
    producer = node.inputs[0].inputs[0].op if node.inputs[0].inputs else ""
    before = _into_producer(graph, names, node, a, b)
    if before is None:
        return [(True, f"batchnorm_into_{'matmul_add' if producer == 'Add' else producer.lower()}")]
    after = _into_following_conv(graph, names, node, a, b)
    if after is None:
        return [(True, "batchnorm_into_following_conv")]
    return [(False, f"BatchNormalization kept: preceding: {before}; following: {after}")]


@dataclass
class FoldBatchNorm(Pass):
    """Fold inference BatchNormalization into the preceding or following linear op."""

    name = "fold-batchnorm"
    level = "graph"
    exact = True
    keeps_types = True  # removes BNs only; the folded op's output takes the BN output, of the same shape

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return sweep(graph, _fold, max_sweeps=None)  # each fold removes a BN: it ends
