"""TensorRT Model Optimizer for scripts/bench_quantize.py: its ONNX int8 PTQ, run in its own venv.

`nvidia-modelopt[onnx]` pins its own onnx and onnxruntime-gpu, so it gets a venv outside the
repository (~/.cache/trtforge/modelopt-venv), created on first use; a failure is recorded in
the benchmark's JSON, not raised.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

from calibration.data import from_array_folder

MODELOPT_RUNNER = """
import json, runpy, sys, time
start = time.perf_counter()
sys.argv = ARGV
try:
    runpy.run_module("modelopt.onnx.quantization", run_name="__main__")
except SystemExit:
    pass
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_mb": hwm}))
"""


MODELOPT_VENV = Path.home() / ".cache" / "trtforge" / "modelopt-venv"  # outside the repository


def modelopt_python() -> Path:
    """The Python of Model Optimizer's venv, created on first use (it pins its own onnx, onnxruntime-gpu)."""
    python = MODELOPT_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MODELOPT_VENV)], check=True, capture_output=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "nvidia-modelopt[onnx]"],
            check=True,
            capture_output=True,
            timeout=1200,
        )
    return python


def run_modelopt(model: Path, calib: Path, out: Path) -> dict:
    """TensorRT Model Optimizer ONNX int8 PTQ on CPU in its own venv (created on first use)."""
    try:
        python = modelopt_python()
        arrays = {}
        for batch in from_array_folder(calib, onnx.load(str(model), load_external_data=False), batch_size=32):
            for k, v in batch.items():
                arrays.setdefault(k, []).append(v)
        npz = out.with_suffix(".calib.npz")
        np.savez(npz, **{k: np.concatenate(v) for k, v in arrays.items()})
        argv = [
            "modelopt",
            "--onnx_path",
            str(model),
            "--quantize_mode",
            "int8",
            "--calibration_data",
            str(npz),
            "--calibration_eps",
            "cpu",
            "--high_precision_dtype",
            "fp32",
            "--output_path",
            str(out),
        ]
        code = MODELOPT_RUNNER.replace("ARGV", repr(argv))
        proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0 or not out.exists():
            return {"failed": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError) as exc:
        return {"failed": f"modelopt venv: {type(exc).__name__}: {str(exc)[:200]}"}
