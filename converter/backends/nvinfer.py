"""Shared nvinfer code for full TensorRT and TensorRT-RTX.

Both Python packages expose the same builder/parser/runtime API (`tensorrt` and
`tensorrt_rtx` modules), so parsing, summarising, profile setup, building, error
mapping and engine execution are written once here, taking the module as an argument.
The two backend modules only say what differs (targets, timing cache, plugins).
"""

from __future__ import annotations

import hashlib
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from converter.backends.base import (
    SIDECAR_FORMAT,
    BuildConfig,
    EngineArtifact,
    LayerInfo,
    NetworkSummary,
    ShapeProfile,
    short_message,
    write_sidecar,
)
from converter.backends.build_settings import allow_decomposed_attention, progress_monitor, set_options
from converter.backends.engine_runtime import inspect_engine, refit_engine, run_engine
from converter.backends.runtime_cache import RuntimeCache, require_support
from converter.core.errors import BackendUnavailableError, BuildError, InvalidInputError
from converter.core.gpu import gpu_status
from converter.core.model_io import atomic_path, sha256_file


def make_logger(trt: ModuleType, verbose: bool = False):
    """An ILogger that keeps messages (for error reports) instead of printing them."""

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            level = str(severity).split(".")[-1]
            self.messages.append((level, msg))
            if verbose:
                print(f"[{trt.__name__}] [{level}] {msg}")

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level in ("ERROR", "INTERNAL_ERROR")]

    return CollectingLogger()


def parse_onnx(trt: ModuleType, onnx_path: Path, logger, strongly_typed: bool = True):
    """Parse an ONNX file into a network definition; raise BuildError naming the failing node."""
    builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        if parser.num_errors == 0:
            raise BuildError(
                f"{onnx_path}: the TensorRT ONNX parser failed: {short_message(' '.join(logger.errors()))}"
            )
        err = parser.get_error(0)
        op = err.node_operator()
        where = f"node '{err.node_name()}' ({op})" if err.node_name() or op else "graph"
        desc = short_message(err.desc())
        if "Plugin not found" in desc:
            desc = f"no importer or plugin for op '{op}'"
        elif desc in ("", "false", "0") or str(err.code()).endswith("UNSUPPORTED_NODE"):
            # the parser's checker text is often a bare "false": say what it means
            desc = (
                f"op '{op}' is not supported by {trt.__name__} {trt.__version__} in this form ({desc or 'no detail'})"
            )
        raise BuildError(f"{onnx_path.name}: {where}: {desc}")
    return builder, network, parser


def _dims(shape) -> list[int]:
    return [int(d) for d in shape]


def _dtype_name(dtype) -> str:
    return str(dtype).split(".")[-1]


def summarize(network) -> NetworkSummary:
    """Layer-type histogram, tensor dtypes and I/O of a parsed network."""
    layer_types: dict[str, int] = {}
    tensor_dtypes: dict[str, int] = {}
    layers: list[LayerInfo] = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        kind = _dtype_name(layer.type)
        layer_types[kind] = layer_types.get(kind, 0) + 1
        outputs = []
        for o in range(layer.num_outputs):
            tensor = layer.get_output(o)
            dtype = _dtype_name(tensor.dtype)
            tensor_dtypes[dtype] = tensor_dtypes.get(dtype, 0) + 1
            outputs.append({"name": tensor.name, "dtype": dtype})
        precision = outputs[0]["dtype"] if outputs else ""
        layers.append(LayerInfo(name=layer.name, type=kind, precision=precision, outputs=outputs))

    def io(tensor) -> dict[str, Any]:
        return {"name": tensor.name, "shape": _dims(tensor.shape), "dtype": _dtype_name(tensor.dtype)}

    return NetworkSummary(
        num_layers=network.num_layers,
        layer_types=dict(sorted(layer_types.items(), key=lambda kv: -kv[1])),
        inputs=[io(network.get_input(i)) for i in range(network.num_inputs)],
        outputs=[io(network.get_output(i)) for i in range(network.num_outputs)],
        tensor_dtypes=tensor_dtypes,
        layers=layers,
    )


def _example(dims: list[int], value: int) -> str:
    return "x".join(str(value) if d < 0 else str(d) for d in dims)


def resolve_profiles(network, requested: dict[str, ShapeProfile], where: str = "") -> dict[str, ShapeProfile]:
    """One profile entry per input: the requested one, or the static shape; error if dynamic and missing.

    `where` names the profile in errors when an engine has several ("profile 2: ")."""
    try:
        return _resolve_profile(network, requested)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}{exc}") from exc


def _resolve_profile(network, requested: dict[str, ShapeProfile]) -> dict[str, ShapeProfile]:
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    unknown = sorted(set(requested) - names)
    if unknown:
        raise InvalidInputError(f"--shapes names unknown input(s) {unknown} (inputs: {sorted(names)})")
    resolved: dict[str, ShapeProfile] = {}
    missing: list[str] = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = _dims(tensor.shape)
        if tensor.name in requested:
            prof = requested[tensor.name]
            for label, shape in (("min", prof.min), ("opt", prof.opt), ("max", prof.max)):
                if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape, strict=False)):
                    raise InvalidInputError(
                        f"--shapes {tensor.name}: {label} shape {list(shape)} does not fit the input's dims {dims}"
                    )
            if not all(a <= b <= c for a, b, c in zip(prof.min, prof.opt, prof.max, strict=True)):
                raise InvalidInputError(f"--shapes {tensor.name}: need min <= opt <= max in every dim")
            resolved[tensor.name] = prof
        elif any(d < 0 for d in dims):
            missing.append(f"--shapes {tensor.name}:{_example(dims, 1)}/{_example(dims, 16)}/{_example(dims, 64)}")
        else:
            resolved[tensor.name] = ShapeProfile(tuple(dims), tuple(dims), tuple(dims))
    if missing:
        raise InvalidInputError(f"dynamic inputs need a min/opt/max profile each, e.g. {' '.join(missing)}")
    return resolved


def _node_names(onnx_path: Path) -> list[str]:
    model = onnx.load(str(onnx_path), load_external_data=False)
    return sorted((n.name for n in model.graph.node if n.name), key=len, reverse=True)


def builder_error(onnx_path: Path, messages: list[str]) -> BuildError:
    """Turn builder log errors into one line that names the ONNX node when one is mentioned."""
    text = " | ".join(messages) if messages else "the builder returned no engine and logged no error"
    for name in _node_names(onnx_path):
        if name in text:
            return BuildError(f"{onnx_path.name}: node '{name}': {short_message(messages[-1] if messages else text)}")
    return BuildError(f"{onnx_path.name}: engine build failed: {short_message(messages[-1] if messages else text)}")


def build_serialized(
    trt: ModuleType,
    onnx_path: Path,
    config: BuildConfig,
    logger,
    configure=None,
) -> tuple[bytes, NetworkSummary, list[dict[str, ShapeProfile]], float]:
    """Parse, configure, build. `configure(builder, builder_config)` applies backend-specific settings."""
    builder, network, _parser = parse_onnx(trt, onnx_path, logger)
    summary = summarize(network)
    requested = config.optimization_profiles()
    profiles = [
        resolve_profiles(network, wanted, f"profile {i}: " if len(requested) > 1 else "")
        for i, wanted in enumerate(requested)
    ]
    builder_config = builder.create_builder_config()
    for resolved in profiles:
        profile = builder.create_optimization_profile()
        for name, prof in resolved.items():
            profile.set_shape(name, prof.min, prof.opt, prof.max)
        builder_config.add_optimization_profile(profile)
    if hasattr(trt.LayerType, "ATTENTION_INPUT"):
        summary.attention_decomposable = allow_decomposed_attention(trt, network)
    if config.workspace_mb:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    set_options(trt, builder_config, config)
    if config.builder_optimization_level is not None:
        builder_config.builder_optimization_level = config.builder_optimization_level
    if configure is not None:
        configure(builder, builder_config)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, builder_config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise builder_error(onnx_path, logger.errors())
    return bytes(memoryview(serialized)), summary, profiles, seconds


class NvinferBackend:
    """Backend on an nvinfer-style Python module; subclasses say what differs."""

    name = ""
    module_name = ""
    supports_runtime_cache = False  # TensorRT-RTX's JIT kernel cache (backends/runtime_cache.py)

    def module(self) -> ModuleType:
        try:
            return importlib.import_module(self.module_name)
        except ImportError as exc:
            raise BackendUnavailableError(
                f"backend '{self.name}' unavailable: cannot import {self.module_name} ({exc})"
            ) from exc

    def available(self) -> bool:
        try:
            self.module()
        except BackendUnavailableError:
            return False
        return True

    def version(self) -> str:
        return str(self.module().__version__)

    def check_config(self, config: BuildConfig) -> None:
        """Refuse, before any work, what this backend cannot build (targets); a no-op by default."""

    def configure(self, trt: ModuleType, builder, builder_config, config: BuildConfig) -> dict[str, Any]:
        """Apply backend-specific settings; return facts for the sidecar."""
        return {}

    def after_build(self, trt: ModuleType, builder_config, config: BuildConfig) -> None:
        """Hook run after a successful build (e.g. saving a timing cache)."""

    def parse(self, onnx_path: Path) -> NetworkSummary:
        trt = self.module()
        _builder, network, _parser = parse_onnx(trt, Path(onnx_path), make_logger(trt))
        return summarize(network)

    def build(
        self,
        onnx_path: Path,
        engine_path: Path,
        config: BuildConfig,
        verbose: bool = False,
        source_label: str | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> EngineArtifact:
        trt = self.module()
        onnx_path, engine_path = Path(onnx_path), Path(engine_path)
        if engine_path.resolve() == onnx_path.resolve():
            raise InvalidInputError(f"{engine_path}: the engine would overwrite its own ONNX input")
        source_sha256 = sha256_file(onnx_path)
        logger = make_logger(trt, verbose)
        facts: dict[str, Any] = {}
        monitor = progress_monitor(trt, progress) if progress and hasattr(trt, "IProgressMonitor") else None

        def configure(builder, builder_config) -> None:
            facts.update(self.configure(trt, builder, builder_config, config))
            facts["_builder_config"] = builder_config
            if monitor is not None:
                builder_config.progress_monitor = monitor

        blob, summary, profiles, seconds = build_serialized(trt, onnx_path, config, logger, configure)
        self.after_build(trt, facts.pop("_builder_config"), config)
        with atomic_path(engine_path) as tmp:
            tmp.write_bytes(blob)
        sidecar = {
            "format": SIDECAR_FORMAT,
            "backend": self.name,
            "backend_version": self.version(),
            "precision": config.precision,
            "profiles": {name: prof.to_dict() for name, prof in profiles[0].items()},
            "optimization_profiles": [{n: p.to_dict() for n, p in resolved.items()} for resolved in profiles],
            "source_onnx": source_label or str(onnx_path),
            "source_sha256": source_sha256,
            "engine_bytes": len(blob),
            "engine_sha256": hashlib.sha256(blob).hexdigest(),
            "build_seconds": round(seconds, 3),
            "build_options": {
                "strip_weights": config.strip_weights,
                "refittable": config.refittable or config.strip_weights,
                "version_compatible": config.version_compatible,
                "hardware_compatible": config.hardware_compatible,
                "workspace_mb": config.workspace_mb,
                "builder_optimization_level": config.builder_optimization_level,
            },
            "warnings": [m for level, m in logger.messages if level == "WARNING"][:20],
            **facts,
            "network": summary.to_dict(),
        }
        write_sidecar(engine_path, sidecar)
        return EngineArtifact(path=engine_path, sidecar=sidecar)

    def can_run(self) -> tuple[bool, str]:
        if not self.available():
            return False, f"{self.module_name} not installed"
        ok, why = gpu_status()
        return (True, "") if ok else (False, why)

    def _require_runtime(self) -> ModuleType:
        ok, why = self.can_run()
        if not ok:
            raise BackendUnavailableError(f"cannot run engines with backend '{self.name}': {why}")
        return self.module()

    def run(
        self, engine_path: Path, feeds: dict[str, np.ndarray], runtime_cache: RuntimeCache | None = None
    ) -> dict[str, np.ndarray]:
        trt = self._require_runtime()
        if runtime_cache is not None:
            require_support(self)
        return run_engine(trt, Path(engine_path).read_bytes(), feeds, make_logger(trt), runtime_cache)

    def refit(self, engine_path: Path, onnx_path: Path) -> bytes:
        """The engine's bytes with the ONNX's weights in it (needs a GPU)."""
        trt = self._require_runtime()
        return refit_engine(trt, Path(engine_path).read_bytes(), str(onnx_path), make_logger(trt))

    def inspect(self, engine_path: Path) -> dict[str, Any]:
        trt = self._require_runtime()
        return inspect_engine(trt, Path(engine_path).read_bytes(), make_logger(trt))
