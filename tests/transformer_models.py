"""Tiny transformers for block-discovery and block-dropping tests, and torch "skip" variants.

- `tiny_decoder_spec`: the decoder LM demo's own architecture (pre-LN, GQA) at 3 layers
  of width 32, random weights, fed byte windows of real text (standard-library
  docstrings; bytes folded into its 64-token vocabulary);
- `tiny_bert_spec`: transformers' BertModel (post-LN) at 3 layers of width 32 with
  MiniLM's mean-pooling head, fed tokenized-like real text with padding.
- `skip(module, names)`: the torch model with blocks/sub-layers skipped the way
  drop-blocks removes them (block: identity; pre-LN sub-layer: x; post-LN sub-layer:
  LayerNorm(x)), by patching forward methods.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

from converter.core.model_spec import ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.decoder_lm import DecoderLM
from converter.demos.models import sentence_embedding
from converter.demos.sample_data import stdlib_sentences


def text_ids(count: int, length: int, vocab: int, offset: int = 0) -> np.ndarray:
    """(count, length) token ids: bytes of real sentences folded into `vocab`."""
    data = " ".join(stdlib_sentences(200)).encode()
    starts = np.linspace(offset, len(data) - length - 1, count).astype(int)
    return np.stack([np.frombuffer(data[s : s + length], np.uint8) % vocab for s in starts]).astype(np.int64)


def decoder_feeds(num_batches: int, batch_size: int, seq: int = 20, offset: int = 0) -> list[dict[str, np.ndarray]]:
    ids = text_ids(num_batches * batch_size, seq, 64, offset)
    return [{"input_ids": ids[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


def tiny_decoder() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(vocab=64, d_model=32, layers=3, heads=4, kv_heads=2, ffn=64, max_seq=32).eval()


def tiny_decoder_spec() -> ModelSpec:
    return ModelSpec(
        name="tests.transformer_models:tiny_decoder_spec",
        factory=tiny_decoder,
        input_names=["input_ids"],
        output_names=["logits"],
        sample_feeds=decoder_feeds,
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
        profiles={"input_ids": ShapeProfile((1, 2), (4, 16), (8, 32))},
        sample_source="synthetic",
        task="language-model",
    )


def tiny_bert() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config._attn_implementation = "eager"  # the attention subgraph MiniLM's demo exports
    return sentence_embedding(BertModel(config, add_pooling_layer=False)).eval()


def bert_feeds(num_batches: int, batch_size: int, seq: int = 16, offset: int = 0) -> list[dict[str, np.ndarray]]:
    """Real-text ids with a per-row length (padding at the end), as a tokenizer pads a batch."""
    ids = text_ids(num_batches * batch_size, seq, 100, offset)
    feeds = []
    for b in range(num_batches):
        rows = ids[b * batch_size : (b + 1) * batch_size].copy()
        lengths = seq - (np.arange(batch_size) * 3) % (seq // 2)
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        rows[mask == 0] = 0
        feeds.append({"input_ids": rows, "attention_mask": mask, "token_type_ids": np.zeros_like(rows)})
    return feeds


def tiny_bert_spec() -> ModelSpec:
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return ModelSpec(
        name="tests.transformer_models:tiny_bert_spec",
        factory=tiny_bert,
        input_names=names,
        output_names=["sentence_embedding"],
        sample_feeds=bert_feeds,
        dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names}, "sentence_embedding": {0: "batch"}},
        profiles={n: ShapeProfile((1, 2), (4, 16), (8, 32)) for n in names},
        sample_source="synthetic",
        task="embedding",
    )


def _decoder_layers(module) -> list:
    return list(module.blocks)


def _bert_layers(module) -> list:
    return list(module.encoder.encoder.layer)


def skip(module: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """Patch `module` in place so the named blocks / sub-layers are skipped; returns it."""
    decoder = isinstance(module, DecoderLM)
    layers = _decoder_layers(module) if decoder else _bert_layers(module)
    for name in names:
        kind, index = name.rstrip("0123456789"), int(name[len(name.rstrip("0123456789")) :])
        layer = layers[index]
        if kind == "block":
            layer.forward = types.MethodType(lambda self, hidden_states, *a, **k: hidden_states, layer)
        elif decoder:
            _skip_decoder_sublayer(layer, kind)
        else:
            target = layer.attention.output if kind == "attn" else layer.output
            target.forward = types.MethodType(lambda self, hidden, input_tensor: self.LayerNorm(input_tensor), target)
    return module


def _skip_decoder_sublayer(block, kind: str) -> None:
    skipped = set(getattr(block, "_skipped", set())) | {kind}
    block._skipped = skipped

    def forward(self, x):
        if "attn" not in self._skipped:
            x = x + self.attn(self.ln1(x))
        if "mlp" not in self._skipped:
            x = x + self.mlp(self.ln2(x))
        return x

    block.forward = types.MethodType(forward, block)


def hidden_states(module: torch.nn.Module, feeds: dict[str, np.ndarray], input_names: list[str]) -> list[tuple]:
    """Per block (input, output) hidden states of the torch model, from forward hooks."""
    layers = _decoder_layers(module) if isinstance(module, DecoderLM) else _bert_layers(module)
    captured: list[tuple] = []
    hooks = [
        layer.register_forward_hook(
            lambda m, args, kwargs, out: captured.append(
                (
                    (args[0] if args else kwargs["hidden_states"]).detach().numpy(),
                    (out[0] if isinstance(out, tuple) else out).detach().numpy(),
                )
            ),
            with_kwargs=True,
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            module(*(torch.from_numpy(feeds[n]) for n in input_names))
    finally:
        for h in hooks:
            h.remove()
    return captured


@functools.cache
def exported(spec_name: str, exporter: str = "torchscript") -> str:
    """Path of the spec's export with `exporter` (once per test session)."""
    from converter.pipelines.export import export_model

    spec = {"decoder": tiny_decoder_spec, "bert": tiny_bert_spec}[spec_name]()
    folder = Path(tempfile.mkdtemp(prefix="trtforge-blocks-"))
    atexit.register(shutil.rmtree, folder, True)  # the test session leaves nothing in /tmp
    return str(export_model(spec, folder / f"{spec_name}_{exporter}.onnx", exporter=exporter).path)
