"""Rotary position embedding written in elementary ops -> the opset-23 RotaryEmbedding op.

What is recognised (HF's `apply_rotary_pos_emb`, Llama/Mistral/Qwen-style, not interleaved):

    x_embed = x * cos4 + rotate_half(x) * sin4
    rotate_half(x) = Concat(-x[..., D/2:], x[..., :D/2], axis=-1)
    cos4 = Unsqueeze(c, axis 1),  c = [Cast](Cos(Concat(f, f, axis=-1)) [* scale])

for x of shape [B, H, S, D] (D static and even) and f of shape [b, S, D/2] (b = 1 or B):
the frequencies repeated in both halves, which is what makes `cos4` a "cache" of D/2
values per position. sin4 is the same with Sin of the same f. The rewrite is

    RotaryEmbedding(x, Expand([Cast](Cos(f) [* scale]), [B, 1, 1]), ... Sin ...)

with the caches built once per frequency tensor (every layer shares them) and expanded to
x's batch (the op wants one cache row per batch row; HF computes them for batch 1). The
batch is read from the graph input whose first dim symbolic shape inference proves equal
to x's (so every layer shares one Expand per cache), else from x itself. The op
computes the same products and sums, in the input's type; TensorRT parses it into its
ROTARY_EMBEDDING layer (TensorRT >= 10.15, TensorRT-RTX). Below opset 23 a match is
reported as rejected. Interleaved rotary (GPT-J) and partial rotary dims are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from passes.attention.kv import ShapeFacts
from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import FreshNames
from passes.pattern_utils import constant_array, producer, scalar_factor

ROTARY_OPSET = 23
INT64_MAX = np.iinfo(np.int64).max


@dataclass
class Cache:
    """How one cos or sin factor is computed from the frequencies f."""

    freqs: gs.Tensor
    scale: float | None  # a constant scalar multiplying Cos/Sin, when there is one
    cast_to: int | None  # the Cast after it, when there is one


def _slice(node: gs.Node | None, x: gs.Tensor, half: int, upper: bool) -> bool:
    """Whether `node` is Slice(x) over the last axis: [half:] (upper) or [:half]."""
    if node is None or node.op != "Slice" or node.inputs[0] is not x or len(node.inputs) < 4:
        return False
    starts, ends, axes = (constant_array(t) for t in node.inputs[1:4])
    steps = constant_array(node.inputs[4]) if len(node.inputs) > 4 else np.array([1])
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(steps.ravel()[0]) != 1:
        return False
    if int(axes.ravel()[0]) not in (-1, 3):
        return False
    start, end = int(starts.ravel()[0]), int(ends.ravel()[0])
    return start == half and end >= 2 * half if upper else start == 0 and end == half


def _rotate_half_of(tensor: gs.Tensor, x: gs.Tensor, half: int) -> bool:
    concat = producer(tensor, "Concat")
    if concat is None or len(concat.inputs) != 2 or concat.attrs.get("axis") not in (-1, 3):
        return False
    neg = producer(concat.inputs[0], "Neg")
    return (
        neg is not None
        and _slice(producer(neg.inputs[0]), x, half, True)
        and _slice(producer(concat.inputs[1]), x, half, False)
    )


def _cache(tensor: gs.Tensor, op: str) -> Cache | None:
    """The Cache when `tensor` is Unsqueeze(axis 1) of [Cast]([Mul by scalar](op(Concat(f, f))))."""
    unsqueeze = producer(tensor, "Unsqueeze")
    axes = constant_array(unsqueeze.inputs[1]) if unsqueeze is not None and len(unsqueeze.inputs) > 1 else None
    if axes is None or axes.size != 1 or int(axes.ravel()[0]) != 1:
        return None
    inner, cast_to, scale = unsqueeze.inputs[0], None, None
    if (cast := producer(inner, "Cast")) is not None:
        inner, cast_to = cast.inputs[0], int(cast.attrs["to"])
    if (mul := producer(inner, "Mul")) is not None:
        found = scalar_factor(mul)
        if found is None:
            return None
        inner, scale = found
    trig = producer(inner, op)
    concat = producer(trig.inputs[0], "Concat") if trig is not None else None
    if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not concat.inputs[1]:
        return None
    if concat.attrs.get("axis") not in (-1, 2):
        return None
    return Cache(concat.inputs[0], scale, cast_to)


def _match(add: gs.Node) -> tuple[gs.Tensor, Cache, Cache] | str | None:
    """(x, cos cache, sin cache) for x * cos4 + rotate_half(x) * sin4; a reason, or None if not rotary."""
    if add.op != "Add" or len(add.inputs) != 2:
        return None
    muls = [producer(t, "Mul") for t in add.inputs]
    if any(m is None for m in muls):
        return None
    for first, second in (muls, muls[::-1]):
        for x, cos4 in (first.inputs, first.inputs[::-1]):
            shape = x.shape
            if shape is None or len(shape) != 4 or not isinstance(shape[3], int) or shape[3] % 2:
                continue
            half = shape[3] // 2
            for rot, sin4 in (second.inputs, second.inputs[::-1]):
                if not _rotate_half_of(rot, x, half):
                    continue
                cos, sin = _cache(cos4, "Cos"), _cache(sin4, "Sin")
                if cos is None or sin is None or cos.freqs is not sin.freqs:
                    return f"rotate_half found at {add.name}, but cos/sin are not Cos/Sin of repeated frequencies"
                freqs = cos.freqs.shape
                if freqs is None or len(freqs) != 3 or (freqs[2] is not None and freqs[2] != half):
                    return f"rotate_half found at {add.name}, but the frequencies are not [batch, seq, {half}]"
                if (cos.scale, cos.cast_to) != (sin.scale, sin.cast_to):
                    return f"rotate_half found at {add.name}, but cos and sin are scaled or cast differently"
                return x, cos, sin
    return None


@dataclass
class FuseRotary(Pass):
    """x * cos + rotate_half(x) * sin -> RotaryEmbedding (opset 23)."""

    name = "fuse-rotary"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        names = FreshNames(graph)
        caches: dict[tuple, gs.Tensor] = {}
        facts = ShapeFacts(graph)
        for add in list(graph.nodes):
            found = _match(add)
            if isinstance(found, str):
                result.reject(add.name, found)
                continue
            if found is None:
                continue
            if ctx.opset < ROTARY_OPSET:
                result.reject(add.name, f"rotary embedding found but opset {ctx.opset} < 23 has no RotaryEmbedding")
                continue
            x, cos, sin = found
            source = _batch_source(graph, facts, x)  # first call infers shapes: before any rewrite
            out = add.outputs[0]
            add.outputs.clear()
            if ("batch", id(source)) not in caches:
                caches["batch", id(source)] = _batch_shape(graph, names, source)
            batch = caches["batch", id(source)]
            tables = [_expanded(graph, names, caches, c, op, batch) for c, op in ((cos, "Cos"), (sin, "Sin"))]
            graph.nodes.append(gs.Node("RotaryEmbedding", names(f"{add.name}_rotary"), {}, [x, *tables], [out]))
            result.count("rotary_fused", add.name)
        return result


def _batch_source(graph: gs.Graph, facts: ShapeFacts, x: gs.Tensor) -> gs.Tensor:
    """A graph input whose dim 0 is provably x's (the same symbol), else x."""
    dims = facts.dims(x)
    first = dims[0] if dims else None
    if not isinstance(first, str) or first.startswith("?"):
        return x
    for tensor in graph.inputs:
        shape = facts.dims(tensor) or tensor.shape
        if shape and shape[0] == first:
            return tensor
    return x


def _batch_shape(graph: gs.Graph, names: FreshNames, x: gs.Tensor) -> gs.Tensor:
    """[B, 1, 1] for x of shape [B, ...]: Concat(Shape(x)[0:1], [1, 1])."""
    batch = gs.Variable(names(f"{x.name}_batch"), dtype=np.int64, shape=[1])
    graph.nodes.append(gs.Node("Shape", names(f"{x.name}_Shape"), {"start": 0, "end": 1}, [x], [batch]))
    ones = gs.Constant(names(f"{x.name}_ones"), np.ones(2, np.int64))
    shape = gs.Variable(names(f"{x.name}_cache_shape"), dtype=np.int64, shape=[3])
    graph.nodes.append(gs.Node("Concat", names(f"{x.name}_Concat"), {"axis": 0}, [batch, ones], [shape]))
    return shape


def _expanded(
    graph: gs.Graph,
    names: FreshNames,
    caches: dict[tuple[int, str], gs.Tensor],
    cache: Cache,
    op: str,
    shape: gs.Tensor,
) -> gs.Tensor:
    """The op's cache: [Cast]([scale *] Cos/Sin(f)) expanded to `shape` (each built once)."""
    key = (id(cache.freqs), op, cache.scale, cache.cast_to)
    if key not in caches:
        tensor = gs.Variable(names(f"{cache.freqs.name}_{op.lower()}"), dtype=cache.freqs.dtype)
        graph.nodes.append(gs.Node(op, names(f"{cache.freqs.name}_{op}"), {}, [cache.freqs], [tensor]))
        if cache.scale is not None:
            factor = gs.Constant(names(f"{tensor.name}_scale"), np.array(cache.scale, np.dtype(cache.freqs.dtype)))
            scaled = gs.Variable(names(f"{tensor.name}_scaled"), dtype=cache.freqs.dtype)
            graph.nodes.append(gs.Node("Mul", names(f"{tensor.name}_Mul"), {}, [tensor, factor], [scaled]))
            tensor = scaled
        if cache.cast_to is not None:
            cast = gs.Variable(names(f"{tensor.name}_cast"))
            graph.nodes.append(gs.Node("Cast", names(f"{tensor.name}_Cast"), {"to": cache.cast_to}, [tensor], [cast]))
            tensor = cast
        caches[key] = tensor
    if (key, id(shape)) not in caches:
        out = gs.Variable(names(f"{caches[key].name}_expanded"))
        graph.nodes.append(gs.Node("Expand", names(f"{caches[key].name}_Expand"), {}, [caches[key], shape], [out]))
        caches[key, id(shape)] = out
    return caches[key, id(shape)]
