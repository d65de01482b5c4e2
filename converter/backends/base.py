"""The Backend seam: what every engine builder offers, and the data it exchanges.

Two implementations share one nvinfer code path (backends/nvinfer.py):
- `tensorrt` (full TensorRT): needs a GPU to build; supports plugins and runs engines;
- `tensorrt-rtx` (TensorRT for RTX): builds ahead of time on a CPU-only machine for
  chosen compute capabilities; strongly typed; no plugin API.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from converter.core.model_io import atomic_write_text, sha256_file
from converter.core.profiles import ShapeProfile

SIDECAR_SUFFIX = ".json"


@dataclass
class BuildConfig:
    """Everything a build needs besides the ONNX file."""

    profiles: dict[str, ShapeProfile] = field(default_factory=dict)
    # Several optimization profiles in one engine (a cache model's prefill and decode), in
    # order; when given, `profiles` is not used. Each must cover every dynamic input.
    profile_sets: list[dict[str, ShapeProfile]] = field(default_factory=list)
    target_gpus: list[str] = field(default_factory=list)  # e.g. ["sm86", "sm120"]; [] = backend default
    timing_cache: str | None = None  # path; read if present, written after the build
    workspace_mb: int | None = None
    builder_optimization_level: int | None = None
    precision: str = "fp32"  # recorded only: strongly typed builds take precision from the graph
    # trtexec's --stripWeights (an engine without its weights, refit from the ONNX on the target),
    # --refit, --versionCompatible and --hardwareCompatibilityLevel=ampere+
    strip_weights: bool = False
    refittable: bool = False
    version_compatible: bool = False
    hardware_compatible: bool = False

    def optimization_profiles(self) -> list[dict[str, ShapeProfile]]:
        return list(self.profile_sets) or [self.profiles]


@dataclass
class LayerInfo:
    """One layer of the parsed network definition (known without a GPU)."""

    name: str
    type: str
    precision: str
    outputs: list[dict[str, Any]]


@dataclass
class NetworkSummary:
    """What the parser made of the ONNX graph: counted layer types and tensor dtypes."""

    num_layers: int
    layer_types: dict[str, int]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    tensor_dtypes: dict[str, int]
    layers: list[LayerInfo]
    attention_decomposable: int = 0  # fp32 attentions allowed to fall back to ordinary layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EngineArtifact:
    """A built engine on disk plus the facts recorded beside it (the sidecar)."""

    path: Path
    sidecar: dict[str, Any]

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path_for(self.path)


def sidecar_path_for(engine_path: str | Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def write_sidecar(engine_path: str | Path, sidecar: dict[str, Any]) -> Path:
    """The engine's sidecar, written atomically beside it."""
    return atomic_write_text(sidecar_path_for(engine_path), json.dumps(sidecar, indent=1))


SIDECAR_FORMAT = "trtforge-engine-sidecar/1"
MAX_SIDECAR_BYTES = 64 << 20  # a network summary of a 10k-layer engine is a few MB

# What readers of a sidecar use, with the JSON type each must have.
SIDECAR_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "backend": str,
    "backend_version": str,
    "precision": str,
    "profiles": dict,
    "engine_bytes": int,
    "engine_sha256": str,
    "network": dict,
}
NETWORK_FIELDS: dict[str, type | tuple[type, ...]] = {"num_layers": int, "layer_types": dict, "tensor_dtypes": dict}


def _sidecar_problem(data: Any) -> str | None:
    """Why `data` is not a sidecar this version of trtforge wrote, or None.

    A sidecar is data from disk: a foreign or hand-edited one must be ignored with a
    reason, not crash the summary (KeyError) or mislabel the engine.
    """
    if not isinstance(data, dict):
        return "is not a JSON object"
    if data.get("format") != SIDECAR_FORMAT:
        return f"is not a trtforge sidecar (format {str(data.get('format'))[:40]!r}, expected {SIDECAR_FORMAT!r})"
    for fields, where in ((SIDECAR_FIELDS, data), (NETWORK_FIELDS, data.get("network"))):
        for key, kind in fields.items():
            if not isinstance(where, dict) or not isinstance(where.get(key), kind) or isinstance(where[key], bool):
                return f"has no valid {key!r} entry"
    for name, prof in data["profiles"].items():
        if not isinstance(prof, dict) or not all(isinstance(prof.get(k), list) for k in ("min", "opt", "max")):
            return f"has a malformed profile for {str(name)[:40]!r}"
    return None


def load_sidecar(engine_path: str | Path) -> tuple[dict[str, Any] | None, str]:
    """(sidecar, "") when a sidecar matching this engine exists, else (None, why not).

    A sidecar is trusted only if it is a regular file of bounded size, parses, has the
    fields its readers use with the right types, and records this engine's size and
    sha256: a stale one (the engine was rebuilt or replaced) would describe another
    network.
    """
    path = sidecar_path_for(engine_path)
    if not path.exists():
        return None, f"no sidecar ({path.name}) beside the engine"
    if not path.is_file() or path.stat().st_size > MAX_SIDECAR_BYTES:
        return None, f"sidecar {path.name} is not a regular file of at most {MAX_SIDECAR_BYTES >> 20} MiB: ignored"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        return None, f"sidecar {path.name} is not valid JSON ({type(exc).__name__}): ignored"
    problem = _sidecar_problem(data)
    if problem:
        return None, f"sidecar {path.name} {problem}: ignored"
    if data["engine_bytes"] != Path(engine_path).stat().st_size or data["engine_sha256"] != sha256_file(engine_path):
        return None, f"sidecar {path.name} describes another engine (size/sha256 differ): ignored"
    return data, ""


def short_message(text: str) -> str:
    """First informative line of a TensorRT message, without source-location noise."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else str(text)
    return re.sub(r"\s*\(?In \w+ at [^)]*\)?", "", line).strip()


class Backend(Protocol):
    """Engine builder/runtime. `name` is what `--backend` takes."""

    name: str

    def available(self) -> bool:
        """True when the Python module and its builder libraries import."""

    supports_plugins: bool  # runs trtforge's CUDA plugins (full TensorRT), or inlines their ONNX functions

    def version(self) -> str: ...

    def check_config(self, config: BuildConfig) -> None:
        """Refuse what this backend cannot build (e.g. a target) before any work is done."""

    def parse(self, onnx_path: Path) -> NetworkSummary:
        """Parse into a network definition and summarise it (no GPU needed)."""

    def build(self, onnx_path: Path, engine_path: Path, config: BuildConfig) -> EngineArtifact:
        """Build and write the engine atomically, with its JSON sidecar."""

    def can_run(self) -> tuple[bool, str]:
        """(True, "") when engines can be deserialised and run here, else (False, why)."""

    supports_runtime_cache: bool  # keeps JIT-compiled kernels in a file between runs (TensorRT-RTX)

    def run(self, engine_path: Path, feeds: dict[str, np.ndarray], runtime_cache=None) -> dict[str, np.ndarray]:
        """Execute the engine (needs a GPU); `runtime_cache` a backends.runtime_cache.RuntimeCache."""

    def refit(self, engine_path: Path, onnx_path: Path) -> bytes:
        """A refittable or weight-stripped engine with the ONNX's weights, serialized (needs a GPU)."""

    def inspect(self, engine_path: Path) -> dict[str, Any]:
        """Per-layer engine information from the engine inspector (needs a GPU)."""
