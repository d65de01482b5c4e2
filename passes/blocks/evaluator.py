"""Output metrics and damage of any removal set on the calibration and validation data (cached).

The search (search.py) and the selection modes (selection.py) ask this one object:
each removal set is run once per split through the gated session (scores.py), and
its metrics are kept, so a beam, a refinement and a budget check that meet the same
set again pay nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx

from passes.blocks.config import DropConfig
from passes.blocks.discovery import BlockGraph
from passes.blocks.rewiring import canonical
from passes.blocks.scores import Feeds, GatedSession, OutputMetrics, language_model_io


class Evaluator:
    """Output metrics of any removal set on the calibration and validation data (cached)."""

    PROGRESS_EVERY_S = 5.0

    def __init__(
        self,
        model: onnx.ModelProto,
        bg: BlockGraph,
        calib: list[Feeds],
        val: list[Feeds],
        metric: str = "auto",
        progress: Callable[[str], None] | None = None,
        session: GatedSession | None = None,
    ):
        """`progress` hears, every few seconds of a long search, how many removal sets were measured.
        `session`: a gated session of `model` to run on (one session holds a copy of the weights in
        onnxruntime: fp32 copies of fp16 ones on a CPU, so a second one would double that)."""
        self.progress, self.started = progress, time.perf_counter()
        self._last_progress = self.started
        self.bg, self.lm = bg, language_model_io(model)
        self.metric = metric if metric != "auto" else ("ppl" if self.lm else "cosine")
        self.session = session or GatedSession(model, bg)
        self.data = {"calib": calib, "val": val}
        self.refs = {"calib": [self.session.run(f) for f in calib]}
        self.refs["val"] = self.refs["calib"] if val is calib else [self.session.run(f) for f in val]
        self.cache: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.runs = 0

    def close(self) -> None:
        """Drop the gated session (onnxruntime's copy of the weights: fp32 ones of an fp16 model on
        a CPU) before another model runs; the references and every metric measured stay."""
        self.session = None

    def metrics(self, removed: list[str], split: str = "calib") -> dict[str, float]:
        split = "calib" if self.data["val"] is self.data["calib"] else split
        key = (split, tuple(sorted(canonical(self.bg, removed))))
        if key not in self.cache:
            self.cache[key] = self.measure(lambda feeds: self.session.run(feeds, removed), split)
            self.runs += 1
            self._report_progress()
        return self.cache[key]

    def _report_progress(self) -> None:
        now = time.perf_counter()
        if self.progress is not None and now - self._last_progress >= self.PROGRESS_EVERY_S:
            self._last_progress = now
            self.progress(f"measured {self.runs} removal sets ({now - self.started:.0f} s)")

    def measure(self, run: Callable[[Feeds], dict[str, np.ndarray]], split: str = "val") -> dict[str, float]:
        """Output metrics of any model (`run`: feeds -> outputs, e.g. the written ONNX) against the original."""
        acc = OutputMetrics(self.lm)
        for feeds, ref in zip(self.data[split], self.refs[split], strict=True):
            acc.add(run(feeds), ref, feeds)
        return acc.result()

    def damage(self, removed: list[str], split: str = "calib") -> float:
        """How much worse the outputs get: 1 - cosine, relative perplexity increase, or KL."""
        m = self.metrics(removed, split)
        if self.metric == "ppl":
            return m["ppl"] / self.metrics([], split)["ppl"] - 1.0
        return m["kl"] if self.metric == "kl" else 1.0 - m["cosine"]

    def within(self, removed: list[str], config: DropConfig) -> bool:
        """The validation metrics of `removed` keep the config's budget."""
        m = self.metrics(removed, "val")
        if config.min_cosine is not None and m["cosine"] < config.min_cosine:
            return False
        base = self.metrics([], "val")
        return config.max_ppl_increase is None or m["ppl"] <= base["ppl"] * (1.0 + config.max_ppl_increase)
