"""One configuration of the budget search, its passes, and its measurement on the rewritten graph.

A configuration is what a recipe can say: which blocks/sub-layers to drop (by name), the
quantization format of the model's linear layers and the ones kept out of it, the
SmoothQuant alpha, and the precision everything unquantized runs in. `passes()` writes it
as ordinary pass specs with every choice explicit (drop-blocks `drop`, quantize
`exclude_names`), so a recipe holding them reproduces the graph without searching.

`Measure` runs those passes on the search's source graph with convert's own calibration
data, then reads the cost off the graph it produced (costs.py) and measures it on the
validation batches (data.py). Every point the search reports went through it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import onnx

from calibration.data import CalibrationData
from converter.core.model_io import opset_of
from converter.pipelines.budget.costs import GraphCost, graph_cost
from converter.pipelines.budget.data import Validator
from converter.pipelines.budget.spec import Budget
from passes.base import PassContext
from passes.manager import run_passes
from passes.model_utils import import_graph
from passes.quant.quantize_embeddings import QuantizeEmbeddings
from passes.registry import PassSpec

FORMATS = ("int8", "fp8", "int4-wo", "int8-wo")
FOUR_BIT = ("int4-wo",)
INT4_ALGORITHM = "awq"  # calibrated, and cheaper than GPTQ's sequential pass per candidate


@dataclass(frozen=True)
class Config:
    drop: tuple[str, ...] = ()
    quant: str | None = None  # a FORMATS mode, or None
    keep: tuple[str, ...] = ()  # layers the format leaves out: int8 weight-only under a 4-bit format, else `precision`
    alpha: float | None = None  # SmoothQuant, W8A8 formats
    precision: str = "fp32"  # of everything not quantized
    embeddings: int | None = None  # embedding tables (Gather data) in 8 or 4 bits (quantize-embeddings)

    def passes(self) -> list[PassSpec]:
        """The configuration as pass specs (after the recipe's own); the precision pass is the recipe's."""
        specs = [PassSpec("drop-blocks", {"drop": list(self.drop)})] if self.drop else []
        if self.quant:
            if self.alpha is not None:
                specs.append(PassSpec("smoothquant", {"alpha": self.alpha}))
            options: dict[str, Any] = {"mode": self.quant, "method": "minmax"}
            if self.quant == "int4-wo":
                options["algorithm"] = INT4_ALGORITHM
            if self.keep:
                options["exclude_names"] = list(self.keep)
            specs.append(PassSpec("quantize", options))
            if self.keep and self.quant in FOUR_BIT:  # the layers 4 bits cannot hold: int8 weight-only, not fp16
                specs.append(PassSpec("quantize", {"mode": "int8-wo", "include_names": list(self.keep)}))
        if self.embeddings:
            specs.append(PassSpec("quantize-embeddings", {"bits": self.embeddings}))
        return specs

    def describe(self) -> str:
        parts = [f"drop {len(self.drop)}" if self.drop else "no drop"]
        if self.quant:
            alpha = f" sq{self.alpha:g}" if self.alpha is not None else ""
            tier = " as int8-wo" if self.quant in FOUR_BIT else ""
            parts.append(f"{self.quant}{alpha}" + (f" keep {len(self.keep)}{tier}" if self.keep else ""))
        if self.embeddings:
            parts.append(f"embeddings int{self.embeddings}")
        parts.append(self.precision)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "drop": list(self.drop),
            "quant": self.quant,
            "keep": list(self.keep),
            "smoothquant_alpha": self.alpha,
            "precision": self.precision,
            "embeddings": self.embeddings,
        }


def has_embedding_tables(model: onnx.ModelProto) -> bool:
    """Whether quantize-embeddings (with its defaults) finds a table to quantize in `model`."""
    return bool(QuantizeEmbeddings().tables(import_graph(model)))


@dataclass
class Point:
    """A measured configuration."""

    config: Config
    metrics: dict[str, float]
    value: float  # the budgeted quantity (Budget.value)
    met: bool
    cost: GraphCost
    objective: float
    seconds: float
    index: int = 0
    higher_is_better: bool = True  # cosine / top-1; a perplexity increase or a task drop is better smaller

    @property
    def goodness(self) -> float:
        """The accuracy, oriented so that larger is better."""
        return self.value if self.higher_is_better else -self.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "label": self.config.describe(),
            "config": self.config.to_dict(),
            "value": round(self.value, 6),
            "meets_budget": self.met,
            "objective": self.objective,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            **self.cost.to_dict(),
            "seconds": round(self.seconds, 2),
        }


class Measure:
    """Rewrite, cost and validate configurations of one source graph; each configuration once."""

    def __init__(
        self,
        source: onnx.ModelProto,
        calib: CalibrationData,
        validator: Validator,
        flops: dict[str, float],
        budget: Budget,
        objective: str,
        target: str,
    ):
        self.source, self.calib, self.validator, self.flops = source, calib, validator, flops
        self.budget, self.objective, self.target = budget, objective, target
        self.points: dict[Config, Point] = {}

    def graph(self, config: Config) -> onnx.ModelProto:
        """The rewritten graph of `config` (the passes convert will run after the recipe's own)."""
        specs = config.passes()
        if config.precision != "fp32":
            specs.append(PassSpec("precision", {"target": config.precision}))
        if not specs:
            return self.source
        ctx = PassContext(opset=opset_of(self.source), calibration=self.calib)
        return run_passes(self.source, specs, ctx)[0]

    def __call__(self, config: Config) -> Point:
        if config not in self.points:
            start = time.perf_counter()
            model = self.graph(config)
            cost = graph_cost(model, self.flops, config.precision, self.target)
            metrics = self.validator.metrics(model)
            value = self.budget.value(metrics, self.validator.base)
            point = Point(
                config,
                metrics,
                value,
                self.budget.met(value),
                cost,
                cost.objective(self.objective),
                time.perf_counter() - start,
                index=len(self.points),
                higher_is_better=self.budget.metric in ("cosine", "top1"),
            )
            self.points[config] = point
        return self.points[config]
