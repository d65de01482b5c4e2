"""The packed weight layout shared by the kernel, the ONNX function, the plugin and the pass.

For `bits` in {2, 4}, P = 8 // bits weights share a byte. A weight matrix W [N, K]
(N output features, K the reduction axis) is stored as

    qweight uint8 [N, K // P]: weight (n, k) sits in byte k // P at bit offset (k % P) * bits
    scales  float [N, K // G]: one scale per group of G consecutive k (G in 32, 64, 128)
    zeros   float [N, K // G]: one integer-valued zero point per group in the scales' type
                              (|z| <= 128, exact in fp16/bf16; TensorRT refuses INT8
                              constants outside Q/DQ, so zero points are not int8)

and dequantises to W[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G].
Codes are unsigned (0 .. 2**bits - 1); signed or offset codes are shifted per group,
together with the group's zero point, which leaves q - z unchanged.
Only numpy here: the graph pass uses it without torch.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (2, 4)
SUPPORTED_GROUPS = (32, 64, 128)


def per_byte(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be 2 or 4, got {bits}")
    return 8 // bits


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint codes [N, K] (values < 2**bits) -> packed uint8 [N, K // P]."""
    p = per_byte(bits)
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % p:
        raise ValueError(f"pack: need a 2-D array with K divisible by {p}, got shape {q.shape}")
    if q.size and (q.min() < 0 or q.max() >= 1 << bits):
        raise ValueError(f"pack: codes must lie in [0, {(1 << bits) - 1}]")
    planes = q.astype(np.uint8).reshape(q.shape[0], -1, p)
    shifts = (np.arange(p, dtype=np.uint8) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(planes << shifts, axis=2).astype(np.uint8)


def unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """packed uint8 [N, K // P] -> uint8 codes [N, K]."""
    p = per_byte(bits)
    shifts = (np.arange(p, dtype=np.uint8) * bits).astype(np.uint8)
    planes = (np.asarray(packed, np.uint8)[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return planes.reshape(packed.shape[0], -1)


def dequantize(q: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int) -> np.ndarray:
    """W [N, K] in the scales' dtype from unpacked codes."""
    diff = q.astype(np.int32) - np.repeat(zeros.astype(np.int32), group_size, axis=1)
    return diff.astype(scales.dtype) * np.repeat(scales, group_size, axis=1)
