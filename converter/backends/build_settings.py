"""What a BuildConfig sets on TensorRT's builder beyond profiles: build options, the fp32
attention fallback, and the progress monitor (shared by both nvinfer backends)."""

from __future__ import annotations

import time
from types import ModuleType

from converter.backends.base import BuildConfig
from converter.core.errors import UnsupportedError
from converter.core.progress import Step


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


def set_options(trt: ModuleType, builder_config, config: BuildConfig) -> None:
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


def progress_monitor(trt: ModuleType, report):
    """TensorRT's IProgressMonitor as progress Steps through `report`: each top-level phase's start,
    steps at every tenth and end (a build of a large model sits minutes in one phase; a terminal
    draws a bar: converter/cli/progress.py)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                self.steps[phase_name], self.started[phase_name] = num_steps, time.perf_counter()
                report(Step(f"engine build: {phase_name}", 0, num_steps))

        def step_complete(self, phase_name, step):
            total = self.steps.get(phase_name)
            if total and (step + 1) % max(1, total // 10) == 0:  # tenths: a plain log stays short
                report(Step(f"engine build: {phase_name}", step + 1, total))
            return True  # never cancel

        def phase_finish(self, phase_name):
            if phase_name in self.started:
                total, seconds = self.steps[phase_name], time.perf_counter() - self.started.pop(phase_name)
                report(Step(f"engine build: {phase_name}", total, total, f"done in {seconds:.1f} s"))

    return Monitor()
