"""Engine backends behind one seam; `get_backend("auto")` picks full TensorRT when it imports."""

from __future__ import annotations

from pathlib import Path

from converter.backends.base import Backend, BuildConfig, EngineArtifact, ShapeProfile, load_sidecar
from converter.backends.runtime_cache import RuntimeCache, require_support
from converter.backends.tensorrt import TensorRTBackend
from converter.backends.tensorrt_rtx import TensorRTRTXBackend
from converter.core.errors import BackendUnavailableError, InvalidInputError
from converter.core.gpu import gpu_available

BACKENDS = {"tensorrt": TensorRTBackend, "tensorrt-rtx": TensorRTRTXBackend}
BACKEND_CHOICES = ["auto", *BACKENDS]

__all__ = [
    "Backend",
    "BuildConfig",
    "EngineArtifact",
    "ShapeProfile",
    "get_backend",
    "runtime_cache_for",
    "load_sidecar",
    "BACKEND_CHOICES",
]


def get_backend(name: str = "auto") -> Backend:
    """The named backend, or for "auto" the first importable of tensorrt, tensorrt-rtx."""
    name = name.replace("_", "-")
    if name == "auto":
        # Full TensorRT builds and runs only with a GPU; without one, TensorRT-RTX
        # still builds ahead of time, so it wins on a GPU-less machine.
        order = ["tensorrt", "tensorrt-rtx"] if gpu_available() else ["tensorrt-rtx", "tensorrt"]
        for candidate in order:
            backend = BACKENDS[candidate]()
            if backend.available():
                return backend
        raise BackendUnavailableError(
            "no TensorRT backend importable: pip install tensorrt-rtx-cu13 (or full tensorrt on a GPU machine)"
        )
    if name not in BACKENDS:
        raise InvalidInputError(f"unknown backend '{name}' (choose from {', '.join(BACKEND_CHOICES)})")
    backend = BACKENDS[name]()
    backend.module()  # raises BackendUnavailableError with the import failure
    return backend


def runtime_cache_for(backend_name: str, path: str | Path | None) -> RuntimeCache | None:
    """`--runtime-cache PATH` checked before any work: the backend that would run engines keeps one."""
    if path is None:
        return None
    require_support(get_backend(backend_name))
    return RuntimeCache.at(path)
