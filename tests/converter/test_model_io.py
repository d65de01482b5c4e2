from __future__ import annotations

import numpy as np
import onnx
import pytest

from converter.core.errors import ModelLoadError
from converter.core.model_io import atomic_write_bytes, load_model, save_model
from tests.graphs import redundant_graph


def test_save_and_load_roundtrip_is_byte_identical(tmp_path):
    model = redundant_graph()
    save_model(model, tmp_path / "a.onnx")
    save_model(load_model(tmp_path / "a.onnx"), tmp_path / "b.onnx")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert not list(tmp_path.glob(".*"))  # no temporary files left


def test_external_data_above_threshold(tmp_path):
    path = save_model(redundant_graph(), tmp_path / "big.onnx", external_data_threshold=16)
    data = tmp_path / "big.onnx.data"
    assert data.exists() and data.stat().st_size > 0
    raw = onnx.load(str(path), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in raw.graph.initializer)
    loaded = load_model(path)
    w = next(i for i in loaded.graph.initializer if i.name == "W")
    assert np.allclose(onnx.numpy_helper.to_array(w), np.arange(32).reshape(4, 8) / 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_external_data_names_the_file(tmp_path):
    path = save_model(redundant_graph(), tmp_path / "big.onnx", external_data_threshold=16)
    (tmp_path / "big.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data 'big.onnx.data': no such file"):
        load_model(path)


@pytest.mark.parametrize("content", [b"not an onnx file at all", b""])
def test_corrupt_file_is_one_line_error(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as info:
        load_model(path)
    assert "broken.onnx" in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old")
    from converter.core.model_io import atomic_path

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_weights_precision_is_the_float_type_most_weight_bytes_are_in():
    from onnx import numpy_helper

    from converter.core.model_io import weights_precision

    model = redundant_graph()
    assert weights_precision(model) == "fp32"
    big = numpy_helper.from_array(np.zeros((64, 64), np.float16), "half")
    model.graph.initializer.append(big)  # more bytes in fp16 than in fp32: an fp16 graph's
    assert weights_precision(model) == "fp16"
    empty = onnx.ModelProto()
    assert weights_precision(empty) == "fp32"
