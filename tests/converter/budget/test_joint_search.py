"""The joint search's walk, on a made-up measurement: what it visits and what it returns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto, helper

from converter.pipelines.budget.candidates import Config, Point
from converter.pipelines.budget.costs import GraphCost
from converter.pipelines.budget.search import JointSearch
from converter.pipelines.budget.spec import Budget
from tests.onnx_helpers import make_model

LAYERS = [f"layer{i}" for i in range(16)]  # most sensitive first
LADDER = [(), ("mlp1",), ("mlp1", "attn2"), ("mlp1", "attn2", "block3")]
DAMAGE = {"int4-wo": 0.016, "int8": 0.004, None: 0.0}
EMBEDDINGS = {None: (0.0, 0.0), 8: (0.0005, 20.0), 4: (0.02, 30.0)}  # (damage, bytes saved) of the tables


def _source(tables: bool):
    """A graph with (or without) an embedding table as large as quantize-embeddings takes."""
    nodes = (
        [helper.make_node("Gather", ["table", "ids"], ["y"])] if tables else [helper.make_node("Relu", ["x"], ["y"])]
    )
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])] if tables else {"x": [4]}
    inits = {"table": np.zeros((1024, 64), np.float32)} if tables else {}
    return make_model(nodes, inputs, {"y": [4, 64] if tables else [4]}, inits)


class FakeMeasure:
    """damage = 0.003 per dropped unit + the format's damage, spread over the layers by sensitivity
    (layer i carries weight 2^-i of it); bytes = 100 per layer (fp32), 50 in fp16, 12.5 in int4, 25 in int8."""

    def __init__(self, budget: Budget, tables: bool = False):
        self.budget, self.objective, self.points = budget, "weight-bytes", {}
        self.source, self.calib = _source(tables), None

    def __call__(self, config: Config) -> Point:
        if config not in self.points:
            weights = [2.0**-i for i in range(len(LAYERS))]
            quantized = [w for name, w in zip(LAYERS, weights, strict=True) if name not in config.keep]
            damage = 0.003 * len(config.drop) + DAMAGE[config.quant] * sum(quantized) / sum(weights)
            damage += EMBEDDINGS[config.embeddings][0]
            per_layer = {"fp32": 100.0, "fp16": 50.0}[config.precision]
            low = {"int4-wo": 12.5, "int8": 25.0, None: per_layer}[config.quant]
            kept = 25.0 if config.quant == "int4-wo" else per_layer  # 4-bit keeps go to int8 weight-only
            size = (len(LAYERS) - 2 * len(config.drop)) * low + len(config.keep) * (kept - low)
            size -= EMBEDDINGS[config.embeddings][1]
            cost = GraphCost(int(size), 0.0, 0.0, 0.0, {})
            value = 1.0 - damage
            self.points[config] = Point(
                config, {"cosine": value}, value, self.budget.met(value), cost, size, 0.0, len(self.points)
            )
        return self.points[config]


def _search(budget: str, seconds: float = 60.0, tables: bool = False) -> tuple[JointSearch, object]:
    measure = FakeMeasure(Budget.parse(budget), tables)
    search = JointSearch(measure, LADDER, ["int4-wo", "int8"], None, seconds, lambda _m: None)
    search.rankings = {"int4-wo": LAYERS, "int8": LAYERS}
    return search, search.run()


def _fewest_keeps(fmt: str, drop: tuple[str, ...], limit: float) -> int | None:
    for count in range(len(LAYERS) // 2 + 1):
        if (
            FakeMeasure(Budget.parse("cosine>=0.99"))(Config(drop, fmt, tuple(LAYERS[:count]), None, "fp16")).value
            >= limit
        ):
            return count
    return None


def test_the_best_point_meets_the_budget_and_is_the_smallest_that_does():
    _, result = _search("cosine>=0.99")
    met = [p for p in result.points if p.met]
    assert result.best.met and result.best.objective == min(p.objective for p in met)
    assert all(p.met == (p.value >= 0.99) for p in result.points)
    front = result.pareto()
    assert result.best in front and front == sorted(front, key=lambda p: p.objective)


def _int4(drop: tuple[str, ...], count: int) -> Config:
    return Config(drop, "int4-wo", tuple(LAYERS[:count]), None, "fp16")


def test_keep_counts_are_the_fewest_that_keep_the_budget():
    _, result = _search("cosine>=0.99")
    measured = {p.config: p for p in result.points}
    previous = 0  # more drops never need fewer keeps: each level starts from the last level's count
    for drop in LADDER:
        count = _fewest_keeps("int4-wo", drop, 0.99)
        assert count is not None and count >= previous  # this made-up model always has one
        assert measured[_int4(drop, count)].met
        if count > previous:  # one fewer was measured and missed: the bisection closed the gap
            assert not measured[_int4(drop, count - 1)].met
        previous = count


def test_formats_go_no_deeper_than_dropping_alone_keeps_the_budget():
    _, result = _search("cosine>=0.995")  # 0.003 per unit: one unit keeps it alone, two do not
    alone = {
        len(p.config.drop): p.met for p in result.points if p.config.quant is None and p.config.precision == "fp16"
    }
    assert alone == {0: True, 1: True, 2: False}
    assert max(len(p.config.drop) for p in result.points if p.config.quant) == 1


def test_search_is_deterministic():
    _, first = _search("cosine>=0.99")
    _, second = _search("cosine>=0.99")
    assert [(p.config, p.value) for p in first.points] == [(p.config, p.value) for p in second.points]


def test_a_tiny_time_budget_returns_the_source():
    _, result = _search("cosine>=0.99", seconds=1e-9)
    assert [p.config for p in result.points] == [Config()] and result.best.config == Config()
    assert result.stopped.startswith("time budget")


def test_embedding_tables_are_tried_on_the_best_configuration_only_where_there_are_some():
    _, without = _search("cosine>=0.99")
    assert all(p.config.embeddings is None for p in without.points)
    _, found = _search("cosine>=0.99", tables=True)
    tried = [p for p in found.points if p.config.embeddings]
    ranked = sorted((p for p in without.points if p.met), key=lambda p: (p.objective, -p.goodness))
    bases = list(dict.fromkeys(replace(p.config, embeddings=None) for p in tried))
    assert bases == [p.config for p in ranked[:3]]  # the three best, each 8 bits first, 4 only if 8 met
    for base in bases:
        with8 = found.points[[p.config for p in found.points].index(replace(base, embeddings=8))]
        assert (replace(base, embeddings=4) in [p.config for p in tried]) == with8.met
    # the two best sit at the budget's edge and miss with tables in 8 bits; the third keeps it in 8, not 4
    assert [p.met for p in tried] == [False, False, True, False]
    assert found.best.met and found.best.objective == min(p.objective for p in found.points if p.met)
