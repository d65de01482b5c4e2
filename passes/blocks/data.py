"""Calibration and validation data for block scoring (real text; disjoint splits for the demos).

- `feeds_for_pass`: what the drop-blocks pass scores on: the recipe's calibration
  data (`PassContext.calibration`: a list of feed dicts, or any object with `.feeds`
  or that iterates feed dicts), else the real sample data the ONNX metadata names
  (`trtforge.sample_data`, a built-in demo), else nothing (never random data). The
  batches are kept in memory: a greedy search re-reads them once per candidate.
- `demo_splits`: calibration and validation sets that do not overlap, for the demos:
  MiniLM gets standard-library docstring sentences (calibration first, validation
  the following ones); the decoder LM gets windows of the first half of its held-out
  text for calibration and of the second half for validation. Not its training text:
  the LM has partly memorised it (v1: perplexity 2.6-2.9 there, 3.85 held out), and
  scores measured on memorised text chose removals that generalised worse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from converter.core.metadata import SAMPLE_DATA, metadata_value

Feeds = dict[str, np.ndarray]
LM_CALIBRATION, LM_VALIDATION = "held-out-a", "held-out-b"


def as_feed_list(data: Any) -> list[Feeds] | None:
    """A list of feed dicts from calibration data in any of the accepted forms."""
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


def feeds_for_pass(
    model: onnx.ModelProto, calibration: Any, batches: int, batch_size: int
) -> tuple[list[Feeds] | None, str]:
    """(feeds, where they came from) for scoring `model`; (None, why) when there is no real data."""
    feeds = as_feed_list(calibration)
    if feeds:
        return feeds, "the recipe's calibration data"
    from converter.pipelines.model_ref import feeds_for_source

    source = metadata_value(model, SAMPLE_DATA)
    if source.startswith("demo:"):
        found = feeds_for_source(source, batches, batch_size)
        if found:
            return found, f"{source} sample data ({batches} x {batch_size})"
    return None, f"the model names no built-in sample data (trtforge.sample_data={source!r})"


def lm_windows(split: str, count: int, seq: int, seed: int) -> np.ndarray:
    """`count` windows of `seq` tokens (bytes) of the decoder LM's text: "train", "held-out",
    or the held-out text's first / second half ("held-out-a" / "held-out-b", disjoint)."""
    from converter.demos.decoder_lm import corpus, windows  # corpus() is cached

    train, held = corpus()
    text = {
        "train": train,
        "held-out": held,
        "held-out-a": held[: len(held) // 2],
        "held-out-b": held[len(held) // 2 :],
    }
    return windows(text[split], count, seq - 1, seed)


def minilm_batches(sentences: list[str], batch_size: int, max_length: int = 128) -> list[Feeds]:
    from transformers import AutoTokenizer

    from converter.demos.models import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    batches = []
    for start in range(0, len(sentences), batch_size):
        enc = tokenizer(
            sentences[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        batches.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
    return batches


def demo_splits(
    demo: str, calib_samples: int, val_samples: int, batch_size: int = 16, seq: int = 64
) -> tuple[list[Feeds], list[Feeds], str]:
    """(calibration feeds, validation feeds, description) for a built-in demo, with no overlap."""
    if demo == "minilm":
        from converter.demos.sample_data import stdlib_sentences

        sentences = stdlib_sentences(calib_samples + val_samples)
        return (
            minilm_batches(sentences[:calib_samples], batch_size),
            minilm_batches(sentences[calib_samples:], batch_size),
            f"stdlib docstring sentences: {calib_samples} calibration, the next {val_samples} validation",
        )
    if demo == "decoder-lm":
        calib = lm_windows(LM_CALIBRATION, calib_samples, seq, seed=7)
        val = lm_windows(LM_VALIDATION, val_samples, seq, seed=1)
        return (
            [{"input_ids": calib[i : i + batch_size]} for i in range(0, calib_samples, batch_size)],
            [{"input_ids": val[i : i + batch_size]} for i in range(0, val_samples, batch_size)],
            f"{seq}-byte windows of the held-out text: {calib_samples} from its first half (calibration), "
            f"{val_samples} from its second half (validation)",
        )
    raise ValueError(f"no built-in calibration/validation split for '{demo}'")
