"""Disjoint calibration and validation sets of the demos' real text, for block dropping.

MiniLM gets standard-library docstring sentences (calibration first, validation the
following ones); the decoder LM gets windows of the first half of its held-out text
for calibration and of the second half for validation. Not its training text: the LM
has partly memorised it (v1: perplexity 2.6-2.9 there, 3.85 held out), and scores
measured on memorised text chose removals that generalised worse.
"""

from __future__ import annotations

import numpy as np

from calibration.readers import tokenize_batches
from converter.core.model_spec import Feeds

DEMO_SPLITS = ("minilm", "decoder-lm")
LM_CALIBRATION, LM_VALIDATION = "held-out-a", "held-out-b"
MINILM_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def lm_windows(split: str, count: int, seq: int, seed: int) -> np.ndarray:
    """`count` windows of `seq` tokens (bytes) of the decoder LM's text: "train", "held-out",
    or the held-out text's first / second half ("held-out-a" / "held-out-b", disjoint)."""
    from converter.demos.decoder_lm import corpus, windows  # corpus() is cached; torch only when asked

    train, held = corpus()
    text = {
        "train": train,
        "held-out": held,
        "held-out-a": held[: len(held) // 2],
        "held-out-b": held[len(held) // 2 :],
    }
    return windows(text[split], count, seq - 1, seed)


def minilm_batches(sentences: list[str], batch_size: int, max_length: int = 128) -> list[Feeds]:
    """Sentences tokenized for MiniLM, padded per batch."""
    from transformers import AutoTokenizer

    from converter.demos.models import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    types = dict.fromkeys(MINILM_INPUTS, np.dtype(np.int64))
    return [feeds for _, feeds in tokenize_batches(tokenizer, sentences, batch_size, max_length, types)]


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
