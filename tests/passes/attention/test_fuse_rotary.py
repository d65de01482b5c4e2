"""fuse-rotary: HF's rotary embedding (rotate_half, cos/sin of repeated frequencies) exported by
torch becomes RotaryEmbedding at opset 23, equal to the unfused graph at any batch; interleaved
rotary, partial rotary and opsets below 23 stay as they are, with a reason where it is rotary."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import run

HEADS, KV_HEADS, DIM = 4, 2, 16


class Rotary(torch.nn.Module):
    """q, k [B, H, S, D] -> their rotary embeddings, as transformers' Llama computes them."""

    def __init__(self, scaling: float = 1.0, interleaved: bool = False, dtype=torch.float32):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, DIM, 2).float() / DIM)))
        self.scaling, self.interleaved, self.dtype = scaling, interleaved, dtype

    def rotate(self, x):
        if self.interleaved:  # GPT-J: pairs (x0, x1), (x2, x3), ...: not what RotaryEmbedding's default does
            return torch.stack((-x[..., 1::2], x[..., ::2]), -1).flatten(-2)
        return torch.cat((-x[..., DIM // 2 :], x[..., : DIM // 2]), -1)

    def forward(self, q, k):
        pos = torch.arange(q.shape[2]).float()[None]
        freqs = (self.inv_freq[None, :, None] @ pos[:, None, :]).transpose(1, 2)
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos(), emb.sin()
        if self.scaling != 1.0:
            cos, sin = cos * self.scaling, sin * self.scaling
        cos, sin = cos.to(self.dtype).unsqueeze(1), sin.to(self.dtype).unsqueeze(1)
        return q * cos + self.rotate(q) * sin, k * cos + self.rotate(k) * sin


def _export(module: torch.nn.Module, path, dtype=torch.float32, opset: int = 23) -> onnx.ModelProto:
    """The module exported, folded and moved to `opset`."""
    q, k = torch.randn(1, HEADS, 5, DIM, dtype=dtype), torch.randn(1, KV_HEADS, 5, DIM, dtype=dtype)
    torch.onnx.export(
        module.eval(),
        (q, k),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["q", "k"],
        output_names=["q_embed", "k_embed"],
        dynamic_axes={"q": {0: "batch", 2: "seq"}, "k": {0: "batch", 2: "seq"}},
    )
    model = onnx.load(str(path))
    upgrade = PassSpec("upgrade-opset", {"target": opset})
    upgraded, _ = run_passes(model, [PassSpec("fold"), upgrade], PassContext(opset=17))
    return upgraded


def _feeds(batch: int, seq: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 10 + seq)
    return {
        "q": rng.standard_normal((batch, HEADS, seq, DIM)).astype(dtype),
        "k": rng.standard_normal((batch, KV_HEADS, seq, DIM)).astype(dtype),
    }


def _fuse(model: onnx.ModelProto, opset: int = 23):
    fused, records = run_passes(model, [PassSpec("fuse-rotary")], PassContext(opset=opset))
    return fused, records[0]


@pytest.mark.parametrize("scaling", [1.0, 0.5])
def test_hf_rotary_becomes_rotary_embedding_equal_at_any_batch(tmp_path, scaling):
    model = _export(Rotary(scaling), tmp_path / "rot.onnx")
    fused, record = _fuse(model)
    ops = [n.op_type for n in fused.graph.node]
    assert record.changed == {"rotary_fused": 2} and ops.count("RotaryEmbedding") == 2, (ops, record.rejected)
    assert "Neg" not in ops and ops.count("Expand") == 2  # cos and sin, shared by q and k (the same batch symbol)
    for batch, seq in ((1, 5), (3, 7), (2, 1)):
        inputs = _feeds(batch, seq)
        for got, want in zip(run(fused, inputs), run(model, inputs), strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    again, second = _fuse(fused)
    assert second.changed == {} and len(again.graph.node) == len(fused.graph.node)


def test_fp16_rotary_keeps_fp16_caches(tmp_path):
    model = _export(Rotary(dtype=torch.float16), tmp_path / "half.onnx", torch.float16)
    fused, record = _fuse(model)
    assert record.changed == {"rotary_fused": 2}
    inputs = _feeds(2, 6, np.float16)
    for got, want in zip(run(fused, inputs), run(model, inputs), strict=True):
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=4e-3, rtol=0)


def test_below_opset_23_rotary_is_rejected_with_the_reason(tmp_path):
    model = _export(Rotary(), tmp_path / "rot.onnx", opset=20)
    fused, record = _fuse(model, opset=20)
    assert record.changed == {} and len(record.rejected) == 2
    assert "opset 20 < 23" in record.rejected[0]["reason"]
    assert [n.op_type for n in fused.graph.node] == [n.op_type for n in model.graph.node]


def test_interleaved_rotary_is_not_this_pattern(tmp_path):
    model = _export(Rotary(interleaved=True), tmp_path / "gptj.onnx")
    fused, record = _fuse(model)
    assert record.changed == {}
    assert "RotaryEmbedding" not in [n.op_type for n in fused.graph.node]
