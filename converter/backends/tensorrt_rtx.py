"""TensorRT-RTX backend: ahead-of-time engine builds on a machine without a GPU.

`tensorrt-rtx-cu13` (import `tensorrt_rtx`) builds for chosen compute capabilities
(Turing to Blackwell: sm75, sm80, sm86, sm89, sm120, sm121), several in one engine.
What it cannot do, by design of TensorRT-RTX:
- it is strongly typed: precision comes from the graph (see passes/precision/precision.py);
- it has no timing cache (kernels are tuned at run time; a runtime cache lives there);
- it has no plugin API: trtforge custom ops reach it as ONNX local functions, which
  its parser inlines;
- Hopper (sm90) and Jetson (sm87, sm110) need full TensorRT.
Running or inspecting an engine needs a GPU; building does not.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from converter.backends.base import BuildConfig
from converter.backends.nvinfer import NvinferBackend
from converter.core.errors import InvalidInputError, UnsupportedError
from converter.core.gpu import gpu_status
from converter.core.targets import TARGETS, expand_targets, why_not

# RTX boxes of the last three generations: Ampere, Ada, Blackwell.
DEFAULT_TARGETS = ["sm86", "sm89", "sm120"]


def normalize_target(text: str) -> str:
    """'sm86', 'SM_86', '86', '8.6' -> 'sm86'."""
    cleaned = text.strip().lower().replace("_", "").removeprefix("sm").replace(".", "")
    if not re.fullmatch(r"\d{2,3}", cleaned):
        raise InvalidInputError(
            f"--target-gpu '{text}': expected a compute capability like sm86 or 8.6, or a target ({', '.join(TARGETS)})"
        )
    return f"sm{cleaned}"


class TensorRTRTXBackend(NvinferBackend):
    name = "tensorrt-rtx"
    module_name = "tensorrt_rtx"
    supports_plugins = False  # runs trtforge's CUDA plugins (passes with `needs_plugins` pay off)
    supports_runtime_cache = True

    def targets(self, trt: ModuleType, config: BuildConfig) -> tuple[list[str], dict[str, str]]:
        """The normalized targets of `config` and the module's name for each; unsupported ones refused."""
        targets = [normalize_target(t) for t in expand_targets(list(config.target_gpus or DEFAULT_TARGETS))]
        supported = {m.lower(): m for m in trt.ComputeCapability.__members__ if m.startswith("SM")}
        missing = [t for t in targets if t not in supported]
        if missing:
            reasons = "; ".join(filter(None, (why_not(t) for t in missing)))
            reachable = [n for n, t in TARGETS.items() if set(t.compute) <= set(supported)]
            raise UnsupportedError(
                f"TensorRT-RTX cannot target {', '.join(missing)}{f' ({reasons})' if reasons else ''}; "
                f"it builds {', '.join(reachable)} ({', '.join(sorted(supported))})"
            )
        return targets, supported

    def check_config(self, config: BuildConfig) -> None:
        self.targets(self.module(), config)
        if config.version_compatible or config.hardware_compatible:
            raise UnsupportedError(
                "--version-compatible / --hardware-compatible are full TensorRT's (its lean runtime and Ampere+ "
                "engines); a TensorRT-RTX engine names its targets instead (--target); build with --backend tensorrt"
            )
        if config.strip_weights or config.refittable:
            has_gpu, why = gpu_status()
            if not has_gpu:
                raise UnsupportedError(
                    "--strip-weights / --refit: TensorRT-RTX builds a refittable engine only with a GPU (its refit "
                    f"path compiles on the device), and this machine has none ({why})"
                )

    def configure(self, trt: ModuleType, builder, builder_config, config: BuildConfig) -> dict[str, Any]:
        targets, supported = self.targets(trt, config)
        builder_config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            builder_config.set_compute_capability(getattr(trt.ComputeCapability, supported[target]), index)
        notes = []
        if config.timing_cache:
            notes.append("timing cache ignored: TensorRT-RTX tunes kernels at run time (runtime cache)")
        return {
            "targets": targets,
            "strongly_typed": True,
            "plugins": "none (ONNX functions inlined)",
            "notes": notes,
        }
