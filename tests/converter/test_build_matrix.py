"""`build-matrix`: manifest validation, the Ray and local executors, the CLI's exit code and summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from converter import api
from converter.cli.main import main
from converter.core.errors import BackendUnavailableError, ExitCode, InvalidInputError, UsageError
from converter.pipelines.build_matrix import FORMAT, expand
from tests.conftest import TINY

MLP = {"model": "tests.tiny_models:plain_mlp", "name": "mlp", "shapes": {"x": "1x16/2x16/4x16"}}


def write_manifest(folder: Path, text: str) -> Path:
    path = folder / "matrix.yaml"
    path.write_text(text)
    return path


def broken_model(folder: Path) -> Path:
    path = folder / "broken.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff\xfe")
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("targets: [sm86]\n", "'models' is required"),
        ("models: []\n", "'models' is an empty list"),
        ("models: tests.tiny_models:conv_net\n", "'models' must be a list"),
        (f"models: [{TINY}]\nfancy: 1\n", "unknown key(s) ['fancy']"),
        (f"models: [{TINY}]\ntargets: []\n", "'targets' is an empty list"),
        (f"models: [{TINY}]\ntargets: [sm86, sm86]\n", "targets[1] 'sm86' repeats targets[0]"),
        (f"models: [{TINY}]\ntargets: [sm-86]\n", "targets[0]"),
        (f"models: [{TINY}]\ntargets: [[sm86]]\n", "targets[0]"),
        (f"models: [{TINY}]\nprecisions: [fp8]\n", "precisions[0] 'fp8'"),
        (f"models: [{TINY}]\nprecisions: [fp16, fp16]\n", "precisions[1]"),
        (f"models: [{TINY}]\nrecipes: [missing.yaml]\n", "recipes[0]"),
        (f"models: [{TINY}]\nbackend: tensorrt-llm\n", "backend 'tensorrt-llm'"),
        (f"models: [{TINY}]\nout: 3\n", "'out' must be a folder path"),
        (f"models: [{TINY}, {{model: {TINY}}}]\n", "models[1].name 'conv_net' repeats models[0]"),
        (f"models: [{{model: {TINY}, nme: x}}]\n", "models[0]: unknown key(s) ['nme']"),
        ("models: [{name: x}]\n", "models[0].model"),
        ("models: [42]\n", "models[0]"),
        (f"models: [{{model: {TINY}, name: ../up}}]\n", "models[0].name '../up'"),
        (f"models: [{{model: {TINY}, task: chat}}]\n", "models[0].task 'chat'"),
        ("models: [{model: 'tests.tiny_models:plain_mlp', shapes: {x: 1x0}}]\n", "models[0].shapes"),
        ("models: [{model: 'tests.tiny_models:plain_mlp', shapes: [x]}]\n", "models[0].shapes"),
        ("base: &m [a]\nmodels: *m\n", "aliases"),
        ("- just\n- a list\n", "must be a mapping"),
        ("models: [a\n", "not valid YAML"),
    ],
)
def test_manifest_errors_are_one_line_naming_the_key(tmp_path, text, key):
    with pytest.raises(InvalidInputError) as caught:
        expand(write_manifest(tmp_path, text))
    message = str(caught.value)
    assert key in message and "\n" not in message, message
    assert message.startswith(str(tmp_path / "matrix.yaml")), message


def test_duplicate_recipe_stems_and_missing_manifest(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "r.yaml").write_text("precision: fp16\n")
    with pytest.raises(InvalidInputError, match=r"recipes\[1\] file name 'r' repeats recipes\[0\]"):
        expand(write_manifest(tmp_path, f"models: [{TINY}]\nrecipes: [a/r.yaml, b/r.yaml]\n"))
    with pytest.raises(InvalidInputError, match="no such manifest file"):
        expand(tmp_path / "nothing.yaml")


def test_expansion_names_folders_and_relative_paths(tmp_path, monkeypatch):
    """Jobs in manifest order; paths relative to the manifest's folder; -o overrides `out`."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "fast.yaml").write_text("precision: fp16\npasses: [fold]\n")
    broken_model(tmp_path)
    manifest = write_manifest(
        tmp_path,
        f"out: built\nmodels: [{TINY}, broken.onnx]\ntargets: [sm86, 8.9]\nrecipes: [recipes/fast.yaml]\n",
    )
    monkeypatch.chdir(tmp_path.parent)  # not the manifest's folder
    out, jobs = expand(manifest)
    assert out == tmp_path / "built"
    assert [j.name for j in jobs] == [
        "conv_net/sm86-fp16-fast",
        "conv_net/8.9-fp16-fast",
        "broken/sm86-fp16-fast",
        "broken/8.9-fp16-fast",
    ]
    assert jobs[0].out == str(tmp_path / "built" / "conv_net" / "sm86-fp16-fast")
    assert jobs[0].model == TINY and jobs[2].model == str(tmp_path / "broken.onnx")
    assert jobs[0].recipe == str(tmp_path / "recipes" / "fast.yaml") and not jobs[0].set_precision
    out, jobs = expand(manifest, tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere" and jobs[1].out == str(out / "conv_net" / "8.9-fp16-fast")
    _, jobs = expand(write_manifest(tmp_path, f"models: [{TINY}]\nprecisions: [fp32, bf16]\n"))
    assert [(j.name, j.target, j.set_precision) for j in jobs] == [
        ("conv_net/default-fp32", None, True),
        ("conv_net/default-bf16", None, True),
    ]


def test_ray_matrix_reports_a_broken_model_without_stopping_the_others(tmp_path):
    """The acceptance: 2 models x 2 targets on a local Ray instance (2 CPUs) -> 4 passed rows,
    one summary; the broken third model's jobs are rows of their own, not the end of the run."""
    import ray  # the dev extra installs it (pyproject: fleet, dev): a missing ray fails here, never skips

    broken_model(tmp_path)
    manifest = write_manifest(
        tmp_path,
        f"models:\n  - {TINY}\n  - {json.dumps(MLP)}\n  - broken.onnx\ntargets: [sm86, sm89]\nbackend: tensorrt-rtx\n",
    )
    lines: list[str] = []
    result = api.build_matrix(manifest, tmp_path / "out", executor="ray", jobs=2, log=lines.append)
    assert not ray.is_initialized()  # the instance it started is shut down
    report = result.report
    assert report["format"] == FORMAT and report["executor"] == "ray"
    assert (report["jobs"], report["passed"], report["failed"]) == (6, 4, 2) and not result.passed
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == json.loads(json.dumps(report))
    rows = {row["job"]: row for row in report["results"]}
    assert list(rows) == [
        "conv_net/sm86-fp32",
        "conv_net/sm89-fp32",
        "mlp/sm86-fp32",
        "mlp/sm89-fp32",
        "broken/sm86-fp32",
        "broken/sm89-fp32",
    ]
    for name in list(rows)[:4]:
        row = rows[name]
        assert row["status"] == "passed" and row["exit_code"] == 0 and row["error"] is None, row
        assert row["engine_bytes"] > 0 and row["seconds"] > 0
        assert (Path(row["out"]) / "model.engine").stat().st_size == row["engine_bytes"]
        assert json.loads((Path(row["out"]) / "report.json").read_text())["recipe"]["target_gpus"] == [row["target"]]
    for name in ("broken/sm86-fp32", "broken/sm89-fp32"):
        row = rows[name]
        assert row["status"] == "error" and row["exit_code"] == ExitCode.INVALID_INPUT, row
        assert "broken.onnx" in row["error"] and "\n" not in row["error"]
        assert not Path(row["out"]).exists()
    assert sum(line.startswith("[") for line in lines) == 6  # one progress line per finished job


def test_cli_exits_3_when_a_job_fails_and_writes_a_valid_summary(tmp_path):
    """Local executor through the CLI: a passing and a broken job; --json is the summary."""
    broken_model(tmp_path)
    manifest = write_manifest(tmp_path, f"models: [{TINY}, broken.onnx]\ntargets: [sm86]\nbackend: tensorrt-rtx\n")
    result = CliRunner().invoke(main, ["build-matrix", str(manifest), "-o", str(tmp_path / "o"), "--json"])
    assert result.exit_code == ExitCode.ACCURACY_FAILED, result.output
    assert "1 of 2 jobs did not pass" in result.output
    printed = json.loads(result.output[: result.output.rindex("}") + 1])
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert printed == summary and summary["executor"] == "local"
    assert [(r["job"], r["status"], r["exit_code"]) for r in summary["results"]] == [
        ("conv_net/sm86-fp32", "passed", 0),
        ("broken/sm86-fp32", "error", ExitCode.INVALID_INPUT),
    ]
    table = CliRunner().invoke(main, ["build-matrix", str(manifest), "-o", str(tmp_path / "o"), "-j", "1"])
    assert table.exit_code == ExitCode.ACCURACY_FAILED and "broken/sm86-fp32" in table.output
    assert "2 jobs: 1 passed, 1 failed" in table.output


def test_a_job_that_kills_its_worker_is_one_error_row(tmp_path, monkeypatch):
    """A crash (segfault, OOM kill) breaks a process pool: only the crashing job is an error."""
    (tmp_path / "crashing_models.py").write_text("import os\n\n\ndef crash():\n    os._exit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers get the parent's sys.path
    manifest = write_manifest(tmp_path, f"models: [crashing_models:crash, {json.dumps(MLP)}]\ntargets: [sm86]\n")
    report = api.build_matrix(manifest, tmp_path / "o", jobs=2).report
    rows = {row["job"]: row for row in report["results"]}
    assert rows["mlp/sm86-fp32"]["status"] == "passed", rows
    assert rows["crash/sm86-fp32"]["status"] == "error" and "worker process died" in rows["crash/sm86-fp32"]["error"]
    assert not list((tmp_path / "o").rglob(".*"))  # a job ended by SIGTERM left no staging folder


def test_executor_usage_errors(tmp_path, monkeypatch):
    manifest = write_manifest(tmp_path, f"models: [{TINY}]\n")
    with pytest.raises(UsageError, match="--executor ray"):
        api.build_matrix(manifest, executor="local", address="auto")
    with pytest.raises(UsageError, match="executor 'slurm'"):
        api.build_matrix(manifest, executor="slurm")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install trtforge\[fleet\]"):
        api.build_matrix(manifest, tmp_path / "o", executor="ray")
