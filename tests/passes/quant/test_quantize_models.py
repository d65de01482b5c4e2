"""Quantization on the real demos: MiniLM on real sentences, EfficientNet-Lite0 on photo crops (slow)."""

from __future__ import annotations

import pytest

from calibration.data import from_feeds
from converter import api
from converter.demos.models import efficientnet_feeds, minilm_feeds

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folded(tmp_path_factory):
    def make(name: str):
        folder = tmp_path_factory.mktemp(name)
        api.export(name, folder / "model.onnx")
        api.optimize(folder / "model.onnx", folder / "model.opt.onnx", passes=["fold"])
        return folder / "model.opt.onnx"

    return make


def test_minilm_int8_every_matmul_on_real_sentences(folded, tmp_path):
    from converter.backends import get_backend

    model = folded("minilm")
    feeds = minilm_feeds(12, 16, max_length=64)  # 192 docstring sentences
    calib, val = from_feeds(feeds[:8], "sentences[:128]"), from_feeds(feeds[8:], "sentences[128:192]")
    result = api.quantize(
        model, tmp_path / "q.onnx", mode="int8", calib=calib, method="minmax", smoothquant=0.9, validation=val
    )
    report = result.report
    assert report["qdq"]["qdq_pairs"] == 48  # every MatMul's activations, attention's two BMMs included
    assert report["accuracy"]["data"] == "validation" and report["accuracy"]["mean_cosine"] >= 0.99
    layers = get_backend("tensorrt-rtx").parse(result.path).layer_types
    assert layers["QUANTIZE"] == 48 and layers["DEQUANTIZE"] == 48 + 36


def test_efficientnet_int8_on_photo_crops_and_convert_recipe(folded, tmp_path):
    model = folded("efficientnet-lite0")
    feeds = efficientnet_feeds(4, 8)  # the demo's real crops
    result = api.quantize(
        model,
        tmp_path / "q.onnx",
        calib=from_feeds(feeds[:2]),
        method="mse",
        smoothquant="off",
        validation=from_feeds(feeds[2:]),
    )
    accuracy = result.report["accuracy"]
    assert accuracy["top1_agreement"] >= 0.9 and accuracy["mean_cosine"] > 0.98
    # the same step inside convert: the recipe's quantize pass gets the demo's sample data
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "passes: [fold, {name: quantize, options: {method: mse}}]\n"
        "target_gpus: [sm89]\n"
        "tolerances: {atol: 10.0, rtol: 10.0, min_cosine: 0.98}\n"
    )
    converted = api.convert("efficientnet-lite0", tmp_path / "out", recipe=recipe)
    record = converted.report["passes"][-1]
    assert record["name"] == "quantize" and record["changed"]["activation_qdq"] > 40
    assert converted.report["network"]["layer_types"]["QUANTIZE"] > 40
    assert converted.report["verification"][-2]["status"] == "pass"  # model.opt.onnx vs torch
