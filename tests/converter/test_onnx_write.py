"""onnx_write.write_model: the same model back from onnx, inline or with external data, written
one tensor at a time; deterministic bytes; data offsets aligned."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from converter.core.model_io import load_model, save_model
from converter.core.onnx_write import ALIGNMENT, write_model
from tests.onnx_helpers import first_output


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}") for i in range(3)]
    inits.append(
        helper.make_tensor("bias", onnx.TensorProto.FLOAT, [64], np.arange(64, dtype=np.float32))
    )  # typed field
    inits.append(numpy_helper.from_array(np.arange(3, dtype=np.int64), "odd"))  # 24 bytes: unaligned sizes
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(3)]
    nodes.append(helper.make_node("Add", ["y2", "bias"], ["z"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["n", 64])],
        inits,
        doc_string="a graph",
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="test")
    model.ir_version = 8
    model.metadata_props.add(key="trtforge.source", value="test")
    return model


def test_inline_model_reads_back_equal():
    model = _model()
    buffer = io.BytesIO()
    write_model(model, buffer)
    back = onnx.ModelProto()
    back.ParseFromString(buffer.getvalue())
    assert back == model and len(buffer.getvalue()) == model.ByteSize()
    again = io.BytesIO()
    write_model(model, again)
    assert again.getvalue() == buffer.getvalue()


@pytest.mark.parametrize("threshold", [0, 10**12])
def test_save_model_round_trips_and_runs(tmp_path, threshold):
    model = _model()
    path = save_model(model, tmp_path / "m.onnx", external_data_threshold=threshold)
    external = (tmp_path / "m.onnx.data").exists()
    assert external == (threshold == 0)
    loaded = load_model(path)
    onnx.checker.check_model(str(path))
    for got, want in zip(loaded.graph.initializer, model.graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(want))
    x = np.ones((2, 64), np.float32)
    np.testing.assert_array_equal(first_output(loaded, {"x": x}), first_output(model, {"x": x}))
    if external:
        header = onnx.load(str(path), load_external_data=False)
        offsets = [int(e.value) for t in header.graph.initializer for e in t.external_data if e.key == "offset"]
        assert offsets and all(o % ALIGNMENT == 0 for o in offsets)
        assert all(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)  # threshold 0


def test_small_tensors_stay_inline(tmp_path):
    with open(tmp_path / "m.onnx", "wb") as out, open(tmp_path / "m.onnx.data", "wb") as data:
        write_model(_model(), out, data, "m.onnx.data", inline_below=1024)
    header = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    inline = [t.name for t in header.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert inline == ["bias", "odd"]  # 256 and 24 bytes: not worth a file read; the 64x64 weights go out
