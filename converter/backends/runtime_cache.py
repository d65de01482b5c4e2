"""TensorRT-RTX's runtime cache in a file: the kernels it JIT-compiles on the GPU, kept between runs.

A TensorRT-RTX engine is built ahead of time without a GPU; its kernels are specialised and
compiled when it first runs on the device (its docs: the timing cache has no effect there,
the runtime cache is what makes the second start fast). This is the file form of that cache
(`tensorrt_rtx --runtimeCachePath` in NVIDIA's own tool): loaded into an
`IRuntimeConfig` before an execution context is made, written back after the engine ran.

The runtime rejects a cache from another GPU, driver major version or TensorRT-RTX release
(`IRuntimeCache.deserialize` returns False). Such a file is left as it is and nothing is
written back: the path may name a file this tool did not create. Full TensorRT has no
runtime cache (its build-time timing cache is `--timing-cache`).
Everything here runs only where an engine runs, i.e. on a GPU machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.core.errors import InvalidInputError, UnsupportedError
from converter.core.limits import limit
from converter.core.model_io import atomic_write_bytes


def require_support(backend) -> None:
    """Only a backend that keeps one (TensorRT-RTX) takes a runtime cache."""
    if not backend.supports_runtime_cache:
        raise UnsupportedError(
            f"--runtime-cache: backend '{backend.name}' has no runtime cache (TensorRT-RTX's JIT kernel cache); "
            "full TensorRT tunes at build time (--timing-cache)"
        )


@dataclass
class RuntimeCache:
    """One cache file shared by every execution context of a run (one `IRuntimeCache` object)."""

    path: Path
    loaded_bytes: int = 0
    saved_bytes: int = 0
    rejected: bool = False  # an existing file the runtime would not load: never overwritten
    runs: int = 0
    _cache: Any = field(default=None, repr=False)

    @classmethod
    def at(cls, path: str | Path) -> RuntimeCache:
        """Checked up front, before any work: a folder, a device or a huge file is a user's mistake."""
        path = Path(path)
        if path.exists() and not path.is_file():
            raise InvalidInputError(f"--runtime-cache {path}: not a regular file")
        if path.is_file() and path.stat().st_size > limit("tensor-bytes"):
            raise InvalidInputError(
                f"--runtime-cache {path}: {path.stat().st_size:,} bytes is over the tensor-bytes limit"
            )
        if not path.parent.is_dir():
            raise InvalidInputError(f"--runtime-cache {path}: folder {path.parent} does not exist")
        return cls(path)

    def runtime_config(self, engine) -> Any:
        """An `IRuntimeConfig` for `engine` carrying the cache (read from the file on first use)."""
        config = engine.create_runtime_config()
        if self._cache is None:
            self._cache = config.create_runtime_cache()
            if self.path.is_file():
                blob = self.path.read_bytes()  # an empty file is a new cache
                if blob and self._cache.deserialize(blob):
                    self.loaded_bytes = len(blob)
                elif blob:
                    self.rejected = True
        config.set_runtime_cache(self._cache)
        return config

    def save(self) -> None:
        """Write what the runtime compiled so far (atomically), unless the file was one it rejected."""
        self.runs += 1
        if self._cache is None or self.rejected:
            return
        blob = bytes(self._cache.serialize())
        if blob:
            atomic_write_bytes(self.path, blob)
            self.saved_bytes = len(blob)

    def status(self) -> dict[str, Any]:
        """What the report says of the cache."""
        if self.runs == 0:
            state = "not used (no engine ran)"
        elif self.rejected:
            state = "rejected by the runtime (another GPU, driver or TensorRT-RTX release?); left as it is"
        else:
            state = f"loaded {self.loaded_bytes:,} bytes" if self.loaded_bytes else "created"
        return {"path": str(self.path), "status": state, "saved_bytes": self.saved_bytes}
