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
from converter.backends.runtime_cache import RuntimeCache
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


def _deserialize(trt: ModuleType, engine_bytes: bytes, logger):
    """(runtime, engine) on the device (needs a GPU); a one-line error with TensorRT's reason when it
    will not load. The runtime is handed back so the caller keeps it alive as long as the engine."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildError(f"engine could not be deserialized: {short_message(' '.join(logger.errors()))}")
    return runtime, engine


def run_engine(
    trt: ModuleType,
    engine_bytes: bytes,
    feeds: dict[str, np.ndarray],
    logger,
    runtime_cache: RuntimeCache | None = None,
) -> dict[str, np.ndarray]:
    """Execute an engine on the GPU through torch CUDA tensors (GPU machines only).

    Not exercised in CI (no GPU there); kept small and on the documented
    TensorRT 10 tensor-address API so both runtimes share it. `runtime_cache` (TensorRT-RTX
    only) reaches the execution context through an `IRuntimeConfig` and is saved after the run.
    """
    import torch  # torch is the CUDA memory manager here; only imported on GPU machines

    _runtime, engine = _deserialize(trt, engine_bytes, logger)
    if runtime_cache is None:
        context = engine.create_execution_context()
    else:
        context = engine.create_execution_context(runtime_config=runtime_cache.runtime_config(engine))
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
    if runtime_cache is not None:
        runtime_cache.save()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def inspect_engine(trt: ModuleType, engine_bytes: bytes, logger) -> dict[str, Any]:
    """Per-layer information from the engine inspector (needs a GPU to deserialize)."""
    _runtime, engine = _deserialize(trt, engine_bytes, logger)
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(text)


def refit_engine(trt: ModuleType, engine_bytes: bytes, onnx_path: str, logger) -> bytes:
    """The weights of the ONNX at `onnx_path` put into a refittable or weight-stripped engine, and
    the engine serialized with them (needs a GPU: the engine is deserialized on the device).

    Not exercised in CI (no GPU there); on TensorRT 10's refit API (Refitter +
    OnnxParserRefitter), which TensorRT-RTX shares. The ONNX must be the graph the engine was
    built from; its weights may differ (fine-tuned, another checkpoint of the same model).
    """
    _runtime, engine = _deserialize(trt, engine_bytes, logger)
    if not engine.refittable:
        raise InvalidInputError("the engine was built without --refit / --strip-weights: it cannot take new weights")
    refitter = trt.Refitter(engine, logger)
    parser = trt.OnnxParserRefitter(refitter, logger)
    if not parser.refit_from_file(onnx_path):
        errors = [f"{parser.get_error(i).node_name()}: {parser.get_error(i).desc()}" for i in range(parser.num_errors)]
        raise InvalidInputError(f"{onnx_path}: its weights do not fit the engine ({short_message('; '.join(errors))})")
    missing = [name or "(unnamed)" for name in refitter.get_missing_weights()]
    if missing:
        raise InvalidInputError(
            f"{onnx_path}: no weights for {', '.join(missing[:5])} (is it the graph the engine was built from?)"
        )
    if not refitter.refit_cuda_engine():
        raise BuildError(f"refit failed: {short_message(' '.join(logger.errors()))}")
    config = engine.create_serialization_config()
    config.clear_flag(trt.SerializationFlag.EXCLUDE_WEIGHTS)  # a stripped engine is saved whole from now on
    return bytes(engine.serialize_with_config(config))
