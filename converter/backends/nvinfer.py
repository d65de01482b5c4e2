"""Shared nvinfer code for full TensorRT and TensorRT-RTX.

Both Python packages expose the same builder/parser/runtime API (`tensorrt` and
`tensorrt_rtx` modules), so parsing, summarising, profile setup, building, error
mapping and engine execution are written once here, taking the module as an argument.
The two backend modules only say what differs (targets, timing cache, plugins).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
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
    sidecar_path_for,
)
from converter.core.errors import BackendUnavailableError, BuildError, InvalidInputError, UnsupportedError
from converter.core.gpu import gpu_status
from converter.core.model_io import atomic_path, atomic_write_text, sha256_file


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


def _short(text: str) -> str:
    """First informative line of a TensorRT message, without source-location noise."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[-1] if lines else str(text)
    return re.sub(r"\s*\(?In \w+ at [^)]*\)?", "", line).strip()


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
            raise BuildError(f"{onnx_path}: the TensorRT ONNX parser failed: {_short(' '.join(logger.errors()))}")
        err = parser.get_error(0)
        op = err.node_operator()
        where = f"node '{err.node_name()}' ({op})" if err.node_name() or op else "graph"
        desc = _short(err.desc())
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


def progress_monitor(trt: ModuleType, report):
    """TensorRT's IProgressMonitor as lines through `report`: each top-level phase's start and
    end, and its steps at every tenth (a build of a large model sits minutes in one phase)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.steps[phase_name], self.started[phase_name] = num_steps, time.perf_counter()
                report(f"engine build: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name)
            if total and total >= 10 and (step + 1) % max(1, total // 10) == 0:
                report(f"engine build: {phase_name} {step + 1}/{total}")
            return True  # never cancel

        def phase_finish(self, phase_name):
            if phase_name in self.started:
                report(f"engine build: {phase_name} done in {time.perf_counter() - self.started.pop(phase_name):.1f} s")

    return Monitor()


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
            return BuildError(f"{onnx_path.name}: node '{name}': {_short(messages[-1] if messages else text)}")
    return BuildError(f"{onnx_path.name}: engine build failed: {_short(messages[-1] if messages else text)}")


def allow_decomposed_attention(trt: ModuleType, network) -> int:
    """Let every fp32 attention fall back to its decomposed form; returns how many.

    TensorRT's fused attention kernels take fp16/bf16 (and fp8): an fp32 ATTENTION pair
    otherwise fails the build with "not supported by a dedicated kernel". The flag only
    permits the fallback: an attention that has a kernel still gets it.
    """
    count = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type != trt.LayerType.ATTENTION_INPUT:
            continue
        layer.__class__ = trt.IAttentionInputLayer  # get_layer returns the base class
        attention = layer.attention
        if attention.get_input(0).dtype == trt.DataType.FLOAT and not attention.decomposable:
            attention.decomposable = True
            count += 1
    return count


_OPTION_FLAGS = {  # BuildConfig field -> the builder flags it sets
    "strip_weights": ("STRIP_PLAN", "REFIT_IDENTICAL"),
    "refittable": ("REFIT",),
    "version_compatible": ("VERSION_COMPATIBLE",),
}


def _set_options(trt: ModuleType, builder_config, config: BuildConfig) -> None:
    """The build options a flag or attribute expresses; one this TensorRT lacks is an UnsupportedError."""
    for option, flags in _OPTION_FLAGS.items():
        if not getattr(config, option):
            continue
        for flag in flags:
            if not hasattr(trt.BuilderFlag, flag):
                raise UnsupportedError(f"{option.replace('_', '-')}: {trt.__name__} {trt.__version__} has no {flag}")
            builder_config.set_flag(getattr(trt.BuilderFlag, flag))
    if config.hardware_compatible:
        level = getattr(getattr(trt, "HardwareCompatibilityLevel", None), "AMPERE_PLUS", None)
        if level is None:
            raise UnsupportedError(f"hardware-compatible: {trt.__name__} {trt.__version__} has no AMPERE_PLUS level")
        builder_config.hardware_compatibility_level = level


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
    _set_options(trt, builder_config, config)
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


def _profile_for(trt: ModuleType, engine, feeds: dict[str, np.ndarray]) -> int:
    """The first optimization profile whose ranges hold every fed shape (a cache model's
    engine has a prefill and a decode profile); 0 when none does (set_input_shape then says why)."""
    inputs = [
        engine.get_tensor_name(i)
        for i in range(engine.num_io_tensors)
        if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.INPUT
    ]
    for index in range(engine.num_optimization_profiles):
        ranges = {name: engine.get_tensor_profile_shape(name, index) for name in inputs if name in feeds}
        if all(
            all(lo <= d <= hi for lo, d, hi in zip(low, feeds[name].shape, high, strict=False))
            for name, (low, _opt, high) in ranges.items()
        ):
            return index
    return 0


def run_engine(trt: ModuleType, engine_bytes: bytes, feeds: dict[str, np.ndarray], logger) -> dict[str, np.ndarray]:
    """Execute an engine on the GPU through torch CUDA tensors (GPU machines only).

    Not exercised in CI (no GPU there); kept small and on the documented
    TensorRT 10 tensor-address API so both runtimes share it.
    """
    import torch  # torch is the CUDA memory manager here; only imported on GPU machines

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildError(f"engine could not be deserialized: {_short(' '.join(logger.errors()))}")
    context = engine.create_execution_context()
    stream = torch.cuda.current_stream()
    profile = _profile_for(trt, engine, feeds)
    if profile:
        context.set_optimization_profile_async(profile, stream.cuda_stream)
    keep: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            if name not in feeds:
                raise InvalidInputError(f"engine input '{name}' missing from the feeds")
            wanted = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=wanted)).cuda()
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidInputError(
                    f"engine input '{name}': shape {list(tensor.shape)} is outside the engine's optimization profile"
                )
            keep[name] = tensor
            context.set_tensor_address(name, tensor.data_ptr())
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise UnsupportedError(
                    f"engine output '{name}' has a data-dependent shape {list(shape)}: not supported"
                )
            dtype = torch.from_numpy(np.zeros(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
            outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            context.set_tensor_address(name, outputs[name].data_ptr())
    if not context.execute_async_v3(stream.cuda_stream):
        raise BuildError(f"engine execution failed: {_short(' '.join(logger.errors()))}")
    stream.synchronize()
    return {name: tensor.cpu().numpy() for name, tensor in outputs.items()}


def inspect_engine(trt: ModuleType, engine_bytes: bytes, logger) -> dict[str, Any]:
    """Per-layer information from the engine inspector (needs a GPU to deserialize)."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise BuildError(f"engine could not be deserialized: {_short(' '.join(logger.errors()))}")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    return json.loads(text)


class NvinferBackend:
    """Backend on an nvinfer-style Python module; subclasses say what differs."""

    name = ""
    module_name = ""

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
        atomic_write_text(sidecar_path_for(engine_path), json.dumps(sidecar, indent=1))
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

    def run(self, engine_path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt = self._require_runtime()
        return run_engine(trt, Path(engine_path).read_bytes(), feeds, make_logger(trt))

    def inspect(self, engine_path: Path) -> dict[str, Any]:
        trt = self._require_runtime()
        return inspect_engine(trt, Path(engine_path).read_bytes(), make_logger(trt))
