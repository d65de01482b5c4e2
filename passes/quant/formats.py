"""Number formats of the quantize pass: weight quantizers and the Q/DQ nodes that carry them.

Weights are stored already quantized (int8 / float8e4m3fn / int4 initializers) behind
a DequantizeLinear, so the ONNX file shrinks and TensorRT reads the low-precision
weights directly. Activations get a QuantizeLinear -> DequantizeLinear pair with a
per-tensor scale (TensorRT quantizes activations per tensor, symmetric).

- int8 W8A8: weights per output channel, scale = amax / 127, values in [-127, 127].
- fp8 W8A8 (E4M3): weights per output channel, scale = amax / 448.
- int4 W4A16: blocks of `block_size` along the input axis K of a [K, N] weight,
  symmetric, scale = block amax / 7, DequantizeLinear(block_size=B) (opset 21).
  A float16 weight (an fp16 LLM) gets float16 scales, so the DequantizeLinear gives
  float16 as the weight did; values are rounded against the scale as stored.
- int2 W2A16 (decoupleQ-style): per group of K, w ~ s * (c + q) with q in {0..3} and
  an integer offset c, so the four levels sit anywhere on the group's own grid. The
  integer part q comes from Hessian-aware rounding (GPTQ error feedback with the
  layer input's X^T X when calibration gives it), the float part s (and the offset)
  from a per-group weighted least-squares fit; the two steps alternate. The result is
  stored as int4 values c + q in [-8, 7] behind the same block DequantizeLinear, which
  onnxruntime runs and TensorRT builds; a 2-bit memory saving needs a W2 GEMM plugin.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

INT8_MAX, FP8_MAX, INT4_MAX = 127.0, 448.0, 7.0
TINY = 1e-12
FP16_MIN = 2.0**-24
LAZY_BLOCK = 128
COLUMNS = 1024  # block_int4 quantizes this many output columns at a time (bounded working memory)


def constant(name: str, values: np.ndarray) -> gs.Constant:
    """A gs.Constant from any numpy array, ml_dtypes int4/float8 included (packed by onnx)."""
    return gs.Constant(name, LazyValues(numpy_helper.from_array(np.asarray(values), name)))


def scale_from_amax(amax: np.ndarray, qmax: float) -> np.ndarray:
    """amax / qmax, positive and representable in fp16 (a later precision pass converts scales).

    An all-zero channel (BN-folded dead filters) gets scale 1 (its values are 0 whatever
    the scale); others at least 2^-24, fp16's smallest step, so no scale becomes 0.
    """
    scale = np.where(amax > 0, np.maximum(amax / qmax, FP16_MIN), 1.0)
    return scale.astype(np.float32)


def per_channel_int8(w: np.ndarray, axis: int, scale_dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, scale per channel along `axis` in `scale_dtype`, values rounded against it)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = scale_from_amax(np.abs(w).max(axis=other), INT8_MAX).astype(scale_dtype)
    shaped = np.expand_dims(scale.astype(np.float32), other)
    return np.clip(np.rint(w / shaped), -INT8_MAX, INT8_MAX).astype(np.int8), scale


def per_channel_fp8(w: np.ndarray, axis: int, scale_dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(float8e4m3fn values, scale per channel along `axis` in `scale_dtype`)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = scale_from_amax(np.abs(w).max(axis=other), FP8_MAX).astype(scale_dtype)
    scaled = np.clip(w / np.expand_dims(scale.astype(np.float32), other), -FP8_MAX, FP8_MAX)
    return scaled.astype(ml_dtypes.float8_e4m3fn), scale


def block_int4(w: np.ndarray, block: int, scale_dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 over blocks of `block` rows of a [K, N] weight: (int4 [K, N], scale [K/B, N]
    in `scale_dtype`; the values are rounded against that stored scale)."""
    k, n = w.shape
    q = np.empty((k, n), ml_dtypes.int4)
    scale = np.empty((k // block, n), scale_dtype)
    for start in range(0, n, COLUMNS):  # a slice of columns at a time: an lm_head is 65M weights
        cols = slice(start, min(start + COLUMNS, n))
        blocks = np.asarray(w[:, cols], np.float32).reshape(k // block, block, -1)
        scale[:, cols] = scale_from_amax(np.abs(blocks).max(axis=1), INT4_MAX)
        levels = np.rint(blocks / scale[:, cols].astype(np.float32)[:, None, :])
        q[:, cols] = np.clip(levels, -8, 7).reshape(k, -1)
    return q, scale


CLIP_RATIOS = np.linspace(1.0, 0.7, 7)  # block ranges the calibrated int4 searches try (1.0: amax / 7)


def stored_int4_scale(amax: np.ndarray, dtype: type) -> np.ndarray:
    """amax / 7 as it will be stored (in `dtype`), back in float32 so values round against it."""
    return scale_from_amax(amax, INT4_MAX).astype(dtype).astype(np.float32)


def clip_searched_scale(wg: np.ndarray, hg: np.ndarray, dtype: type) -> np.ndarray:
    """Per column of one block of rows `wg` [B, N]: the stored scale of the clipping ratio (CLIP_RATIOS)
    whose rounding gives the least output error d^T hg d, `hg` [B, B] the block's Hessian (AWQ's
    per-group clip search, on the Hessian instead of the activations)."""
    amax = np.abs(wg).max(axis=0)
    best_error = np.full(wg.shape[1], np.inf, np.float32)
    best = np.zeros(wg.shape[1], np.float32)
    for ratio in CLIP_RATIOS:
        s = stored_int4_scale(amax * ratio, dtype)
        d = wg - np.clip(np.rint(wg / s), -8, INT4_MAX) * s
        error = np.sum(d * (hg @ d), axis=0)
        better = error < best_error
        best_error[better], best[better] = error[better], s[better]
    return best


def dequantize_block(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    return q.astype(np.float32) * np.repeat(scale, block, axis=0)


def damped_inverse_chol(hessian: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of the damped inverse Hessian (GPTQ's error-feedback weights)."""
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h += 0.01 * np.mean(np.diag(h)) * np.eye(len(h))
    inv = np.linalg.inv(h)
    return np.linalg.cholesky((inv + inv.T) / 2).T


def gptq_round(w: np.ndarray, u: np.ndarray | None, quantize_row) -> np.ndarray:
    """Round the rows (input dims) of a [K, N] weight in order, feeding each row's error forward.

    `quantize_row(k, row)` returns the dequantized row k; `u` is damped_inverse_chol(H).
    Without it this is plain round-to-nearest.
    """
    w = w.astype(np.float64).copy()
    out = np.empty_like(w)
    if u is None:
        for k in range(len(w)):
            out[k] = quantize_row(k, w[k])
        return out
    for start in range(0, len(w), LAZY_BLOCK):  # GPTQ's lazy batch: rows of a block first, the rest once
        stop = min(start + LAZY_BLOCK, len(w))
        errors = np.empty((stop - start, w.shape[1]))
        for k in range(start, stop):
            out[k] = quantize_row(k, w[k])
            errors[k - start] = (w[k] - out[k]) / u[k, k]
            w[k + 1 : stop] -= np.outer(u[k, k + 1 : stop], errors[k - start])
        w[stop:] -= u[start:stop, stop:].T @ errors
    return out


def _fit_group_scale(w: np.ndarray, q: np.ndarray, weight: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group/column weighted least squares w ~ s*q + z, z then rounded to the grid s*c."""
    k, n = w.shape
    wg, qg, dg = (a.reshape(k // group, group, n) for a in (w, q, np.broadcast_to(weight[:, None], w.shape)))
    sw, sq, sqq = dg.sum(1), (dg * qg).sum(1), (dg * qg * qg).sum(1)
    swq, sww = (dg * wg * qg).sum(1), (dg * wg).sum(1)
    det = sw * sqq - sq * sq
    safe = np.abs(det) > TINY
    s = np.where(safe, (sw * swq - sq * sww) / np.where(safe, det, 1.0), 1.0)
    z = np.where(safe, (sww - s * sq) / np.maximum(sw, TINY), 0.0)
    s = np.where(np.abs(s) > TINY, np.abs(s), np.maximum(np.abs(wg).max(1) / 3, TINY))
    c = np.clip(np.rint(z / s), -8, 4)
    # refit s alone with the offset on its grid: w ~ s * (c + q)
    m = c[:, None, :] + qg
    s = np.maximum((dg * wg * m).sum(1) / np.maximum((dg * m * m).sum(1), TINY), TINY)
    return s.astype(np.float32), c


def decoupled_int2(
    w: np.ndarray, group: int, hessian: np.ndarray | None = None, iters: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """W2 per group (see module docstring): (int4 values c+q in [-8, 7], scale [K/G, N])."""
    k, n = w.shape
    blocks = w.reshape(k // group, group, n)
    lo, hi = blocks.min(1), blocks.max(1)
    s = np.maximum((hi - lo) / 3, TINY).astype(np.float32)
    c = np.clip(np.floor(lo / s + 0.5), -8, 4)
    weight = np.diag(hessian).astype(np.float64) if hessian is not None else np.ones(k)
    weight = np.maximum(weight, TINY)
    best, best_err = None, np.inf
    u = damped_inverse_chol(hessian) if hessian is not None else None
    for _ in range(iters):
        s_rows, c_rows = np.repeat(s, group, axis=0), np.repeat(c, group, axis=0)

        def row(i: int, values: np.ndarray, s_rows=s_rows, c_rows=c_rows) -> np.ndarray:
            q = np.clip(np.rint(values / s_rows[i] - c_rows[i]), 0, 3)
            return s_rows[i] * (c_rows[i] + q)

        w_hat = gptq_round(w, u, row)
        levels = np.rint(w_hat / s_rows)
        err = output_error(w, levels * s_rows, hessian)
        if err < best_err:
            best, best_err = (levels.astype(np.int8), s.copy()), err
        s, c = _fit_group_scale(w, np.clip(levels - c_rows, 0, 3), weight, group)
    q, s = best
    return np.clip(q, -8, 7).astype(ml_dtypes.int4), s


def output_error(w: np.ndarray, w_hat: np.ndarray, hessian: np.ndarray | None) -> float:
    d = (w - w_hat).astype(np.float64)
    return float(np.sum(d * (hessian @ d))) if hessian is not None else float((d * d).sum())


def activation_qdq(tensor: gs.Tensor, scale: float, fmt: str, prefix: str) -> tuple[list[gs.Node], gs.Variable]:
    """QuantizeLinear -> DequantizeLinear on an activation; returns the nodes and the DQ output.
    The scale has the activation's type (float16 in an fp16 graph: QuantizeLinear-19)."""
    dtype = np.float16 if tensor.dtype == np.float16 else np.float32
    zero = np.zeros((), ml_dtypes.float8_e4m3fn if fmt == "fp8" else np.int8)
    s = constant(f"{prefix}_scale", np.array(max(scale, FP16_MIN) if dtype is np.float16 else scale, dtype))
    z = constant(f"{prefix}_zero", zero)
    q_out = gs.Variable(f"{prefix}_q", dtype=zero.dtype, shape=tensor.shape)
    dq_out = gs.Variable(f"{prefix}_dq", dtype=dtype, shape=tensor.shape)
    q = gs.Node("QuantizeLinear", f"{prefix}_QuantizeLinear", inputs=[tensor, s, z], outputs=[q_out])
    dq = gs.Node("DequantizeLinear", f"{prefix}_DequantizeLinear", inputs=[q_out, s, z], outputs=[dq_out])
    return [q, dq], dq_out


def weight_dq(
    name: str, values: np.ndarray, scale: np.ndarray, axis: int, block: int | None = None
) -> tuple[gs.Node, gs.Variable]:
    """DequantizeLinear of a stored low-precision weight (per-channel, or block-wise with `block`)."""
    zero = np.zeros(scale.shape, values.dtype)
    attrs = {"axis": axis} if scale.ndim else {}
    if block:
        attrs["block_size"] = block
    out = gs.Variable(f"{name}_dq", dtype=scale.dtype, shape=list(values.shape))  # DQ gives the scale's type
    inputs = [constant(f"{name}_quantized", values), constant(f"{name}_scale", scale), constant(f"{name}_zero", zero)]
    return gs.Node("DequantizeLinear", f"{name}_DequantizeLinear", attrs, inputs=inputs, outputs=[out]), out
