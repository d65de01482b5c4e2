"""`doctor`: what this machine can do for trtforge: backends, GPUs, CUDA, onnxruntime, reachable targets.

Asked without building anything: imports and versions, the CUDA driver through ctypes (no
framework), `nvcc --version`. A target is reachable when TensorRT-RTX is importable and
builds it ahead of time, or when full TensorRT is importable and a GPU of that compute
capability is here; otherwise the report says what would build it.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from importlib import metadata
from typing import Any

from converter.core.gpu import gpu_devices
from converter.core.targets import FIRST_PARSED_IN, TARGETS
from converter.core.version import __version__


def _package(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _nvcc() -> str | None:
    path = shutil.which("nvcc")
    if path is None:
        return None
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", text)
    return found.group(1) if found else "unknown version"


def _backends() -> dict[str, dict[str, Any]]:
    from converter.backends import BACKENDS

    out = {}
    for name, cls in BACKENDS.items():
        backend = cls()
        available = backend.available()
        out[name] = {"available": available, "version": backend.version() if available else None}
    return out


def _onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError:
        return {"version": None, "providers": []}
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def _rtx_computes() -> set[str]:
    """The compute capabilities the installed TensorRT-RTX builds for (its ComputeCapability enum)."""
    from converter.backends.tensorrt_rtx import TensorRTRTXBackend

    members = TensorRTRTXBackend().module().ComputeCapability.__members__
    return {m.lower() for m in members if m.startswith("SM")}


def _targets(backends: dict[str, dict[str, Any]], local: set[str]) -> list[dict[str, Any]]:
    rtx, full = backends["tensorrt-rtx"]["available"], backends["tensorrt"]["available"]
    rtx_builds = _rtx_computes() if rtx else set()
    rows = []
    for target in TARGETS.values():
        on_gpu = sorted(local & set(target.compute))
        if set(target.compute) <= rtx_builds:
            how, reachable = "TensorRT-RTX, ahead of time (no GPU needed)", True
        elif full and on_gpu:
            how, reachable = f"full TensorRT on this machine's {', '.join(on_gpu)} GPU", True
        elif target.aot_rtx:
            how, reachable = "pip install tensorrt-rtx-cu13 (builds it ahead of time, no GPU needed)", False
        else:
            how, reachable = f"needs {target.needs}", False
        rows.append(
            {
                "target": target.name,
                "compute": list(target.compute),
                "gpus": target.gpus,
                "reachable": reachable,
                "how": how,
            }
        )
    return rows


def doctor() -> dict[str, Any]:
    """The machine report (see module docstring); every value is JSON."""
    devices, driver = gpu_devices()
    backends = _backends()
    return {
        "trtforge": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "backends": backends,
        "gpus": devices,
        "cuda_driver": driver,
        "nvcc": _nvcc(),
        "onnxruntime": _onnxruntime(),
        "torch": _package("torch"),
        "targets": _targets(backends, {d["compute"] for d in devices}),
        "onnx_ops_first_parsed_in": {op: f"TensorRT {v}" for op, v in FIRST_PARSED_IN.items()},
    }
