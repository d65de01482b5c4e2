"""The decoder-lm demo loads its shipped weights (no training) and refuses a tampered file."""

from __future__ import annotations

import pytest

from converter.core.errors import InvalidInputError
from converter.demos import decoder_lm


def test_shipped_weights_load_without_training_and_predict_text():
    model = decoder_lm.load()
    windows = decoder_lm.held_out_windows(16, 64)
    assert decoder_lm.perplexity(model, windows) < 5.0  # untrained would be ~256 (bytes)


def test_tampered_weights_are_refused_by_hash(tmp_path):
    tampered = tmp_path / "w.safetensors"
    data = bytearray(decoder_lm.WEIGHTS.read_bytes())
    data[-1] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(InvalidInputError, match="sha256"):
        decoder_lm.load(tampered)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(InvalidInputError, match="missing.safetensors"):
        decoder_lm.load(tmp_path / "missing.safetensors")
