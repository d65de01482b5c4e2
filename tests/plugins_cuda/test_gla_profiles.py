"""GatedLinearAttention in one engine with a prefill and a decode profile, like a KV-cache decoder:
the prompt (T tokens, initial state) and the recurrent step (T = 1, carried state)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from converter.core.profiles import ShapeProfile
from plugins_cuda import DOMAIN
from plugins_cuda.gated_linear_attention import onnx as gla_onnx
from plugins_cuda.onnx_common import attach_functions
from tests.onnx_helpers import run

H, DK, DV = 2, 16, 16


def _model() -> onnx.ModelProto:
    def value(name: str, last: int | str, mid: str = "T") -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT16, ["B", H, mid, last])

    inputs = [value("q", DK), value("k", DK), value("v", DV), value("g", DK), value("state", DV, DK)]
    outputs = [value("o", DV), value("state_out", DV, DK)]
    node = helper.make_node(gla_onnx.OP, gla_onnx.INPUTS, gla_onnx.OUTPUTS, domain=DOMAIN, name="gla")
    graph = helper.make_graph([node], "gla", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    attach_functions(model, {gla_onnx.OP: gla_onnx.function_proto})
    return model


def _profile(t: tuple[int, int, int]) -> dict[str, ShapeProfile]:
    def shape(last: int) -> ShapeProfile:
        return ShapeProfile(*((b, H, n, last) for b, n in zip((1, 1, 2), t, strict=True)))

    fixed = ShapeProfile((1, H, DK, DV), (1, H, DK, DV), (2, H, DK, DV))
    return {"q": shape(DK), "k": shape(DK), "v": shape(DV), "g": shape(DK), "state": fixed}


def test_prefill_then_recurrent_decode_equals_the_whole_sequence():
    rng = np.random.default_rng(0)
    model = _model()
    t = 9
    q, k, g = (rng.standard_normal((1, H, t, DK)).astype(np.float16) for _ in range(3))
    g = (1 / (1 + np.exp(-g.astype(np.float32)))).astype(np.float16)  # gates in (0, 1)
    v = rng.standard_normal((1, H, t, DV)).astype(np.float16)
    zero = np.zeros((1, H, DK, DV), np.float16)
    whole, _ = run(model, {"q": q, "k": k, "v": v, "g": g, "state": zero})
    _, state = run(model, {"q": q[:, :, :8], "k": k[:, :, :8], "v": v[:, :, :8], "g": g[:, :, :8], "state": zero})
    last, _ = run(model, {"q": q[:, :, 8:], "k": k[:, :, 8:], "v": v[:, :, 8:], "g": g[:, :, 8:], "state": state})
    np.testing.assert_allclose(last[:, :, 0].astype(np.float32), whole[:, :, 8].astype(np.float32), atol=2e-2)


def test_one_engine_holds_the_chunked_prefill_and_the_recurrent_decode_profile(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from converter.backends import get_backend
    from converter.backends.base import BuildConfig

    onnx.save(_model(), tmp_path / "gla.onnx")
    config = BuildConfig(profile_sets=[_profile((1, 32, 64)), _profile((1, 1, 1))], target_gpus=["sm89"])
    side = get_backend("tensorrt-rtx").build(tmp_path / "gla.onnx", tmp_path / "gla.engine", config).sidecar
    assert [p["q"]["max"] for p in side["optimization_profiles"]] == [[2, H, 64, DK], [2, H, 1, DK]]
    assert side["engine_bytes"] > 0
