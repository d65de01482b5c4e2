"""`build`: ONNX -> engine (+ '<engine>.json' sidecar) through a backend, and what the command reports of it."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.backends import BuildConfig, EngineArtifact, ShapeProfile, get_backend
from converter.backends.base import write_sidecar
from converter.core.errors import InvalidInputError
from converter.core.model_io import load_model, opset_of, save_model, weights_precision
from converter.core.outputs import Outputs
from converter.pipelines.cached_build import build_engine, open_cache
from converter.pipelines.generation_check import engine_shapes
from converter.pipelines.model_ref import default_profiles
from passes.base import PassContext
from passes.manager import PassSpec, run_passes


@dataclass
class BuildResult(EngineArtifact):
    """The engine artifact, plus the summary `trtforge build` prints."""

    @property
    def report(self) -> dict[str, Any]:
        data = {k: v for k, v in self.sidecar.items() if k != "network"}
        data["network"] = {k: self.sidecar["network"][k] for k in ("num_layers", "layer_types", "tensor_dtypes")}
        data["engine"] = str(self.path)
        return data


def build(
    onnx_path: str | Path,
    out: str | Path,
    *,
    backend: str = "auto",
    shapes: dict[str, ShapeProfile] | None = None,
    profiles: list[dict[str, ShapeProfile]] | None = None,
    target_gpus: list[str] | None = None,
    timing_cache: str | Path | None = None,
    precision: str | None = None,
    verbose: bool = False,
    log: Callable[[str], None] = lambda message: None,
    cache_dir: str | Path | None = None,
    use_cache: bool | None = None,
    **options: Any,
) -> BuildResult:
    """Build `onnx_path` into the engine `out` with the given profiles and targets.

    Inputs without a profile in `shapes` take the one `export` recorded in the file's
    metadata (or its demo's), so an exported model builds without repeating --shapes.
    `profiles` are several optimization profiles for one engine; a decoder with a KV
    cache gets its prefill and decode profiles when neither is given.
    `precision` is what the engine computes in; by default, the float type of the graph's
    weights. fp16/bf16 for an fp32 graph (trtexec's --fp16) converts a copy of the graph with
    the precision pass first: the builders here are strongly typed and take precision from
    the graph's types, not from a builder flag (the sidecar's `precision_pass` says so).
    `options` are BuildConfig's build options (workspace_mb, builder_optimization_level,
    strip_weights, refittable, version_compatible, hardware_compatible), checked by the
    backend before anything runs and recorded in the sidecar.
    The engine comes from the artifact cache when the same ONNX bytes were built with the
    same config before (pipelines/cached_build.py; the sidecar's `cache` says which).
    """
    onnx_path = Path(onnx_path)
    graph = load_model(onnx_path, load_weights=False)  # one-line error for a broken/missing file
    convert_to = precision if precision in ("fp16", "bf16") and weights_precision(graph) == "fp32" else None
    config = BuildConfig(
        **engine_shapes(graph, default_profiles(graph), shapes, profiles),
        target_gpus=list(target_gpus or []),
        timing_cache=str(timing_cache) if timing_cache else None,
        precision=precision or weights_precision(graph),
        **_build_options(options),
    )
    engine_backend = get_backend(backend)
    engine_backend.check_config(config)
    targets = ", ".join(config.target_gpus) or "default targets"
    log(f"building {out} from {onnx_path} ({engine_backend.name}, {targets})")
    with Outputs(inputs=[onnx_path]) as outputs, tempfile.TemporaryDirectory(prefix="trtforge-build-") as tmp:
        cache = open_cache(cache_dir, use_cache)
        source = _converted(onnx_path, convert_to, Path(tmp), log) if convert_to else onnx_path
        engine = build_engine(engine_backend, source, outputs.path(out), config, cache, verbose=verbose, progress=log)
        if convert_to:
            engine.sidecar.update(source_onnx=str(onnx_path), precision_pass={"from": "fp32", "to": convert_to})
            write_sidecar(engine.path, engine.sidecar)
    return BuildResult(Path(out), engine.sidecar)


def _build_options(options: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(BuildConfig)} - {"profiles", "profile_sets", "target_gpus"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InvalidInputError(f"build: unknown option(s) {unknown}")
    return {name: value for name, value in options.items() if value is not None}


def _converted(onnx_path: Path, target: str, folder: Path, log: Callable[[str], None]) -> Path:
    """A copy of the graph in `target` precision (the precision pass's defaults: fp32 I/O and
    numerically sensitive ops kept), in `folder`."""
    log(f"converting {onnx_path.name} to {target} (the builder takes precision from the graph's types)")
    model = load_model(onnx_path)
    converted, _ = run_passes(model, [PassSpec("precision", {"target": target})], PassContext(opset=opset_of(model)))
    return save_model(converted, folder / onnx_path.name)
