"""The files the bad command lines of command_cases.py run on, generated (no hand-copied bytes):
tiny models every command accepts, calibration folders, recipes' neighbours, modules for
module:factory specs, engines with a sidecar beside them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_model(folder: Path, name: str = "m.onnx", rows: int = 4, dtype: int = TensorProto.FLOAT) -> str:
    """x[b, rows] @ w[rows, 4] -> y: the smallest model every command accepts."""
    w = numpy_helper.from_array(np.ones((rows, 4), helper.tensor_dtype_to_np_dtype(dtype)), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", dtype, ["b", rows])],
        [helper.make_tensor_value_info("y", dtype, ["b", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / name))
    return str(folder / name)


def embedding_model(folder: Path) -> str:
    """ids[b, s] -> Gather from a 16-row table: an LM's first layer."""
    table = numpy_helper.from_array(np.ones((16, 4), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", 4])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "lm.onnx"))
    return str(folder / "lm.onnx")


def conv_model(folder: Path) -> str:
    """image[b, 3, 16, 16] -> Conv: a model that calibrates on image folders."""
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["b", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "conv.onnx"))
    return str(folder / "conv.onnx")


def write_file(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def npz_file(folder: Path, name: str = "in.npz", **arrays: np.ndarray) -> str:
    np.savez(folder / name, **arrays)
    return str(folder / name)


def calib_folder(folder: Path, **arrays: np.ndarray) -> str:
    (folder / "calib").mkdir()
    return str(Path(npz_file(folder / "calib", "calib.npz", **arrays)).parent)


def python_module(folder: Path, name: str, source: str) -> str:
    """A Python module for a module:factory spec (the tests put `folder` on sys.path)."""
    (folder / f"{name}.py").write_text(source)
    return name


def engine_with_sidecar(folder: Path, sidecar: str | bytes) -> str:
    """An engine file (bytes only: without a GPU nothing reads it) with the given sidecar beside it."""
    engine = write_file(folder, "m.engine", b"not really an engine")
    write_file(folder, "m.engine.json", sidecar)
    return engine


def sidecar_json(**changes: object) -> str:
    """A sidecar of the right shape for the 20-byte engine above, with `changes` applied."""
    data = {
        "format": "trtforge-engine-sidecar/1",
        "backend": "tensorrt-rtx",
        "backend_version": "1.0",
        "precision": "fp32",
        "profiles": {},
        "engine_bytes": 20,
        "engine_sha256": hashlib.sha256(b"not really an engine").hexdigest(),
        "network": {"num_layers": 1, "layer_types": {}, "tensor_dtypes": {}},
    }
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})
