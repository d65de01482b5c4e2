"""Is there a usable CUDA GPU here? Asked of the driver, without importing a framework."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def gpu_status() -> tuple[bool, str]:
    """(True, "N device(s)") when the CUDA driver initialises with at least one device."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no GPU (CUDA driver libcuda.so.1 not found)"
    if libcuda.cuInit(0) != 0:
        return False, "no GPU (cuInit failed)"
    count = ctypes.c_int(0)
    if libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return False, "no GPU (the CUDA driver reports no devices)"
    return True, f"{count.value} CUDA device(s)"


def gpu_available() -> bool:
    return gpu_status()[0]
