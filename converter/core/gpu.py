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


CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 75, 76


def gpu_devices() -> tuple[list[dict], str | None]:
    """([{index, name, compute}], CUDA driver version "13.0") from the driver; ([], None) without one."""
    if not gpu_available():
        return [], None
    libcuda = ctypes.CDLL("libcuda.so.1")
    version = ctypes.c_int(0)
    libcuda.cuDriverGetVersion(ctypes.byref(version))
    count = ctypes.c_int(0)
    libcuda.cuDeviceGetCount(ctypes.byref(count))
    devices = []
    for index in range(count.value):
        device, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        name = ctypes.create_string_buffer(256)
        libcuda.cuDeviceGet(ctypes.byref(device), index)
        libcuda.cuDeviceGetName(name, 256, device)
        libcuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device)
        libcuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device)
        devices.append(
            {"index": index, "name": name.value.decode(errors="replace"), "compute": f"sm{major.value}{minor.value}"}
        )
    return devices, f"{version.value // 1000}.{version.value % 1000 // 10}"
