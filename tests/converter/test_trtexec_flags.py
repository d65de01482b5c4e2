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


def test_build_fp16_converts_the_fp32_graph_as_a_trtexec_user_expects(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    onnx.save(mlp_stack(layers=2, width=64), tmp_path / "m.onnx")
    shapes = ["--min-shapes", "x:1x16x64", "--opt-shapes", "x:2x16x64", "--max-shapes", "x:4x16x64"]
    args = ["build", str(tmp_path / "m.onnx"), "--target", "ada", *shapes]
    for name, flags in (("fp32", []), ("fp16", ["--fp16"])):
        result = CliRunner().invoke(main, [*args, "--save-engine", str(tmp_path / f"{name}.engine"), *flags])
        assert result.exit_code == 0, result.output
    fp32, fp16 = (json.loads((tmp_path / f"{n}.engine.json").read_text()) for n in ("fp32", "fp16"))
    assert fp16["precision"] == "fp16" and fp16["precision_pass"] == {"from": "fp32", "to": "fp16"}
    assert fp16["network"]["tensor_dtypes"].get("HALF") and not fp32["network"]["tensor_dtypes"].get("HALF")
    assert fp16["source_onnx"] == str(tmp_path / "m.onnx")  # the user's file, not the converted copy
    clash = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "x.engine"), "--fp16", "--precision", "bf16"])
    assert clash.exit_code == ExitCode.USAGE and "choose one precision" in clash.output


def test_polygraphy_inputs_json_round_trips_and_polygraphy_reads_ours(tmp_path):
    import numpy as np

    from converter.core import polygraphy_json
    from converter.pipelines.sample_inputs import SampleInputs, load_inputs_file, save_feeds

    feeds = [{"x": np.arange(12, dtype=np.float32).reshape(3, 4), "ids": np.ones((3, 2), np.int64)}] * 2
    save_feeds(SampleInputs(feeds, "test"), tmp_path / "in.json")
    back = load_inputs_file(tmp_path / "in.json")
    assert len(back) == 2 and all(np.array_equal(back[1][k], feeds[1][k]) for k in feeds[1])
    polygraphy = pytest.importorskip("polygraphy.json")
    theirs = polygraphy.load_json(str(tmp_path / "in.json"))
    assert np.array_equal(theirs[0]["x"], feeds[0]["x"])
    polygraphy.save_json([{"x": np.zeros((1, 4), np.float32)}], str(tmp_path / "theirs.json"))
    assert load_inputs_file(tmp_path / "theirs.json")[0]["x"].shape == (1, 4)
    (tmp_path / "bad.json").write_text('[{"x": {"array": "!!", "polygraphy_class": "ndarray"}}]')
    with pytest.raises(InvalidInputError, match="iteration 0, input 'x'"):
        load_inputs_file(tmp_path / "bad.json")
    assert polygraphy_json.dumps_inputs([]) == "[]"


def test_a_tensorrt_calibration_cache_is_named_for_what_it_is(tmp_path):
    onnx.save(mlp_stack(layers=1, width=32), tmp_path / "m.onnx")
    (tmp_path / "calib.cache").write_text("TRT-8601-EntropyCalibration2\nx: 3c010a14\n")
    args = [
        "quantize",
        str(tmp_path / "m.onnx"),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calib",
        str(tmp_path / "calib.cache"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "TensorRT INT8 calibration cache" in result.output and not (tmp_path / "q.onnx").exists()


def test_build_options_are_recorded_or_refused_with_the_reason(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from converter.core.gpu import gpu_status

    onnx.save(mlp_stack(layers=1, width=32), tmp_path / "m.onnx")
    base = ["build", str(tmp_path / "m.onnx"), "--target", "ada", "--shapes", "x:1x16x32/2x16x32/4x16x32"]
    ok = CliRunner().invoke(
        main, [*base, "-o", str(tmp_path / "a.engine"), "--workspace", "256", "--builder-optimization-level", "1"]
    )
    assert ok.exit_code == 0, ok.output
    options = json.loads((tmp_path / "a.engine.json").read_text())["build_options"]
    assert options["workspace_mb"] == 256 and options["builder_optimization_level"] == 1
    full_only = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "b.engine"), "--version-compatible"])
    assert full_only.exit_code == ExitCode.UNSUPPORTED and "full TensorRT" in full_only.output
    if not gpu_status()[0]:
        strip = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "c.engine"), "--strip-weights"])
        assert strip.exit_code == ExitCode.UNSUPPORTED and "only with a GPU" in strip.output
        assert not (tmp_path / "c.engine").exists()


def test_a_polygraphy_file_with_an_empty_or_archived_array_is_an_input_error(tmp_path):
    import base64
    import io

    import numpy as np

    from converter.pipelines.sample_inputs import load_inputs_file

    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros(2))
    for payload in ("", base64.b64encode(buffer.getvalue()).decode()):
        (tmp_path / "in.json").write_text(json.dumps([{"x": {"array": payload, "polygraphy_class": "ndarray"}}]))
        with pytest.raises(InvalidInputError, match="input 'x'"):
            load_inputs_file(tmp_path / "in.json")
