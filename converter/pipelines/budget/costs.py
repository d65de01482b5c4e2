"""What a rewritten graph costs, for the budget search's objective: bytes, FLOPs, an estimated latency.

Everything is read off the graph the search would ship (after dropping, quantizing and
the precision pass), not predicted from the configuration:

- weight bytes: the initializers' bytes (4-bit weights count half a byte each);
- FLOPs: each MatMul/Gemm/Conv/Attention node's FLOPs per sample, measured
  once on the source graph at a real batch's shapes (a node keeps its name through the
  passes; a dropped one is gone), weighted by the math rate of the precision it runs in
  on tensor cores, relative to fp16: 0.5 for int8/fp8 activations (W8A8: twice fp16's
  rate), 1 for fp16/bf16 (weight-only formats compute in the activations' type), 2 for
  fp32 (TF32, half fp16's rate). Raw FLOPs are reported beside the weighted ones;
- latency: a roofline estimate for one target GPU at batch 1: per node the longer of its
  weighted FLOPs at the GPU's nominal dense fp16 tensor rate and reading its weights at
  the GPU's nominal DRAM bandwidth, summed. Element-wise ops, activations' traffic and
  launch overheads are left out, so it ranks configurations; it is not a measurement
  (a measured latency needs a GPU and a TensorRT runtime: `trtforge verify` on one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from converter.core.model_checks import tensor_nbytes
from converter.core.model_io import weights_nbytes
from converter.core.ort_session import cpu_session

COMPUTE_OPS = ("MatMul", "Gemm", "Conv", "Attention")
RATE = {"int8": 0.5, "fp16": 1.0, "bf16": 1.0, "fp32": 2.0}  # time per FLOP relative to fp16 tensor cores


@dataclass(frozen=True)
class Peak:
    """Nominal dense fp16 tensor-core TFLOPS and DRAM GB/s of one representative GPU (spec sheets)."""

    gpu: str
    tflops: float
    gb_per_s: float


PEAKS = {
    "sm75": Peak("T4", 65.0, 320.0),
    "sm80": Peak("A100 SXM", 312.0, 2039.0),
    "sm86": Peak("A10", 125.0, 600.0),
    "sm87": Peak("Jetson AGX Orin 64GB", 42.5, 204.8),
    "sm89": Peak("L4", 121.0, 300.0),
    "sm90": Peak("H100 SXM", 989.0, 3350.0),
    "sm120": Peak("GeForce RTX 5090", 209.5, 1792.0),
    "sm121": Peak("DGX Spark (GB10)", 125.0, 273.0),
}
DEFAULT_TARGET = "sm89"


def node_flops(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, float]:
    """FLOPs per sample of every compute node, at the shapes of `feeds` (one onnxruntime run)."""
    nodes = [n for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(t for n in nodes for t in (*n.input[:2], n.output[0]) if t):
        if name not in known and name not in {i.name for i in model.graph.initializer}:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = cpu_session(probe)
    names = [o.name for o in session.get_outputs()]
    inputs = {i.name for i in session.get_inputs()}
    values = dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in inputs}), strict=True))
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    batch = max(len(next(iter(feeds.values()))), 1)

    def shape(name: str) -> tuple[int, ...]:
        return tuple(values[name].shape) if name in values else weights.get(name, ())

    flops = {}
    for n in nodes:
        out, a, b = shape(n.output[0]), shape(n.input[0]), shape(n.input[1])
        if not out or not a:
            continue
        size = float(np.prod(out))
        if n.op_type in ("MatMul", "Gemm"):
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a[-2] if (n.op_type == "Gemm" and trans_a) else a[-1]
            flops[n.name] = 2.0 * size * k / batch
        elif n.op_type == "Conv" and len(b) >= 3:  # weight (M, C/group, kH, kW): C/group x k multiply-adds per output
            flops[n.name] = 2.0 * size * float(np.prod(b[1:])) / batch
        elif n.op_type == "Attention" and len(b) >= 3:
            # Q K^T and P V: 2 x (B, H, Sq, Skv) x D multiply-adds each
            kv_len = b[-2]
            flops[n.name] = 4.0 * size * kv_len / batch
    return flops


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in graph.node for o in n.output}


def node_precision(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], base: str) -> str:
    """int8 when the node's activation input is quantized (QuantizeLinear -> DequantizeLinear), else `base`."""
    dq = producers.get(node.input[0])
    if dq is not None and dq.op_type == "DequantizeLinear":
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            return "int8"
    return base


def _weight_bytes(node: onnx.NodeProto, producers, sizes: dict[str, int]) -> int:
    """Bytes of the initializers the node reads, directly or through a DequantizeLinear (weights)."""
    total = 0
    for name in node.input[1:3]:
        dq = producers.get(name)
        sources = dq.input if dq is not None and dq.op_type == "DequantizeLinear" else [name]
        total += sum(sizes.get(s, 0) for s in sources)
    return total


@dataclass
class GraphCost:
    weight_bytes: int
    flops: float  # per sample, raw
    weighted_flops: float  # per sample, x RATE of each node's precision
    latency_ms: float  # roofline estimate at batch 1 (see module docstring)
    by_precision: dict[str, float]  # raw FLOPs per precision

    def objective(self, objective: str) -> float:
        if objective in ("weight-bytes", "engine-size"):
            return float(self.weight_bytes)
        if objective == "flops":
            return self.weighted_flops
        return self.latency_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "weight_bytes": self.weight_bytes,
            "flops": round(self.flops),
            "weighted_flops": round(self.weighted_flops),
            "latency_ms_estimate": round(self.latency_ms, 6),
            "flops_by_precision": {k: round(v) for k, v in self.by_precision.items()},
        }


def graph_cost(model: onnx.ModelProto, flops: dict[str, float], precision: str, target: str = DEFAULT_TARGET):
    """The cost of `model` (the rewritten graph), its compute nodes' FLOPs looked up in `flops` by name."""
    producers = _producers(model.graph)
    sizes = {i.name: tensor_nbytes(i) or 0 for i in model.graph.initializer}
    peak = PEAKS.get(target, PEAKS[DEFAULT_TARGET])
    raw = weighted = seconds = 0.0
    by_precision: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type not in COMPUTE_OPS or node.name not in flops:
            continue
        how = node_precision(node, producers, precision)
        f = flops[node.name]
        raw += f
        weighted += f * RATE[how]
        by_precision[how] = by_precision.get(how, 0.0) + f
        compute = f * RATE[how] / (peak.tflops * 1e12)
        memory = _weight_bytes(node, producers, sizes) / (peak.gb_per_s * 1e9)
        seconds += max(compute, memory)
    return GraphCost(weights_nbytes(model), raw, weighted, seconds * 1e3, by_precision)
