"""Torch definition of correct for GroupQuantMatMul, with packing and a group quantiser.

    y[m, n] = sum_k x[m, k] * W[n, k]  (+ bias[n]),   W[n, k] = (q[n, k] - z[n, g]) * s[n, g],  g = k // G

accumulated in float32 and rounded once to x's dtype; W is rounded to the scales'
dtype first (what the kernel's dequantisation produces). The optional bias [N] (x's
dtype) is added to the float32 sum before that single rounding, as the kernel does; the
ONNX function rounds the product first and then adds (one rounding more, within fp16
tolerance, and the same order as the MatMul -> Add it replaces). The layout of q, s and z
is packing.py's. This module re-implements pack/unpack in torch on purpose: the
tests check both implementations against each other.

The quantiser (`quantize`) is group-wise asymmetric min/max with an integer zero
point, so its output is exactly representable by ONNX DequantizeLinear
(opset 21, block_size). With `refine_steps > 0` it alternates, per group, between
re-rounding the codes and a least-squares refit of the scale (then the zero point),
in the spirit of decoupleQ's split into integer and float parts, keeping a step only
when the group's squared error drops. This is weight-space error only, without the
layer-input Hessian decoupleQ uses; the quantization issue's passes own calibration.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _per_byte(bits: int) -> int:
    if bits not in (2, 4):
        raise ValueError(f"bits must be 2 or 4, got {bits}")
    return 8 // bits


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint codes [N, K] -> uint8 [N, K // P]; weight k in byte k // P at bits (k % P) * bits."""
    p = _per_byte(bits)
    planes = q.to(torch.int32).reshape(q.shape[0], -1, p)
    out = torch.zeros(planes.shape[:2], dtype=torch.int32)
    for j in range(p):
        out |= planes[..., j] << (j * bits)
    return out.to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 [N, K // P] -> int32 codes [N, K]."""
    p = _per_byte(bits)
    wide = packed.to(torch.int32)
    planes = [(wide >> (j * bits)) & ((1 << bits) - 1) for j in range(p)]
    return torch.stack(planes, dim=-1).reshape(packed.shape[0], -1)


def dequantize(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """W [N, K] in the scales' dtype from unpacked codes."""
    diff = q.to(torch.int32) - zeros.to(torch.int32).repeat_interleave(group_size, dim=1)
    return diff.to(scales.dtype) * scales.repeat_interleave(group_size, dim=1)


def group_quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    bits: int,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x · dequant(W)ᵀ (+ bias [N]) for x [..., K]; float32 accumulation and bias, one rounding to x's dtype."""
    w = dequantize(unpack(qweight, bits), scales, zeros, group_size)
    y = x.to(torch.float32) @ w.to(torch.float32).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


@dataclass
class QuantizedWeight:
    """Unpacked codes and per-group parameters of one weight matrix W [N, K]."""

    q: torch.Tensor  # uint8 [N, K]
    scales: torch.Tensor  # [N, K // G], the requested dtype
    zeros: torch.Tensor  # [N, K // G], integer values, the scales' dtype
    bits: int
    group_size: int

    def packed(self) -> torch.Tensor:
        return pack(self.q, self.bits)

    def dequantized(self) -> torch.Tensor:
        return dequantize(self.q, self.scales, self.zeros, self.group_size)


def _codes(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / s) + z, 0, qmax)


def quantize(
    w: torch.Tensor, bits: int, group_size: int, refine_steps: int = 0, scale_dtype: torch.dtype = torch.float32
) -> QuantizedWeight:
    """Group-wise asymmetric quantisation of W [N, K] along K (min/max, optional refinement).

    Without refinement every element's error is at most half its group's scale (plus
    the rounding of the scale to `scale_dtype`).
    """
    _per_byte(bits)
    n, k = w.shape
    if k % group_size:
        raise ValueError(f"K={k} is not a multiple of the group size {group_size}")
    qmax = (1 << bits) - 1
    groups = w.detach().to(torch.float32).reshape(n, k // group_size, group_size)
    lo = groups.amin(-1, keepdim=True)
    hi = groups.amax(-1, keepdim=True)
    s = torch.clamp((hi - lo) / qmax, min=1e-8)
    s = s.to(scale_dtype).to(torch.float32)  # fit the codes to the scale that will be stored
    z = torch.clamp(torch.round(-lo / s), 0, qmax)
    q = _codes(groups, s, z, qmax)
    err = ((q - z) * s - groups).square().sum(-1, keepdim=True)
    for _ in range(refine_steps):
        # least squares for w ~ a * q + b with the codes fixed, then integer zero, then the scale again
        qm = q.mean(-1, keepdim=True)
        wm = groups.mean(-1, keepdim=True)
        var = (q - qm).square().sum(-1, keepdim=True)
        a = ((q - qm) * (groups - wm)).sum(-1, keepdim=True) / torch.clamp(var, min=1e-12)
        a = torch.where(a > 1e-8, a, s)
        z_new = torch.clamp(torch.round(-(wm - a * qm) / a), 0, qmax)
        d = q - z_new
        s_new = (groups * d).sum(-1, keepdim=True) / torch.clamp(d.square().sum(-1, keepdim=True), min=1e-12)
        s_new = torch.where(s_new > 1e-8, s_new, s).to(scale_dtype).to(torch.float32)
        q_new = _codes(groups, s_new, z_new, qmax)
        err_new = ((q_new - z_new) * s_new - groups).square().sum(-1, keepdim=True)
        better = err_new < err
        s, z, q, err = (
            torch.where(better, new, old) for new, old in ((s_new, s), (z_new, z), (q_new, q), (err_new, err))
        )
    return QuantizedWeight(
        q=q.reshape(n, k).to(torch.uint8),
        scales=s.squeeze(-1).to(scale_dtype),
        zeros=z.squeeze(-1).to(scale_dtype),
        bits=bits,
        group_size=group_size,
    )
