"""Flags trtexec users type: --save-engine, --min-shapes/--opt-shapes/--max-shapes on `build`."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError
from converter.core.profiles import trtexec_shapes
from tests.quant_graphs import mlp_stack


def test_trtexec_shapes_become_profiles():
    items = trtexec_shapes("x:1x16x32,y:1x4", "x:2x16x32,y:2x4", "x:4x16x32,y:8x4")
    assert items == ["x:1x16x32/2x16x32/4x16x32", "y:1x4/2x4/8x4"]
    assert trtexec_shapes(None, "x:2x16x32", None) == ["x:2x16x32"]  # only opt: static
    with pytest.raises(InvalidInputError, match="input 'x'.*--max-shapes"):
        trtexec_shapes("x:1x16x32", "x:2x16x32", None)
    with pytest.raises(InvalidInputError, match="--min-shapes '1x16x32'"):
        trtexec_shapes("1x16x32", None, None)


def test_build_takes_save_engine_and_trtexec_shapes(tmp_path):
    onnx.save(mlp_stack(layers=1, width=32), tmp_path / "m.onnx")
    engine = tmp_path / "m.engine"
    args = ["build", str(tmp_path / "m.onnx"), "--save-engine", str(engine), "--target", "ada"]
    shapes = ["--min-shapes", "x:1x16x32", "--opt-shapes", "x:2x16x32", "--max-shapes", "x:4x16x32"]
    result = CliRunner().invoke(main, args + shapes)
    assert result.exit_code == 0, result.output
    profile = json.loads((tmp_path / "m.engine.json").read_text())["profiles"]["x"]
    assert [profile["min"], profile["opt"], profile["max"]] == [[1, 16, 32], [2, 16, 32], [4, 16, 32]]
    bad = CliRunner().invoke(main, [*args, "--min-shapes", "x:1x16x32"])
    assert bad.exit_code == ExitCode.INVALID_INPUT and "--max-shapes" in bad.output
