"""Engine builds and whole conversions through the artifact cache (converter/core/artifact_cache.py).

Two levels, both content-addressed:
- **engine**: key = the final ONNX's bytes (its external data included), the build
  config (profiles, targets, precision, options), backend and version, trtforge's code.
  `build` and convert's build stage use it; a hit copies the engine and rewrites its
  sidecar (`cache: hit`).
- **conversion**: key = what `convert` is given (the ONNX file's bytes, or a demo's
  weight files), the recipe, the task, the inputs file, backend and version, trtforge's
  code. Known before anything runs, so a re-run with unchanged inputs is a copy of the
  previous outputs (export, passes, checks and build all skipped). A user factory's
  model has no such identity (its code is not ours to hash): its conversion runs, and its
  engine comes from the engine level.
The code digest covers every trtforge source file, so any code change misses.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import os
import shutil
from pathlib import Path
from typing import Any

from converter.backends import Backend, BuildConfig, EngineArtifact
from converter.backends.base import write_sidecar
from converter.core.artifact_cache import ArtifactCache, Lookup, cache_key, data_digest, files_digest
from converter.core.errors import InvalidInputError
from converter.core.model_io import atomic_path, external_data_files, load_model
from converter.core.version import __version__
from converter.pipelines.model_ref import ModelRef

REPO = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("converter", "passes", "calibration", "plugins_cuda")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 over trtforge's own source files: a cache entry is valid for this code only."""
    files = sorted(p for folder in SOURCE_FOLDERS for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".cu"))
    return files_digest(files) + __version__


def onnx_files(path: Path) -> list[Path]:
    """The ONNX file and the external data files it names."""
    header = load_model(path, load_weights=False)
    return [path, *(path.parent / name for name in sorted(external_data_files(header)))]


def open_cache(cache_dir: str | Path | None, enabled: bool | None) -> ArtifactCache | None:
    """The cache, or None: `enabled` None follows TRTFORGE_CACHE (on unless "0"; the test suite sets 0)."""
    if enabled is None:
        enabled = os.environ.get("TRTFORGE_CACHE", "1") != "0"
    return ArtifactCache(cache_dir) if enabled else None


def engine_key(onnx_path: Path, backend: Backend, config: BuildConfig) -> str:
    settings = dataclasses.asdict(config)
    settings.pop("timing_cache", None)  # where the timing cache lives does not change the engine
    device = _device(backend) if not config.target_gpus or "current" in config.target_gpus else None
    return cache_key(
        "engine", files_digest(onnx_files(onnx_path)), backend.name, backend.version(), settings, device, code_digest()
    )


def _device(backend: Backend) -> Any:
    """What an engine built for "this machine" depends on: full TensorRT builds for the GPU it runs
    on (with its plugins); TensorRT-RTX's default targets are fixed, so none."""
    if backend.name != "tensorrt":
        return None
    from converter.core.gpu import gpu_devices

    return {"gpus": gpu_devices(), "plugins": backend.supports_plugins}


def _versions() -> dict[str, str | None]:
    """The libraries an export and its checks depend on (read from their metadata, nothing imported)."""
    found: dict[str, str | None] = {}
    for name in ("torch", "onnx", "onnxruntime", "transformers", "onnxscript"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def build_engine(
    backend: Backend,
    onnx_path: Path,
    engine_path: Path,
    config: BuildConfig,
    cache: ArtifactCache | None,
    **build_options: Any,
) -> EngineArtifact:
    """backend.build, or the cached engine for the same ONNX and config; the sidecar says `cache`."""
    if cache is None:
        return backend.build(onnx_path, engine_path, config, **build_options)
    key = engine_key(onnx_path, backend, config)
    found = cache.lookup(key)
    if found.path is not None:
        try:
            sidecar = json.loads((found.path / "sidecar.json").read_text())
            with atomic_path(engine_path) as tmp:
                shutil.copyfile(found.path / "engine", tmp)
            label = build_options.get("source_label")
            sidecar.update(cache="hit", cache_key=key, source_onnx=label or str(onnx_path))
            write_sidecar(engine_path, sidecar)
            return EngineArtifact(path=engine_path, sidecar=sidecar)
        except OSError:  # evicted by another process between the lookup and the copy: build it
            found = Lookup(None, "miss")
    artifact = backend.build(onnx_path, engine_path, config, **build_options)
    artifact.sidecar.update(cache=found.status, cache_key=key)  # miss, or a corrupt entry replaced
    write_sidecar(artifact.path, artifact.sidecar)
    cache.store(key, {"engine": engine_path, "sidecar.json": artifact.sidecar_path}, {"onnx": str(onnx_path)})
    return artifact


def conversion_key(
    ref: ModelRef, recipe: dict, task: str | None, inputs: str | Path | None, backend: Backend, trust: bool = False
):
    """The key of a whole conversion, or None when the model has no identity before it runs."""
    if ref.path is not None:
        model = files_digest(onnx_files(ref.path))
    elif ref.spec is not None and ref.spec.weight_files is not None:
        try:
            model = f"{ref.spec.name}:{files_digest([Path(p) for p in ref.spec.weight_files()])}"
        except (OSError, InvalidInputError, ImportError):
            return None
    else:
        return None
    if inputs and not Path(inputs).is_file():
        return None  # the run itself says what is wrong with it
    given = files_digest([Path(inputs)]) if inputs else None
    calibration = recipe.get("calibration") and data_digest(recipe["calibration"])
    if recipe.get("calibration") and calibration is None:
        return None
    runs_engines = backend.can_run()[0]  # whether the report could check the engine here
    return cache_key(
        "convert",
        model,
        recipe,
        task,
        given,
        calibration,
        trust,
        backend.name,
        backend.version(),
        runs_engines,
        _device(backend),
        _versions(),
        code_digest(),
    )


@dataclasses.dataclass
class ConversionLookup:
    """A conversion's cache entry: found (restore it), or to be stored once the run published."""

    cache: ArtifactCache | None
    key: str | None = None
    status: str = "off"  # off | uncacheable | miss | corrupt | hit
    entry: Path | None = None

    @classmethod
    def find(
        cls, cache: ArtifactCache | None, ref: ModelRef, recipe: dict, task, inputs, backend: Backend, trust=False
    ):
        if cache is None:
            return cls(None)
        key = conversion_key(ref, recipe, task or "default", inputs, backend, trust)
        if key is None:
            return cls(cache, None, "uncacheable")
        found = cache.lookup(key)
        return cls(cache, key, found.status, found.path)

    @property
    def hit(self) -> bool:
        return self.entry is not None

    def report(self) -> dict[str, Any]:
        entry = {"status": self.status}
        if self.cache is not None:
            entry["folder"] = str(self.cache.folder)
        if self.key:
            entry["key"] = self.key
        return entry

    def restore(self, stage: Path) -> dict[str, Any] | None:
        """The entry's files into `stage` and its report, saying where it came from; None (and
        `stage` emptied) when another process evicted the entry meanwhile: then the run happens."""
        try:
            for item in self.entry.iterdir():
                if item.name != "entry.json":
                    shutil.copyfile(item, stage / item.name)
            report = json.loads((stage / "report.json").read_text())
        except OSError:
            for item in stage.iterdir():
                item.unlink()
            self.status, self.entry = "miss", None
            return None
        report["cache"] = {**self.report(), "first_run_wall_seconds": report.get("wall_seconds")}
        report["cache"]["first_run_stages"] = report.get("stages", {})
        report["stages"] = {"cache": {"summary": f"hit: the outputs of an identical run ({self.key[:12]})"}}
        return report

    def remember(self, stage: Path, names: tuple[str, ...]) -> None:
        """Store this run's outputs (and their external data) under the key, from the staging
        folder: the output folder may also hold an older run's files."""
        if self.cache is None or self.key is None or self.hit:
            return
        files = {}
        for name in names:
            for candidate in (stage / name, stage / f"{name}.data"):
                if candidate.is_file():
                    files[candidate.name] = candidate
        self.cache.store(self.key, files)
