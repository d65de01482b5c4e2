"""`trtforge doctor` and target presets (converter/core/targets.py)."""

from __future__ import annotations

import json

import onnx
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.errors import ExitCode
from converter.core.targets import TARGETS, expand_targets
from tests.quant_graphs import mlp_stack


def test_doctor_reports_backends_and_reachable_targets_as_json():
    result = CliRunner().invoke(main, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["backends"]["tensorrt-rtx"]["available"]  # installed by scripts/setup.sh
    assert report["onnxruntime"]["version"] and "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    targets = {row["target"]: row for row in report["targets"]}
    assert set(targets) == set(TARGETS)
    assert targets["ada"]["reachable"] and "ahead of time" in targets["ada"]["how"]
    if not report["backends"]["tensorrt"]["available"]:
        assert not targets["orin"]["reachable"] and "JetPack" in targets["orin"]["how"]
        assert not targets["hopper"]["reachable"] and "full TensorRT" in targets["hopper"]["how"]
    assert report["onnx_ops_first_parsed_in"]["Attention"] == "TensorRT 10.14"
    assert isinstance(report["gpus"], list)


def test_doctor_prints_a_table():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0 and "reachable" in result.output and "blackwell" in result.output


def test_target_names_expand_to_compute_capabilities_in_order():
    assert expand_targets(["ada", "sm120", "ampere", "sm89", "Spark"]) == ["sm89", "sm120", "sm80", "sm86", "sm121"]


def test_build_for_a_target_tensorrt_rtx_cannot_reach_says_what_would(tmp_path):
    onnx.save(mlp_stack(layers=1, width=32), tmp_path / "m.onnx")
    out = tmp_path / "m.engine"
    result = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "--target", "orin", "-o", str(out)])
    assert result.exit_code == ExitCode.UNSUPPORTED, result.output
    assert "sm87" in result.output and "JetPack" in result.output and "ada" in result.output
    assert not out.exists()
    ok = CliRunner().invoke(
        main,
        ["build", str(tmp_path / "m.onnx"), "--target", "ada", "--shapes", "x:1x16x32/2x16x32/4x16x32", "-o", str(out)],
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "m.engine.json").read_text())["targets"] == ["sm89"]
