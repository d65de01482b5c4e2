"""Verification metrics, layer-by-layer localisation, Q/DQ attribution, HTML report."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from converter.cli.main import main
from converter.core.errors import ExitCode
from converter.verification.compare import output_metrics
from converter.verification.localize import localize, without_qdq
from converter.verification.tolerances import Tolerances
from passes.base import PassContext
from passes.manager import run_passes
from passes.registry import PassSpec
from tests.graphs import redundant_graph

FP32 = Tolerances.for_precision("fp32")


def test_metrics_against_hand_computed_values():
    ref = np.array([[3.0, 4.0, 0.0], [0.0, 1.0, 2.0]], np.float32)
    cand = np.array([[3.0, 4.0, 1.0], [0.0, 2.0, 1.0]], np.float32)
    m = output_metrics("y", ref, cand, FP32, classify=True)
    assert m.max_abs == 1.0 and m.mean_abs == pytest.approx(0.5)
    assert m.max_rel == pytest.approx(1.0 / 4.0)
    dot, nr, nc = 9 + 16 + 2 + 2, math.sqrt(9 + 16 + 1 + 4), math.sqrt(9 + 16 + 1 + 4 + 1)
    assert m.cosine == pytest.approx(dot / (nr * nc))
    assert m.snr_db == pytest.approx(10 * math.log10(30 / 3))
    assert m.top1_agreement == 0.5 and m.top5_agreement == 1.0  # row 2: ref class 2, candidate class 1
    assert not m.passed and "atol" in m.failure


def test_per_output_tolerances_override_the_default():
    tol = Tolerances(1e-6, 0.0, 0.0, per_output={"loose": {"atol": 0.5}})
    ref, cand = np.zeros((2, 2), np.float32), np.full((2, 2), 0.1, np.float32)
    assert not output_metrics("strict", ref, cand, tol, False).passed
    assert output_metrics("loose", ref, cand, tol, False).passed


def _chain(depth: int = 6) -> onnx.ModelProto:
    """x -> (MatMul W_i -> Tanh) * depth -> y, with distinct, well-scaled weights."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(depth):
        inits.append(numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), f"w{i}"))
        nodes += [
            helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"matmul_{i}"),
            helper.make_node("Tanh", [f"m{i}"], [f"t{i}"], name=f"tanh_{i}"),
        ]
        prev = f"t{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def plant_bad_qdq(model: onnx.ModelProto, node_name: str, scale: float) -> onnx.ModelProto:
    """Insert an int8 Q/DQ pair with the given scale on the first input of `node_name`."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    node = next(n for n in bad.graph.node if n.name == node_name)
    src = node.input[0]
    bad.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), "bad_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "bad_zp"),
        ]
    )
    index = list(bad.graph.node).index(node)
    bad.graph.node.insert(
        index, helper.make_node("DequantizeLinear", [src + "_q", "bad_scale", "bad_zp"], [src + "_dq"], name="bad_dq")
    )
    bad.graph.node.insert(
        index, helper.make_node("QuantizeLinear", [src, "bad_scale", "bad_zp"], [src + "_q"], name="bad_q")
    )
    node.input[0] = src + "_dq"
    return bad


def _feeds(n: int = 3):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("planted", ["matmul_2", "matmul_4"])
def test_planted_qdq_error_is_localised_and_attributed(planted):
    model = _chain()
    bad = plant_bad_qdq(model, planted, scale=(1.0 / 127) / 100)
    found = localize(model, bad, _feeds(), FP32)
    first = found.divergent_layers[0]
    assert first.node == planted and first.origin
    assert all(not layer.divergent for layer in found.layers if layer.index < first.index)
    assert found.qdq_attribution[0]["quantize"] == "bad_q"
    assert found.qdq_attribution[0]["final_cosine_without_pair"] == pytest.approx(1.0)
    assert found.qdq_attribution[0]["gain"] > 0
    assert (
        without_qdq(bad, *[n for n in bad.graph.node if n.name in ("bad_q", "bad_dq")]).graph.node[0].op_type
        == "MatMul"
    )


def test_names_survive_every_fold_pass_and_nothing_diverges():
    model = redundant_graph()
    folded, _ = run_passes(model, [PassSpec("fold")], PassContext(opset=17))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    found = localize(model, folded, [{"x": x}], FP32)
    # MatMul + bias Add became one Gemm and the identity Reshape went (remove-noops): the Gemm
    # writes the graph output, whose name survived every pass and is compared
    assert [layer.tensor for layer in found.layers] == ["y"] and found.compared == 1
    assert not found.divergent_layers


def test_cli_localize_json_and_html(tmp_path):
    model = _chain()
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(model, str(ref))
    onnx.save(plant_bad_qdq(model, "matmul_3", 1e-4), str(cand))
    np.savez(tmp_path / "in.npz", x=_feeds(1)[0]["x"])
    html = tmp_path / "r.html"
    result = CliRunner().invoke(
        main,
        [
            "verify",
            str(ref),
            str(cand),
            "--localize",
            "--json",
            "--html",
            str(html),
            "--load-inputs",
            str(tmp_path / "in.npz"),
        ],
    )
    assert result.exit_code == ExitCode.ACCURACY_FAILED
    report = json.loads(result.output[: result.output.rindex("}") + 1])
    assert [d["node"] for d in report["divergent_layers"][:3]][0] == "matmul_3"
    page = html.read_text()
    assert "data:image/png;base64," in page and "matmul_3" in page


def test_cli_verify_after_each_pass(tmp_path):
    ref = tmp_path / "ref.onnx"
    onnx.save(redundant_graph(), str(ref))
    result = CliRunner().invoke(
        main, ["verify", str(ref), "--passes", "cleanup,fold-constants,precision", "--json", "--precision", "fp16"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [c["candidate"] for c in report["verification"]] == [
        "after cleanup",
        "after fold-constants",
        "after precision",
    ]
    assert report["input"]["samples"]["source"] == "synthetic"


def test_cli_rejects_bad_tolerance_syntax(tmp_path):
    ref = tmp_path / "ref.onnx"
    onnx.save(redundant_graph(), str(ref))
    result = CliRunner().invoke(main, ["verify", str(ref), str(ref), "--atol", "y:lots"])
    assert result.exit_code == ExitCode.USAGE and "--atol" in result.output


def test_equal_infinities_are_not_an_error():
    """A causal mask's -inf in both graphs is agreement, not NaN (or a divergent layer)."""
    from converter.verification.localize import _layer_error

    node = helper.make_node("Add", ["a", "b"], ["m"], name="mask")
    ref = np.array([0.0, -np.inf, 1.0], np.float32)
    with np.errstate(all="raise"):
        same = _layer_error(0, "m", node, ref, ref.copy(), FP32)
    assert not same.divergent and same.max_abs == 0.0
    assert _layer_error(0, "m", node, ref, np.array([0.0, 0.0, 1.0], np.float32), FP32).divergent
