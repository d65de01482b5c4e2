"""Convert a float32 graph to float16 or bfloat16 (lossy, but by design).

Why a graph pass and not a builder flag: TensorRT-RTX (and strongly typed full
TensorRT networks) take each layer's precision from the tensor types in the graph.
"FP16" therefore means the ONNX itself computes in FP16.

What it does:
- float32 weights and constants (initializers, Constant/ConstantOfShape values)
  become the target type; `Cast(to=FLOAT)` becomes `Cast(to=<target>)`;
- inputs that ONNX requires to stay float32 (Resize scales) are left alone;
- nodes whose op type is in `keep_fp32_ops` or whose name contains one of
  `keep_fp32_names` run in float32, with Casts around them;
- with `keep_io_types` (the default) the model's float32 inputs and outputs stay
  float32, with a Cast just inside each; otherwise the interface changes too and the
  report says so.
Intermediate value_info is dropped and re-inferred, so no stale float32 types remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes.base import PassContext, PassResult
from passes.graph_utils import redirect

_ONNX_TYPES = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}

# (op, input index) pairs whose float input must stay float32 whatever T is.
_FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


_FP16_MAX = float(np.finfo(np.float16).max)


def _to_target(values: np.ndarray, target: str) -> np.ndarray:
    if target == "fp16":
        # Exporters write "minus infinity" masks as float32 min (-3.4e38); saturate to
        # the fp16 range instead of overflowing to inf, which turns 0 * mask into NaN.
        return np.asarray(np.clip(values, -_FP16_MAX, _FP16_MAX), dtype=np.float16)
    import ml_dtypes  # shipped with onnx; numpy has no bfloat16

    return values.astype(ml_dtypes.bfloat16)


def _is_float32(tensor: gs.Tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _cast(graph: gs.Graph, src: gs.Tensor, to: int, dtype, name: str) -> gs.Variable:
    out = gs.Variable(name, dtype=dtype, shape=src.shape)
    graph.nodes.append(gs.Node("Cast", name=f"{name}_cast", attrs={"to": to}, inputs=[src], outputs=[out]))
    return out


@dataclass
class ConvertPrecision:
    """Run the graph in float16/bfloat16, optionally keeping selected ops and the I/O in float32."""

    target: str = "fp16"
    keep_io_types: bool = True
    keep_fp32_ops: list[str] = field(default_factory=list)
    keep_fp32_names: list[str] = field(default_factory=list)
    name: str = "precision"
    exact: bool = False

    def _kept(self, node: gs.Node) -> bool:
        return node.op in self.keep_fp32_ops or any(s in node.name for s in self.keep_fp32_names)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if self.target not in _ONNX_TYPES:
            raise ValueError(f"precision target must be one of {sorted(_ONNX_TYPES)}, got {self.target!r}")
        result = PassResult()
        onnx_low = _ONNX_TYPES[self.target]
        # onnx-graphsurgeon takes an ONNX enum where numpy has no dtype (bfloat16).
        low_dtype = np.float16 if self.target == "fp16" else onnx_low

        already = all(not _is_float32(t) for t in graph.tensors().values())
        if already:
            result.notes.append("no float32 tensors: nothing to convert")
            return result

        converted_constants: dict[int, gs.Constant] = {}

        def low_constant(const: gs.Constant) -> gs.Constant:
            key = id(const)
            if key not in converted_constants:
                converted_constants[key] = gs.Constant(
                    f"{const.name}_{self.target}", _to_target(np.asarray(const.values), self.target)
                )
                result.count("weights_converted")
            return converted_constants[key]

        for node in list(graph.nodes):
            if self._kept(node):
                continue
            for index, tensor in enumerate(node.inputs):
                if (node.op, index) in _FLOAT32_ONLY_INPUTS:
                    continue
                if isinstance(tensor, gs.Constant) and _is_float32(tensor):
                    node.inputs[index] = low_constant(tensor)
            if node.op == "Cast" and node.attrs.get("to") == onnx.TensorProto.FLOAT:
                node.attrs["to"] = onnx_low
                result.count("casts_retargeted", node.name)
            for attr in ("value",):
                const = node.attrs.get(attr)
                if isinstance(const, gs.Constant) and _is_float32(const):
                    node.attrs[attr] = gs.Constant(
                        const.name, _to_target(np.asarray(const.values), self.target)
                    )
                    result.count("constants_converted", node.name)
            if node.op == "ConstantOfShape" and "value" not in node.attrs:
                # The default value is a float32 zero: make it explicit in the target type.
                node.attrs["value"] = gs.Constant(
                    f"{node.name}_value", _to_target(np.zeros(1, np.float32), self.target)
                )

        self._fence_kept_nodes(graph, result, onnx_low, low_dtype)
        self._convert_interface(graph, result, onnx_low, low_dtype)

        # Forget intermediate types: the exporter re-infers them from the new graph.
        io_ids = {id(t) for t in graph.inputs} | {id(t) for t in graph.outputs}
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and id(tensor) not in io_ids:
                tensor.dtype, tensor.shape = None, None
        return result

    def _fence_kept_nodes(self, graph: gs.Graph, result: PassResult, onnx_low: int, low_dtype) -> None:
        """Cast float inputs of float32-kept nodes up, and their outputs back down."""
        for node in [n for n in graph.nodes if self._kept(n)]:
            for index, tensor in enumerate(node.inputs):
                if isinstance(tensor, gs.Variable) and not any(t is tensor for t in graph.inputs):
                    if tensor.inputs and self._kept(tensor.inputs[0]):
                        continue
                    node.inputs[index] = _cast(
                        graph,
                        tensor,
                        onnx.TensorProto.FLOAT,
                        np.float32,
                        f"{tensor.name}_to_fp32_{node.name}",
                    )
            for tensor in node.outputs:
                if any(t is tensor for t in graph.outputs):
                    continue
                low_consumers = [c for c in tensor.outputs if not self._kept(c)]
                if not low_consumers:
                    continue
                lowered = _cast(graph, tensor, onnx_low, low_dtype, f"{tensor.name}_to_{self.target}")
                redirect(tensor, lowered, low_consumers)
            result.count("nodes_kept_fp32", node.name)

    def _convert_interface(self, graph: gs.Graph, result: PassResult, onnx_low: int, low_dtype) -> None:
        """Keep float32 I/O with Casts inside the graph, or change the I/O types."""
        for tensor in graph.inputs:
            if not _is_float32(tensor):
                continue
            readers = [c for c in tensor.outputs if not self._kept(c)]
            if not self.keep_io_types:
                tensor.dtype = low_dtype
                result.count("inputs_retyped", tensor.name)
                continue
            lowered = _cast(graph, tensor, onnx_low, low_dtype, f"{tensor.name}_{self.target}")
            redirect(tensor, lowered, readers)
            result.count("input_casts_added", tensor.name)
        for tensor in graph.outputs:
            if not _is_float32(tensor):
                continue
            producer = tensor.inputs[0] if tensor.inputs else None
            if producer is not None and self._kept(producer):
                continue
            if not self.keep_io_types:
                tensor.dtype = low_dtype
                result.count("outputs_retyped", tensor.name)
                continue
            # The producer now writes a low-precision tensor; a Cast restores the output.
            inner = gs.Variable(f"{tensor.name}_{self.target}", dtype=low_dtype, shape=tensor.shape)
            for node in graph.nodes:
                for i, t in enumerate(node.outputs):
                    if t is tensor:
                        node.outputs[i] = inner
                for i, t in enumerate(node.inputs):
                    if t is tensor:
                        node.inputs[i] = inner
            graph.nodes.append(
                gs.Node(
                    "Cast",
                    name=f"{tensor.name}_to_fp32",
                    attrs={"to": onnx.TensorProto.FLOAT},
                    inputs=[inner],
                    outputs=[tensor],
                )
            )
            result.count("output_casts_added", tensor.name)
