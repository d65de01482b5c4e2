"""What the budget search is asked for: an accuracy budget and an objective to minimise.

A budget is written the way a user says it: `cosine>=0.99` (mean per-sample cosine of
every float output to the source model's), `top1>=0.98` (agreement of the arg-max with
the source's: per sample for a classifier, per token for a language model),
`ppl<=+5%` (held-out perplexity at most 5 % above the source's; language models), or,
in the API, `Budget.task_metric(fn, max_drop)`: `fn(outputs, feeds) -> float` scores a
model's outputs on the validation batches (higher is better, e.g. accuracy against
labels), and the candidate may lose at most `max_drop` of the source's score.

Objectives (smaller is better): `weight-bytes` (initializer bytes of the rewritten
graph), `flops` (its MatMul/Gemm/Conv/Attention FLOPs, each weighted by the math rate of
the precision it runs in: costs.py), `latency` (a roofline estimate for the target GPU,
stated as one: costs.py), `engine-size` (searched by weight bytes; the chosen
configuration's engine is built and its size reported).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converter.core.errors import InvalidInputError

OBJECTIVES = ("engine-size", "weight-bytes", "flops", "latency")
TaskMetric = Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]], float]

_FORM = re.compile(r"^\s*(cosine|top1|ppl)\s*(>=|<=)\s*(\+?)([0-9.eE+-]+)\s*(%?)\s*$")


@dataclass(frozen=True)
class Budget:
    """One accuracy budget: `metric` compared to `limit` (see the module docstring)."""

    metric: str  # cosine | top1 | ppl | task
    limit: float  # cosine/top1: the least value; ppl: the largest relative increase; task: the largest drop
    text: str = ""
    task: TaskMetric | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`cosine>=0.99`, `top1>=0.98`, `ppl<=+5%` (or `ppl<=+0.05`); a bad form is a one-line error."""
        match = _FORM.match(str(text))
        if not match:
            raise InvalidInputError(f"--budget {text!r}: write cosine>=0.99, top1>=0.98 or ppl<=+5%")
        metric, op, plus, number, percent = match.groups()
        try:
            value = float(number) / (100.0 if percent else 1.0)
        except ValueError as exc:
            raise InvalidInputError(f"--budget {text!r}: {number!r} is not a number") from exc
        if metric == "ppl":
            if op != "<=" or not plus and percent == "":
                raise InvalidInputError(f"--budget {text!r}: perplexity takes a relative increase, e.g. ppl<=+5%")
            if not (math.isfinite(value) and 0.0 <= value <= 10.0):
                raise InvalidInputError(f"--budget {text!r}: the increase must be in [0%, 1000%]")
        else:
            if op != ">=":
                raise InvalidInputError(f"--budget {text!r}: {metric} is a least value, e.g. {metric}>=0.99")
            if not (math.isfinite(value) and 0.0 < value <= 1.0):
                raise InvalidInputError(f"--budget {text!r}: {metric} must be in (0, 1]")
        return cls(metric, value, str(text).replace(" ", ""))

    @classmethod
    def task_metric(cls, fn: TaskMetric, max_drop: float, name: str = "task") -> Budget:
        """A caller's own metric (higher is better); the candidate may score at most `max_drop` below the source."""
        if not (math.isfinite(max_drop) and max_drop >= 0):
            raise InvalidInputError(f"task metric budget: max_drop must be >= 0, got {max_drop}")
        return cls("task", float(max_drop), f"{name} drop<={max_drop:g}", fn)

    @property
    def needs_language_model(self) -> bool:
        return self.metric == "ppl"

    def value(self, metrics: dict[str, float], base: dict[str, float]) -> float:
        """The budgeted quantity of a candidate (`metrics`) next to the source (`base`)."""
        if self.metric == "ppl":
            return metrics["ppl"] / base["ppl"] - 1.0
        if self.metric == "task":
            return base["task"] - metrics["task"]
        return metrics[self.metric]

    def met(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.metric in ("ppl", "task"):
            return value <= self.limit + 1e-12
        return value >= self.limit - 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.text, "metric": self.metric, "limit": self.limit}


def check_objective(objective: str) -> str:
    if objective not in OBJECTIVES:
        raise InvalidInputError(f"--objective {objective!r} not in {', '.join(OBJECTIVES)}")
    return objective
