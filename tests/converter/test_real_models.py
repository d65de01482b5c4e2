"""End to end on the real pretrained models (slow: tens of seconds each)."""

from __future__ import annotations

import numpy as np
import pytest

from converter import api

pytestmark = pytest.mark.slow


def _comparison(report, candidate):
    return next(c for c in report["verification"] if c["candidate"] == candidate)


def test_minilm_default_conversion_fp32(tmp_path):
    result = api.convert(out=tmp_path / "minilm")  # the embedded default
    report = result.report
    assert report["input"]["model"] == "minilm" and report["input"]["samples"]["source"] == "demo:minilm"
    for candidate in ("model.onnx", "model.opt.onnx"):
        metrics = _comparison(report, candidate)["outputs"][0]
        assert metrics["cosine"] >= 0.9999 and metrics["passed"]
    assert result.engine.stat().st_size > 50e6  # 22.7M fp32 params
    assert report["network"]["layer_types"]["MATRIX_MULTIPLY"] >= 36  # 6 layers x (q,k,v,o,ff1,ff2)
    assert report["passes"][1]["changed"]["nodes_folded"] > 50
    assert result.passed


def test_minilm_fp16_engine_is_half_size(tmp_path):
    result = api.convert("minilm", out=tmp_path / "minilm16", precision="fp16", target_gpus=["sm89"])
    metrics = _comparison(result.report, "model.opt.onnx")["outputs"][0]
    assert metrics["cosine"] >= 0.999
    assert result.report["network"]["tensor_dtypes"]["HALF"] > result.report["network"]["tensor_dtypes"].get("FLOAT", 0)
    assert result.engine.stat().st_size < 60e6


def test_efficientnet_lite0_classifies_real_photos(tmp_path):
    result = api.convert("efficientnet-lite0", out=tmp_path / "eff")
    metrics = _comparison(result.report, "model.opt.onnx")["outputs"][0]
    assert metrics["top1_agreement"] == 1.0 and metrics["cosine"] >= 0.9999
    assert result.report["network"]["layer_types"]["CONVOLUTION"] == 49


def test_minilm_dynamo_export_matches_torch(tmp_path):
    from converter.pipelines.model_ref import resolve_spec
    from converter.verification.compare import OnnxRunner

    spec = resolve_spec("minilm")
    exported = api.export("minilm", tmp_path / "dyn.onnx", exporter="dynamo")
    assert exported.opset == 18
    feeds = spec.sample_feeds(1, 3)[0]
    out = OnnxRunner(exported.path).run(feeds)["sentence_embedding"]
    import torch

    with torch.no_grad():
        ref = spec.module()(*(torch.from_numpy(feeds[n]) for n in spec.input_names)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
