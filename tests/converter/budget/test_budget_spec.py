"""Budget texts, objectives and the graph costs the search minimises."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converter.core.errors import InvalidInputError
from converter.pipelines.budget.costs import PEAKS, RATE, graph_cost, node_flops
from converter.pipelines.budget.spec import Budget, check_objective
from converter.pipelines.recipe import Recipe
from passes.base import PassContext
from passes.manager import run_passes
from passes.registry import PassSpec
from tests.quant_graphs import calibration, feeds_for, mlp_stack


@pytest.mark.parametrize(
    ("text", "metric", "limit"),
    [
        ("cosine>=0.99", "cosine", 0.99),
        ("top1 >= 0.98", "top1", 0.98),
        ("ppl<=+5%", "ppl", 0.05),
        ("ppl<=+0.15", "ppl", 0.15),
    ],
)
def test_budget_forms(text, metric, limit):
    budget = Budget.parse(text)
    assert (budget.metric, budget.limit) == (metric, pytest.approx(limit))


@pytest.mark.parametrize(
    "text", ["cosine<=0.99", "cosine>=1.5", "cosine>=nan", "ppl>=+5%", "ppl<=0.05", "ppl<=+5000%", "loss<=1", ""]
)
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(InvalidInputError, match="--budget"):
        Budget.parse(text)


def test_budget_verdicts_and_orientation():
    ppl, cos = Budget.parse("ppl<=+5%"), Budget.parse("cosine>=0.99")
    assert ppl.value({"ppl": 10.4}, {"ppl": 10.0}) == pytest.approx(0.04) and ppl.met(0.04) and not ppl.met(0.06)
    assert cos.met(0.995) and not cos.met(0.989) and not cos.met(math.nan)
    task = Budget.task_metric(lambda outs, feeds: 0.0, 0.01)
    assert task.value({"task": 0.90}, {"task": 0.905}) == pytest.approx(0.005) and task.met(0.005)


def test_objectives_are_checked():
    assert check_objective("flops") == "flops"
    with pytest.raises(InvalidInputError, match="--objective"):
        check_objective("speed")


def test_recipe_budget_round_trips_and_is_validated():
    recipe = Recipe.from_dict({"budget": "cosine >= 0.99"})
    assert recipe.budget == "cosine>=0.99" and Recipe.from_dict(recipe.to_dict()).budget == "cosine>=0.99"
    with pytest.raises(InvalidInputError, match="budget"):
        Recipe.from_dict({"budget": "cosine>=2"})


def test_flops_of_a_matmul_stack_and_their_precision_weights():
    model = mlp_stack(layers=3, width=64)
    feeds = feeds_for(model, batches=1, rows=2)[0]
    flops = node_flops(model, feeds)
    assert flops == {f"mm{i}": pytest.approx(2 * 16 * 64 * 64) for i in range(3)}  # per sample: 16 rows x 64 x 64
    fp32 = graph_cost(model, flops, "fp32")
    assert fp32.flops == pytest.approx(3 * 2 * 16 * 64 * 64) and fp32.weighted_flops == pytest.approx(
        fp32.flops * RATE["fp32"]
    )
    assert fp32.weight_bytes == 3 * 64 * 64 * 4
    ctx = PassContext(opset=17, calibration=calibration(model))
    int8, _ = run_passes(model, [PassSpec("quantize", {"mode": "int8", "method": "minmax"})], ctx)
    quantized = graph_cost(int8, flops, "fp32")
    assert set(quantized.by_precision) == {"int8"}  # every MatMul reads a quantized activation
    assert quantized.weighted_flops == pytest.approx(fp32.flops * RATE["int8"])
    assert quantized.weight_bytes < fp32.weight_bytes / 3.5  # int8 weights (+ scales)
    # the roofline estimate: per node the longer of compute and reading its weights (int8 codes,
    # fp32 per-channel scales, int8 zero points): memory-bound at this size
    peak, read = PEAKS["sm89"], 64 * 64 + 64 * 4 + 64
    expected = sum(max(f * RATE["int8"] / (peak.tflops * 1e12), read / (peak.gb_per_s * 1e9)) for f in flops.values())
    assert quantized.latency_ms == pytest.approx(expected * 1e3)


def test_flops_of_conv_and_attention_nodes():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 10, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 10, 10])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flops = node_flops(onnx.shape_inference.infer_shapes(model), {"x": np.zeros((2, 3, 10, 10), np.float32)})
    assert flops["conv"] == pytest.approx(2 * 8 * 10 * 10 * 3 * 3 * 3)
