"""Hugging Face Optimum for scripts/bench_decode.py: its `text-generation-with-past` export, in its own venv.

optimum-onnx pins a transformers 4.x beside trtforge's 5.x, so it gets a venv outside the
repository (~/.cache/trtforge/optimum-venv), created on first use with the CPU torch wheel;
a failure is recorded in the benchmark's JSON, not raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

OPTIMUM_VENV = Path.home() / ".cache" / "trtforge" / "optimum-venv"

EXPORT = """
import json, sys, time
from optimum.exporters.onnx import main_export
start = time.perf_counter()
main_export(sys.argv[1], sys.argv[2], task="text-generation-with-past")
print(json.dumps({"seconds": time.perf_counter() - start}))
"""


def optimum_python() -> Path:
    """The Python of Optimum's venv, created on first use."""
    python = OPTIMUM_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(OPTIMUM_VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "torch==2.13.0", "optimum-onnx", "onnxruntime"],
            check=True,
            capture_output=True,
            timeout=1800,
        )
    return python


def optimum_version(python: Path) -> str:
    done = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m; print(m.version('optimum-onnx'), m.version('transformers'))",
        ],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def export_with_optimum(hf_folder: Path, out_folder: Path) -> dict:
    """Optimum's export of a saved transformers model; {"path", "seconds", "version"} or {"error"}."""
    start = time.perf_counter()
    try:
        python = optimum_python()
        done = subprocess.run(
            [str(python), "-c", EXPORT, str(hf_folder), str(out_folder)], capture_output=True, text=True, timeout=1800
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return {"error": f"optimum venv: {exc}"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    return {
        "path": out_folder / "model.onnx",
        "seconds": round(seconds, 2),
        "wall_seconds": round(time.perf_counter() - start, 2),
        "version": optimum_version(python),
    }
