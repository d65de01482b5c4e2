"""The use cases behind converter.api: recipes checked first, calibration data, model arguments, report vocabulary."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from converter import api
from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError
from converter.core.metadata import SAMPLE_DATA, write_metadata
from converter.core.profiles import ShapeProfile
from converter.pipelines import calibration_source
from converter.pipelines import convert as convert_pipeline
from passes.registry import PassSpec
from tests.conftest import REPO, TINY
from tests.onnx_helpers import make_model

VERIFIED = {"engine", "onnx", "not verified"}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def report_of(result) -> dict:
    """The JSON report printed by a command (an accuracy failure prints one more line after it)."""
    return json.loads(result.output[: result.output.rindex("}") + 1])


def test_convert_leaves_the_callers_recipe_unchanged(tmp_path):
    recipe = api.Recipe()
    before = recipe.to_dict()
    shapes = {"image": ShapeProfile((1, 3, 32, 32), (2, 3, 32, 32), (4, 3, 32, 32))}
    result = api.convert(TINY, tmp_path / "c", recipe=recipe, precision="fp16", target_gpus=["sm86"], shapes=shapes)
    assert result.report["recipe"]["precision"] == "fp16" and result.report["recipe"]["target_gpus"] == ["sm86"]
    assert result.report["recipe"]["shapes"]["image"]["max"] == [4, 3, 32, 32]
    assert recipe.to_dict() == before


@pytest.mark.parametrize(
    "passes, message",
    [
        ("[fold, warp-drive]", "unknown pass 'warp-drive'"),
        ("[{name: cleanup, options: {bogus: 1}}]", "unknown option 'bogus'"),
    ],
)
def test_a_bad_pass_in_a_recipe_fails_before_the_export(tmp_path, monkeypatch, passes, message):
    def no_export(*args, **kwargs):
        raise AssertionError("exported before the recipe's passes were checked")

    monkeypatch.setattr(convert_pipeline, "export_model", no_export)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"passes: {passes}\n")
    start = time.perf_counter()
    result = invoke("convert", TINY, "-o", tmp_path / "out", "--recipe", recipe)
    assert result.exit_code == ExitCode.INVALID_INPUT and message in result.output
    assert time.perf_counter() - start < 5 and not (tmp_path / "out").exists()


def test_quantize_accepts_a_module_factory_spec(tmp_path):
    out = tmp_path / "q.onnx"
    result = invoke("quantize", TINY, "-o", out, "--calib-method", "minmax", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    # exported and folded first (no BatchNormalization left), calibrated on the spec's own real images
    assert report["calibration"]["source"] == f"spec:{TINY}" and report["qdq"]["qdq_pairs"] > 0
    assert "BatchNormalization" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    assert report["output"] == str(out) and report["accuracy"]["mean_cosine"] > 0.99


def test_quantize_a_bare_module_factory_with_shapes(tmp_path):
    spec = "tests.tiny_models:plain_mlp"
    result = invoke("quantize", spec, "-o", tmp_path / "q.onnx", "--mode", "int4-wo", "--json")
    assert result.exit_code == ExitCode.INVALID_INPUT and "--shapes" in result.output
    result = invoke("quantize", spec, "-o", tmp_path / "q.onnx", "--mode", "int4-wo", "--shapes", "x:2x16", "--json")
    assert result.exit_code == 0, result.output
    # exported at the given shape and folded (Linear -> Gemm); the pass then says why each layer stays as is
    rejected = json.loads(result.output)["passes"][0]["rejected"]
    assert [r["node"] for r in rejected] == ["/net/net.0/Gemm", "/net/net.2/Gemm"]


def test_quantize_names_a_model_it_cannot_find(tmp_path):
    result = invoke("quantize", "no-such-model", "-o", tmp_path / "q.onnx")
    assert result.exit_code == ExitCode.INVALID_INPUT and "no such file, and not a demo" in result.output


def _image_model(path, sample_data: str | None):
    """image[N,3,224,224] -> Conv -> Relu, optionally naming a demo's real images as its sample data."""
    weight = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, {"image": ["N", 3, 224, 224]}, {"y": ["N", 4, 222, 222]}, {"w": weight})
    if sample_data:
        write_metadata(model, {SAMPLE_DATA: sample_data})
    onnx.save(model, str(path))
    return path


def test_optimize_gives_calibrated_passes_the_models_own_sample_data(tmp_path):
    with_data = api.optimize(
        _image_model(tmp_path / "m.onnx", "demo:efficientnet-lite0"), tmp_path / "q.onnx", passes=["quantize"]
    )
    assert with_data.records[0].changed.get("activation_qdq", 0) > 0  # calibrated on the demo's photographs
    # no data: refused before any pass runs (int8 Q/DQ without activation ranges would change nothing)
    with pytest.raises(InvalidInputError, match="pass 'quantize' needs calibration data"):
        api.optimize(_image_model(tmp_path / "bare.onnx", None), tmp_path / "b.onnx", passes=["quantize"])
    assert not (tmp_path / "b.onnx").exists()
    # which passes read data is their own declaration; drop-blocks gets 4 batches of 8, as it read before
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert calibration_source.for_optimize([PassSpec("fold")], model) is None
    data = calibration_source.for_optimize([PassSpec("drop-blocks")], model)
    assert data.source == "demo:efficientnet-lite0" and data.count == 4 * 8


def test_reports_share_the_verified_vocabulary(tmp_path, tiny_onnx, tiny_engine):
    verify = report_of(invoke("verify", TINY, tiny_onnx, "--json"))
    assert verify["verified"] == "onnx" and verify["passed"] is True
    engine_only = report_of(invoke("verify", tiny_onnx, tiny_engine, "--json", "--trust-model-code"))
    assert engine_only["verified"] in ("engine", "not verified")
    assert engine_only["passed"] is (engine_only["verified"] == "engine")
    optimize = json.loads(invoke("optimize", tiny_onnx, "-o", tmp_path / "o.onnx", "--json").output)
    assert optimize["verified"] == "not verified" and optimize["passed"] is None  # optimize compares nothing
    convert = api.convert(tiny_onnx, tmp_path / "c", target_gpus=["sm86"], trust_model_code=True).report
    assert convert["verified"] in VERIFIED - {"not verified"} and convert["passed"] is True
    assert {verify["verified"], engine_only["verified"], optimize["verified"], convert["verified"]} <= VERIFIED


def test_python_m_converter_cli_lists_every_command():
    listed = subprocess.run(
        [sys.executable, "-m", "converter.cli", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    commands = listed[listed.index("Commands:") :].split()
    expected = {
        "convert",
        "export",
        "optimize",
        "build",
        "inspect",
        "passes",
        "verify",
        "quantize",
        "drop-blocks",
        "doctor",
        "build-matrix",
        "refit",
    }
    assert expected <= set(commands) and set(main.list_commands(click.Context(main))) == expected
