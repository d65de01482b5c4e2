"""Full TensorRT backend: builds on (and for) the GPU it runs on; plugins; runs engines.

Chosen automatically when `import tensorrt` works. Full TensorRT's builder needs a
GPU, so on machines without one (CI here) this backend is unavailable or fails at
build time, and trtforge uses TensorRT-RTX instead. Networks are created strongly
typed, like TensorRT-RTX's, so a recipe produces the same precision on both.
A timing cache file is read before and written after each build.

Custom ops (plugins_cuda/, domain `trtforge`): before parsing, `plugins_cuda.trt_plugins`
registers the ahead-of-time plugins when `tensorrt.plugin` and nvcc are there and hands
the parser a copy whose trtforge nodes map to them; otherwise the parser inlines the
ONNX function bodies, as TensorRT-RTX does. The sidecar records which ("plugins").
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from converter.backends.base import BuildConfig
from converter.backends.nvinfer import NvinferBackend
from converter.core.errors import UnsupportedError
from converter.core.model_io import atomic_write_bytes


class TensorRTBackend(NvinferBackend):
    name = "tensorrt"
    module_name = "tensorrt"
    supports_plugins = True  # runs trtforge's CUDA plugins (passes with `needs_plugins` pay off)
    plugin_mode = "none"  # set per build by the custom-op hook below

    def parse(self, onnx_path: Path):
        from plugins_cuda.trt_plugins import onnx_for_tensorrt

        with onnx_for_tensorrt(Path(onnx_path)) as (path, _mode):
            return super().parse(path)

    def build(self, onnx_path: Path, engine_path: Path, config: BuildConfig, **options: Any):
        """NvinferBackend.build on the graph with its custom ops mapped to plugins (or kept inlined)."""
        from plugins_cuda.trt_plugins import onnx_for_tensorrt

        options["source_label"] = options.get("source_label") or str(onnx_path)
        with onnx_for_tensorrt(Path(onnx_path)) as (path, self.plugin_mode):
            return super().build(path, engine_path, config, **options)

    def check_config(self, config: BuildConfig) -> None:
        if any(t.lower() not in ("", "current") for t in config.target_gpus):
            raise UnsupportedError(
                "full TensorRT builds for the GPU it runs on: --target-gpu needs the tensorrt-rtx backend"
            )

    def configure(self, trt: ModuleType, builder, builder_config, config: BuildConfig) -> dict[str, Any]:
        self.check_config(config)
        facts: dict[str, Any] = {"targets": ["current"], "strongly_typed": True, "plugins": self.plugin_mode}
        if config.timing_cache:
            path = Path(config.timing_cache)
            cache = builder_config.create_timing_cache(path.read_bytes() if path.exists() else b"")
            builder_config.set_timing_cache(cache, ignore_mismatch=False)
            facts["timing_cache"] = str(path)
        return facts

    def after_build(self, trt: ModuleType, builder_config, config: BuildConfig) -> None:
        if config.timing_cache:
            cache = builder_config.get_timing_cache()
            atomic_write_bytes(config.timing_cache, bytes(memoryview(cache.serialize())))
