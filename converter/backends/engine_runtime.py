"""Running and inspecting a built engine through the TensorRT runtime (GPU machines only).

Not exercised in CI (no GPU there); written on the documented TensorRT 10 tensor-address
API so both runtimes (full TensorRT, TensorRT-RTX) share it.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np

from converter.backends.base import short_message
from converter.core.errors import BuildError, InvalidInputError, UnsupportedError


def _profile_for(trt: ModuleType, engine, feeds: dict[str, np.ndarray]) -> int:
    """The first optimization profile whose ranges hold every fed shape (a cache model's
    engine has a prefill and a decode profile); 0 when none does (set_input_shape then says why)."""
    inputs = [
        engine.get_tensor_name(i)
        for i in range(engine.num_io_tensors)
        if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
    ]
    for index in range(engine.num_optimization_profiles):
        ranges = {name: engine.get_tensor_profile_shape(name, index) for name in inputs if name in feeds}
        if all(
            all(lo <= d <= hi for lo, d, hi in zip(low, feeds[name].shape, high, strict=False))
            for name, (low, _opt, high) in ranges.items()
        ):
            return index
    return 0


def run_engine(trt: ModuleType, engine_bytes: bytes, feeds: dict[str, np.ndarray], logger) -> dict[str, np.ndarray]:
    """Execute an engine on the GPU through torch CUDA tensors (GPU machines only).

    Not exercised in CI (no GPU there); kept small and on the documented
    TensorRT 10 tensor-address API so both runtimes share it.
    """
    import torch  # torch is the CUDA memory manager here; only imported on GPU machines

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildError(f"engine could not be deserialized: {short_message(' '.join(logger.errors()))}")
    context = engine.create_execution_context()
    stream = torch.cuda.current_stream()
    profile = _profile_for(trt, engine, feeds)
    if profile:
        context.set_optimization_profile_async(profile, stream.cuda_stream)
    keep: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if name not in feeds:
                raise InvalidInputError(f"engine input '{name}' missing from the feeds")
            wanted = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=wanted)).cuda()
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidInputError(
                    f"engine input '{name}': shape {list(tensor.shape)} is outside the engine's optimization profile"
                )
            keep[name] = tensor
            context.set_tensor_address(name, tensor.data_ptr())
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UnsupportedError(
                    f"engine output '{name}' has a data-dependent shape {list(shape)}: not supported"
                )
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
    if not context.execute_async_v3(stream.cuda_stream):
        raise BuildError(f"engine execution failed: {short_message(' '.join(logger.errors()))}")
    stream.synchronize()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def inspect_engine(trt: ModuleType, engine_bytes: bytes, logger) -> dict[str, Any]:
    """Per-layer information from the engine inspector (needs a GPU to deserialize)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildError(f"engine could not be deserialized: {short_message(' '.join(logger.errors()))}")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(text)
