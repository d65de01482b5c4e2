"""scripts/build_step/Makefile, the deployment build step: a model within its budget is
published (engine, sidecar, reports); one outside it fails the build and publishes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _make(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "make",
        "-C",
        str(REPO / "scripts" / "build_step"),
        "publish",
        f"MODEL={TINY}",
        "TARGET=ampere",
        f"OUT={tmp_path / 'engine'}",
        f"PUBLISH={tmp_path / 'publish'}",
        f"TRTFORGE={sys.executable} -m converter.cli",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # make -C runs in scripts/build_step: the spec imports from here
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_a_model_within_budget_is_published(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    done = _make(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    published = sorted(p.name for p in (tmp_path / "publish").iterdir())
    assert published == ["model.engine", "model.engine.json", "report.html", "report.json"]


def test_a_model_outside_budget_fails_the_build_and_publishes_nothing(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    recipe = tmp_path / "budget.yaml"
    recipe.write_text("precision: fp16\ntolerances: {atol: 0.0, rtol: 0.0, min_cosine: 1.0}\n")
    done = _make(tmp_path, f"RECIPE={recipe}")
    assert done.returncode != 0
    assert "accuracy check failed" in done.stderr
    assert not (tmp_path / "publish").exists()
