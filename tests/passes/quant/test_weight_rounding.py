"""Calibrated int4 weight-only rounding: AWQ (passes/quant/awq.py) and GPTQ (passes/quant/gptq.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest

from calibration.data import from_feeds
from calibration.stats import TensorStats
from converter.core.ort_session import cpu_session
from passes.base import PassContext
from passes.model_utils import graph_to_model, import_graph
from passes.quant.awq import channel_scales, clipped_int4, output_error, scale_input
from passes.quant.formats import block_int4, dequantize_block
from passes.quant.gptq import gptq_int4
from passes.quant.quantize import Quantize
from tests.quant_graphs import correlated_feeds, norm_mlp


def _correlated(rows: int = 4000, k: int = 128, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    return (rng.standard_normal((rows, k)) @ mix * np.exp(rng.standard_normal(k))).astype(np.float32)


def _weight(k: int = 128, n: int = 48, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)


def _outputs(model: onnx.ModelProto, feeds: list[dict]) -> np.ndarray:
    session = cpu_session(model)
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def test_hessian_accumulated_batch_by_batch_equals_the_whole_batch():
    x = _correlated(rows=600, k=32)
    stats = TensorStats("x")
    for part in np.array_split(x.reshape(20, 30, 32), 4):
        stats.update(part, histogram=False, gram=True)
    exact = x.astype(np.float64).T @ x
    np.testing.assert_allclose(stats.gram, exact, rtol=1e-5, atol=1e-6 * np.abs(exact).max())  # fp32 products
    assert stats.gram_rows == 600


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_correlated_inputs(act_order):
    x, w = _correlated(), _weight()
    gram = x.T @ x
    q, scale = gptq_int4(w, gram, 32, act_order)
    assert q.dtype == ml_dtypes.int4 and scale.shape == (4, 48)
    rtn = dequantize_block(*block_int4(w, 32), 32)
    gptq = dequantize_block(q, scale, 32)
    assert output_error(w, gptq, gram) < 0.7 * output_error(w, rtn, gram)


def test_gptq_without_correlation_feeds_no_error_forward():
    """A diagonal Hessian feeds no error forward: GPTQ is then each block rounded to nearest on its
    clip-searched scale, code for code (AWQ's clip search alone gives the same)."""
    w = _weight()
    gram = np.diag(np.linspace(1.0, 2.0, 128))
    q, scale = gptq_int4(w, gram, 32, act_order=False)
    q0, s0 = clipped_int4(w, gram, 32)
    np.testing.assert_array_equal(np.asarray(q, np.int8), np.asarray(q0, np.int8))
    np.testing.assert_array_equal(scale, s0)


def test_awq_scales_never_lose_to_round_to_nearest_and_win_on_uneven_channels():
    x, w = _correlated(), _weight()
    gram = x.T @ x
    s, alpha = channel_scales([w], gram, 32)
    assert alpha > 0 and s.shape == (128,)
    rtn = dequantize_block(*block_int4(w, 32), 32)
    awq = dequantize_block(*block_int4(w * s[:, None], 32), 32) / s[:, None]
    assert output_error(w, awq, gram) < 0.9 * output_error(w, rtn, gram)
    # inputs of one magnitude everywhere: nothing to gain, alpha 0 (plain rounding) is kept or matched
    flat_s, _ = channel_scales([w], np.eye(128, dtype=np.float32) * 5.0, 32)
    np.testing.assert_allclose(flat_s, 1.0)


@pytest.mark.parametrize("producer", ["folded", "inserted"])
def test_awq_input_scaling_is_exact_before_rounding(producer):
    """x W = (x / s)(s W): with the weights scaled and not rounded the graph computes the same, whether
    1/s went into the producer's constant (an RMSNorm's gamma) or into a Mul before the layers."""
    model = norm_mlp()
    before = model.SerializeToString()
    graph = import_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    readers = [nodes["mm_q"], nodes["mm_k"]] if producer == "folded" else [nodes["mm_o"]]
    s = np.exp(np.random.default_rng(5).standard_normal(64)).astype(np.float32)
    how = scale_input(graph, readers[0].inputs[0], readers, (1.0 / s).astype(np.float32), "test")
    assert ("folded" in how) == (producer == "folded")
    for node in readers:
        node.inputs[1].values = np.asarray(node.inputs[1].values) * s[:, None]
    scaled = graph_to_model(graph, model)
    feeds = correlated_feeds(model)
    np.testing.assert_allclose(_outputs(scaled, feeds), _outputs(model, feeds), rtol=1e-4, atol=1e-4)
    assert model.SerializeToString() == before  # a folded gamma is a new constant, the source is untouched


def _quantized(algorithm: str, **options):
    model = norm_mlp()
    data = from_feeds(correlated_feeds(model), "test")
    q, result = Quantize(mode="int4-wo", block_size=16, algorithm=algorithm, **options).run_model(
        model, PassContext(opset=20, calibration=data)
    )
    feeds = correlated_feeds(model, seed=11)  # held out
    ref, out = _outputs(model, feeds), _outputs(q, feeds)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref)), result


def test_calibrated_algorithms_beat_round_to_nearest_on_held_out_inputs_and_report_each_layer():
    rtn, rtn_result = _quantized("rtn")
    awq, awq_result = _quantized("awq")
    gptq, gptq_result = _quantized("gptq")
    both, both_result = _quantized("awq-gptq")
    assert awq < rtn and gptq < rtn and both < rtn
    layers = gptq_result.details["weight_only"]
    assert set(layers) == {"mm_q", "mm_k", "mm_o"}
    assert all(v["algorithm"] == "gptq, act-order" and v["bits"] == 4 and v["block"] == 16 for v in layers.values())
    assert both_result.details["weight_only"]["mm_q"]["algorithm"] == "awq-gptq, act-order"
    assert all(v["error_on"] == "calibration outputs" and 0 < v["error"] < 0.1 for v in layers.values())
    assert rtn_result.details["weight_only"]["mm_q"]["error_on"] == "weights"
    scaled = awq_result.details["awq"]
    assert scaled["normed"]["layers"] == ["mm_q", "mm_k"] and "folded" in scaled["normed"]["scaling"]
    assert scaled["r"]["scaling"] == "a Mul before the layers"


def test_calibrated_algorithms_need_data_and_int4():
    assert Quantize(mode="int4-wo", algorithm="gptq").requires_calibration()
    assert not Quantize(mode="int4-wo").requires_calibration()
    with pytest.raises(ValueError, match="int4-wo"):
        Quantize(mode="int8", algorithm="awq")
    with pytest.raises(ValueError, match="not in"):
        Quantize(mode="int4-wo", algorithm="smart")


def test_each_layer_is_calibrated_on_the_quantized_layers_before_it():
    """Sequential calibration: mm_o's Hessian comes from relu(q + k) as the already quantized q/k
    layers compute it (here "quantized" = halved, to be visible), and one cut's Hessians at a time."""
    import onnx_graphsurgeon as gs

    from passes.quant.layerwise import quantize_sequentially
    from passes.quant.rules import place

    model = norm_mlp()
    batches = correlated_feeds(model)
    graph = import_graph(model)
    plan = place(graph, True, [], [], True, True, True, 16, None)
    seen: dict[str, np.ndarray] = {}

    def halve(sites, grams):
        assert {s.node.name for s in sites} in ({"mm_q", "mm_k"}, {"mm_o"})  # one cut's layers per call
        for site in sites:
            seen[site.node.name] = grams[site.node.inputs[0].name]
            const = site.node.inputs[1]
            site.node.inputs[1] = gs.Constant(f"{const.name}_half", np.asarray(const.values) * 0.5)
        return {}

    assert sorted(quantize_sequentially(model, graph, plan.weights, batches, halve)) == ["mm_k", "mm_o", "mm_q"]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    normed = np.concatenate([f["x"] for f in batches]).reshape(-1, 64).astype(np.float64) * weights["gamma"]
    r = np.maximum(normed @ (weights["Wq"] / 2) + normed @ (weights["Wk"] / 2), 0.0)
    np.testing.assert_allclose(seen["mm_q"], normed.T @ normed, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(seen["mm_o"], r.T @ r, rtol=1e-4, atol=1e-3)


def test_sequential_and_whole_model_calibration_both_beat_round_to_nearest():
    rtn, _ = _quantized("rtn")
    sequential, result = _quantized("gptq")
    whole, _ = _quantized("gptq", sequential=False)
    assert sequential < rtn and whole < rtn
    assert any("layer by layer" in note for note in result.notes)
