"""onnxruntime CPU sessions that compute low-precision Q/DQ graphs as written.

onnxruntime 1.32's CPU graph optimizations compute some low-precision Q/DQ graphs
wrongly: fp8 Q/DQ around Conv (extended level: cosine 0.48 on a two-conv graph) and
int8 Q/DQ EfficientNet-Lite0 converted to fp16 (basic level: cosine -0.06); both are
right with optimizations off. Every place that runs a candidate graph for accuracy
(verify, calibration, sensitivity, benchmarks) opens it through `cpu_session` so the
rule lives in one place.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

_FP8 = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}


def has_fp8(model: onnx.ModelProto) -> bool:
    return any(i.data_type in _FP8 for i in model.graph.initializer)


def _fp16_qdq(model: onnx.ModelProto) -> bool:
    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer) and any(
        n.op_type == "DequantizeLinear" for n in model.graph.node
    )


def needs_unoptimized(model: onnx.ModelProto) -> bool:
    """True for the graphs onnxruntime's CPU optimizations miscompute (see the module docstring)."""
    return has_fp8(model) or _fp16_qdq(model)


def session_options(model: onnx.ModelProto) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if needs_unoptimized(model):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options


def cpu_session(model: onnx.ModelProto | str | Path) -> ort.InferenceSession:
    """A CPU session; a path is loaded by onnxruntime itself (external data stays on disk)."""
    if isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(
            model.SerializeToString(), session_options(model), providers=["CPUExecutionProvider"]
        )
    structure = onnx.load(str(model), load_external_data=False)  # initializer types only, no weights read
    return ort.InferenceSession(str(model), session_options(structure), providers=["CPUExecutionProvider"])
