"""onnx_scan.external_locations: the external files a model reads, without loading its weights,
equal to what onnx's parser says, on every layout the project writes and on damaged files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converter.core.model_io import external_data_files
from converter.core.onnx_scan import external_locations
from tests.onnx_helpers import make_model


def _model(weights: int = 3) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.full((64, 64), i, np.float32), f"w{i}") for i in range(weights)]
    nodes = [
        onnx.helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", f"w{i}"], [f"y{i}"]) for i in range(weights)
    ]
    return make_model(nodes, {"x": [1, 64]}, {f"y{weights - 1}": [1, 64]}, inits)


@pytest.mark.parametrize("layout", ["inline", "one file", "one file per tensor"])
def test_locations_match_onnx(tmp_path, layout):
    path = tmp_path / "m.onnx"
    if layout == "inline":
        onnx.save(_model(), str(path))
    else:
        onnx.save(
            _model(),
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=layout == "one file",
            location="m.onnx.data" if layout == "one file" else None,
            size_threshold=0,
        )
    expected = external_data_files(onnx.load(str(path), load_external_data=False))
    assert external_locations(path) == expected
    assert (layout == "inline") == (expected == [])


def test_damaged_files_raise_value_error(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path), save_as_external_data=True, location="m.onnx.data")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        external_locations(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError):
        external_locations(path)
