"""Decomposed LayerNorm / RMSNorm -> LayerNormalization (opset 17) / RMSNormalization (opset 23).

What is recognised (over the last axis, keepdims=1, any exporter's spelling):
- LayerNorm: d = x - mean(x); y = d / sqrt(mean(d*d or d^2) + eps) [* gamma] [+ beta]
- RMSNorm:   y = x * 1/sqrt(mean(x^2) + eps) or x / sqrt(mean(x^2) + eps) [* gamma]
  (also with Reciprocal(Sqrt(.)), as HF's LlamaRMSNorm exports rsqrt). In an fp16 model
  HF normalises in float32 between two Casts, `Cast(norm(Cast(x, float32)), float16) *
  gamma`: that is RMSNormalization(x, gamma) with stash_type float32 (the op casts its
  normalised value back to x's type before the scale, the same steps).
gamma/beta must be constants of the last dim's size (or absent: ones/zeros are
supplied when that size is static). Below the op's opset the candidate is reported
as rejected, not rewritten.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.pattern_utils import (
    constant_of,
    is_last_axis,
    is_scalar,
    numpy_dtype,
    only_consumer,
    other_input,
    producer,
    rank_of,
    reduce_axes,
    scalar_value,
)


def _mean_last(tensor: gs.Tensor) -> gs.Tensor | None:
    """x when `tensor` is ReduceMean(x) over the last axis with keepdims, else None."""
    node = producer(tensor, "ReduceMean")
    if node is None or node.attrs.get("keepdims", 1) != 1:
        return None
    x = node.inputs[0]
    return x if is_last_axis(reduce_axes(node), rank_of(x)) else None


def _squared(tensor: gs.Tensor) -> gs.Tensor | None:
    """x when `tensor` is x*x or x^2."""
    node = producer(tensor, ("Mul", "Pow"))
    if node is None:
        return None
    a, b = node.inputs
    if node.op == "Mul":
        return a if a is b else None
    return a if is_scalar(b, 2.0) else None


def _rsqrt_of_mean_square(tensor: gs.Tensor, divide: bool) -> tuple[gs.Tensor, float] | None:
    """(x, eps) when `tensor` is sqrt(mean(x^2)+eps) (divide) or its reciprocal (multiply)."""
    if not divide:
        recip = producer(tensor, "Reciprocal")
        if recip is not None:
            tensor = recip.inputs[0]
        else:
            div = producer(tensor, "Div")
            if div is None or not is_scalar(div.inputs[0], 1.0):
                return None
            tensor = div.inputs[1]
    sqrt = producer(tensor, "Sqrt")
    add = producer(sqrt.inputs[0], "Add") if sqrt is not None else None
    if add is None:
        return None
    for var, eps in (add.inputs, add.inputs[::-1]):
        eps_value = scalar_value(eps)
        square_mean = _mean_last(var)
        x = _squared(square_mean) if square_mean is not None else None
        if eps_value is not None and x is not None:
            return x, eps_value
    return None


def _affine(graph: gs.Graph, out: gs.Tensor, channels: int | None, with_beta: bool, dtype: np.dtype | None):
    """Follow optional * gamma [+ beta] after `out`; return (last tensor, gamma, beta, extra nodes),
    or None when a gamma/beta to supply has no known size or dtype (`dtype`: the input's)."""
    gamma = beta = None
    nodes = []
    reader = only_consumer(out)
    if reader is not None and reader.op == "Mul":
        const = constant_of(other_input(reader, out) or out)
        if const is not None and np.asarray(const.values).ndim == 1:
            gamma, out = const, reader.outputs[0]
            nodes.append(reader)
            reader = only_consumer(out)
    if with_beta and reader is not None and reader.op == "Add":
        const = constant_of(other_input(reader, out) or out)
        if const is not None and np.asarray(const.values).ndim == 1:
            beta, out = const, reader.outputs[0]
            nodes.append(reader)
    size = channels or (np.asarray(gamma.values).size if gamma is not None else None)
    dtype = np.asarray(gamma.values).dtype if gamma is not None else dtype  # Scale/B have the input's type
    if size is None or dtype is None:
        return None
    gamma = gamma if gamma is not None else gs.Constant(f"{out.name}_gamma", np.ones(size, dtype))
    if with_beta and beta is None:
        beta = gs.Constant(f"{out.name}_beta", np.zeros(size, dtype))
    return out, gamma, beta, nodes


def _last_dim(tensor: gs.Tensor) -> int | None:
    if tensor.shape and isinstance(tensor.shape[-1], int) and tensor.shape[-1] > 0:
        return int(tensor.shape[-1])
    return None


def _through_float32(x: gs.Tensor, out: gs.Tensor) -> tuple[gs.Tensor, gs.Tensor]:
    """(fp16 source, its cast-back) when x = Cast(source, float32) and `out` is read only by a Cast
    back to source's type (the norm runs in float32 between them: the op's stash_type); else (x, out)."""
    up = producer(x, "Cast")
    back = only_consumer(out)
    if up is None or back is None or back.op != "Cast" or up.attrs.get("to") != onnx.TensorProto.FLOAT:
        return x, out
    source = up.inputs[0]
    if numpy_dtype(source) != np.float16 or back.attrs.get("to") != onnx.TensorProto.FLOAT16:
        return x, out
    return source, back.outputs[0]


def _replace(graph: gs.Graph, op: str, name: str, inputs, out: gs.Tensor, eps: float) -> None:
    for node in list(out.inputs):
        node.outputs.clear()
    graph.nodes.append(gs.Node(op, name=name, attrs={"axis": -1, "epsilon": float(eps)}, inputs=inputs, outputs=[out]))


@dataclass
class FuseNorms(Pass):
    """LayerNorm and RMSNorm written in elementary ops -> the ONNX normalization ops."""

    name = "fuse-norms"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in list(graph.nodes):
            if node.op == "Div":
                self._layer_norm(graph, node, ctx, result) or self._rms_norm(graph, node, ctx, result, divide=True)
            elif node.op == "Mul":
                self._rms_norm(graph, node, ctx, result, divide=False)
        return result

    def _layer_norm(self, graph, div: gs.Node, ctx, result) -> bool:
        centred, denom = div.inputs
        sub = producer(centred, "Sub")
        if sub is None or _mean_last(sub.inputs[1]) is not sub.inputs[0]:
            return False
        found = _rsqrt_of_mean_square(denom, divide=True)
        if found is None or found[0] is not centred:
            return False
        x, eps = sub.inputs[0], found[1]
        if ctx.opset < 17:
            result.reject(div.name, f"LayerNorm found but opset {ctx.opset} < 17")
            return True
        affine = _affine(graph, div.outputs[0], _last_dim(x), with_beta=True, dtype=numpy_dtype(x))
        if affine is None:
            result.reject(div.name, "LayerNorm found but its size or dtype is unknown (no gamma, dynamic last dim)")
            return True
        out, gamma, beta, _ = affine
        _replace(graph, "LayerNormalization", f"{div.name}_layernorm", [x, gamma, beta], out, eps)
        result.count("layernorm_fused", div.name)
        return True

    def _rms_norm(self, graph, node: gs.Node, ctx, result, divide: bool) -> bool:
        a, b = node.inputs
        orders = [(a, b)] if divide else [(a, b), (b, a)]  # x / rms, or x * (1/rms) either way round
        found = next(
            (f for x, scale in orders if (f := _rsqrt_of_mean_square(scale, divide)) is not None and f[0] is x),
            None,
        )
        if found is None:
            return False
        x, eps = found
        if ctx.opset < 23:
            result.reject(node.name, f"RMSNorm found but opset {ctx.opset} < 23 has no RMSNormalization")
            return True
        x, normalised = _through_float32(x, node.outputs[0])
        affine = _affine(graph, normalised, _last_dim(x), with_beta=False, dtype=numpy_dtype(x))
        if affine is None:
            result.reject(node.name, "RMSNorm found but its size or dtype is unknown")
            return True
        out, gamma, _, _ = affine
        _replace(graph, "RMSNormalization", f"{node.name}_rmsnorm", [x, gamma], out, eps)
        result.count("rmsnorm_fused", node.name)
        return True
