"""Hostile .npy/.npz inputs: a header claiming 2**40 elements, a .npy named .npz, object arrays,
zero rows: one-line errors (exit 4) before anything is allocated or written."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.arrays import read_npy, read_npz
from converter.core.errors import ExitCode, InvalidInputError


@pytest.fixture
def huge_npy(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
    path = tmp_path / "huge.npy"
    path.write_bytes(buffer.getvalue() + bytes(16))  # the header writer includes the magic
    return path


def test_npy_header_claiming_more_than_its_bytes_is_refused(huge_npy):
    with pytest.raises(InvalidInputError, match="over the limit"):
        read_npy(huge_npy)


def test_npz_member_with_a_lying_header_is_refused(tmp_path, huge_npy):
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(huge_npy, "x.npy")
    with pytest.raises(InvalidInputError, match="array 'x'"):
        read_npz(path)


def test_truncated_array_is_refused(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros(8, np.float32))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(InvalidInputError, match="data is"):
        read_npy(path)


def test_npy_named_npz_says_so(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.zeros(4, np.float32))
    with pytest.raises(InvalidInputError, match="single .npy array"):
        read_npz(path)


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(InvalidInputError, match="Python objects"):
        read_npz(path)


def test_real_arrays_still_load(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez_compressed(path, x=np.arange(6, dtype=np.float32).reshape(2, 3), ids=np.arange(4))
    loaded = read_npz(path)
    assert loaded["x"].tolist() == [[0, 1, 2], [3, 4, 5]] and loaded["ids"].dtype == np.int64


@pytest.mark.parametrize("case", ["npy-as-npz", "zero-rows", "huge"])
def test_verify_load_inputs_refuses_bad_arrays(case, tmp_path, tiny_onnx, huge_npy):
    path = tmp_path / "in.npz"
    if case == "npy-as-npz":
        with open(path, "wb") as handle:
            np.save(handle, np.zeros((1, 3, 32, 32), np.float32))
    elif case == "zero-rows":
        np.savez(path, image=np.zeros((0, 3, 32, 32), np.float32))
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(huge_npy, "image.npy")
    result = CliRunner().invoke(main, ["verify", str(tiny_onnx), str(tiny_onnx), "--load-inputs", str(path)])
    assert result.exit_code == ExitCode.INVALID_INPUT, result.output
    assert "in.npz" in result.output and len(result.output.strip().splitlines()) == 1
