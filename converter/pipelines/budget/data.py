"""The budget search's data: calibration for the passes, validation for the budget, never the same samples.

Both come from the model's own real sample stream (a demo's, or a ModelSpec's), cut by
position, the way `convert` already cuts it:

    [ verification batches | calibration batches | validation batches ]

The calibration batches are exactly those `convert` hands its passes
(calibration_source.for_convert), so the recipe the search writes reproduces its graph
byte for byte when `convert --recipe report.json` runs it again; the validation batches
follow them, and `convert`'s own verification keeps the first ones, so the number the
report shows after the search is measured on samples neither chose anything. Each stream's
samples are distinct (the decoder LM's are consecutive, non-overlapping windows of its
held-out text); `disjoint` checks it on the arrays and the search refuses overlapping data.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibration.sensitivity import run_outputs
from converter.core.errors import InvalidInputError
from converter.core.model_spec import Feeds, ModelSpec
from converter.pipelines.calibration_source import CONVERT_BATCHES, load, sample_calibration
from passes.blocks.scores import LanguageModelIO, OutputMetrics

MAX_VALIDATION_SAMPLES = 4096


@dataclass
class SearchData:
    calib: list[Feeds]
    val: list[Feeds]
    source: str

    def describe(self) -> dict[str, object]:
        rows = [sum(len(next(iter(f.values()))) for f in part) for part in (self.calib, self.val)]
        return {"source": self.source, "calibration_samples": rows[0], "validation_samples": rows[1], "disjoint": True}


def _sample_hashes(feeds: list[Feeds]) -> set[str]:
    """One hash per sample: its row of every input, trailing padding (zeros) trimmed (batches pad differently)."""
    hashes = set()
    for batch in feeds:
        rows = len(next(iter(batch.values())))
        for r in range(rows):
            digest = hashlib.sha256()
            for name in sorted(batch):
                row = np.ascontiguousarray(batch[name][r]).reshape(-1)
                nonzero = np.flatnonzero(row)
                digest.update(name.encode() + row[: nonzero[-1] + 1 if nonzero.size else 0].tobytes())
            hashes.add(digest.hexdigest())
    return hashes


def disjoint(calib: list[Feeds], val: list[Feeds]) -> bool:
    """No validation sample equals a calibration sample."""
    return not (_sample_hashes(calib) & _sample_hashes(val))


def search_data(
    model: onnx.ModelProto,
    spec: ModelSpec | None,
    verify_batches: int,
    batch_size: int,
    val_samples: int,
    calibration: str | Path | None = None,
    validation: str | Path | None = None,
) -> SearchData:
    """Calibration = convert's calibration data (the recipe's `calibration` files, else its batches of
    the model's own stream); validation = the `validation` files, else the `val_samples` after them."""
    if not 1 <= val_samples <= MAX_VALIDATION_SAMPLES:
        raise InvalidInputError(f"validation samples {val_samples}: give 1 to {MAX_VALIDATION_SAMPLES}")
    if calibration:
        calib = load(calibration, model)
    else:
        calib = sample_calibration(model, CONVERT_BATCHES, batch_size, verify_batches, spec)
    if validation:
        val = load(validation, model)
    else:
        skip, batches = verify_batches + CONVERT_BATCHES, math.ceil(val_samples / batch_size)
        val = sample_calibration(model, batches, batch_size, skip, spec)
    if calib is None or val is None:
        raise InvalidInputError(
            "--budget needs real data to calibrate on and validate against: this model has no sample data of "
            "its own (a demo, or a factory returning a ModelSpec with real data); give --calib and --validation"
        )
    calib_feeds, val_feeds = list(calib), list(val)
    if not disjoint(calib_feeds, val_feeds):
        where = f"{calibration} and {validation}" if calibration or validation else f"{calib.source}: its samples"
        raise InvalidInputError(f"{where}: calibration and validation share samples; give disjoint data")
    return SearchData(calib_feeds, val_feeds, f"calibration {calib.source}, validation {val.source}")


class Metrics:
    """Streaming budget metrics of candidate outputs against reference outputs: mean/min per-sample
    cosine, perplexity (language models) and top-1 agreement (per sample, per token for a language model)."""

    def __init__(self, lm: LanguageModelIO | None):
        self.lm, self.outputs = lm, OutputMetrics(lm)
        self.agree = self.total = 0

    def add(self, out: dict[str, np.ndarray], ref: dict[str, np.ndarray], feeds: Feeds) -> None:
        self.outputs.add(out, ref, feeds)
        first = self.lm.logits if self.lm else next(iter(ref))
        a, b = np.asarray(out[first]), np.asarray(ref[first])
        if self.lm is None:
            a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        self.agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        self.total += int(np.prod(a.shape[:-1]))

    def result(self) -> dict[str, float]:
        return {**self.outputs.result(), "top1": self.agree / max(self.total, 1)}


class Validator:
    """A candidate's metrics on the validation batches against the source graph's outputs there."""

    def __init__(self, source: onnx.ModelProto, val: list[Feeds], lm: LanguageModelIO | None, task=None):
        self.val, self.lm, self.task = val, lm, task
        self.reference = run_outputs(source, val)
        self.base = self.metrics_of(self.reference)

    def metrics_of(self, outputs: list[dict[str, np.ndarray]]) -> dict[str, float]:
        acc = Metrics(self.lm)
        for out, ref, feeds in zip(outputs, self.reference, self.val, strict=True):
            acc.add(out, ref, feeds)
        metrics = acc.result()
        if self.task is not None:
            metrics["task"] = float(self.task(outputs, self.val))
        return metrics

    def metrics(self, model: onnx.ModelProto) -> dict[str, float]:
        return self.metrics_of(run_outputs(model, self.val))
