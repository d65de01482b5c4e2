"""A stage judged by the recipe's accuracy budget instead of elementwise tolerances.

A recipe chosen by `convert --budget` records its budget (`budget: cosine>=0.99`), and a
hand-written recipe may state one: its lossy ONNX and engine stages then pass when the
budgeted metric, measured on convert's verification samples against the reference, keeps
the budget (the elementwise numbers stay in the report). A task-metric budget (API) is code,
not recipe text: the run that searched with it is judged by it, a replay of its recipe is not.
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


def _batches(outputs: dict[str, np.ndarray], feeds: list[Feeds]) -> list[dict[str, np.ndarray]]:
    """Concatenated outputs cut back into the feeds' batches (a task metric takes them batch by batch)."""
    rows = [len(next(iter(f.values()))) for f in feeds]
    cuts = np.cumsum(rows)[:-1]
    split = [np.split(v, cuts) for v in outputs.values()]
    return [dict(zip(outputs, parts, strict=True)) for parts in zip(*split, strict=True)]


def budget_judge(budget: Budget | str | None, model: onnx.ModelProto) -> Judge | None:
    """The judge of `budget` (or a recipe's budget text) for `model`'s outputs; None without one."""
    if not budget:
        return None
    budget, lm = (budget if isinstance(budget, Budget) else Budget.parse(budget)), language_model_io(model)

    def metrics(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], feeds: list[Feeds]) -> dict[str, float]:
        joined = {lm.tokens: np.concatenate([f[lm.tokens] for f in feeds])} if lm else {}
        found = Metrics(lm)
        found.add(out, ref, joined)
        values = found.result()
        if budget.task is not None:
            values["task"] = float(budget.task(_batches(out, feeds), feeds))
        return values

    def judge(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], feeds: list[Feeds]) -> dict[str, Any]:
        found = metrics(out, ref, feeds)
        value = budget.value(found, metrics(ref, ref, feeds))
        rounded = {k: round(v, 6) for k, v in found.items()}
        return {"budget": budget.text, "value": round(value, 6), "met": budget.met(value), "metrics": rounded}

    return judge
