"""passes/quant/quantize.py and friends on small known graphs: placement, formats, SmoothQuant, budget, TensorRT-RTX."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from converter.core.ort_session import cpu_session
from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from passes.quant.formats import block_int4, decoupled_int2, dequantize_block, per_channel_fp8, per_channel_int8
from passes.quant.quantize import Quantize
from passes.quant.smoothquant import SmoothQuant
from tests.quant_graphs import attention_like, calibration, conv_residual, feeds_for, mlp_stack, readers_of_dq


def run(model: onnx.ModelProto, feeds: list[dict]) -> np.ndarray:
    session = cpu_session(model)
    return np.concatenate([session.run(None, f)[0] for f in feeds])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def quantize(model, **options):
    return Quantize(**options).run_model(model, PassContext(opset=20, calibration=calibration(model)))


# ----------------------------------------------------------------------------- placement rules
def test_transformer_placement_quantizes_weights_activations_and_both_bmm_inputs():
    model, result = quantize(attention_like(), method="minmax")
    assert readers_of_dq(model) == [
        ("bmm_context", 0),
        ("bmm_context", 1),
        ("bmm_scores", 0),
        ("bmm_scores", 1),
        ("mm0", 0),
        ("mm0", 1),
        ("mm1", 0),
        ("mm1", 1),
    ]
    # the MatMul output is never quantized: the bias Add reads mm1's float output
    bias = next(n for n in model.graph.node if n.name == "bias1")
    assert bias.input[0] == "h0"
    assert result.changed == {"activation_qdq": 5, "weight_dq": 2}


def test_conv_placement_residual_and_pooling():
    model, result = quantize(conv_residual(), method="minmax")
    # conv inputs + weights, the Add's skip input (x, shared with conv1's Q/DQ), the pooling input
    # (it feeds the quantized Gemm through Flatten), the Gemm; conv2's output reaches the Add in float
    assert readers_of_dq(model) == [
        ("conv1", 0),
        ("conv1", 1),
        ("conv2", 0),
        ("conv2", 1),
        ("fc", 0),
        ("fc", 1),
        ("pool", 0),
        ("residual", 1),
    ]
    add = next(n for n in model.graph.node if n.name == "residual")
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert add.input[1] == conv1.input[0]  # one Q/DQ pair per tensor
    assert result.changed["activation_qdq"] == 4


def test_exclusions_by_op_type_and_name_and_bmm_switch():
    model, result = quantize(attention_like(), exclude_ops=["Conv"], exclude_names=["mm0", "bmm_*"])
    assert {n for n, _ in readers_of_dq(model)} == {"mm1"}
    reasons = {r.node: r.reason for r in result.rejected}
    assert "kept in high precision" in reasons["mm0"] and "bmm_*" in reasons["bmm_scores"]
    model, _ = quantize(attention_like(), quantize_bmm=False)
    assert {n for n, _ in readers_of_dq(model)} == {"mm0", "mm1"}


def test_idempotent_and_no_calibration_means_no_activation_qdq():
    once, _ = quantize(attention_like())
    twice, result = Quantize().run_model(once, PassContext(opset=20, calibration=calibration(attention_like())))
    assert result.changed == {} and len(twice.graph.node) == len(once.graph.node)
    untouched, result = Quantize().run_model(attention_like(), PassContext(opset=20))
    assert not any(n.op_type == "QuantizeLinear" for n in untouched.graph.node)
    assert "no calibration data" in " ".join(result.notes)


def test_attention_mask_infinities_stay_in_high_precision():
    model = attention_like()
    feeds = feeds_for(model)
    feeds[1]["x"][0, 0, 0] = -np.inf  # reaches x0, h, the scores (like an additive attention mask)
    from calibration.data import from_feeds

    q, result = Quantize().run_model(model, PassContext(opset=20, calibration=from_feeds(feeds)))
    assert any("non-finite" in r.reason for r in result.rejected)
    assert "mm0" not in {n for n, _ in readers_of_dq(q)}


# ----------------------------------------------------------------------------- accuracy in onnxruntime
@pytest.mark.parametrize("mode", ["int8", "fp8"])
@pytest.mark.parametrize("make", [attention_like, conv_residual])
def test_w8a8_runs_in_onnxruntime_close_to_fp32(mode, make):
    model = make()
    q, _ = quantize(model, mode=mode, method="mse")
    feeds = feeds_for(model, seed=7)
    assert cosine(run(q, feeds), run(model, feeds)) > 0.99


def test_verify_runs_fp8_conv_graphs_as_written(tmp_path):
    """verify's runner must not apply onnxruntime's CPU fusions that miscompute fp8 Q/DQ around Conv."""
    from converter.verification.compare import OnnxRunner

    model = conv_residual()
    q, _ = quantize(model, mode="fp8", method="mse")
    onnx.save(q, tmp_path / "q.onnx")
    feeds = feeds_for(model, seed=7)
    for runner in (OnnxRunner(q), OnnxRunner(tmp_path / "q.onnx")):
        got = np.concatenate([next(iter(runner.run(f).values())) for f in feeds])
        assert cosine(got, run(model, feeds)) > 0.99


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_observer_gives_a_working_model(method):
    model = conv_residual()
    q, _ = quantize(model, method=method)
    feeds = feeds_for(model, seed=7)
    assert cosine(run(q, feeds), run(model, feeds)) > 0.98


# ----------------------------------------------------------------------------- weight formats
def test_int8_and_fp8_weights_within_half_a_step():
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    q, scale = per_channel_int8(w, axis=1)
    assert q.dtype == np.int8 and scale.shape == (48,)
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    f, scale = per_channel_fp8(w, axis=1)
    assert f.dtype == ml_dtypes.float8_e4m3fn
    rel = np.abs(f.astype(np.float32) * scale - w) / np.maximum(np.abs(w), scale * 2.0**-6)
    assert rel.max() <= 2.0**-4 + 1e-6  # e4m3: 3 mantissa bits, half an ulp


@pytest.mark.parametrize("block", [32, 64, 128])
def test_int4_blocks_within_the_analytic_bound(block):
    w = np.random.default_rng(1).standard_normal((256, 40)).astype(np.float32)
    q, scale = block_int4(w, block)
    assert scale.shape == (256 // block, 40)
    w_hat = dequantize_block(q, scale, block)
    bound = np.repeat(np.abs(w.reshape(-1, block, 40)).max(1), block, axis=0) / 14  # amax / 7 / 2
    assert np.all(np.abs(w_hat - w) <= bound + 1e-6)


def test_int2_groups_use_four_levels_and_beat_round_to_nearest_on_the_output():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((128, 32)).astype(np.float32) * 0.1
    x = rng.standard_normal((2000, 128)) * np.linspace(0.2, 3.0, 128)  # uneven input channels
    hessian = x.T @ x
    q, scale = decoupled_int2(w, 32, hessian)
    levels = np.asarray(q, np.int8).astype(int).reshape(4, 32, 32)
    assert (levels.max(1) - levels.min(1)).max() <= 3  # 2 bits: four consecutive levels per group
    assert levels.min() >= -8 and levels.max() <= 7
    w_hat = dequantize_block(q, scale, 32)
    q0, s0 = decoupled_int2(w, 32, None, iters=1)  # min/max grid, round to nearest
    plain = dequantize_block(q0, s0, 32)
    # round-to-nearest on the min/max grid is within half a step of every weight
    assert np.all(np.abs(plain - w) <= np.repeat(s0, 32, axis=0) / 2 + 1e-6)
    out_err = lambda wh: float(np.linalg.norm(x @ (w - wh)))  # noqa: E731
    assert out_err(w_hat) < out_err(plain)


@pytest.mark.parametrize("mode", ["int4-wo", "int2-wo"])
def test_weight_only_uses_block_dequantize_linear_at_opset_21(mode):
    model = attention_like()
    q, result = quantize(model, mode=mode, block_size=16)
    assert next(o.version for o in q.opset_import if o.domain == "") == 21
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and all(
        a.name == "block_size" and a.i == 16 for n in dqs for a in n.attribute if a.name == "block_size"
    )
    assert not any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    feeds = feeds_for(model, seed=7)
    assert cosine(run(q, feeds), run(model, feeds)) > (0.97 if mode == "int4-wo" else 0.8)


# ----------------------------------------------------------------------------- SmoothQuant
def test_smoothquant_is_exact_and_idempotent():
    model = attention_like(outlier=30.0)
    ctx = PassContext(opset=20, calibration=calibration(model))
    smoothed, result = SmoothQuant(alpha=0.8).run_model(model, ctx)
    assert result.changed == {"matmul_smoothed": 2, "smooth_mul_inserted": 2}
    feeds = feeds_for(model, seed=9)
    ref = run(model, feeds)  # 1e-5 of the output's scale (the softmax amplifies float rounding)
    np.testing.assert_allclose(run(smoothed, feeds), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    again, second = SmoothQuant(alpha=0.8).run_model(smoothed, ctx)
    assert second.changed == {} and len(again.graph.node) == len(smoothed.graph.node)


def test_smoothquant_without_matmul_weights_or_data_changes_nothing():
    model = conv_residual()
    same, result = SmoothQuant().run_model(model, PassContext(opset=20, calibration=calibration(model)))
    assert same is model and result.changed == {}
    same, result = SmoothQuant().run_model(attention_like(), PassContext(opset=20))
    assert result.changed == {} and "no calibration data" in result.notes[0]


def test_smoothquant_hands_its_statistics_to_minmax_quantization():
    """SmoothQuant + minmax quantize run the model once; the ranges equal a fresh calibration's."""
    from calibration import cache

    model = attention_like(outlier=30.0)
    ctx = PassContext(opset=20, calibration=calibration(model))
    specs = [PassSpec("smoothquant", {"alpha": 0.8}), PassSpec("quantize", {"method": "minmax"})]
    handed, records = run_passes(model, specs, ctx)  # the manager re-exports between the passes
    assert any("from cache" in note for note in records[1].notes)
    smoothed, _ = run_passes(model, specs[:1], ctx)
    cache._MEMO.clear()
    cache._REMEMBERED.clear()
    fresh, result = Quantize(method="minmax").run_model(smoothed, ctx)
    assert any("onnxruntime runs" in note for note in result.notes)

    def scales(m: onnx.ModelProto) -> dict[str, float]:
        values = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
        return {n.input[0]: float(values[n.input[1]]) for n in m.graph.node if n.op_type == "QuantizeLinear"}

    got, want = scales(handed), scales(fresh)
    assert got.keys() == want.keys() and len(got) == 5
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name


def test_smoothquant_helps_int8_on_an_outlier_channel():
    model = attention_like(outlier=50.0)
    calib = calibration(model)
    feeds = feeds_for(model, seed=9)
    ref = run(model, feeds)
    plain, _ = run_passes(model, [PassSpec("quantize", {"method": "minmax"})], PassContext(20, calibration=calib))
    smooth, _ = run_passes(
        model,
        [PassSpec("smoothquant", {"alpha": 0.8}), PassSpec("quantize", {"method": "minmax"})],
        PassContext(20, calibration=calib),
    )
    assert cosine(run(smooth, feeds), ref) >= cosine(run(plain, feeds), ref)


# ----------------------------------------------------------------------------- mixed precision
def test_budget_keeps_the_fewest_sensitive_layers_in_high_precision():
    model = attention_like(outlier=50.0)
    full, _ = quantize(model, method="minmax")
    pass_ = Quantize(method="minmax", max_cosine_drop=1e-6, sensitivity_samples=8)
    mixed, result = pass_.run_model(model, PassContext(opset=20, calibration=calibration(model)))
    report = result.details["mixed_precision"]
    assert report["met"] and report["high_precision_layers"] == result.changed["kept_high_precision"] >= 1
    assert report["quantized_layers"] + report["high_precision_layers"] == 4
    assert [s["layer"] for s in report["sensitivity"]][: report["high_precision_layers"]] == report[
        "kept_in_high_precision"
    ]
    assert len(readers_of_dq(mixed)) < len(readers_of_dq(full))


# ----------------------------------------------------------------------------- TensorRT-RTX
@pytest.mark.parametrize("mode", ["int8", "fp8"])
def test_tensorrt_rtx_parses_qdq_layers_and_builds(mode, tmp_path):
    from converter.backends import BuildConfig, ShapeProfile, get_backend

    backend = get_backend("tensorrt-rtx")
    model, _ = quantize(conv_residual(), mode=mode)
    path = tmp_path / f"{mode}.onnx"
    onnx.save(model, path)
    layers = backend.parse(path).layer_types
    assert layers["QUANTIZE"] == 4 and layers["DEQUANTIZE"] == 4 + 3
    profile = {"x": ShapeProfile((1, 16, 8, 8), (2, 16, 8, 8), (4, 16, 8, 8))}
    engine = backend.build(path, tmp_path / f"{mode}.engine", BuildConfig(profiles=profile, target_gpus=["sm89"]))
    assert engine.sidecar["engine_bytes"] > 0 and engine.sidecar["network"]["layer_types"]["QUANTIZE"] == 4


def test_int8_engine_is_smaller_than_the_fp16_engine(tmp_path):
    """W8A8 MatMuls with the rest in fp16 (what ships) against the all-fp16 graph, both through TensorRT-RTX.

    MatMul weights halve; int8 kernels add ~1 MB of their own, so the ratio is 0.75 at these
    2 M parameters (0.56 at 4 M; MiniLM 0.84: its fp16 embedding table is a Gather, not
    quantized). Convolutions do not shrink: TensorRT-RTX 1.7 engines keep Q/DQ convolution
    weights at fp16 size (README, quantization).
    """
    from converter.api import optimize
    from converter.backends import BuildConfig, ShapeProfile, get_backend

    model = mlp_stack(layers=8, width=512)
    onnx.save(quantize(model, method="minmax")[0], tmp_path / "int8.onnx")
    onnx.save(model, tmp_path / "fp32.onnx")
    optimize(tmp_path / "int8.onnx", tmp_path / "int8_fp16.onnx", passes=[], precision="fp16")
    optimize(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", passes=[], precision="fp16")
    config = BuildConfig(profiles={"x": ShapeProfile((1, 16, 512), (4, 16, 512), (8, 16, 512))}, target_gpus=["sm89"])
    size = {
        name: get_backend("tensorrt-rtx")
        .build(tmp_path / f"{name}.onnx", tmp_path / f"{name}.engine", config)
        .sidecar["engine_bytes"]
        for name in ("fp16", "int8_fp16")
    }
    assert size["int8_fp16"] < 0.8 * size["fp16"], size


@pytest.mark.parametrize("mode", ["int4-wo", "int2-wo"])
def test_weight_only_engine_keeps_most_of_the_weight_bytes_saved(mode, tmp_path):
    """W4A16 / W2A16 MatMuls (the rest fp16) against all-fp16, both through TensorRT-RTX: the engine
    shrinks by at least 75 % of what the ONNX weights shrink (TensorRT-RTX stores the blocked
    int4 DequantizeLinear's weights in 4 bits; int2 is stored as int4 values, so saves what int4 does)."""
    from converter.api import optimize
    from converter.backends import BuildConfig, ShapeProfile, get_backend
    from converter.core.model_io import weights_nbytes

    model = mlp_stack(layers=8, width=512)
    onnx.save(quantize(model, mode=mode, block_size=64)[0], tmp_path / "wo.onnx")
    onnx.save(model, tmp_path / "fp32.onnx")
    optimize(tmp_path / "wo.onnx", tmp_path / "wo_fp16.onnx", passes=[], precision="fp16")
    optimize(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", passes=[], precision="fp16")
    config = BuildConfig(profiles={"x": ShapeProfile((1, 16, 512), (4, 16, 512), (8, 16, 512))}, target_gpus=["sm89"])
    engine, weights = {}, {}
    for name in ("fp16", "wo_fp16"):
        path = tmp_path / f"{name}.onnx"
        engine[name] = (
            get_backend("tensorrt-rtx").build(path, tmp_path / f"{name}.engine", config).sidecar["engine_bytes"]
        )
        weights[name] = weights_nbytes(onnx.load(str(path)))
    saved_onnx = weights["fp16"] - weights["wo_fp16"]
    assert saved_onnx > 0.6 * weights["fp16"], weights
    assert engine["fp16"] - engine["wo_fp16"] >= 0.75 * saved_onnx, (engine, weights)


def test_tensorrt_rtx_parses_int4_block_weights(tmp_path):
    from converter.backends import get_backend

    model, _ = quantize(attention_like(), mode="int4-wo", block_size=16)
    onnx.save(model, tmp_path / "w4.onnx")
    assert get_backend("tensorrt-rtx").parse(tmp_path / "w4.onnx").layer_types["DEQUANTIZE"] == 2


# ----------------------------------------------------------------------------- CLI
def test_cli_quantize_with_npz_calibration_and_errors(tmp_path):
    from converter.cli.main import main

    model = conv_residual()
    onnx.save(model, tmp_path / "m.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(feeds_for(model, batches=3)):
        np.savez(calib / f"{i}.npz", **feeds)
    args = [
        "quantize",
        str(tmp_path / "m.onnx"),
        "-o",
        str(tmp_path / "q.onnx"),
        "--calib",
        str(calib),
        "--calib-method",
        "mse",
        "--smoothquant",
        "off",
        "--calib-table",
        str(tmp_path / "t.table"),
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["qdq"]["qdq_pairs"] == 4 and report["method"] == "mse"
    assert report["accuracy"]["mean_cosine"] > 0.99
    assert (tmp_path / "t.table").read_text().startswith("TRT-")
    np.savez(calib / "9.npz", x=np.full((1, 16, 8, 8), np.nan, np.float32))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 4 and "9.npz" in result.output and "NaN" in result.output
    result = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "r.onnx")])
    assert result.exit_code == 4 and "needs calibration data" in result.output
