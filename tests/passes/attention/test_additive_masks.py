"""Attention with several additive terms on the scores (relative-position bias, ALiBi, padding,
causal), exported from torch: one Attention op whose attn_mask is their sum, outputs unchanged."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from passes.attention.fuse_attention import FuseAttention
from passes.base import PassContext
from tests.onnx_helpers import first_output

HEADS, DIM = 4, 32


class BiasedAttention(torch.nn.Module):
    """One self-attention layer whose scores get the additive terms of `kind`:

    - "t5": a learned relative-position bias (T5's buckets, clamped distance) + padding mask;
    - "alibi": ALiBi's per-head slopes times the distance + an additive causal mask (triu -inf);
    - "causal_bias_padding": a learned [H, S, S] bias + causal -inf + padding finfo.min (3 terms).
    """

    def __init__(self, kind: str, max_len: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.out = torch.nn.Linear(DIM, DIM)
        self.buckets = torch.nn.Embedding(17, HEADS)
        self.bias = torch.nn.Parameter(torch.randn(HEADS, max_len, max_len))

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, HEADS, DIM // HEADS).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(DIM // HEADS)
        position = torch.arange(s, device=x.device)
        distance = position[None, :] - position[:, None]
        padding = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        if self.kind == "t5":
            bias = self.buckets(distance.clamp(-8, 8) + 8).permute(2, 0, 1)[None]
            scores = scores + bias
            scores = scores + padding
        elif self.kind == "alibi":
            slopes = 2.0 ** (-8.0 * torch.arange(1, HEADS + 1, dtype=torch.float32) / HEADS)
            scores = scores + (slopes[:, None, None] * distance.float()[None])[None]
            scores = scores + torch.full((s, s), float("-inf")).triu(1)
        else:
            scores = scores + self.bias[None, :, :s, :s]
            scores = scores + torch.full((s, s), float("-inf")).triu(1)
            scores = scores + padding
        out = torch.softmax(scores, dim=-1) @ v
        return self.out(out.transpose(1, 2).reshape(b, s, DIM))


def _export(kind: str, path) -> onnx.ModelProto:
    x, mask = torch.randn(2, 8, DIM), torch.ones(2, 8, dtype=torch.int64)
    axes = {"x": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    torch.onnx.export(
        BiasedAttention(kind).eval(),
        (x, mask),
        str(path),
        dynamo=False,
        input_names=["x", "attention_mask"],
        output_names=["y"],
        dynamic_axes=axes,
        opset_version=17,
    )
    return onnx.load(str(path))


@pytest.mark.parametrize(
    ("kind", "variant"),
    [("t5", "bert"), ("alibi", "causal_masked"), ("causal_bias_padding", "causal_masked")],
)
def test_additive_terms_are_summed_into_one_attn_mask(kind, variant, tmp_path):
    model = _export(kind, tmp_path / "m.onnx")
    fused, result = FuseAttention().run_model(model, PassContext(opset=17))
    assert result.changed == {f"attention_fused_{variant}": 1, "opset_upgraded": 1}, result.rejected
    assert [n.op_type for n in fused.graph.node].count("Attention") == 1
    assert "Softmax" not in {n.op_type for n in fused.graph.node}
    rng = np.random.default_rng(0)
    for length in (5, 12):  # not the traced length
        mask = np.ones((2, length), np.int64)
        mask[1, length - 2 :] = 0  # padding at the end of the second row
        feeds = {"x": rng.standard_normal((2, length, DIM)).astype(np.float32), "attention_mask": mask}
        feeds = {i.name: feeds[i.name] for i in model.graph.input}  # ALiBi's graph reads no mask
        before, after = first_output(model, feeds), first_output(fused, feeds)
        np.testing.assert_allclose(after, before, atol=2e-6, rtol=0)


def test_additive_terms_of_different_types_are_still_refused(tmp_path):
    from passes.attention.masks import MaskTerm, check_terms

    terms = [MaskTerm("add", None, np.dtype(np.float32)), MaskTerm("add", None, np.dtype(np.float16))]

    class NoFacts:
        def rank(self, tensor):
            return None

    assert "different types" in check_terms(terms, NoFacts())


def test_the_summed_mask_builds_with_tensorrt_rtx(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from converter.backends import get_backend
    from converter.backends.base import BuildConfig
    from converter.core.profiles import ShapeProfile

    fused, _ = FuseAttention().run_model(_export("causal_bias_padding", tmp_path / "m.onnx"), PassContext(opset=17))
    onnx.save(fused, tmp_path / "fused.onnx")
    profiles = {
        "x": ShapeProfile((1, 1, DIM), (2, 8, DIM), (4, 32, DIM)),
        "attention_mask": ShapeProfile((1, 1), (2, 8), (4, 32)),
    }
    config = BuildConfig(profiles=profiles, target_gpus=["sm89"])
    side = get_backend("tensorrt-rtx").build(tmp_path / "fused.onnx", tmp_path / "m.engine", config).sidecar
    assert side["network"]["layer_types"]["ATTENTION_INPUT"] == 1
