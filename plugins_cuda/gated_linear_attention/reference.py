"""Torch definition of correct for GatedLinearAttention, and the two forms the kernels use.

Per batch and head, with q, k, g [T, Dk], v [T, Dv] and a state S [Dk, Dv]:

    S_t = diag(g_t) S_{t-1} + k_t v_tᵀ        o_t = S_tᵀ q_t        (gates g in (0, 1])

`gated_linear_attention` is that recurrence step by step, in float32, results cast
back to the inputs' dtype: the definition. `chunked` is the chunked-parallel form of
kernel.cu's prefill kernel (same chunking, same formulas) and `parallel` the fully
parallel masked form of the ONNX function body; the tests check both against the
recurrence. Shapes: q, k, g [B, H, T, Dk], v [B, H, T, Dv], state [B, H, Dk, Dv].
"""

from __future__ import annotations

import torch


def gated_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [B, H, T, Dv], final state [B, H, Dk, Dv]) by the recurrence."""
    dtype = q.dtype
    q, k, v, g, s = (t.to(torch.float32) for t in (q, k, v, g, state))
    outs = []
    for t in range(q.shape[2]):
        s = g[:, :, t, :, None] * s + k[:, :, t, :, None] * v[:, :, t, None, :]
        outs.append(torch.einsum("bhd,bhde->bhe", q[:, :, t], s))
    o = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return o.to(dtype), s.to(dtype)


def decode_step(q, k, v, g, state):
    """One decode step: q, k, g [B, H, Dk], v [B, H, Dv] -> (o [B, H, Dv], new state)."""
    o, s = gated_linear_attention(q[:, :, None], k[:, :, None], v[:, :, None], g[:, :, None], state)
    return o[:, :, 0], s


def chunked(q, k, v, g, state, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked-parallel form of kernel.cu (gla_chunked_*), in float32."""
    dtype = q.dtype
    q, k, v, g, s = (t.to(torch.float32) for t in (q, k, v, g, state))
    steps = q.shape[2]
    outs = []
    for t0 in range(0, steps, chunk):
        qc, kc, vc = q[:, :, t0 : t0 + chunk], k[:, :, t0 : t0 + chunk], v[:, :, t0 : t0 + chunk]
        lam = torch.cumsum(torch.log(g[:, :, t0 : t0 + chunk]), dim=2)  # [B, H, C, Dk]
        n = lam.shape[2]
        causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
        diff = lam[:, :, :, None, :] - lam[:, :, None, :, :]  # [B, H, C(r), C(s), Dk]
        decay = torch.exp(torch.where(causal[:, :, None], diff, torch.tensor(float("-inf"))))
        attn = torch.einsum("bhrd,bhsd,bhrsd->bhrs", qc, kc, decay)
        outs.append(torch.einsum("bhrd,bhde->bhre", qc * torch.exp(lam), s) + attn @ vc)
        last = lam[:, :, -1:, :]
        s = torch.exp(last).transpose(2, 3) * s + (kc * torch.exp(last - lam)).transpose(2, 3) @ vc
    o = torch.cat(outs, dim=2) if outs else v.new_zeros(v.shape)
    return o.to(dtype), s.to(dtype)


def parallel(q, k, v, g, state) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole sequence as one chunk: the form of the ONNX function body."""
    return chunked(q, k, v, g, state, chunk=max(1, q.shape[2]))


class ParallelGLA(torch.nn.Module):
    """Gated linear attention written the way a model author writes the parallel form
    (no initial state): what passes/custom_ops/gated_linear_attention.py recognises after export."""

    def forward(self, q, k, v, g):
        log_cum = torch.cumsum(torch.log(g), dim=2)  # [B, H, T, Dk]
        steps = q.shape[2]
        diff = log_cum.unsqueeze(3) - log_cum.unsqueeze(2)  # [B, H, T, T, Dk]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=q.device).tril()
        decay = torch.exp(diff.masked_fill(~causal[:, :, None], float("-inf")))
        scores = (q.unsqueeze(3) * k.unsqueeze(2) * decay).sum(-1)  # [B, H, T, T]
        return torch.matmul(scores, v)
