"""SmoothQuant: move activation outliers into the weights before W8A8 quantization.

For a MatMul X.W with a constant [K, N] weight, per input channel j:
    s_j = max|X_j|^alpha / max|W_j,:|^(1 - alpha)
    X.W = (X / s) . (s W)
so X / s has flatter channels (easier per-tensor activation quantization) and s W
absorbs the range per weight row (per-output-channel weight quantization tolerates
it). MatMuls reading the same activation (attention's Q, K, V) share one s, computed
with the largest weight row over the group. X / s is one Mul by a constant inserted
after X (TensorRT fuses it into the producer or the following Quantize); the weights
are rewritten in place. In FP32 the model is unchanged up to rounding (tested to
1e-5), hence `exact = True`.

Per-channel |X| maxima come from `ctx.calibration` (streamed, calibration/stats.py).
Without calibration data, or on graphs with no MatMul weights, the pass changes
nothing. A MatMul group already reading a SmoothQuant Mul is left alone (idempotent).

One run of the model serves both this pass and the min/max quantization after it: the
same run also collects min/max of every tensor the Q/DQ placement may quantize, and
the smoothed model's statistics are handed to the calibration memo
(`calibration.cache.remember`). Every original tensor keeps its values (the rewrite is
exact) and the new X / s has |X / s| max = max_j(max|X_j| / s_j), from the per-channel
maxima, so a following `quantize` with method minmax needs no second run (histogram
methods still run the smoothed model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from calibration.cache import calibrate, remember
from calibration.stats import TensorStats
from passes.base import Pass, PassContext, PassResult
from passes.model_utils import graph_to_model, import_graph
from passes.pattern_utils import constant_array, constant_of, producer
from passes.quant.rules import MIN_DIM, excluded, place

MARK = "/smoothquant/Mul"


def _groups(graph: gs.Graph, exclude_names: list[str], result: PassResult) -> dict[str, list[gs.Node]]:
    """Activation tensor name -> MatMuls with a 2-D float constant weight reading it as input 0."""
    groups: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op != "MatMul" or len(node.inputs) != 2:
            continue
        weight = constant_array(node.inputs[1])
        x = node.inputs[0]
        if weight is None or weight.ndim != 2 or weight.dtype != np.float32 or isinstance(x, gs.Constant):
            continue
        if min(weight.shape) < MIN_DIM:
            result.reject(node.name, f"weight {list(weight.shape)} too small")
            continue
        why = excluded(node, [], exclude_names)
        src = producer(x, "Mul")
        if why is None and src is not None and src.name.endswith(MARK):
            why = "already smoothed"
        if why:
            result.reject(node.name, why)
            continue
        groups.setdefault(x.name, []).append(node)
    return groups


@dataclass
class SmoothQuant(Pass):
    """Scale migration X.W = (X/s).(sW) for MatMuls with constant weights (see module docstring)."""

    name = "smoothquant"
    level = "model"  # runs the model in onnxruntime on the calibration data
    exact = True
    needs_calibration = True

    alpha: float = 0.5
    exclude_names: tuple[str, ...] | list[str] = ()
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha {self.alpha} not in [0, 1]")

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        graph = import_graph(model)
        groups = _groups(graph, list(self.exclude_names), result)
        if not groups:
            result.notes.append("no MatMul with a constant weight to smooth")
            return model, result
        if ctx.calibration is None:
            result.notes.append("no calibration data (ctx.calibration): nothing smoothed")
            return model, result
        names = sorted(groups)
        later = set(place(graph, weight_only=False, exclude_ops=[], exclude_names=[]).activations)
        cal = calibrate(
            model, sorted(later | set(names)), ctx.calibration, self.cache_dir, channels=names, histogram=False
        )
        derived: dict[str, TensorStats] = {}
        for name in names:
            stats = cal.stats[name]
            nodes = groups[name]
            x = nodes[0].inputs[0]
            if stats.channel_amax is None or stats.nonfinite:
                for node in nodes:
                    result.reject(node.name, "no finite per-channel statistics for its input")
                continue
            smoothed_input = self._smooth(graph, x, nodes, stats.channel_amax.astype(np.float64), result)
            if smoothed_input is not None:
                out, inv_scale = smoothed_input
                derived[out] = _scaled_stats(out, stats, inv_scale)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        smoothed = graph_to_model(graph, model)
        remember(smoothed, ctx.calibration, {**cal.stats, **derived}, samples=cal.samples, shapes=cal.shapes)
        return smoothed, result

    def _smooth(
        self, graph: gs.Graph, x: gs.Tensor, nodes: list[gs.Node], x_amax: np.ndarray, result: PassResult
    ) -> tuple[str, np.ndarray] | None:
        """Insert X / s and rescale the weights; returns (the X / s tensor's name, 1 / s), None if rejected."""
        weights = [np.asarray(constant_array(n.inputs[1]), np.float64) for n in nodes]
        if any(w.shape[0] != len(x_amax) for w in weights):
            for node in nodes:
                result.reject(node.name, "weight rows differ from the input's last axis")
            return None
        w_amax = np.max([np.abs(w).max(1) for w in weights], axis=0)
        scale = np.power(np.maximum(x_amax, 1e-5), self.alpha) / np.power(np.maximum(w_amax, 1e-5), 1 - self.alpha)
        scale = np.where((x_amax > 0) & (w_amax > 0), scale, 1.0)
        scale = np.clip(scale, 1e-4, 1e4)
        inv = gs.Constant(f"{x.name}/smoothquant/inv_scale", (1.0 / scale).astype(np.float32))
        out = gs.Variable(f"{x.name}/smoothquant/output", dtype=x.dtype, shape=x.shape)
        graph.nodes.append(gs.Node("Mul", f"{x.name}{MARK}", inputs=[x, inv], outputs=[out]))
        for node, w in zip(nodes, weights, strict=True):
            const = constant_of(node.inputs[1])
            node.inputs[1] = gs.Constant(f"{const.name}/smoothed", (w * scale[:, None]).astype(np.float32))
            node.inputs[0] = out
            result.count("matmul_smoothed", node.name)
        result.count("smooth_mul_inserted")
        return out.name, (1.0 / scale).astype(np.float32)


def _scaled_stats(name: str, stats: TensorStats, inv_scale: np.ndarray) -> TensorStats:
    """Min/max statistics of X * inv_scale (per last-axis channel, inv_scale > 0) from X's per-channel maxima.

    Symmetric: quantization reads only max(|min|, |max|), which this gives exactly.
    """
    amax = float(np.max(stats.channel_amax.astype(np.float64) * inv_scale))
    return TensorStats(name, count=stats.count, nonfinite=stats.nonfinite, min=-amax, max=amax)
