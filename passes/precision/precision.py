"""Convert a float32 graph to float16 or bfloat16 (lossy, but by design).

Why a graph pass and not a builder flag: TensorRT-RTX (and strongly typed full
TensorRT networks) take each layer's precision from the tensor types in the graph.
"FP16" therefore means the ONNX itself computes in FP16.

What it does:
- float32 weights and constants (initializers, Constant/ConstantOfShape values)
  become the target type, saturating at the fp16 range (exporters write "-inf"
  masks as float32 min; the report counts saturated constants);
  `Cast(to=FLOAT)` inside the graph becomes `Cast(to=<target>)`;
- inputs that ONNX requires to stay float32 (Resize scales) are left alone;
- nodes whose op type is in `keep_fp32_ops` or whose name contains one of
  `keep_fp32_names` run in float32, with Casts around their float inputs/outputs;
- with `keep_sensitive` (the default) so do numerically sensitive nodes: Softmax
  input, reductions, powers, elementwise ops on constants fp16 cannot hold; norms keep
  float32 statistics (stash_type=1). The list and reasons are in passes/precision/policy.py;
  a note reports what stayed in float32;
- with `keep_io_types` (the default) the model's float32 inputs and outputs stay
  float32, with a Cast just inside each; otherwise the interface changes too. A KV
  cache (`past_key_values.*` in, `present.*` out) takes the target type whatever
  `keep_io_types` says, unless `cache_io_fp32`: the cache is a decode step's largest memory traffic, and a
  runtime allocates it in the type the engine declares.
Running it again on its own output changes nothing: the boundary and fence Casts it
added are recognised. Intermediate types are dropped and re-inferred.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from converter.core.kv_cache import CACHE_IO_PREFIXES
from passes.base import Pass, PassContext, PassResult
from passes.graph_utils import FreshNames, redirect
from passes.precision.policy import apply_policy

_ONNX_TYPES = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}
_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}

# (op, input index) pairs whose float input must stay float32 whatever T is.
_FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}

_FP16_MAX = float(np.finfo(np.float16).max)


def _to_target(values: np.ndarray, target: str) -> np.ndarray:
    if target == "fp16":
        return np.asarray(np.clip(values, -_FP16_MAX, _FP16_MAX), dtype=np.float16)
    import ml_dtypes  # shipped with onnx; numpy has no bfloat16

    return np.asarray(values).astype(ml_dtypes.bfloat16)


def _onnx_type(tensor: gs.Tensor) -> int | None:
    if tensor.dtype is None:
        return None
    if isinstance(tensor.dtype, int):
        return tensor.dtype
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    except (TypeError, KeyError, ValueError):
        return None


def _is_float32(tensor: gs.Tensor) -> bool:
    return _onnx_type(tensor) == onnx.TensorProto.FLOAT


def _is_float(tensor: gs.Tensor) -> bool:
    return _onnx_type(tensor) in _FLOAT_TYPES


def _is_cast_to(node: gs.Node | None, to: int) -> bool:
    return node is not None and node.op == "Cast" and node.attrs.get("to") == to


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if tensor.inputs else None


@dataclass
class Precision(Pass):
    """Run the graph in float16/bfloat16, optionally keeping selected ops and the I/O in float32."""

    name = "precision"
    level = "graph"
    exact = False

    target: str = "fp16"
    keep_io_types: bool = True
    cache_io_fp32: bool = False
    keep_fp32_ops: list[str] = field(default_factory=list)
    keep_fp32_names: list[str] = field(default_factory=list)
    keep_sensitive: bool = True

    def __post_init__(self) -> None:
        if self.target not in _ONNX_TYPES:
            raise ValueError(f"precision target must be one of {sorted(_ONNX_TYPES)}, got {self.target!r}")
        self.low = _ONNX_TYPES[self.target]
        # onnx-graphsurgeon takes an ONNX enum where numpy has no dtype (bfloat16).
        self.low_dtype = np.float16 if self.target == "fp16" else self.low
        self._sensitive: dict[int, str] = {}

    def output_precision(self) -> str | None:
        return self.target

    def _kept(self, node: gs.Node) -> bool:
        return (
            node.op in self.keep_fp32_ops
            or any(s in node.name for s in self.keep_fp32_names)
            or id(node) in self._sensitive
        )

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        self._unique = FreshNames(graph)
        self._graph = graph
        self._sensitive = apply_policy(graph, self.target, result) if self.keep_sensitive else {}
        self._convert_constants_and_casts(graph, result)
        self._fence_kept_nodes(graph, result)
        self._convert_interface(graph, result)
        io_ids = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
        for tensor in graph.tensors().values():  # re-inferred by the manager from the new graph
            if isinstance(tensor, gs.Variable) and id(tensor) not in io_ids:
                tensor.dtype, tensor.shape = None, None
        return result

    def _cast(self, src: gs.Tensor, to: int, dtype, base: str) -> gs.Variable:
        out = gs.Variable(self._unique(base), dtype=dtype, shape=src.shape)
        self._graph.nodes.append(
            gs.Node("Cast", name=self._unique(f"{out.name}_cast"), attrs={"to": to}, inputs=[src], outputs=[out])
        )
        return out

    def _convert_constants_and_casts(self, graph: gs.Graph, result: PassResult) -> None:
        converted: dict[int, gs.Constant] = {}
        outputs = {id(t) for t in graph.outputs}

        def low(const: gs.Constant) -> gs.Constant:
            if id(const) not in converted:
                values = np.asarray(const.values)
                if self.target == "fp16" and np.any(np.isfinite(values) & (np.abs(values) > _FP16_MAX)):
                    result.count("constants_saturated_to_fp16_range", const.name)
                converted[id(const)] = gs.Constant(
                    self._unique(f"{const.name}_{self.target}"), _to_target(values, self.target)
                )
                result.count("weights_converted")
            return converted[id(const)]

        for node in list(graph.nodes):
            if self._kept(node):
                continue
            for index, tensor in enumerate(node.inputs):
                if (
                    (node.op, index) not in _FLOAT32_ONLY_INPUTS
                    and isinstance(tensor, gs.Constant)
                    and _is_float32(tensor)
                ):
                    node.inputs[index] = low(tensor)
            boundary = any(id(t) in outputs for t in node.outputs) or all(
                self._kept(r) for r in node.outputs[0].outputs
            )
            if _is_cast_to(node, onnx.TensorProto.FLOAT) and not boundary:
                node.attrs["to"] = self.low
                result.count("casts_retargeted", node.name)
            const = node.attrs.get("value")
            if node.op in ("Constant", "ConstantOfShape") and isinstance(const, gs.Constant) and _is_float32(const):
                node.attrs["value"] = gs.Constant(const.name, _to_target(np.asarray(const.values), self.target))
                result.count("constants_converted", node.name)
            elif node.op == "Constant" and ("value_float" in node.attrs or "value_floats" in node.attrs):
                raw = node.attrs.pop("value_float", None)
                raw = node.attrs.pop("value_floats", raw)
                node.attrs["value"] = gs.Constant(
                    f"{node.name}_value", _to_target(np.asarray(raw, np.float32), self.target)
                )
                result.count("constants_converted", node.name)
            elif node.op == "ConstantOfShape" and "value" not in node.attrs:
                # The default value is a float32 zero: make it explicit in the target type.
                node.attrs["value"] = gs.Constant(
                    f"{node.name}_value", _to_target(np.zeros(1, np.float32), self.target)
                )
                result.count("constants_converted", node.name)

    def _fp32_io(self, tensor: gs.Tensor) -> bool:
        """Whether a float32 graph input/output keeps its type: a KV cache tensor as `cache_io_fp32`
        says, any other as `keep_io_types` says."""
        if tensor.name.startswith(CACHE_IO_PREFIXES):
            return self.cache_io_fp32
        return self.keep_io_types

    def _fence_kept_nodes(self, graph: gs.Graph, result: PassResult) -> None:
        """Cast float inputs of float32-kept nodes up, and their outputs back down (once)."""
        graph_inputs = {id(t) for t in graph.inputs}
        for node in [n for n in graph.nodes if self._kept(n)]:
            fenced = False
            for index, tensor in enumerate(node.inputs):
                src = _producer(tensor)
                already_fp32 = (id(tensor) in graph_inputs and self._fp32_io(tensor)) or (
                    src is not None and (self._kept(src) or _is_cast_to(src, onnx.TensorProto.FLOAT))
                )
                if isinstance(tensor, gs.Variable) and _is_float(tensor) and not already_fp32:
                    node.inputs[index] = self._cast(tensor, onnx.TensorProto.FLOAT, np.float32, f"{tensor.name}_fp32")
                    fenced = True
            for tensor in node.outputs:
                if not _is_float(tensor) or any(t is tensor for t in graph.outputs):
                    continue
                readers = [r for r in tensor.outputs if not self._kept(r) and not _is_cast_to(r, self.low)]
                if readers:
                    redirect(
                        tensor, self._cast(tensor, self.low, self.low_dtype, f"{tensor.name}_{self.target}"), readers
                    )
                    fenced = True
            if fenced:
                result.count("nodes_kept_fp32", node.name)

    def _convert_interface(self, graph: gs.Graph, result: PassResult) -> None:
        """Keep float32 I/O with Casts just inside the graph, or change the I/O types."""
        for tensor in graph.inputs:
            readers = [r for r in tensor.outputs if not self._kept(r) and not _is_cast_to(r, self.low)]
            if not _is_float32(tensor) or not readers:
                continue
            if not self._fp32_io(tensor):
                tensor.dtype = self.low_dtype
                result.count("inputs_retyped", tensor.name)
                continue
            redirect(tensor, self._cast(tensor, self.low, self.low_dtype, f"{tensor.name}_{self.target}"), readers)
            result.count("input_casts_added", tensor.name)
        for tensor in graph.outputs:
            producer = _producer(tensor)
            if not _is_float32(tensor) or producer is None or self._kept(producer):
                continue
            if _is_cast_to(producer, onnx.TensorProto.FLOAT):  # already ends in a boundary Cast
                continue
            if not self._fp32_io(tensor):
                tensor.dtype = self.low_dtype
                result.count("outputs_retyped", tensor.name)
                continue
            # The producer now writes a low-precision tensor; a Cast restores the float32 output.
            inner = gs.Variable(self._unique(f"{tensor.name}_{self.target}"), dtype=self.low_dtype, shape=tensor.shape)
            producer.outputs[producer.outputs.index(tensor)] = inner
            redirect(tensor, inner, [r for r in tensor.outputs])
            graph.nodes.append(
                gs.Node(
                    "Cast",
                    name=self._unique(f"{tensor.name}_to_fp32"),
                    attrs={"to": onnx.TensorProto.FLOAT},
                    inputs=[inner],
                    outputs=[tensor],
                )
            )
            result.count("output_casts_added", tensor.name)
