"""The `drop-blocks` pass (lossy): score transformer blocks/sub-layers and rewire the most redundant out.

The feature lives in this family: discovery.py finds the blocks, rewiring.py removes
them exactly, scores.py / evaluator.py measure removal sets, config.py declares the
options, search.py and selection.py choose. This module is only the pass: it scores on
`PassContext.calibration` and nothing else. Where that data comes from (a recipe's
folder, the model's own sample data) is the pipelines' decision; without data the pass
removes nothing, unless `drop` names the units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import onnx

from converter.core.errors import InvalidInputError
from converter.core.metadata import DROPPED_BLOCKS, read_metadata
from passes.base import Pass, PassContext, PassResult
from passes.blocks.config import DropConfig
from passes.blocks.discovery import find_blocks
from passes.blocks.rewiring import plan, remove_units
from passes.blocks.scores import language_model_io
from passes.blocks.selection import select

Feeds = dict[str, np.ndarray]


def as_feed_list(data: Any) -> list[Feeds] | None:
    """A list of feed dicts from calibration data in any of the accepted forms (kept in memory: the search
    re-reads every batch once per candidate)."""
    if data is None:
        return None
    if hasattr(data, "feeds"):
        data = data.feeds
    if isinstance(data, dict):
        return [data]
    feeds = list(data)
    if not all(isinstance(f, dict) for f in feeds):
        raise ValueError("calibration data must be feed dicts (input name -> array)")
    return feeds or None


@dataclass
class DropBlocks(Pass, DropConfig):
    """Score transformer blocks/sub-layers on calibration data and remove the most redundant (lossy).

    Options (recipe `options:`): `drop` (explicit names, e.g. [block3, attn5]: no data
    needed), else the DropConfig fields (passes/blocks/config.py): `method` (oneshot |
    iterative), `granularity` (block | sublayer | attention | mlp | all), `score` (bi |
    direct, for oneshot), `beam` / `refine` (the iterative search's width and exchange
    refinement), how much: `remove` (count), `target_params` / `target_flops`
    (fractions), budgets `max_ppl_increase` (relative) / `min_cosine`, `metric` (auto |
    cosine | ppl | kl). How much data it scores on is the pipeline's choice
    (converter/pipelines/calibration_source.py: 4 x 8 samples of the model's own data
    for `optimize`).
    """

    name = "drop-blocks"
    level = "model"
    needs_calibration = True
    drop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.drop:  # a goal is needed now; whether the model is a language model, when it runs
            self.check(is_lm=True)

    def requires_calibration(self) -> bool:
        """Scoring needs data; an explicit `drop` list does not."""
        return not self.drop

    def drop_config(self) -> DropConfig:
        """The selection options alone, as the search and selection read them."""
        return DropConfig(**{f.name: getattr(self, f.name) for f in fields(DropConfig)})

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        entries = read_metadata(model)
        if DROPPED_BLOCKS in entries:
            result.notes.append(f"already applied (removed {entries[DROPPED_BLOCKS]}): nothing more removed")
            return model, result
        bg = find_blocks(model)
        graph_name = model.graph.name or "graph"
        if not bg.found:
            result.reject(graph_name, bg.message)
            result.notes.append(bg.message)
            return model, result
        names = list(self.drop)
        if not names:
            feeds = as_feed_list(ctx.calibration)
            if feeds is None:
                why = "no calibration data (PassContext.calibration is empty): nothing removed; give data or `drop`"
                result.reject(graph_name, why)
                result.notes.append(why)
                return model, result
            config = self.drop_config()
            try:
                config.check(language_model_io(model) is not None)
            except ValueError as exc:  # e.g. a perplexity budget for an encoder: the recipe's fault
                raise InvalidInputError(f"pass '{self.name}': {exc}") from exc
            selection = select(model, bg, feeds, feeds, config)
            names = selection.removed
            where = getattr(ctx.calibration, "source", None)
            result.notes.append(
                f"scored and validated on the calibration data{f' ({where})' if where else ''}; {selection.summary()}"
            )
        units = plan(bg, names)
        for u in units:
            result.count(f"{u.kind}_removed", u.name)
        result.notes.append(f"{bg.message}; removed {[u.name for u in units] or 'nothing'}")
        return (remove_units(model, bg, names) if units else model), result
