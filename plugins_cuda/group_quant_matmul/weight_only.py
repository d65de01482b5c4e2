"""Write W4A16/W2A16 weight-only quantization into an ONNX model as blocked DequantizeLinear.

A minimal producer of the pattern passes/custom_ops/group_quant_matmul.py consumes, for tests,
demos and benchmarks: every MatMul whose second input is a float initializer W [K, N]
becomes MatMul(x, DequantizeLinear(q, scale, zero_point; axis=0, block_size=G)),
quantized by reference.quantize (group-wise asymmetric min/max, optional refinement).
Codes are stored as UINT4 (4-bit), UINT2 (2-bit, opset >= 25) or UINT8 holding 2-bit
values (2-bit below opset 25). Needs opset >= 21 (DequantizeLinear's block_size).
The quantization issue's passes (passes/quantize*.py) are the production path.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import numpy_helper

from converter.core.model_io import opset_of
from plugins_cuda.group_quant_matmul.reference import QuantizedWeight, quantize


def quantize_matmul_weights(
    model: onnx.ModelProto,
    bits: int,
    group_size: int,
    refine_steps: int = 0,
    min_elements: int = 0,
) -> tuple[onnx.ModelProto, dict[str, QuantizedWeight]]:
    """(a copy of `model` with MatMul weights quantized, {weight name: its quantization})."""
    opset = opset_of(model)
    if opset < 21:
        raise ValueError(f"blocked DequantizeLinear needs opset >= 21 (model has {opset}): upgrade it first")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    done: dict[str, QuantizedWeight] = {}
    new_nodes = []
    for node in graph.node:
        w_name = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else ""
        init = inits.get(w_name)
        if init is None or readers.get(w_name, 0) != 1 or init.data_type not in (1, 10) or len(init.dims) != 2:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(init)  # [K, N]
        if w.shape[0] % group_size or w.size < min_elements:
            new_nodes.append(node)
            continue
        qw = quantize(torch.from_numpy(w.T.astype(np.float32)), bits, group_size, refine_steps, _torch_dtype(w.dtype))
        done[w_name] = qw
        codes = qw.q.numpy().T  # [K, N]
        if bits == 4:
            codes = codes.astype(ml_dtypes.uint4)
            zeros = qw.zeros.numpy().T.astype(np.uint8).astype(ml_dtypes.uint4)
        elif opset >= 25:
            codes = codes.astype(ml_dtypes.uint2)
            zeros = qw.zeros.numpy().T.astype(np.uint8).astype(ml_dtypes.uint2)
        else:
            zeros = qw.zeros.numpy().T.astype(np.uint8)
        names = (f"{w_name}_q{bits}", f"{w_name}_scale", f"{w_name}_zp", f"{w_name}_dq")
        scale = qw.scales.numpy().T.astype(w.dtype)
        graph.initializer.extend(
            [
                numpy_helper.from_array(codes, names[0]),
                numpy_helper.from_array(scale, names[1]),
                numpy_helper.from_array(np.ascontiguousarray(zeros), names[2]),
            ]
        )
        new_nodes.append(
            onnx.helper.make_node(
                "DequantizeLinear", list(names[:3]), [names[3]], name=f"{node.name}_dq", axis=0, block_size=group_size
            )
        )
        node.input[1] = names[3]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    keep = [t for t in graph.initializer if t.name not in done]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return out, done


def _torch_dtype(np_dtype) -> torch.dtype:
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}.get(
        np.dtype(np_dtype), torch.float32
    )
