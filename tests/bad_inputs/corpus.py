"""Hostile and broken ONNX files, generated (no hand-copied bytes): each case writes its files
into a folder and returns the model path plus the words its one-line error must contain.

    python -m tests.bad_inputs.corpus OUT_DIR     # writes every case, for trying them by hand
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Case = Callable[[Path], tuple[Path, str]]


def _relu_model(opset: int = 17, ir_version: int = 8, weight: onnx.TensorProto | None = None) -> onnx.ModelProto:
    """x -> Add(x, w) -> Relu -> y; `w` defaults to four inline floats."""
    w = weight if weight is not None else numpy_helper.from_array(np.ones(4, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["s"], name="add"), helper.make_node("Relu", ["s"], ["y"], name="relu")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def _external(location: str, offset: int = 0, length: int | None = 16) -> onnx.TensorProto:
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), **({"length": str(length)} if length is not None else {})}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _save(folder: Path, model: onnx.ModelProto, name: str = "model.onnx") -> Path:
    path = folder / name
    path.write_bytes(model.SerializeToString())
    return path


def symlink_outside(folder: Path) -> tuple[Path, str]:
    """A symlink in the model's folder to a readable file outside it (/etc/passwd)."""
    os.symlink("/etc/passwd", folder / "w.bin")
    return _save(folder, _relu_model(weight=_external("w.bin"))), "outside the model's folder"


def parent_location(folder: Path) -> tuple[Path, str]:
    (folder.parent / f"{folder.name}-secret.bin").write_bytes(bytes(16))
    return _save(folder, _relu_model(weight=_external(f"../{folder.name}-secret.bin"))), "outside the model's folder"


def absolute_location(folder: Path) -> tuple[Path, str]:
    return _save(folder, _relu_model(weight=_external("/etc/passwd"))), "relative to the model's folder"


def folder_location(folder: Path) -> tuple[Path, str]:
    (folder / "weights").mkdir()
    return _save(folder, _relu_model(weight=_external("weights"))), "not a regular file"


def range_past_the_end(folder: Path) -> tuple[Path, str]:
    (folder / "w.bin").write_bytes(bytes(16))
    return _save(folder, _relu_model(weight=_external("w.bin", offset=8))), "outside the file"


def length_mismatch(folder: Path) -> tuple[Path, str]:
    (folder / "w.bin").write_bytes(bytes(64))
    return _save(folder, _relu_model(weight=_external("w.bin", length=12))), "need 16"


def huge_dims_tiny_data(folder: Path) -> tuple[Path, str]:
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[2**40], raw_data=bytes(16))
    return _save(folder, _relu_model(weight=tensor)), "over the limit"


def inline_size_mismatch(folder: Path) -> tuple[Path, str]:
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=bytes(8))
    return _save(folder, _relu_model(weight=tensor)), "need 16"


def huge_input_dim(folder: Path) -> tuple[Path, str]:
    model = _relu_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**40
    return _save(folder, model), "'x' has dims"


def opset_one(folder: Path) -> tuple[Path, str]:
    return _save(folder, _relu_model(opset=1)), "opset 1 is outside"


def opset_99(folder: Path) -> tuple[Path, str]:
    return _save(folder, _relu_model(opset=99)), "opset 99 is outside"


def ir_version_99(folder: Path) -> tuple[Path, str]:
    return _save(folder, _relu_model(ir_version=99)), "ir_version 99"


def two_producers(folder: Path) -> tuple[Path, str]:
    model = _relu_model()
    model.graph.node.append(helper.make_node("Relu", ["x"], ["s"], name="again"))
    return _save(folder, model), "'s' is produced twice"


def cycle(folder: Path) -> tuple[Path, str]:
    model = _relu_model()
    del model.graph.node[:]
    model.graph.node.extend(
        [
            helper.make_node("Add", ["x", "t"], ["s"], name="add"),
            helper.make_node("Relu", ["s"], ["t"], name="loop"),
            helper.make_node("Relu", ["s"], ["y"], name="relu"),
        ]
    )
    return _save(folder, model), "cycle"


def dangling_input(folder: Path) -> tuple[Path, str]:
    model = _relu_model()
    model.graph.node[1].input[0] = "nowhere"
    return _save(folder, model), "'nowhere'"


def truncated_protobuf(folder: Path) -> tuple[Path, str]:
    path = folder / "model.onnx"
    path.write_bytes(_relu_model().SerializeToString()[:-7])
    return path, "model.onnx"


def device_as_model(folder: Path) -> tuple[Path, str]:
    """model.onnx -> /dev/zero: reading it never ends (the command ran until killed)."""
    os.symlink("/dev/zero", folder / "model.onnx")
    return folder / "model.onnx", "not a regular file"


def fifo_as_model(folder: Path) -> tuple[Path, str]:
    """A named pipe called model.onnx: opening it blocks until someone writes."""
    os.mkfifo(folder / "model.onnx")
    return folder / "model.onnx", "not a regular file"


def negative_dim(folder: Path) -> tuple[Path, str]:
    tensor = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[-4], raw_data=bytes(16))
    return _save(folder, _relu_model(weight=tensor)), "negative"


def no_outputs(folder: Path) -> tuple[Path, str]:
    model = _relu_model()
    del model.graph.output[:]
    return _save(folder, model), "no outputs"


CASES: dict[str, Case] = {
    fn.__name__: fn
    for fn in (
        symlink_outside,
        parent_location,
        absolute_location,
        folder_location,
        range_past_the_end,
        length_mismatch,
        huge_dims_tiny_data,
        inline_size_mismatch,
        huge_input_dim,
        opset_one,
        opset_99,
        ir_version_99,
        two_producers,
        cycle,
        dangling_input,
        truncated_protobuf,
        device_as_model,
        fifo_as_model,
        negative_dim,
        no_outputs,
    )
}


def main(out: Path) -> None:
    for name, case in CASES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        path, expect = case(folder)
        print(f"{name:<22} {path}  (error mentions: {expect})")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs"))
