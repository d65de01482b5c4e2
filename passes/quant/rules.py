"""Where Q/DQ go: TensorRT's placement rules as find / check functions on a gs graph.

TensorRT fuses a DequantizeLinear into the layer that reads it and a QuantizeLinear
into the layer that writes its input, so the placement decides which layers run in
low precision and which fusions survive:

1. Weighted layers (Conv, ConvTranspose, Gemm, MatMul): quantize every input. The
   weight per output channel (Conv axis 0, ConvTranspose axis 1, MatMul [K, N] axis 1,
   Gemm axis 0 with transB else 1), the activation per tensor. A MatMul of two
   activations (attention's Q.K^T and P.V) gets both inputs quantized
   (`quantize_bmm`), which is what TensorRT's int8/fp8 fused attention reads.
2. Never quantize a weighted layer's output: its bias, activation (Relu/Clip/Gelu)
   and residual Add fuse into the kernel's epilogue in high precision, and a Q there
   would cut that fusion.
3. Residual Add after a convolution: quantize the Add's *other* input (the skip
   branch), so TensorRT fuses the Add into the convolution as an int8 residual. For
   MatMuls (transformers) the skip stays in high precision: the Add fuses with the
   bias and LayerNorm there, and quantizing the residual stream costs accuracy.
4. Pooling: when a pooling layer's output feeds a quantized input (through shape-only
   ops), its input is quantized too, so the pooling reads int8 (it commutes with Q/DQ
   for max pooling; average pooling re-quantizes its mean).
5. Leave alone: weights too small to gain (K or N < 16), weights that are not 2-D for
   the block-wise weight-only formats, K not a multiple of the block, inputs that are
   not float32 or float16 (an fp16 graph gets fp16 scales: opset 19), tensors with non-finite values in calibration (attention masks), and
   nodes already reading a DequantizeLinear (idempotence). Op types and node-name
   patterns given by the user stay in high precision.

Weight-only modes (int4-wo, int2-wo) apply rule 1 to the weights of MatMul/Gemm only.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from passes.pattern_utils import constant_array, producer

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOLS = ("AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool")
SHAPE_ONLY = ("Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze")
MIN_DIM = 16


@dataclass
class WeightSite:
    node: gs.Node
    index: int  # input index of the weight
    axis: int  # per-channel axis, or the block axis (K) for weight-only formats


@dataclass
class Placement:
    weights: list[WeightSite] = field(default_factory=list)
    activations: dict[str, list[tuple[gs.Node, int]]] = field(default_factory=dict)  # tensor -> readers to redirect
    tensors: dict[str, gs.Tensor] = field(default_factory=dict)
    quantized_nodes: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def add_activation(self, node: gs.Node, index: int) -> None:
        tensor = node.inputs[index]
        self.tensors[tensor.name] = tensor
        readers = self.activations.setdefault(tensor.name, [])
        if (node, index) not in readers:
            readers.append((node, index))


def excluded(
    node: gs.Node, exclude_ops: list[str], exclude_names: list[str], include_names: list[str] | None = None
) -> str | None:
    """Why the user keeps `node` in high precision (op type, name pattern, not included), or None."""
    if node.op in exclude_ops:
        return f"op type {node.op} kept in high precision"
    for pattern in exclude_names:
        if node.name == pattern or fnmatch.fnmatchcase(node.name, pattern):
            return f"name matches '{pattern}': kept in high precision"
    if include_names is not None and not any(
        node.name == p or fnmatch.fnmatchcase(node.name, p) for p in include_names
    ):
        return "not in the included names"
    return None


def _is_float_activation(tensor: gs.Tensor) -> bool:
    return not isinstance(tensor, gs.Constant) and tensor.dtype in (np.float32, np.float16)


def _weight_axis(node: gs.Node, weight: np.ndarray, weight_only: bool) -> tuple[int | None, str]:
    """Per-channel (or block) axis of the node's weight, or None and why not."""
    if node.op == "MatMul":
        if weight.ndim != 2:
            return None, f"weight of rank {weight.ndim} (only 2-D [K, N] MatMul weights)"
        return (0 if weight_only else 1), ""
    if node.op == "Gemm":
        trans = int(node.attrs.get("transB", 0))
        return ((1 if trans else 0) if weight_only else (0 if trans else 1)), ""
    if weight_only:
        return None, f"{node.op}: weight-only formats apply to MatMul/Gemm"
    if node.op == "ConvTranspose":
        return (1, "") if int(node.attrs.get("group", 1)) == 1 else (None, "grouped ConvTranspose")
    return 0, ""


def _check_weight(node: gs.Node, weight: np.ndarray, axis: int, weight_only: bool, block: int) -> str | None:
    if weight.dtype not in (np.float32, np.float16):
        return f"weight dtype {weight.dtype} (float32 or float16 only)"
    if node.op in ("MatMul", "Gemm") and min(weight.shape) < MIN_DIM:
        return f"weight {list(weight.shape)} too small to gain (K or N < {MIN_DIM})"
    if weight_only and weight.shape[axis] % block:
        return f"K={weight.shape[axis]} is not a multiple of block {block}"
    return None


def _already_quantized(node: gs.Node) -> bool:
    return any(producer(t, "DequantizeLinear") is not None for t in node.inputs if t is not None)


def place(
    graph: gs.Graph,
    weight_only: bool,
    exclude_ops: list[str],
    exclude_names: list[str],
    quantize_bmm: bool = True,
    residual: bool = True,
    pooling: bool = True,
    block: int = 128,
    include_names: list[str] | None = None,
) -> Placement:
    """Apply rules 1-5 (module docstring) to every node; return the sites and the rejections."""
    plan = Placement()
    for node in graph.nodes:
        if node.op not in WEIGHTED:
            continue
        why = excluded(node, exclude_ops, exclude_names, include_names)
        if why is None and _already_quantized(node):
            why = "already reads a DequantizeLinear"
        if why:
            plan.rejected.append((node.name, why))
            continue
        _place_weighted(node, plan, weight_only, quantize_bmm, block)
    if not weight_only:
        if residual:
            _place_residuals(graph, plan, exclude_ops, exclude_names)
        if pooling:
            _place_pooling(graph, plan, exclude_ops, exclude_names)
    return plan


def _place_weighted(node: gs.Node, plan: Placement, weight_only: bool, quantize_bmm: bool, block: int) -> None:
    index = 1
    weight = constant_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        if node.op != "MatMul" or weight_only:
            plan.rejected.append((node.name, "no constant weight"))
            return
        if not quantize_bmm:
            plan.rejected.append((node.name, "activation x activation MatMul (quantize_bmm off)"))
            return
        if not all(_is_float_activation(t) for t in node.inputs[:2]):
            plan.rejected.append((node.name, "inputs are not float32/float16 activations"))
            return
        plan.add_activation(node, 0)
        plan.add_activation(node, 1)
        plan.quantized_nodes.append(node.name)
        return
    axis, why = _weight_axis(node, weight, weight_only)
    why = why or _check_weight(node, weight, axis, weight_only, block)
    if not why and not weight_only and not _is_float_activation(node.inputs[0]):
        why = "input is not a float32/float16 activation"
    if why:
        plan.rejected.append((node.name, why))
        return
    plan.weights.append(WeightSite(node, index, axis))
    if not weight_only:
        plan.add_activation(node, 0)
    plan.quantized_nodes.append(node.name)


def _place_residuals(graph: gs.Graph, plan: Placement, exclude_ops: list[str], exclude_names: list[str]) -> None:
    quantized = set(plan.quantized_nodes)
    for node in graph.nodes:
        if node.op != "Add" or len(node.inputs) != 2 or excluded(node, exclude_ops, exclude_names):
            continue
        if not all(_is_float_activation(t) for t in node.inputs):
            continue
        sources = [producer(t) for t in node.inputs]
        convs = [
            i
            for i, src in enumerate(sources)
            if src is not None
            and src.op in ("Conv", "ConvTranspose")
            and src.name in quantized
            and len(node.inputs[i].outputs) == 1
        ]
        if len(convs) == 1:
            plan.add_activation(node, 1 - convs[0])


def _place_pooling(graph: gs.Graph, plan: Placement, exclude_ops: list[str], exclude_names: list[str]) -> None:
    for node in graph.nodes:
        if node.op not in POOLS or excluded(node, exclude_ops, exclude_names):
            continue
        if not _is_float_activation(node.inputs[0]):
            continue
        tensor = node.outputs[0]
        while len(tensor.outputs) == 1 and tensor.outputs[0].op in SHAPE_ONLY:
            tensor = tensor.outputs[0].outputs[0]
        if tensor.name in plan.activations:
            plan.add_activation(node, 0)
