"""What to remove and how to choose it: the one declaration of the drop-blocks options.

The pass's recipe options (passes/blocks/drop_blocks.py), the selection and search
(selection.py, search.py), the use case (converter/pipelines/drop_blocks.py) and the
`trtforge drop-blocks` flags all use this dataclass: its fields, defaults and checks.
Option values are checked when it is built (a bad recipe option fails before any pass
runs); `check` adds what needs the model: a goal, and a language model for perplexity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

METHODS = ("oneshot", "iterative")
GRANULARITIES = ("block", "sublayer", "attention", "mlp", "all")
SCORES = ("bi", "direct")
METRICS = ("auto", "cosine", "ppl", "kl")


@dataclass
class DropConfig:
    method: str = "iterative"
    granularity: str | None = None  # default: block for oneshot; all (blocks and sub-layers) for iterative
    score: str = "bi"  # oneshot ranking: "bi" | "direct"
    remove: int | None = None
    target_params: float | None = None  # fraction of the model's parameters to remove
    target_flops: float | None = None
    max_ppl_increase: float | None = None  # relative: 0.1 = at most 10 % higher perplexity
    min_cosine: float | None = None  # mean per-sample cosine of the outputs to the original
    metric: str = "auto"  # damage measure: "cosine" | "ppl" | "kl" (auto: ppl for LMs, else cosine)
    beam: int = 3  # iterative: partial removal sets kept per depth (1: one greedy path, FinerCut)
    refine: bool = True  # iterative: exchange removed units for kept ones while that lowers the damage

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' not in {METHODS}")
        if self.granularity not in (None, *GRANULARITIES):
            raise ValueError(f"granularity '{self.granularity}' not in {GRANULARITIES}")
        if self.score not in SCORES:
            raise ValueError(f"score '{self.score}' not in {SCORES}")
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, got {self.beam}")
        if self.metric not in METRICS:
            raise ValueError(f"metric '{self.metric}' not in {METRICS}")
        self._check_goals()

    def _check_goals(self) -> None:
        """Goals in range: NaN compares false with everything, so `min_cosine=nan` removed every block."""
        if self.remove is not None and self.remove < 1:
            raise ValueError(f"remove must be at least 1, got {self.remove}")
        ranges = {
            "target_params": (self.target_params, 0.0, 1.0),
            "target_flops": (self.target_flops, 0.0, 1.0),
            "max_ppl_increase": (self.max_ppl_increase, 0.0, math.inf),
            "min_cosine": (self.min_cosine, -1.0, 1.0),
        }
        for name, (value, low, high) in ranges.items():
            if value is not None and not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value}")

    def check(self, is_lm: bool) -> None:
        """The checks that need the model (is it a language model) and a goal, one line each."""
        if not is_lm and (self.max_ppl_increase is not None or self.metric in ("ppl", "kl")):
            raise ValueError("perplexity/KL need a language model (ONNX metadata trtforge.task=language-model)")
        goals = [self.remove, self.target_params, self.target_flops, self.max_ppl_increase, self.min_cosine]
        if all(g is None for g in goals):
            raise ValueError(
                "say how much to remove: remove, target_params, target_flops, max_ppl_increase or min_cosine"
            )

    @property
    def units(self) -> str:
        return self.granularity or ("block" if self.method == "oneshot" else "all")

    @property
    def has_budget(self) -> bool:
        return self.max_ppl_increase is not None or self.min_cosine is not None

    def reached(self, count: int, saved: dict[str, float]) -> bool:
        """Whether `count` units removed, saving `saved` (Costs.saved), meet the count or a target."""
        return (
            (self.remove is not None and count >= self.remove)
            or (self.target_params is not None and saved["params_saved_frac"] >= self.target_params)
            or (self.target_flops is not None and saved["flops_saved_frac"] >= self.target_flops)
        )
