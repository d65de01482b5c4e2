"""How a weight-only layer's int4 values are chosen, and what that cost: the quantize pass's glue
to the rounding algorithms (round-to-nearest in formats.py, awq.py, gptq.py).

Every weight-only layer gets a report: the algorithm that rounded it (a calibrated one
falls back to round-to-nearest where calibration gave no Hessian for the layer's input),
bits, block, and its reconstruction error: the relative output error
tr(D^T H D) / tr(W^T H W) on the calibration inputs when H is known, else the relative
weight error ||D||^2 / ||W||^2 (the "error_on" key says which).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from passes.pattern_utils import constant_array
from passes.quant.awq import channel_scales, clipped_int4, scale_input
from passes.quant.formats import COLUMNS, block_int4, dequantize_block
from passes.quant.gptq import gptq_int4, inverse_factor

SCALE_RANGE = (1e-4, 1e4)  # AWQ scales, so 1/s stays a normal fp16 number
ERROR_COLUMNS = 1024  # the reported reconstruction error is measured on this many output columns


def _columns(n: int) -> np.ndarray:
    if n <= ERROR_COLUMNS:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, ERROR_COLUMNS, replace=False))


@dataclass
class Rounding:
    """One weight's rounding: the Hessian of its input (None without calibration data) and AWQ's
    per-input-channel scale of its rows (None unless AWQ scaled its input)."""

    gram: np.ndarray | None = None
    smooth: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)
    factors: dict = field(default_factory=dict)  # GPTQ's last inverse factor and what it was made from, shared

    def _factor(self, gram: np.ndarray, act_order: bool) -> tuple[np.ndarray, np.ndarray]:
        """GPTQ's inverse factor, computed once for the layers reading one input (one Hessian, one
        set of AWQ scales); the cache keeps the arrays it was made from, so identity means the same."""
        held = self.factors.get("for")
        if held is None or held[0] is not self.gram or held[1] is not self.smooth or held[2] != act_order:
            self.factors.update({"for": (self.gram, self.smooth, act_order), "factor": inverse_factor(gram, act_order)})
        return self.factors["factor"]

    def int4(
        self, w: np.ndarray, block: int, algorithm: str, act_order: bool, dtype: type
    ) -> tuple[np.ndarray, np.ndarray]:
        """(int4 codes, scales) of a [K, N] weight by `algorithm`, recording the report."""
        s = self.smooth
        if algorithm == "gptq" and self.gram is not None:
            q, scale = gptq_int4(w, self.gram, block, act_order, dtype, self._factor(self.gram, act_order))
            used = "gptq, act-order" if act_order else "gptq"
        elif algorithm == "awq-gptq" and self.gram is not None and s is not None:
            gram = self.gram / np.outer(s, s)
            q, scale = gptq_int4(w * s[:, None], gram, block, act_order, dtype, self._factor(gram, act_order))
            used = "awq-gptq, act-order" if act_order else "awq-gptq"
        elif algorithm in ("awq", "awq-gptq") and self.gram is not None:
            if s is None:
                q, scale = clipped_int4(w, self.gram, block, dtype)
                used = f"{algorithm} without input scales (the input is shared or not scalable): clip search only"
            else:
                q, scale = clipped_int4(w * s[:, None], self.gram / np.outer(s, s), block, dtype)
                used = "awq"
        else:
            q, scale = block_int4(w, block, dtype)
            s, used = None, "rtn" if algorithm == "rtn" else f"rtn ({algorithm} had no calibration for this input)"
        deq = dequantize_block(q, scale.astype(np.float32), block)
        self.measure(w, deq if s is None else deq / s[:, None], used, 4, block)
        return q, scale

    def measure(self, w: np.ndarray, w_hat: np.ndarray, algorithm: str, bits: int, block: int) -> None:
        """The report, with the relative reconstruction error, on at most ERROR_COLUMNS output columns
        (a fixed sample: with H that is K^2 work a column, and an lm_head has 32 000 of them)."""
        error = total = 0.0
        picked = _columns(w.shape[1])
        for start in range(0, len(picked), COLUMNS):
            cols = picked[start : start + COLUMNS]
            ref = np.asarray(w[:, cols], np.float32)
            d = ref - np.asarray(w_hat[:, cols], np.float32)
            if self.gram is not None:
                h = np.asarray(self.gram, np.float32)
                error += float(np.sum(d * (h @ d), dtype=np.float64))
                total += float(np.sum(ref * (h @ ref), dtype=np.float64))
            else:
                error += float(np.sum(d * d, dtype=np.float64))
                total += float(np.sum(ref * ref, dtype=np.float64))
        self.report = {
            "algorithm": algorithm,
            "bits": bits,
            "block": block,
            "error": error / total if total > 0 else 0.0,
            "error_on": "calibration outputs" if self.gram is not None else "weights",
        }


def input_scales(
    graph: gs.Graph, plan, hessians: dict[str, np.ndarray], block: int, result, folded: dict | None = None
) -> dict[str, np.ndarray]:
    """AWQ's input scaling, {weight name: s}: for each input tensor read by MatMul weights that only
    that layer reads, one s searched over all of them (awq.channel_scales) and the input divided by
    it (awq.scale_input). `plan` is the pass's Placement; `result` gets counts and details; `folded`
    gets {input name: 1/s} for each input whose producer now divides by s (a caller holding values
    of that tensor, as sequential calibration does, must divide them too)."""
    groups: dict[str, list] = {}
    for site in plan.weights:
        source = site.node.inputs[0].name
        if site.node.op == "MatMul" and site.index == 1 and site.axis == 0 and hessians.get(source) is not None:
            groups.setdefault(source, []).append(site)
    scales: dict[str, np.ndarray] = {}
    for source, sites in groups.items():
        consts = [site.node.inputs[1] for site in sites]
        if len({c.name for c in consts}) != len(consts) or any(len(c.outputs) != 1 for c in consts):
            continue  # a weight read twice: one scale cannot serve both inputs
        weights = [constant_array(c) for c in consts]
        dtype = weights[0].dtype if weights[0].dtype == np.float16 else np.float32
        s, alpha = channel_scales(weights, hessians[source], block, dtype)
        inv = (1.0 / np.clip(s, *SCALE_RANGE)).astype(dtype)
        s = (1.0 / inv.astype(np.float32)).astype(np.float32)  # s exactly as the graph divides by it
        prefix = f"{sites[0].node.name}_in"
        how = scale_input(graph, sites[0].node.inputs[0], [site.node for site in sites], inv, prefix)
        if folded is not None and how.startswith("folded"):
            folded[source] = inv
        for c in consts:
            scales[c.name] = s
        result.count("awq_scaled_inputs")
        result.details.setdefault("awq", {})[source] = {
            "alpha": alpha,
            "layers": [site.node.name for site in sites],
            "scaling": how,
        }
    return scales
