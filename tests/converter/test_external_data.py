"""The external-data route (weights in '<model>.onnx.data') through every command, on a 5 MB model.

Models over ~1.8 GB must keep their weights outside the protobuf; TRTFORGE_EXTERNAL_DATA_BYTES
lowers that threshold so the decoder-lm demo takes the same route in seconds: export into a
folder that does not exist yet, optimize, quantize, drop-blocks, build and verify.
"""

from __future__ import annotations

import os
import stat

import onnx
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.model_io import EXTERNAL_DATA_ENV, external_data_bytes


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def assert_external(path):
    data = path.with_name(path.name + ".data")
    assert data.is_file() and data.stat().st_size > 500_000, f"{path}: weights not external"
    umask = os.umask(0)
    os.umask(umask)
    for file in (path, data):
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file  # not mkstemp's 0600
    model = onnx.load(str(path), load_external_data=False)
    assert any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def test_threshold_is_overridable_and_never_above_protobufs_limit(monkeypatch):
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "1000")
    assert external_data_bytes() == 1000
    monkeypatch.setenv(EXTERNAL_DATA_ENV, str(10**12))
    assert external_data_bytes() < 2**31


@pytest.mark.slow
def test_every_command_on_a_model_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setenv(EXTERNAL_DATA_ENV, "100000")
    exported = tmp_path / "new" / "folder" / "lm.onnx"  # export creates the folders
    run("export", "decoder-lm", "-o", exported)
    assert_external(exported)
    optimized = tmp_path / "opt" / "lm.onnx"
    run("optimize", exported, "-o", optimized)
    assert_external(optimized)
    quantized = tmp_path / "q" / "lm.int4.onnx"
    run("quantize", optimized, "--mode", "int4-wo", "-o", quantized)
    assert_external(quantized)
    pruned = tmp_path / "p" / "lm.pruned.onnx"
    run("drop-blocks", optimized, "-o", pruned, "--remove", "1", "--method", "oneshot", "--calibration-samples", "8")
    assert_external(pruned)
    engine = tmp_path / "e" / "lm.engine"
    run("build", optimized, "-o", engine, "--target-gpu", "sm86")
    assert engine.stat().st_size > 1_000_000
    result = run("verify", exported, optimized)
    assert "PASSED" in result.output
