"""Every CLI command end to end (click's CliRunner), on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from converter.cli.main import main
from converter.core.errors import ExitCode
from tests.conftest import TINY

PROFILE = "image:1x3x32x32/2x3x32x32/8x3x32x32"


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize(
    "command", ["convert", "export", "optimize", "build", "verify", "inspect", "passes", "quantize", "drop-blocks"]
)
def test_help_has_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0 and "Examples:" in result.output
    if command != "passes":
        assert "-o, --out" in result.output


def test_export_writes_onnx_with_metadata(tmp_path):
    out = tmp_path / "tiny.onnx"
    result = invoke("export", TINY, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["nodes"] > 0 and data["exporter"] == "torchscript"
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["trtforge.sample_data"] == f"spec:{TINY}"
    assert onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_export_bare_module_needs_shapes(tmp_path):
    result = invoke("export", "tests.tiny_models:plain_mlp", "-o", tmp_path / "m.onnx")
    assert result.exit_code == ExitCode.INVALID_INPUT and "--shapes" in result.output
    result = invoke("export", "tests.tiny_models:plain_mlp", "-o", tmp_path / "m.onnx", "--shapes", "x:2x16")
    assert result.exit_code == 0, result.output


def test_optimize_reports_passes(tmp_path, tiny_onnx):
    out = tmp_path / "opt.onnx"
    result = invoke("optimize", tiny_onnx, "-o", out, "--json", "--save-report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    from passes.registry import GROUPS

    assert [p["name"] for p in report["passes"]] == GROUPS["fold"]
    assert report["passes"][-1]["nodes_after"] < report["passes"][0]["nodes_before"]
    assert (
        report["passes"][0]["changed"].get("dropout_removed", 0)
        + report["passes"][0]["changed"].get("identity_removed", 0)
        >= 0
    )
    assert out.exists() and json.loads((tmp_path / "r.json").read_text())["passes"]


def test_optimize_and_build_say_what_they_are_doing(tmp_path, tiny_onnx):
    """Progress on stderr while the long stages run (load, each pass, save, build); none with -q."""
    result = invoke("optimize", tiny_onnx, "-o", tmp_path / "o.onnx")
    lines = [line for line in result.output.splitlines() if line.startswith(("loaded", "passes: ", "saving"))]
    assert lines[0].startswith("loaded") and lines[-1].startswith("saving"), result.output
    from passes.registry import GROUPS

    total = len(GROUPS["fold"])
    passes = [line for line in lines if line.startswith("passes: ")]  # one line per pass: "passes: 3/15 dedupe: ..."
    assert [line.split()[1] for line in passes] == [f"{i}/{total}" for i in range(1, total + 1)]
    quiet = invoke("optimize", tiny_onnx, "-o", tmp_path / "q.onnx", "-q")
    assert quiet.exit_code == 0 and quiet.output == ""
    built = invoke("build", tiny_onnx, "-o", tmp_path / "m.engine", "--target-gpu", "sm86")
    assert built.exit_code == 0 and "building" in built.output


def test_optimize_unknown_pass(tmp_path, tiny_onnx):
    result = invoke("optimize", tiny_onnx, "-o", tmp_path / "o.onnx", "--passes", "cleanup,warp-drive")
    assert result.exit_code == ExitCode.INVALID_INPUT and "unknown pass 'warp-drive'" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_build_and_inspect_engine(tmp_path, tiny_onnx):
    engine = tmp_path / "tiny.engine"
    result = invoke("build", tiny_onnx, "-o", engine, "--shapes", PROFILE, "--target-gpu", "sm89", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["targets"] == ["sm89"]
    result = invoke("inspect", engine, "--layers")
    assert result.exit_code == 0, result.output
    assert "CONVOLUTION" in result.output and "FLOAT" in result.output
    assert "needs a GPU" in result.output and "MB" in result.output
    data = json.loads(invoke("inspect", engine, "--json").output)
    assert data["engine_bytes"] == engine.stat().st_size and data["sidecar"]["network"]["num_layers"] > 0


def test_inspect_onnx(tiny_onnx):
    data = json.loads(invoke("inspect", tiny_onnx, "--json").output)
    assert data["kind"] == "onnx" and data["ops"]["Conv"] == 2 and data["num_params"] > 0
    assert data["inputs"][0]["shape"][0] == "batch"


def test_verify_pass_and_accuracy_failure(tmp_path, tiny_onnx):
    result = invoke("verify", TINY, tiny_onnx, "-o", tmp_path / "v.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] and report["input"]["samples"]["source"] == f"spec:{TINY}"
    assert report["verification"][0]["outputs"][0]["cosine"] > 0.9999

    # Perturb one weight: verify must fail with the accuracy exit code.
    model = onnx.load(str(tiny_onnx))
    init = next(i for i in model.graph.initializer if onnx.numpy_helper.to_array(i).ndim == 2)
    broken = onnx.numpy_helper.to_array(init) * 1.5
    init.CopyFrom(onnx.numpy_helper.from_array(broken.astype(np.float32), init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    result = invoke("verify", TINY, bad, "--json")
    assert result.exit_code == ExitCode.ACCURACY_FAILED
    assert json.loads(result.output[: result.output.rindex("}") + 1])["passed"] is False


def test_verify_engine_is_skipped_without_gpu(tmp_path, tiny_onnx, tiny_engine):
    from converter.core.gpu import gpu_available

    if gpu_available():
        pytest.skip("a GPU is present: the engine would run")
    result = invoke("verify", tiny_onnx, tiny_engine, "--json", "--trust-model-code")
    # nothing ran, so nothing passed: that is not a success
    assert result.exit_code == ExitCode.ACCURACY_FAILED
    comparison = json.loads(result.output[: result.output.rindex("}") + 1])["verification"][0]
    assert comparison["status"] == "skipped" and "engine not executed: no GPU" in comparison["skipped"]


def test_verify_with_saved_inputs(tmp_path, tiny_onnx):
    inputs = tmp_path / "in.npz"
    assert invoke("verify", TINY, tiny_onnx, "--save-inputs", inputs).exit_code == 0
    result = invoke("verify", tiny_onnx, tiny_onnx, "--load-inputs", inputs, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["input"]["samples"]["source"].startswith("file:")


def test_verify_rejects_wrong_shaped_and_nan_inputs(tmp_path, tiny_onnx):
    np.savez(tmp_path / "wrong.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    result = invoke("verify", tiny_onnx, tiny_onnx, "--load-inputs", tmp_path / "wrong.npz")
    assert result.exit_code == ExitCode.INVALID_INPUT and "image" in result.output
    np.savez(tmp_path / "nan.npz", image=np.full((1, 3, 32, 32), np.nan, np.float32))
    result = invoke("verify", tiny_onnx, tiny_onnx, "--load-inputs", tmp_path / "nan.npz")
    assert result.exit_code == ExitCode.INVALID_INPUT and "NaN" in result.output


def test_convert_tiny_end_to_end(tmp_path):
    out = tmp_path / "conv"
    result = invoke("convert", TINY, "-o", out, "--target-gpu", "sm86", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True
    assert {a["kind"] for a in report["artifacts"]} == {"onnx", "engine", "sidecar"}
    assert all(len(a["sha256"]) == 64 for a in report["artifacts"])
    assert list(report["stages"]) == ["load", "export", "reference", "optimize", "verify", "build", "write"]
    stage_seconds = sum(stage["seconds"] for stage in report["stages"].values())
    assert stage_seconds <= report["wall_seconds"] and stage_seconds >= 0.9 * report["wall_seconds"]
    assert all("accuracy" in p for p in report["passes"])
    statuses = {c["candidate"]: c["status"] for c in report["verification"]}
    assert statuses["model.onnx"] == "pass" and statuses["model.opt.onnx"] == "pass"
    assert json.loads((out / "report.json").read_text())["recipe"] == report["recipe"]
    assert report["localization"]["compared_tensors"] > 0 and report["divergent_layers"] == []
    assert "data:image/png;base64," in (out / "report.html").read_text()
    # the report reproduces the run
    again = invoke("convert", TINY, "-o", tmp_path / "again", "--recipe", out / "report.json", "--quiet")
    assert again.exit_code == 0 and again.output == ""
    assert (tmp_path / "again" / "model.opt.onnx").read_bytes() == (out / "model.opt.onnx").read_bytes()


def test_convert_fp16_onnx_input(tmp_path, tiny_onnx):
    result = invoke(
        "convert",
        tiny_onnx,
        "-o",
        tmp_path / "c",
        "--precision",
        "fp16",
        "--target-gpu",
        "sm86",
        "--json",
        "--trust-model-code",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["input"]["kind"] == "onnx" and report["recipe"]["precision"] == "fp16"
    assert report["passes"][-1]["name"] == "precision"
    assert report["network"]["tensor_dtypes"].get("HALF", 0) > 0


@pytest.mark.parametrize("content", [b"\x00corrupt", None])
def test_convert_bad_input_leaves_nothing(tmp_path, content):
    model = tmp_path / "in.onnx"
    if content is not None:
        model.write_bytes(content)
    out = tmp_path / "out"
    result = invoke("convert", model, "-o", out)
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert "in.onnx" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_convert_failure_midway_removes_partial_outputs(tmp_path, tiny_onnx):
    out = tmp_path / "mid"
    result = invoke("convert", tiny_onnx, "-o", out, "--target-gpu", "sm90", "--trust-model-code")
    assert result.exit_code == ExitCode.UNSUPPORTED and "sm90" in result.output
    assert not out.exists()


def test_bad_recipe_key(tmp_path, tiny_onnx):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("precision: fp16\nfancy: yes\n")
    result = invoke("convert", tiny_onnx, "-o", tmp_path / "o", "--recipe", recipe)
    assert result.exit_code == ExitCode.INVALID_INPUT and "fancy" in result.output


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="no such file"):
        CliRunner().invoke(main, ["--debug", "inspect", str(tmp_path / "x.onnx")], catch_exceptions=False)


def test_failed_convert_keeps_input_and_earlier_results(tmp_path, tiny_onnx):
    out = tmp_path / "keep"
    assert invoke("convert", tiny_onnx, "-o", out, "--target-gpu", "sm86", "--trust-model-code").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the input lives in the output folder and the run fails at build time
    result = invoke("convert", out / "model.opt.onnx", "-o", out, "--target-gpu", "sm90", "--trust-model-code")
    assert result.exit_code == ExitCode.UNSUPPORTED
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging folder removed


def test_metadata_never_imports_code_without_trust(tmp_path, tiny_onnx, monkeypatch):
    import onnx

    model = onnx.load(str(tiny_onnx))
    for prop in model.metadata_props:
        if prop.key in ("trtforge.source", "trtforge.sample_data"):
            prop.value = "spec:evil_module_that_must_not_load:payload" if "sample" in prop.key else "evil:payload"
    path = tmp_path / "meta.onnx"
    onnx.save(model, str(path))
    (tmp_path / "evil.py").write_text("open('PWNED', 'w').close()\ndef payload():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = invoke("convert", path, "-o", tmp_path / "o", "--shapes", "image:1x3x32x32", "--target-gpu", "sm86")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "PWNED").exists()
    assert json.loads((tmp_path / "o" / "report.json").read_text())["input"]["samples"]["source"] == "synthetic"


def test_verify_fails_when_candidate_lacks_an_output(tmp_path, tiny_onnx):
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.graph.output[0].name = "renamed"
    model.graph.node[-1].output[0] = "renamed"
    extra = onnx.helper.make_tensor_value_info("second", onnx.TensorProto.FLOAT, None)
    model.graph.node.append(onnx.helper.make_node("Identity", ["renamed"], ["second"]))
    model.graph.output.append(extra)
    cand = tmp_path / "cand.onnx"
    onnx.save(model, str(cand))
    result = invoke("verify", TINY, cand, "--json")
    assert result.exit_code == ExitCode.ACCURACY_FAILED
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert "missing" in report["verification"][0]["outputs"][0]["failure"]


def test_command_summaries_match_each_commands_docstring():
    import click

    from converter.cli.main import COMMANDS

    ctx = click.Context(main)
    for name, (_, summary) in COMMANDS.items():
        assert main.get_command(ctx, name).get_short_help_str(limit=300) == summary, name


def test_top_level_help_imports_no_command():
    """`trtforge --help` lists the commands from their summaries: no onnx/torch import (~2 s before)."""
    import subprocess
    import sys

    code = (
        "import sys; from click.testing import CliRunner; from converter.cli.main import main; "
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0 and 'drop-blocks' in r.output; "
        "print(sorted(m for m in ('onnx', 'torch', 'onnxruntime', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
