"""`trtforge refit`: the checks that run without a GPU, and the output it writes (refit stood in).

TensorRT's refit deserializes the engine on the device, so the refit call itself is
replaced by a stand-in backend in the last tests; everything around it (which engines
are refused, what is written where, the sidecar) is trtforge's and runs for real.
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from converter import api
from converter.backends import load_sidecar
from converter.cli.main import main
from converter.core.errors import ExitCode
from converter.pipelines import refit as refit_pipeline


@pytest.fixture
def stripped(tmp_path, tiny_engine):
    """A copy of the tiny engine whose sidecar says it was built with --strip-weights (the build
    itself needs a GPU with TensorRT-RTX: its refit path compiles on the device)."""
    engine = tmp_path / "tiny.engine"
    shutil.copy(tiny_engine, engine)
    sidecar = json.loads(tiny_engine.with_name("tiny.engine.json").read_text())
    sidecar["build_options"].update(strip_weights=True, refittable=True)
    (tmp_path / "tiny.engine.json").write_text(json.dumps(sidecar))
    return engine


def _cli(*args: str):
    return CliRunner().invoke(main, ["refit", *args])


def test_an_engine_built_without_refit_is_refused(tmp_path, tiny_engine, tiny_onnx):
    result = _cli(str(tiny_engine), str(tiny_onnx), "-o", str(tmp_path / "full.engine"))
    assert result.exit_code == ExitCode.INVALID_INPUT and "--strip-weights" in result.output
    assert not (tmp_path / "full.engine").exists()


def test_without_a_gpu_it_stops_after_the_checks(tmp_path, stripped, tiny_onnx):
    if api.doctor()["gpus"]:
        pytest.skip("a GPU is here: the refit runs")
    result = _cli(str(stripped), str(tiny_onnx), "-o", str(tmp_path / "full.engine"))
    assert result.exit_code == ExitCode.BACKEND_UNAVAILABLE and "needs a GPU" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.engine", "tiny.engine.json"]  # nothing left


@pytest.mark.parametrize(
    "case, message",
    [("onnx-is-engine", "not a valid ONNX"), ("out-is-engine", "would overwrite"), ("out-suffix", "should end in")],
)
def test_bad_arguments_are_one_line_errors(tmp_path, stripped, tiny_onnx, case, message):
    onnx_file = stripped if case == "onnx-is-engine" else tiny_onnx
    out = {"out-is-engine": stripped, "out-suffix": tmp_path / "full.onnx"}.get(case, tmp_path / "full.engine")
    before = stripped.read_bytes()
    result = _cli(str(stripped), str(onnx_file), "-o", str(out))
    assert result.exit_code == ExitCode.INVALID_INPUT and message in result.output
    assert stripped.read_bytes() == before


class StandInBackend:
    """Refits by appending the ONNX's bytes: what matters here is what trtforge writes around it."""

    name = "tensorrt-rtx"

    def can_run(self):
        return True, ""

    def refit(self, engine, onnx_path):
        return engine.read_bytes() + b"|weights|"


def test_the_refitted_engine_and_its_sidecar(monkeypatch, tmp_path, stripped, tiny_onnx):
    monkeypatch.setattr(refit_pipeline, "get_backend", lambda name: StandInBackend())
    out = tmp_path / "out" / "full.engine"
    result = api.refit(stripped, tiny_onnx, out)
    assert out.read_bytes() == stripped.read_bytes() + b"|weights|"
    sidecar, why = load_sidecar(out)  # a valid sidecar that matches the new engine
    assert why == "" and sidecar["engine_bytes"] == out.stat().st_size
    assert sidecar["build_options"]["strip_weights"] is False and sidecar["build_options"]["refittable"] is True
    assert sidecar["refit"]["same_weights_as_build"] is True  # the ONNX the tiny engine was built from
    assert result.report["refit"] == sidecar["refit"] and result.report["engine_bytes"] == len(out.read_bytes())

    model = onnx.load(str(tiny_onnx))  # the same graph with other weights (a fine-tuned checkpoint)
    weight = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
    other = tmp_path / "finetuned.onnx"
    onnx.save(model, str(other))
    again = api.refit(stripped, other, tmp_path / "ft.engine")
    assert again.report["refit"]["same_weights_as_build"] is False
