"""Outputs: published together or not at all, never over an input or a user's file, and removed
when the command is interrupted (SIGTERM, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from converter.cli.main import main
from converter.core.errors import ExitCode, InvalidInputError
from converter.core.model_io import save_model
from converter.core.outputs import Outputs
from tests.onnx_helpers import make_model

REPO = Path(__file__).resolve().parents[2]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _model() -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    return make_model([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [1, 64]}, {"y": [1, 64]}, [weight])


def test_output_named_like_the_inputs_weights_is_refused(tmp_path):
    """optimize a.onnx -o b.onnx, where a.onnx keeps its weights in b.onnx.data."""
    onnx.save(_model(), str(tmp_path / "a.onnx"), save_as_external_data=True, location="b.onnx.data")
    weights = (tmp_path / "b.onnx.data").read_bytes()
    result = invoke("optimize", tmp_path / "a.onnx", "-o", tmp_path / "b.onnx")
    assert result.exit_code == ExitCode.INVALID_INPUT and "b.onnx.data" in result.output
    assert (tmp_path / "b.onnx.data").read_bytes() == weights and not (tmp_path / "b.onnx").exists()


def test_output_that_is_the_input_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(), str(path))
    before = path.read_bytes()
    assert invoke("optimize", path, "-o", path).exit_code == ExitCode.INVALID_INPUT
    assert invoke("build", path, "-o", path).exit_code == ExitCode.INVALID_INPUT
    assert path.read_bytes() == before


def test_a_users_file_named_like_the_weights_file_is_kept(tmp_path):
    (tmp_path / "out.onnx.data").write_text("the user's notes")
    assert invoke("optimize", _saved(tmp_path), "-o", tmp_path / "out.onnx").exit_code == 0
    assert (tmp_path / "out.onnx.data").read_text() == "the user's notes"  # small model: not deleted
    with pytest.raises(InvalidInputError, match="does not overwrite"), Outputs() as outputs:
        save_model(_model(), outputs.path(tmp_path / "big.onnx"), external_data_threshold=0)
        (tmp_path / "big.onnx.data").write_text("written meanwhile by the user")
    assert (tmp_path / "big.onnx.data").read_text() == "written meanwhile by the user"
    assert not (tmp_path / "big.onnx").exists() and _no_staging(tmp_path)


def _saved(folder: Path) -> Path:
    path = folder / "in.onnx"
    onnx.save(_model(), str(path))
    return path


def _no_staging(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".trtforge-" in p.name or p.name.endswith(".tmp")]


def test_a_failing_second_output_leaves_no_first(tmp_path):
    (tmp_path / "report.json").mkdir()  # --save-report cannot be written
    result = invoke(
        "optimize", _saved(tmp_path), "-o", tmp_path / "out.onnx", "--save-report", tmp_path / "report.json"
    )
    assert result.exit_code == ExitCode.INVALID_INPUT
    assert not (tmp_path / "out.onnx").exists() and _no_staging(tmp_path)


def test_convert_refuses_an_input_inside_its_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    onnx.save(_model(), str(out / "model.onnx"))
    before = (out / "model.onnx").read_bytes()
    result = invoke("convert", out / "model.onnx", "-o", out)
    assert result.exit_code == ExitCode.INVALID_INPUT and "another --out" in result.output
    assert (out / "model.onnx").read_bytes() == before


# Each stage's first log line (stderr), after which the signal is sent: the early stages and the
# late ones (30-45 s into a conversion on a slow machine are the verify and build stages).
STAGE_LINES = {
    "export": "exporting",
    "reference": "reading sample inputs",
    "optimize": "running passes",
    "verify": "verifying model.opt.onnx",
    "build": "building the engine",
}


def _interrupted_convert(folder: Path, sig: int, stage: str) -> tuple[subprocess.Popen, str]:
    """Run `convert` in `folder`, send `sig` as soon as `stage` announces itself; (process, stderr)."""
    env = {**os.environ, "TMPDIR": str(folder / "tmp")}
    (folder / "tmp").mkdir(parents=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "converter.cli", "convert", "efficientnet-lite0", "--out", str(folder / "D")],
        cwd=REPO,
        env=env,
        # a shell's background job (a CI runner's, `cmd &`) starts with SIGINT ignored, and so would the
        # child: give it the default a user's foreground Ctrl-C meets (Python then raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in process.stderr:
        seen.append(line)
        if STAGE_LINES[stage] in line:
            # at once: the stage has begun and runs until its work is done (a signal during
            # a native call, e.g. the 0.3 s engine build, is handled when the call returns)
            process.send_signal(sig)
            break
    _, err = process.communicate(timeout=120)
    return process, "".join(seen) + err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "stage"),
    [(signal.SIGTERM, ExitCode.TERMINATED, stage) for stage in STAGE_LINES]
    + [(signal.SIGINT, ExitCode.INTERRUPTED, "optimize")],
)
def test_interrupted_convert_leaves_nothing(tmp_path, sig, code, stage):
    process, err = _interrupted_convert(tmp_path, sig, stage)
    out = tmp_path / "D"
    if process.returncode == 0:
        pytest.skip(f"the conversion finished before the signal ({stage})")
    assert process.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    assert f"in its {stage} stage" in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]
    # TensorRT-RTX keeps a '.ses' session file in TMPDIR; trtforge's own temp folders must be gone.
    assert [p.name for p in (tmp_path / "tmp").iterdir() if "trtforge" in p.name] == []


def test_markup_in_model_and_file_names_is_printed_literally(tmp_path):
    """Rich markup from data ('[/red]' crashed the summary; '[link=...]' was rendered)."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["[/red]"], name="[link=http://e]n[/link]")
    model = make_model([node], {"x": [1, 4]}, {"[/red]": [1, 4]}, [weight])
    path = tmp_path / "[bold]m.onnx"
    onnx.save(model, str(path))
    result = invoke("verify", path, path)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "[/red]" in result.output and "[bold]m.onnx" in result.output
    missing = invoke("inspect", tmp_path / "[bold]nope.onnx")
    assert missing.exit_code == ExitCode.INVALID_INPUT and "[bold]nope.onnx" in missing.output
