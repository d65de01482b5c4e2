"""GPTQ for block int4 weights: Hessian-based sequential rounding with error feedback.

GPTQ (Frantar et al., 2022) rounds the input rows of a [K, N] weight one at a time and
spreads each row's rounding error over the rows not rounded yet, weighted by the inverse
of the layer input's Hessian H = X^T X (from calibration: calibration/stats.py
accumulates it batch by batch). That minimises the layer's output error ||X W - X Q||^2
far better than rounding each weight to its nearest level when the inputs are correlated,
as they are in a transformer's hidden states.

Implementation notes (ours, after the paper): the damped inverse Cholesky factor and the
lazy batch of rows are formats.py's (shared with int2); a block's scale (symmetric,
stored in the weight's own float type and rounded against as stored) is chosen when its
first row comes up, from the rows as updated so far, as GPTQ's reference does, with the
clipping ratio that gives the block the least output error under its Hessian block
(GPTQ's reference searches the range on the weight error; ours weighs it by H). With `act_order` rows are taken in order of decreasing Hessian diagonal;
the scales are then fixed up front from the original weights ("static groups"), so
every block of K stays one contiguous group and the result is still the plain
`DequantizeLinear(block_size)` that onnxruntime runs and TensorRT builds.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from passes.quant.formats import INT4_MAX, clip_searched_scale, damped_inverse_chol


def inverse_factor(gram: np.ndarray, act_order: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row order, upper Cholesky factor of the damped inverse Hessian in that order): the part of
    GPTQ that depends on the input alone (layers reading one input, q/k/v, share it)."""
    h = np.asarray(gram, np.float64)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(len(h))
    return order, damped_inverse_chol(h[np.ix_(order, order)]).astype(np.float32)


def gptq_int4(
    w: np.ndarray,
    gram: np.ndarray,
    block: int,
    act_order: bool = False,
    scale_dtype: type = np.float32,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(int4 codes [K, N], scales [K/block, N] in `scale_dtype`) of a [K, N] weight, GPTQ-rounded
    against `gram` (X^T X of the layer input, [K, K]; any positive multiple of it gives the same);
    `factor`: inverse_factor(gram, act_order), when the caller has it already."""
    k, n = w.shape
    h = np.asarray(gram, np.float64)
    work = np.array(w, np.float32)
    work[np.diag(h) <= 0] = 0.0  # an input that is always 0: its weights never matter
    order, u = factor if factor is not None else inverse_factor(gram, act_order)
    scale = np.empty((k // block, n), np.float32)
    if act_order:
        for g in range(k // block):
            rows = slice(g * block, (g + 1) * block)
            scale[g] = clip_searched_scale(work[rows], h[rows, rows].astype(np.float32), scale_dtype)
    work = work[order]
    codes = np.empty((k, n), np.int8)
    lazy = max(128, block)  # a multiple of every block size: a block's rows share one lazy batch
    for start in range(0, k, lazy):
        stop = min(start + lazy, k)
        errors = np.empty((stop - start, n), np.float32)
        for i in range(start, stop):
            row = order[i]
            if not act_order and row % block == 0:  # rows row..row+block-1 are updated up to here
                hg = h[row : row + block, row : row + block].astype(np.float32)
                scale[row // block] = clip_searched_scale(work[i : i + block], hg, scale_dtype)
            s = scale[row // block]
            levels = np.clip(np.rint(work[i] / s), -8, INT4_MAX)
            codes[row] = levels
            errors[i - start] = (work[i] - levels * s) / u[i, i]
            work[i + 1 : stop] -= np.outer(u[i, i + 1 : stop], errors[i - start])
        work[stop:] -= u[start:stop, stop:].T @ errors
    return codes.astype(ml_dtypes.int4), scale.astype(scale_dtype)
