"""A stage judged by the recipe's accuracy budget instead of elementwise tolerances.

A recipe chosen by `convert --budget` records its budget (`budget: cosine>=0.99`), and a
hand-written recipe may state one: its lossy ONNX and engine stages then pass when the
budgeted metric, measured on convert's verification samples against the reference, keeps
the budget (the elementwise numbers stay in the report). A task-metric budget (API) is
code, not recipe text: its runs keep the recipe's tolerances.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from converter.core.model_spec import Feeds
from converter.pipelines.budget.data import Metrics
from converter.pipelines.budget.spec import Budget
from converter.verification.reference import Judge
from passes.blocks.scores import language_model_io


def budget_judge(text: str | None, model: onnx.ModelProto) -> Judge | None:
    """The judge of recipe budget `text` for `model`'s outputs (None without a budget)."""
    if not text:
        return None
    budget, lm = Budget.parse(text), language_model_io(model)

    def judge(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], feeds: list[Feeds]) -> dict[str, Any]:
        joined = {lm.tokens: np.concatenate([f[lm.tokens] for f in feeds])} if lm else {}
        metrics, base = Metrics(lm), Metrics(lm)
        metrics.add(out, ref, joined)
        base.add(ref, ref, joined)
        value = budget.value(metrics.result(), base.result())
        found = {k: round(v, 6) for k, v in metrics.result().items()}
        return {"budget": budget.text, "value": round(value, 6), "met": budget.met(value), "metrics": found}

    return judge
