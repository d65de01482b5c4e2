"""`inspect`: what is inside an ONNX file or an engine.

ONNX: op histogram, parameter count, weight dtypes, I/O shapes, opsets, metadata.
Engine: TensorRT's engine inspector needs a deserialized engine, and deserializing
needs a GPU. Without one we report what is knowable: the sidecar written at build
time (the parsed network's layer types and tensor dtypes, targets, profiles) and the
engine's size, and say that per-layer engine detail needs a GPU.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from converter.backends import get_backend, load_sidecar
from converter.core.errors import InvalidInputError, TrtforgeError
from converter.core.metadata import read_metadata
from converter.core.model_io import external_data_files, load_model, weights_nbytes
from converter.pipelines.report import write_report
from converter.verification.reference import ENGINE_SUFFIXES


def _value_info(value_info: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor_type = value_info.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in tensor_type.shape.dim]
    dtype = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "?"
    return {"name": value_info.name, "shape": dims, "dtype": dtype}


def inspect_onnx(path: Path) -> dict[str, Any]:
    model = load_model(path, load_weights=False)
    graph = model.graph
    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in graph.node)
    params = sum(int(np.prod(init.dims)) if init.dims else 1 for init in graph.initializer)
    weight_dtypes = Counter(onnx.TensorProto.DataType.Name(init.data_type) for init in graph.initializer)
    return {
        "kind": "onnx",
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "external_data": external_data_files(model),
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "metadata": read_metadata(model),
        "inputs": [_value_info(v) for v in graph.input],
        "outputs": [_value_info(v) for v in graph.output],
        "num_nodes": len(graph.node),
        "ops": dict(ops.most_common()),
        "num_params": params,
        "weight_bytes": weights_nbytes(model),
        "weight_dtypes": dict(weight_dtypes.most_common()),
        "functions": [f"{f.domain}::{f.name}" for f in model.functions],
    }


def inspect_engine(path: Path) -> dict[str, Any]:
    sidecar, why = load_sidecar(path)
    info: dict[str, Any] = {"kind": "engine", "path": str(path), "engine_bytes": path.stat().st_size}
    if sidecar is None:
        info["sidecar"] = None
        info["note"] = f"{why}: without a GPU only the engine's size is known"
        backend_name = "auto"
    else:
        info["sidecar"] = sidecar
        backend_name = sidecar.get("backend", "auto")
    try:
        backend = get_backend(backend_name)
        ok, why = backend.can_run()
    except TrtforgeError as exc:
        ok, why = False, str(exc)
    if ok:
        info["engine_layers"] = backend.inspect(path)
    else:
        info["engine_detail"] = f"per-layer engine detail needs a GPU and a TensorRT runtime ({why})"
    return info


def inspect_path(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InvalidInputError(f"{path}: no such file")
    if not path.is_file():  # a folder, a device (/dev/zero) or a FIFO: hashing it may never end
        raise InvalidInputError(f"{path}: not a regular file")
    if path.suffix in ENGINE_SUFFIXES:
        return inspect_engine(path)
    if path.suffix == ".onnx":
        return inspect_onnx(path)
    raise InvalidInputError(f"{path}: expected an .onnx file or an engine ({', '.join(ENGINE_SUFFIXES)})")


def inspect(path: str | Path, *, out: str | Path | None = None) -> dict[str, Any]:
    """The summary of an ONNX file or an engine; also written as JSON to `out` when given."""
    info = inspect_path(Path(path))
    if out:
        write_report(info, out)
    return info
