"""Hand-built attention subgraphs (onnx.helper) in the spellings exporters produce, for fuse-attention tests.

`attention_graph(**variant)` builds x [B, S, 16] -> Q/K/V projections -> heads ->
scores -> masks -> Softmax -> P @ V -> y [B, S, 16], with dynamic B and S, the
sequence length read from Shape(x) the way exporters compute it. Options pick the
variant (scale placement, K layout, mask kind, GQA repeat form, fp16 with an fp32
softmax, the SDPA NaN guard) and the look-alikes that must not fuse.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_helpers import make_model

D, HEADS, HEAD_DIM = 16, 4, 4


class _Graph:
    def __init__(self, dtype=np.float32):
        self.nodes, self.inits, self.n = [], [], 0
        self.dtype = dtype

    def const(self, value, dtype=None) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype or self.dtype), name))
        return name

    def ints(self, value) -> str:
        return self.const(value, np.int64)

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"{op.lower()}{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"n{self.n}_{op}", **attrs))
        return out


def attention_graph(
    scale: str = "after",  # after | div | q | split | none
    k_layout: str = "perm",  # perm (one Transpose 0,2,3,1) | two (0,2,1,3 then 0,1,3,2) | sdpa3d
    mask: str | None = None,  # padding | fill_min | bool | causal_where | causal_cast | causal_add | causal_padding
    tril_size: int | None = None,  # a tril of this static size instead of [S, S]: a causal look-alike
    packed: bool = False,  # one QKV projection, Split into three
    kv_heads: int = HEADS,
    repeat: str = "expand",  # expand | tile (repeat_interleave forms) | heads_tile (k.repeat: a different order)
    fp16_softmax: bool = False,  # fp16 graph that runs Softmax in fp32 between Casts
    nan_guard: bool = False,
    softmax_axis: int = -1,
    mask_after_softmax: bool = False,
    vector_scale: bool = False,
    opset: int = 17,
    seed: int = 0,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    dtype = np.float16 if fp16_softmax else np.float32
    g = _Graph(dtype)
    x = "x"
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT16 if fp16_softmax else TensorProto.FLOAT, ["B", "S", D])
    ]
    seq = g.op("Gather", [g.op("Shape", [x]), g.ints(1)], axis=0)  # scalar S, as exporters compute it
    seq1 = g.op("Unsqueeze", [seq, g.ints([0])])

    def project(heads: int) -> str:
        w = g.const(rng.standard_normal((D, heads * HEAD_DIM)) * 0.5)
        b = g.const(rng.standard_normal(heads * HEAD_DIM) * 0.1)
        return g.op("Reshape", [g.op("Add", [g.op("MatMul", [x, w]), b]), g.ints([0, 0, heads, HEAD_DIM])])

    if packed:
        qkv = g.op(
            "Add", [g.op("MatMul", [x, g.const(rng.standard_normal((D, 3 * D)) * 0.5)]), g.const(np.zeros(3 * D))]
        )
        parts = [f"qkv_part{i}" for i in range(3)]
        g.nodes.append(helper.make_node("Split", [qkv, g.ints([D, D, D])], parts, name="split_qkv", axis=-1))
        q3, k3, v3 = (g.op("Reshape", [t, g.ints([0, 0, HEADS, HEAD_DIM])]) for t in parts)
    else:
        q3, k3, v3 = project(HEADS), project(kv_heads), project(kv_heads)
    q = g.op("Transpose", [q3], perm=[0, 2, 1, 3])
    v = g.op("Transpose", [v3], perm=[0, 2, 1, 3])
    k = g.op("Transpose", [k3], perm=[0, 2, 1, 3])
    if kv_heads != HEADS:
        groups = HEADS // kv_heads

        def rep(t: str) -> str:
            if repeat == "heads_tile":  # k.repeat(1, g, 1, 1): heads k0 k1 k0 k1, not k0 k0 k1 k1
                return g.op("Tile", [t, g.ints([1, groups, 1, 1])])
            u = g.op("Unsqueeze", [t, g.ints([2])])
            if repeat == "tile":
                e = g.op("Tile", [u, g.ints([1, 1, groups, 1, 1])])
            else:
                e = g.op("Expand", [u, g.ints([1, 1, groups, 1, 1])])
            return g.op("Reshape", [e, g.ints([0, HEADS, -1, HEAD_DIM])])

        k, v = rep(k), rep(v)
    c = 1.0 / math.sqrt(HEAD_DIM)
    if scale == "q":
        q = g.op("Mul", [q, g.const(c)])
    if scale == "split":
        q = g.op("Mul", [q, g.const(math.sqrt(c))])
    if k_layout == "sdpa3d":  # the SDPA exporters' transpose: via [B*H, S, d] and back
        batch1 = g.op("Unsqueeze", [g.op("Gather", [g.op("Shape", [x]), g.ints(0)], axis=0), g.ints([0])])
        flat = g.op("Reshape", [k, g.op("Concat", [g.ints([-1]), seq1, g.ints([HEAD_DIM])], axis=0)])
        swapped = g.op("Transpose", [flat], perm=[0, 2, 1])
        heads = g.ints([HEADS, HEAD_DIM])
        kt = g.op("Reshape", [swapped, g.op("Concat", [batch1, heads, seq1], axis=0)])
    elif k_layout == "perm" and kv_heads == HEADS:
        kt = g.op("Transpose", [k3], perm=[0, 2, 3, 1])
    else:
        kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    if scale == "split":
        kt = g.op("Mul", [g.const(math.sqrt(c)), kt])
    s = g.op("MatMul", [q, kt])
    if scale == "after":
        s = g.op("Mul", [s, g.const(c)])
    elif scale == "div":
        s = g.op("Div", [s, g.const(math.sqrt(HEAD_DIM))])
    if vector_scale:  # one factor per head: no single `scale` attribute expresses it
        s = g.op("Mul", [s, g.const(rng.uniform(0.5, 1.5, (1, HEADS, 1, 1)))])

    square = g.op("Concat", [seq1, seq1], axis=0) if tril_size is None else g.ints([tril_size, tril_size])
    ones = g.op("ConstantOfShape", [square], value=numpy_helper.from_array(np.array([True])))
    tril = g.op("Trilu", [ones, g.ints(0)], upper=0)
    pad = None
    if mask in ("padding", "causal_padding", "fill_min", "bool"):
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["B", "S"]))
        keep = g.op("Cast", [g.op("Unsqueeze", ["attention_mask", g.ints([1, 2])])], to=TensorProto.BOOL)
        pad = keep
    lowest = float(np.finfo(dtype).min)
    if mask == "padding":
        s = g.op("Add", [s, g.op("Where", [pad, g.const(0.0), g.const(lowest)])])
    elif mask == "fill_min":
        s = g.op("Where", [g.op("Not", [pad]), g.const(lowest), s])
    elif mask == "bool":
        s = g.op("Where", [pad, s, g.const(-np.inf)])
    elif mask == "causal_where":
        s = g.op("Where", [g.op("Not", [tril]), g.const(-np.inf), s])
    elif mask == "causal_cast":
        s = g.op("Where", [g.op("Cast", [g.op("Not", [tril])], to=TensorProto.BOOL), g.const(-np.inf), s])
    elif mask == "causal_add":
        full = g.op("ConstantOfShape", [square], value=numpy_helper.from_array(np.array([-np.inf], dtype)))
        s = g.op("Add", [g.op("Trilu", [full, g.ints(1)], upper=1), s])
    elif mask == "causal_padding":
        s = g.op("Where", [g.op("Not", [tril]), g.const(-np.inf), s])
        s = g.op("Add", [s, g.op("Where", [pad, g.const(0.0), g.const(lowest)])])
    if fp16_softmax:
        s = g.op("Cast", [s], to=TensorProto.FLOAT)
    p = g.op("Softmax", [s], axis=softmax_axis)
    if fp16_softmax:
        p = g.op("Cast", [p], to=TensorProto.FLOAT16)
    if nan_guard:
        p = g.op("Where", [g.op("IsNaN", [p]), g.const(0.0), p])
    if mask_after_softmax:
        p = g.op("Add", [p, g.op("Where", [pad, g.const(0.0), g.const(-1.0)])])
    o = g.op("MatMul", [p, v])
    o = g.op("Reshape", [g.op("Transpose", [o], perm=[0, 2, 1, 3]), g.ints([0, 0, D])])
    g.nodes.append(helper.make_node("Identity", [o], ["y"], name="out"))
    out_type = TensorProto.FLOAT16 if fp16_softmax else TensorProto.FLOAT
    outputs = [helper.make_tensor_value_info("y", out_type, ["B", "S", D])]
    return make_model(g.nodes, inputs, outputs, g.inits, opset=opset, ir_version=10, name="attention")


def feeds(model: onnx.ModelProto, batch: int = 2, seq: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_type = model.graph.input[0].type.tensor_type.elem_type
    result = {
        "x": rng.standard_normal((batch, seq, D)).astype(np.float16 if x_type == TensorProto.FLOAT16 else np.float32)
    }
    if any(i.name == "attention_mask" for i in model.graph.input):
        mask = np.ones((batch, seq), np.int64)
        if seq > 2:  # padding at the end of the first sequence (never all of it: see fuse_attention.py)
            mask[0, seq - 2 :] = 0
        result["attention_mask"] = mask
    return result
