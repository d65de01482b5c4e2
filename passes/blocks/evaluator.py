"""Output metrics and damage of any removal set on the calibration and validation data (cached).

The search (search.py) and the selection modes (selection.py) ask this one object:
each removal set is run once per split through the gated session (scores.py), and
its metrics are kept, so a beam, a refinement and a budget check that meet the same
set again pay nothing. Callers that know a whole frontier of sets ask for it first
(`prefetch`): the sets then run together, block by block, each block's onnxruntime
session created once for all of them (passes/blocks/segmented.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import onnx

from converter.core.progress import Step
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
        self.refs = {"calib": self._reference(calib)}
        self.refs["val"] = self.refs["calib"] if val is calib else self._reference(val)
        self.cache: dict[tuple[str, tuple[str, ...]], dict[str, float]] = {}
        self.runs = 0

    def _reference(self, batches: list[Feeds]) -> list[dict[str, np.ndarray]]:
        refs: list[dict[str, np.ndarray]] = [{} for _ in batches]
        for b, _, out in self.session.run_many(batches, [()]):
            refs[b] = out
        return refs

    def close(self) -> None:
        """Drop the gated session (onnxruntime's copies of the weights: fp32 ones of an fp16 model on
        a CPU) before another model runs; the references and every metric measured stay."""
        if self.session is not None:
            self.session.close()
        self.session = None

    def _key(self, removed: Iterable[str], split: str) -> tuple[str, tuple[str, ...]]:
        split = "calib" if self.data["val"] is self.data["calib"] else split
        return split, tuple(sorted(canonical(self.bg, removed)))

    def metrics(self, removed: Iterable[str], split: str = "calib") -> dict[str, float]:
        key = self._key(removed, split)
        if key not in self.cache:
            self.prefetch([key[1]], split)
        return self.cache[key]

    def prefetch(self, sets: Iterable[Iterable[str]], split: str = "calib") -> None:
        """Measure every set of `sets` not measured yet, all in one pass over the model's blocks."""
        keys = list(dict.fromkeys(k for k in (self._key(s, split) for s in sets) if k not in self.cache))
        if not keys:
            return
        split = keys[0][0]
        acc = [OutputMetrics(self.lm) for _ in keys]
        batches, refs = self.data[split], self.refs[split]
        for b, i, out in self.session.run_many(batches, [k[1] for k in keys]):
            acc[i].add(out, refs[b], batches[b])
        for key, metrics in zip(keys, acc, strict=True):
            self.cache[key] = metrics.result()
        self.runs += len(keys)
        self._report_progress()

    def _report_progress(self) -> None:
        now = time.perf_counter()
        if self.progress is not None and now - self._last_progress >= self.PROGRESS_EVERY_S:
            self._last_progress = now
            self.progress(Step("scoring removal sets", self.runs, None, f"({now - self.started:.0f} s)"))

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
