"""What the precision pass keeps in float32 by default (`keep_sensitive=True`), and why.

Kept in float32 (inputs cast up, outputs cast back down), with the reason reported:
- Softmax, LogSoftmax ("softmax input"): exp overflows fp16 above 11 and the
  normalising sum loses digits;
- ReduceSum, ReduceMean, ReduceSumSquare, ReduceL1, ReduceL2, ReduceLogSum,
  ReduceLogSumExp, ReduceProd, CumSum ("reduction"): long sums lose digits and
  overflow fp16 at 65504 (ReduceMax/Min are exact in any type and stay low);
- Pow ("statistics: powers"): x^2 overflows fp16 above 256 (decomposed LayerNorm /
  RMSNorm variance, tanh-GELU's x^3);
- Add, Sub, Mul, Div, Where, Max, Min, Clip combining an activation with a float
  constant that fp16 cannot hold ("constant outside the fp16 range", fp16 only: bf16 has float32's range): any
  element above 65504 in magnitude (masks at float32's minimum would saturate or
  overflow the add), or a one-element constant that flushes to zero below 6e-8 (an
  epsilon such as clamp(min=1e-9)).
Left in the low type, with their statistics in float32 by the op's own attribute
(stash_type=1, the ONNX default, set when a model says 0): LayerNormalization,
RMSNormalization, GroupNormalization. Attention (see fuse-attention) stays low: its
softmax runs inside the fused kernel, which accumulates in float32 on TensorRT;
TensorRT-RTX 1.7 rejects the op's softmax_precision attribute, so it is not set.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from passes.base import PassResult
from passes.pattern_utils import constant_of

SENSITIVE_OPS = {
    "Softmax": "softmax input",
    "LogSoftmax": "softmax input",
    **{
        op: "reduction"
        for op in (
            "ReduceSum",
            "ReduceMean",
            "ReduceSumSquare",
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceProd",
            "CumSum",
        )
    },
    "Pow": "statistics: powers",
}
ELEMENTWISE = ("Add", "Sub", "Mul", "Div", "Where", "Max", "Min", "Clip")
NORMS_WITH_STASH = ("LayerNormalization", "RMSNormalization", "GroupNormalization")

FP16_MAX = float(np.finfo(np.float16).max)
FP16_SMALLEST = float(np.finfo(np.float16).smallest_subnormal)


def _outside_fp16(values: np.ndarray) -> bool:
    finite = values[np.isfinite(values)]
    if finite.size and np.abs(finite).max() > FP16_MAX:
        return True
    return values.size == 1 and 0 < abs(float(values.ravel()[0])) < FP16_SMALLEST


def sensitive_reason(node: gs.Node, target: str) -> str | None:
    """Why `node` should run in float32 when converting to `target`, or None."""
    if node.op in SENSITIVE_OPS:
        return SENSITIVE_OPS[node.op]
    if target == "fp16" and node.op in ELEMENTWISE and any(constant_of(t) is None for t in node.inputs):
        for tensor in node.inputs:
            const = constant_of(tensor)
            values = np.asarray(const.values) if const is not None else None
            if values is not None and values.dtype == np.float32 and _outside_fp16(values):
                return "constant outside the fp16 range"
    return None


def apply_policy(graph: gs.Graph, target: str, result: PassResult) -> dict[int, str]:
    """{id(node): reason} for the nodes to keep in float32; normalization stash types set to float32.

    Adds one note saying what stays in float32 and why (every run: it describes the graph).
    """
    kept = {id(n): r for n in graph.nodes if (r := sensitive_reason(n, target)) is not None}
    for node in [n for n in graph.nodes if kept.get(id(n)) == "constant outside the fp16 range"]:
        for tensor in node.inputs:  # a Constant node's value must stay float32 too (else a rerun differs)
            source = tensor.inputs[0] if tensor.inputs else None
            if source is not None and source.op == "Constant":
                kept.setdefault(id(source), "")
    stats = Counter()
    for node in graph.nodes:
        if node.op in NORMS_WITH_STASH:
            stats[node.op] += 1
            if node.attrs.get("stash_type", 1) != 1:
                node.attrs["stash_type"] = 1
                result.count("norm_stash_type_set_fp32", node.name)
    by_reason = Counter((n.op, kept[id(n)]) for n in graph.nodes if kept.get(id(n)))
    parts = [f"{op} x{count} ({reason})" for (op, reason), count in sorted(by_reason.items())]
    parts += [f"{op} x{count} (statistics via stash_type=1)" for op, count in sorted(stats.items())]
    if parts:
        result.notes.append("kept in float32 (keep_sensitive): " + ", ".join(parts))
    return kept
