"""`build`: ONNX -> engine (+ '<engine>.json' sidecar) through a backend, and what the command reports of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.backends import BuildConfig, EngineArtifact, ShapeProfile, get_backend
from converter.core.model_io import load_model, weights_precision
from converter.core.outputs import Outputs
from converter.pipelines.cached_build import build_engine, open_cache
from converter.pipelines.generation_check import cache_layout, engine_profiles
from converter.pipelines.model_ref import default_profiles


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
) -> BuildResult:
    """Build `onnx_path` into the engine `out` with the given profiles and targets.

    Inputs without a profile in `shapes` take the one `export` recorded in the file's
    metadata (or its demo's), so an exported model builds without repeating --shapes.
    `profiles` are several optimization profiles for one engine; a decoder with a KV
    cache gets its prefill and decode profiles when neither is given.
    `precision` is recorded in the sidecar; by default, the float type of the graph's weights.
    The engine comes from the artifact cache when the same ONNX bytes were built with the
    same config before (pipelines/cached_build.py; the sidecar's `cache` says which).
    """
    onnx_path = Path(onnx_path)
    graph = load_model(onnx_path, load_weights=False)  # one-line error for a broken/missing file
    config = BuildConfig(
        profiles={**default_profiles(graph), **(shapes or {})},
        profile_sets=engine_profiles(cache_layout(graph), shapes or {}, list(profiles or [])),
        target_gpus=list(target_gpus or []),
        timing_cache=str(timing_cache) if timing_cache else None,
        precision=precision or weights_precision(graph),
    )
    engine_backend = get_backend(backend)
    engine_backend.check_config(config)
    targets = ", ".join(config.target_gpus) or "default targets"
    log(f"building {out} from {onnx_path} ({engine_backend.name}, {targets})")
    with Outputs(inputs=[onnx_path]) as outputs:  # the engine and its sidecar appear together
        cache = open_cache(cache_dir, use_cache)
        engine = build_engine(engine_backend, onnx_path, outputs.path(out), config, cache, verbose=verbose)
    return BuildResult(Path(out), engine.sidecar)
