"""Sequence and vector blocks ([B, S, D] / [B, D]): linear chains, GELU, norms, attention, RepMLP."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from scripts.fuzz_graphs.builder import Builder, Value
from scripts.fuzz_graphs.elementwise import activation, scale_shift
from scripts.fuzz_graphs.images import _add_tree, batchnorm, conv


def linear(b: Builder, x: Value, n: int | None = None, bias: bool | None = None) -> Value:
    """MatMul(x, W) [+ bias] (bias [N], [1, N] or [1, 1, N], either operand order); 2-D x may get a Gemm."""
    b.families.add("linear")
    k = x.shape[-1]
    n = n or int(b.pick([4, 6, 8, 12, 16]))
    if x.kind == "vec" and b.chance(0.35):
        return gemm(b, x, n)
    y = b.node("MatMul", [x.name, b.weight(k, n)], (*x.shape[:-1], n))
    if b.chance(0.6) if bias is None else bias:
        shape = b.pick([(n,), (1, n), (1,) * (x.rank - 1) + (n,)])
        y = b.binary("Add", y.name, b.const(b.vector(n).reshape(shape)), y.shape)
    return y


def gemm(b: Builder, x: Value, n: int) -> Value:
    """Gemm(x, W or Wᵀ, C) with alpha / beta / transB / C variants."""
    b.families.add("gemm")
    k = x.shape[-1]
    trans_b = b.chance(0.5)
    w = b.weight(n, k, fan_in=k) if trans_b else b.weight(k, n)
    trans_a = b.chance(0.15)
    a = b.node("Transpose", [x.name], (k, x.shape[0]), perm=[1, 0]).name if trans_a else x.name
    inputs = [a, w]
    if b.chance(0.7):
        inputs.append(b.const(b.vector(n).reshape(b.pick([(n,), (1, n)]))))
    attrs = {}
    if trans_a:
        attrs["transA"] = 1
    if trans_b:
        attrs["transB"] = 1
    if b.chance(0.3):
        attrs["alpha"] = float(b.pick([0.5, 2.0]))
    if len(inputs) > 2 and b.chance(0.3):
        attrs["beta"] = float(b.pick([0.5, 2.0]))
    return b.node("Gemm", inputs, (x.shape[0], n), **attrs)


def linear_chain(b: Builder, x: Value) -> Value:
    """[x * s ->] linear -> [scale / shift ->] linear [-> scale / shift]: foldable into fewer ops."""
    if b.chance(0.4):
        x = scale_shift(b, x)
    y = linear(b, x)
    if b.chance(0.5):
        y = scale_shift(b, y)
    y = linear(b, y)
    if b.chance(0.4):
        y = scale_shift(b, y)
    return y


def vec_batchnorm(b: Builder, x: Value) -> Value:
    """linear -> BatchNormalization on [B, F] (channels on axis 1): folds into the MatMul / Gemm."""
    return batchnorm(b, linear(b, x))


def residual(b: Builder, x: Value) -> Value:
    """x + f(x) for a shape-preserving f."""
    b.families.add("residual")
    if x.kind == "image":
        f = b.pick([lambda: conv(b, x, x.shape[1], (3, 3), [1, 1, 1, 1]), lambda: conv_block_same(b, x)])
    else:
        f = b.pick([lambda: linear(b, x, n=x.shape[-1]), lambda: mlp(b, x), lambda: activation(b, x)])
    y = f()
    return b.binary("Add", x.name, y.name, x.shape)


def conv_block_same(b: Builder, x: Value) -> Value:
    y = conv(b, x, x.shape[1], (3, 3), [1, 1, 1, 1])
    return activation(b, batchnorm(b, y) if b.chance(0.5) else y)


def mlp(b: Builder, x: Value) -> Value:
    """linear -> GELU (erf or tanh form) -> linear back to the input width."""
    hidden = linear(b, x, n=int(b.pick([8, 12, 16])))
    act = gelu_tanh(b, hidden) if b.chance(0.4) or b.dtype == np.float64 else gelu_erf(b, hidden)
    return linear(b, act, n=x.shape[-1])


def _product(b: Builder, factors: list[str], shape: tuple[int, ...]) -> Value:
    """The product of three factors in a random association order."""
    b.rng.shuffle(factors)
    inner = b.binary("Mul", factors[0], factors[1], shape)
    return b.binary("Mul", inner.name, factors[2], shape)


def _constants(b: Builder, exact: dict[str, float]) -> dict[str, float]:
    """The pattern's constants; sometimes one of them off by a few percent (a near miss: not
    the pattern, so a fusing pass must leave it)."""
    values = dict(exact)
    if b.chance(0.1):
        b.families.add("near_miss")
        key = b.pick(sorted(values))
        values[key] *= float(b.pick([0.97, 1.05]))
    return values


def gelu_erf(b: Builder, x: Value) -> Value:
    """x * 0.5 * (1 + erf(x / sqrt(2))), the division sometimes a multiplication by 1/sqrt(2)."""
    b.families.add("gelu_erf")
    c = _constants(b, {"half": 0.5, "one": 1.0, "sqrt2": math.sqrt(2.0)})
    if b.chance(0.5):
        scaled = b.node("Div", [x.name, b.scalar(c["sqrt2"])], x.shape)
    else:
        scaled = b.binary("Mul", x.name, b.scalar(1 / c["sqrt2"]), x.shape)
    erf = b.node("Erf", [scaled.name], x.shape)
    one_plus = b.binary("Add", erf.name, b.scalar(c["one"]), x.shape)
    return _product(b, [x.name, one_plus.name, b.scalar(c["half"])], x.shape)


def gelu_tanh(b: Builder, x: Value) -> Value:
    """x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))), the cube as Pow or x*x*x."""
    b.families.add("gelu_tanh")
    c = _constants(b, {"half": 0.5, "one": 1.0, "cube": 0.044715, "scale": math.sqrt(2.0 / math.pi)})
    if b.chance(0.5):
        cube = b.node("Pow", [x.name, b.scalar(3.0)], x.shape)
    else:
        square = b.node("Mul", [x.name, x.name], x.shape)
        cube = b.binary("Mul", x.name, square.name, x.shape)
    inner = b.binary("Mul", cube.name, b.scalar(c["cube"]), x.shape)
    summed = b.binary("Add", x.name, inner.name, x.shape)
    arg = b.binary("Mul", summed.name, b.scalar(c["scale"]), x.shape)
    one_plus = b.binary("Add", b.node("Tanh", [arg.name], x.shape).name, b.scalar(c["one"]), x.shape)
    return _product(b, [x.name, one_plus.name, b.scalar(c["half"])], x.shape)


def _last_axes(b: Builder, x: Value) -> list[int]:
    """The last axis as -1 or rank-1; for rank >= 3 sometimes the one before (a near miss)."""
    if x.rank >= 3 and b.chance(0.08):
        b.families.add("near_miss")
        return [-2]
    return [-1] if b.chance(0.6) else [x.rank - 1]


def _square(b: Builder, x: Value) -> Value:
    if b.chance(0.5):
        return b.node("Pow", [x.name, b.scalar(2.0)], x.shape)
    return b.node("Mul", [x.name, x.name], x.shape)


def _gamma_beta(b: Builder, y: Value, beta: bool) -> Value:
    d = y.shape[-1]
    if b.chance(0.75):
        gamma = b.const(b.rng.uniform(0.5, 1.5, d if b.chance(0.9) else 1), "gamma", share=False)
        y = b.binary("Mul", y.name, gamma, y.shape)
    if beta and b.chance(0.75):
        y = b.binary("Add", y.name, b.const(b.vector(d), "beta", share=False), y.shape)
    return y


def layernorm(b: Builder, x: Value) -> Value:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) [* gamma] [+ beta], as exporters decompose it."""
    b.families.add("layernorm")
    axes = _last_axes(b, x)
    mean = b.reduce_mean(x, axes)
    centred = b.node("Sub", [x.name, mean.name], x.shape)
    var = b.reduce_mean(_square(b, centred), axes)
    eps = b.scalar(float(b.pick([1e-5, 1e-6, 1e-12])) if b.dtype != np.float16 else 1e-5, "eps")
    std = b.node("Sqrt", [b.binary("Add", var.name, eps, var.shape).name], var.shape)
    return _gamma_beta(b, b.node("Div", [centred.name, std.name], x.shape), beta=True)


def rmsnorm(b: Builder, x: Value) -> Value:
    """x / sqrt(mean(x^2) + eps) or x * rsqrt(...) (Reciprocal or 1/...) [* gamma]."""
    b.families.add("rmsnorm")
    axes = _last_axes(b, x)
    ms = b.reduce_mean(_square(b, x), axes)
    eps = b.scalar(1e-6 if b.dtype != np.float16 else 1e-5, "eps")
    rms = b.node("Sqrt", [b.binary("Add", ms.name, eps, ms.shape).name], ms.shape)
    style = b.pick(["div", "reciprocal", "one_over"])
    if style == "div":
        y = b.node("Div", [x.name, rms.name], x.shape)
    else:
        if style == "reciprocal":
            inv = b.node("Reciprocal", [rms.name], rms.shape)
        else:
            inv = b.node("Div", [b.scalar(1.0), rms.name], rms.shape)
        y = b.binary("Mul", x.name, inv.name, x.shape)
    return _gamma_beta(b, y, beta=False)


def _heads(b: Builder, t: Value, heads: int) -> Value:
    """[B, S, D] -> [B, S, H, dh] (constant target or Shape arithmetic)."""
    bsz, s, d = t.shape
    return b.reshape(t, (bsz, s, heads, d // heads), keep=2)


def attention(b: Builder, x: Value) -> Value:
    """Q/K/V projections, heads, QKᵀ, scale, optional additive mask, Softmax, PV, heads merged, output projection."""
    b.families.add("attention")
    bsz, s, d = x.shape
    heads = int(b.pick([h for h in (1, 2, 4) if d % h == 0]))
    dh = d // heads
    q, k, v = (linear(b, x, n=d) for _ in range(3))
    qh = b.node("Transpose", [_heads(b, q, heads).name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
    vh = b.node("Transpose", [_heads(b, v, heads).name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
    kr = _heads(b, k, heads)
    if b.chance(0.5):
        kt = b.node("Transpose", [kr.name], (bsz, heads, dh, s), perm=[0, 2, 3, 1])
    else:
        kh = b.node("Transpose", [kr.name], (bsz, heads, s, dh), perm=[0, 2, 1, 3])
        kt = b.node("Transpose", [kh.name], (bsz, heads, dh, s), perm=[0, 1, 3, 2])
    where = b.pick(["scores_mul", "scores_div", "query", "none"])
    if where == "query":
        qh = b.binary("Mul", qh.name, b.scalar(1 / math.sqrt(dh)), qh.shape)
    scores = b.node("MatMul", [qh.name, kt.name], (bsz, heads, s, s))
    if where == "scores_mul":
        scores = b.binary("Mul", scores.name, b.scalar(1 / math.sqrt(dh)), scores.shape)
    elif where == "scores_div":
        scores = b.node("Div", [scores.name, b.scalar(math.sqrt(dh))], scores.shape)
    scores = _masked(b, scores, s)
    upcast = b.dtype == np.float16 and b.chance(0.5)  # Softmax in float32 between Casts
    if upcast:
        scores = b.node("Cast", [scores.name], scores.shape, to=TensorProto.FLOAT)
    probs = b.node("Softmax", [scores.name], scores.shape, axis=b.pick([-1, 3]))
    if upcast:
        probs = b.node("Cast", [probs.name], probs.shape, to=b.elem)
    if b.chance(0.15):  # the SDPA exporters' guard: Where(IsNaN(P), 0, P)
        isnan = b.raw("IsNaN", [probs.name])[0]
        probs = b.node("Where", [isnan, b.scalar(0.0, "zero"), probs.name], probs.shape)
    ctx = b.node("MatMul", [probs.name, vh.name], (bsz, heads, s, dh))
    merged = b.node("Transpose", [ctx.name], (bsz, s, heads, dh), perm=[0, 2, 1, 3])
    return linear(b, b.reshape(merged, (bsz, s, d), keep=2), n=d)


def _keep(b: Builder, s: int) -> np.ndarray:
    """Which keys each query sees, [S, S]: causal, or all but the last key; never a row of none."""
    keep = np.tril(np.ones((s, s), bool)) if b.chance(0.5) else np.arange(s)[None, :] < max(1, s - 1)
    return np.broadcast_to(keep, (s, s))


def _masked(b: Builder, scores: Value, s: int) -> Value:
    """The scores, sometimes masked: + a constant additive mask, + a mask graph input, or
    Where(keep, scores, -inf / float min) either way round."""
    style = b.pick(["none", "none", "add", "input", "where"])
    shape = (s, s) if b.chance(0.5) else (1, 1, s, s)
    if style == "add":
        low = -1e4 if b.dtype == np.float16 else float(b.pick([-1e4, -1e9, np.finfo(np.float32).min]))
        mask = b.const(np.where(_keep(b, s), 0.0, low).reshape(shape), "mask", share=False)
        return b.binary("Add", scores.name, mask, scores.shape)
    if style == "input":
        dims = [scores.shape[0], 1, 1, s]
        mask = b.add_input(dims, b.fresh("mask"), b.io_dims(dims))
        return b.binary("Add", scores.name, mask.name, scores.shape)
    if style == "where":
        fill = b.scalar(float(b.pick([-np.inf, np.finfo(b.dtype).min])), "fill")
        keep = _keep(b, s).reshape(shape)
        if b.chance(0.5):
            return b.node("Where", [b.array(keep, "keep"), scores.name, fill], scores.shape)
        return b.node("Where", [b.array(~keep, "masked"), fill, scores.name], scores.shape)
    return scores


def repmlp(b: Builder, x: Value) -> Value:
    """Parallel MatMul branches of one input summed, with the input itself sometimes (RepMLP)."""
    b.families.add("repmlp")
    d = x.shape[-1]
    branches = [b.node("MatMul", [x.name, b.weight(d, d)], x.shape) for _ in range(2)]
    if b.chance(0.5):
        branches.append(x)
    if b.chance(0.3):
        branches.append(Value(b.const(b.vector(d)), (d,)))
    b.rng.shuffle(branches)
    return _add_tree(b, branches)
