"""fuse-norms: LayerNorm / RMSNorm written in elementary ops, from torch, any spelling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output


class ManualLayerNorm(torch.nn.Module):
    def __init__(self, size: int, square_by_pow: bool, affine: bool):
        super().__init__()
        self.square_by_pow, self.affine = square_by_pow, affine
        self.gamma = torch.nn.Parameter(torch.linspace(0.5, 1.5, size))
        self.beta = torch.nn.Parameter(torch.linspace(-0.2, 0.2, size))

    def forward(self, x):
        x = x + 1.0
        d = x - x.mean(-1, keepdim=True)
        var = (d.pow(2) if self.square_by_pow else d * d).mean(-1, keepdim=True)
        y = d / torch.sqrt(var + 1e-5)
        return torch.tanh(y * self.gamma + self.beta if self.affine else y)


class ManualRMSNorm(torch.nn.Module):
    """As HF's LlamaRMSNorm writes it (rsqrt), or with a division."""

    def __init__(self, size: int, use_rsqrt: bool):
        super().__init__()
        self.use_rsqrt = use_rsqrt
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, size))

    def forward(self, x):
        x = x + 1.0
        ms = x.pow(2).mean(-1, keepdim=True) + 1e-6
        y = x * torch.rsqrt(ms) if self.use_rsqrt else x / torch.sqrt(ms)
        return torch.tanh(self.weight * y)


def _export(module, size: int, opset: int, path) -> onnx.ModelProto:
    torch.onnx.export(
        module.eval(),
        (torch.randn(2, 3, size),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b", 1: "s"}},
    )
    return onnx.load(str(path))


def _fuse(model, opset):
    return run_passes(model, [PassSpec("fold-constants"), PassSpec("fuse-norms")], PassContext(opset=opset))


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, 12), by_pow=st.booleans(), affine=st.booleans(), rows=st.integers(1, 3))
def test_property_layernorm_fuses_exactly(tmp_path_factory, size, by_pow, affine, rows):
    model = _export(ManualLayerNorm(size, by_pow, affine), size, 17, tmp_path_factory.mktemp("ln") / "ln.onnx")
    fused, records = _fuse(model, 17)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("LayerNormalization") == 1 and "ReduceMean" not in ops, (ops, records[1].rejected)
    x = np.random.default_rng(rows).standard_normal((rows, 4, size)).astype(np.float32)
    np.testing.assert_allclose(first_output(fused, {"x": x}), first_output(model, {"x": x}), atol=2e-5)
    _, again = run_passes(fused, [PassSpec("fuse-norms")], PassContext(opset=17))
    assert again[0].changed == {}


@pytest.mark.parametrize("use_rsqrt", [True, False])
def test_rmsnorm_fuses_at_opset_23(tmp_path, use_rsqrt):
    model = _export(ManualRMSNorm(8, use_rsqrt), 8, 17, tmp_path / "rms.onnx")
    _, records = _fuse(model, 17)
    assert records[1].changed == {} and "opset 17 < 23" in records[1].rejected[0]["reason"]
    upgraded, _ = run_passes(model, [PassSpec("upgrade-opset", {"target": 23})], PassContext(opset=17))
    fused, records = _fuse(upgraded, 23)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("RMSNormalization") == 1 and "ReduceMean" not in ops, ops
    x = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(first_output(fused, {"x": x}), first_output(model, {"x": x}), atol=2e-5)


def test_layernorm_over_wrong_axis_is_left_alone(tmp_path):
    class FirstAxisNorm(torch.nn.Module):
        def forward(self, x):
            d = x - x.mean(1, keepdim=True)
            return d / torch.sqrt((d * d).mean(1, keepdim=True) + 1e-5)

    model = _export(FirstAxisNorm(), 6, 17, tmp_path / "axis.onnx")
    fused, records = _fuse(model, 17)
    assert "LayerNormalization" not in [n.op_type for n in fused.graph.node]


class HalfRMSNorm(torch.nn.Module):
    """HF's LlamaRMSNorm on fp16 activations: normalised in float32, cast back, then scaled."""

    def __init__(self, size: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, size).half())

    def forward(self, x):
        h = torch.tanh(x)
        f = h.to(torch.float32)
        f = f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + 1e-6)
        return torch.tanh(self.weight * f.to(torch.float16))


def test_fp16_rmsnorm_between_casts_becomes_one_op_on_the_fp16_tensor(tmp_path):
    path = tmp_path / "half.onnx"
    torch.onnx.export(
        HalfRMSNorm(16).eval(),
        (torch.randn(2, 3, 16).half(),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "b", 1: "s"}},
    )
    model = onnx.load(str(path))
    upgraded, _ = run_passes(model, [PassSpec("upgrade-opset", {"target": 23})], PassContext(opset=17))
    fused, records = _fuse(upgraded, 23)
    ops = [n.op_type for n in fused.graph.node]
    assert ops == ["Tanh", "RMSNormalization", "Tanh"], ops  # both Casts and the scale Mul folded in
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float16)
    got, want = first_output(fused, {"x": x}), first_output(model, {"x": x})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
