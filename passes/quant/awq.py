"""AWQ for block int4 weights: activation-aware per-input-channel scales and a clip search.

AWQ (Lin et al., 2023): a few input channels carry large activations, and the weights
they multiply matter most. Scaling those weight rows up by s (and the input down by the
same s, exactly: x W = (x / s)(s W)) gives them finer int4 levels. s = m^alpha with m the
channel's activation magnitude, alpha searched on the calibration data; then each
block's clipping ratio is searched too (a slightly smaller range rounds the bulk better).

Both searches here minimise the layer's output error on the calibration inputs,
tr(D^T H D) with D = W - dequantized(W) and H = X^T X, which needs only the Hessian the
calibration already streams (calibration/stats.py), never the activations themselves.
m is the root mean square of each channel (diag(H) / rows; the paper's mean |x| needs
another statistic, and only its ratios across channels matter). alpha = 0 is plain
round-to-nearest, so the search never does worse than RTN on the calibration loss.
Layers reading one input (Llama's q/k/v, gate/up) share one s, searched on their sum.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from passes.quant.formats import INT4_MAX, clip_searched_scale, constant, stored_int4_scale

ALPHAS = np.linspace(0.0, 1.0, 11)
SEARCH_COLUMNS = 256  # the alpha search scores this many output columns of each layer (a fixed sample)


def _rtn(w: np.ndarray, block: int, scale_dtype: type) -> np.ndarray:
    """Round-to-nearest dequantized, for the search."""
    k, n = w.shape
    blocks = w.reshape(k // block, block, n)
    s = stored_int4_scale(np.abs(blocks).max(axis=1), scale_dtype)[:, None, :]
    return (np.clip(np.rint(blocks / s), -8, INT4_MAX) * s).reshape(k, n)


def output_error(w: np.ndarray, w_hat: np.ndarray, gram: np.ndarray) -> float:
    """tr(D^T H D): the summed squared output error over the calibration inputs."""
    d = (w - w_hat).astype(np.float32)
    return float(np.sum(d * (gram @ d), dtype=np.float64))


def _sample(w: np.ndarray) -> np.ndarray:
    if w.shape[1] <= SEARCH_COLUMNS:
        return np.asarray(w, np.float32)
    picked = np.random.default_rng(0).choice(w.shape[1], SEARCH_COLUMNS, replace=False)
    return np.asarray(w[:, np.sort(picked)], np.float32)


def channel_scales(
    weights: list[np.ndarray], gram: np.ndarray, block: int, scale_dtype: type = np.float32
) -> tuple[np.ndarray, float]:
    """(s [K] float32, alpha): the per-input-channel scale of the layers `weights` ([K, N_i], one input)."""
    gram = np.asarray(gram, np.float32)
    magnitude = np.sqrt(np.maximum(np.diag(gram), 0.0))
    if not np.any(magnitude > 0):
        return np.ones(len(gram), np.float32), 0.0
    magnitude = np.maximum(magnitude, magnitude[magnitude > 0].min())
    samples = [_sample(w) for w in weights]
    best = (np.inf, np.ones(len(gram), np.float32), 0.0)
    for alpha in ALPHAS:
        s = magnitude**alpha
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # centred on 1: no overall growth
        error = sum(output_error(w, _rtn(w * s[:, None], block, scale_dtype) / s[:, None], gram) for w in samples)
        if error < best[0]:
            best = (error, s, float(alpha))
    return best[1], best[2]


def clipped_int4(
    w: np.ndarray, gram: np.ndarray, block: int, scale_dtype: type = np.float32
) -> tuple[np.ndarray, np.ndarray]:
    """(int4 codes, scales [K/block, N]) with each block's clipping ratio searched on its rows'
    output error (formats.clip_searched_scale; cross-block terms are left out, as AWQ's per-group
    search does)."""
    k, n = w.shape
    codes = np.empty((k, n), ml_dtypes.int4)
    scales = np.empty((k // block, n), scale_dtype)
    for g in range(k // block):
        rows = slice(g * block, (g + 1) * block)
        wg = np.asarray(w[rows], np.float32)
        scale = clip_searched_scale(wg, np.asarray(gram[rows, rows], np.float32), scale_dtype)
        codes[rows] = np.clip(np.rint(wg / scale), -8, INT4_MAX).astype(ml_dtypes.int4)
        scales[g] = scale.astype(scale_dtype)
    return codes, scales


def _broadcasts_to_channels(values: np.ndarray, k: int) -> bool:
    return values.size == 1 or (values.shape[-1] == k and values.size == k)


def scale_input(graph: gs.Graph, x: gs.Tensor, readers: list[gs.Node], inv: np.ndarray, prefix: str) -> str:
    """Divide the input `x` of `readers` by s (`inv` = 1/s, [K], in the activations' type); how, in words.

    Folded into the producer's constant factor when `readers` are x's only readers and x is
    a Mul by a constant (an RMSNorm's gamma) or a LayerNormalization / RMSNormalization
    output; else a Mul by `inv` is inserted before them. A folded constant is replaced by
    a new one, never changed in place (dedupe may have merged it with other layers' gammas).
    """
    producer = x.inputs[0] if len(x.inputs) == 1 else None
    alone = set(map(id, x.outputs)) <= set(map(id, readers)) and x not in graph.outputs
    k = len(inv)
    if alone and producer is not None:
        slots = []
        if producer.op == "Mul":
            slots = [i for i, t in enumerate(producer.inputs) if isinstance(t, gs.Constant)]
        elif producer.op in ("LayerNormalization", "RMSNormalization"):
            slots = [i for i in (1, 2) if i < len(producer.inputs) and isinstance(producer.inputs[i], gs.Constant)]
            slots = slots if 1 in slots else []
        values = [np.asarray(producer.inputs[i].values) for i in slots]
        if slots and all(_broadcasts_to_channels(v, k) for v in values):
            for i, v in zip(slots, values, strict=True):
                folded = (v.astype(np.float32) * inv.astype(np.float32)).astype(v.dtype)
                producer.inputs[i] = constant(f"{prefix}_awq_{producer.inputs[i].name}", folded)
            return f"folded into {producer.op} {producer.name}"
    scaled = gs.Variable(f"{prefix}_awq_scaled", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(
        gs.Node("Mul", f"{prefix}_awq_Mul", inputs=[x, constant(f"{prefix}_awq_inv", inv)], outputs=[scaled])
    )
    for node in readers:
        node.inputs[0] = scaled
    return "a Mul before the layers"
