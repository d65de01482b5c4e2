"""Observers: the clipping range (amax) of a tensor from its streamed statistics.

Every observer reads a `TensorStats` (min/max and a histogram of |x|, see stats.py),
so switching the method never needs the data again. Ranges are symmetric, as
TensorRT's int8 and fp8 quantization is (zero point 0).

- minmax: amax = max |x| (no clipping).
- percentile: the |x| below which `percentile` % of the values lie.
- entropy: TensorRT's entropy calibration: the threshold whose quantized distribution
  has the least KL divergence from the clipped reference distribution (histogram
  bins merged into 128 levels for int8, compared bin by bin), bin 0 left out.
- mse: the threshold minimising the expected squared error, clipping error
  (|x| - c)^2 above c plus rounding error below it: min(x^2, step^2 / 12) for int8's
  uniform step c/127, and the step of the e4m3 binade that x falls in for fp8.
"""

from __future__ import annotations

import numpy as np

from calibration.stats import TensorStats
from converter.core.errors import InvalidInputError

METHODS = ("minmax", "percentile", "entropy", "mse")
FP8_MAX = 448.0
INT8_MAX = 127.0


def amax_minmax(stats: TensorStats) -> float:
    return stats.amax


def amax_percentile(stats: TensorStats, percentile: float = 99.99) -> float:
    total = stats.hist.sum()
    if total == 0:
        return stats.amax
    cumulative = np.cumsum(stats.hist) / total
    index = int(np.searchsorted(cumulative, percentile / 100.0))
    edge = (index + 1) * stats.hist_range / len(stats.hist)
    return float(min(edge, stats.amax))


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q = q / q.sum()
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def amax_entropy(stats: TensorStats, levels: int = 128, max_candidates: int = 256) -> float:
    """TensorRT's KL-divergence threshold search over the |x| histogram."""
    hist = stats.hist.astype(np.float64)
    # Bin 0 (|x| below one bin width, e.g. a ReLU's exact zeros) rounds to zero under any
    # threshold; left in, its spike is smeared over the first level and drags KL towards
    # tiny thresholds (65 % zeros after ReLU6 in EfficientNet clipped 6.0 to 0.7).
    hist[0] = 0.0
    used = int(np.nonzero(hist)[0][-1]) + 1 if hist.any() else 0
    if used <= levels:
        return stats.amax
    width = stats.hist_range / len(hist)
    step = max(1, (used - levels) // max_candidates)
    best, best_kl = used, np.inf
    for i in [*range(levels, used, step), used]:
        reference = hist[:i].copy()
        reference[-1] += hist[i:].sum()
        nonzero = (hist[:i] > 0).astype(np.float64)
        edges = np.linspace(0, i, levels + 1).astype(int)
        sums = np.add.reduceat(hist[:i], edges[:-1])
        counts = np.add.reduceat(nonzero, edges[:-1])
        quantized = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), np.diff(edges))
        quantized *= nonzero
        if not quantized.any():
            continue
        kl = _kl(reference, quantized)
        if kl < best_kl:
            best, best_kl = i, kl
    return float(min(best * width, stats.amax))


def _fp8_step(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Spacing of e4m3 numbers around values/scale, in the original units."""
    scaled = np.maximum(values[None, :] / scale[:, None], 2.0**-6)
    return scale[:, None] * 2.0 ** (np.floor(np.log2(scaled)) - 3)


def amax_mse(stats: TensorStats, fmt: str = "int8", candidates: int = 200) -> float:
    """Threshold with the least expected squared quantization error (see module docstring)."""
    hist = stats.hist.astype(np.float64)
    if not hist.any() or stats.amax <= 0:
        return stats.amax
    centers = (np.arange(len(hist)) + 0.5) * stats.hist_range / len(hist)
    keep = hist > 0
    centers, counts = np.minimum(centers[keep], stats.amax), hist[keep]
    grid = stats.amax * np.linspace(1.0 / candidates, 1.0, candidates)
    clipped = np.maximum(centers[None, :] - grid[:, None], 0.0) ** 2
    if fmt == "fp8":
        rounding = _fp8_step(centers, grid / FP8_MAX) ** 2 / 12
    else:
        rounding = np.minimum(centers[None, :] ** 2, (grid[:, None] / INT8_MAX) ** 2 / 12)
    inside = centers[None, :] <= grid[:, None]
    error = np.where(inside, rounding, clipped) @ counts
    return float(grid[int(np.argmin(error))])


def compute_amax(stats: TensorStats, method: str, fmt: str = "int8", percentile: float = 99.99) -> float:
    """amax of one tensor by `method` (one of METHODS) for `fmt` ("int8" or "fp8")."""
    if method == "minmax":
        return amax_minmax(stats)
    if method == "percentile":
        return amax_percentile(stats, percentile)
    if method == "entropy":
        return amax_entropy(stats, levels=128 if fmt == "int8" else 256)
    if method == "mse":
        return amax_mse(stats, fmt)
    raise InvalidInputError(f"--calib-method '{method}' not in {METHODS}")
