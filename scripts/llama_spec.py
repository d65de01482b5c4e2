"""Llama-shaped decoder LMs for `module:factory` specs: random weights, real structure.

No pretrained LLM installs offline, so scale and structure are tested on generated models:
`transformers.LlamaForCausalLM` from a config (RMSNorm, rotary embeddings, grouped-query
attention, SwiGLU MLP), wrapped to take `input_ids` and return the logits alone, the way a
user exports their own decoder. Accuracy is measured on the trained `decoder-lm` demo.

    trtforge export scripts.llama_spec:tiny --shapes input_ids:1x8/1x64/1x128 \
        --dtypes input_ids:int64 --output-names logits -o llama/model.onnx

With its KV cache (prefill + decode engine, generation check):

    trtforge convert scripts.llama_spec:tiny_causal_lm --task text-generation-with-past -o llama_kv

`layers(n)` builds the TinyLlama-1.1B shape (hidden 2048, 32 heads, 4 KV heads, vocab
32000) with `n` layers, in fp16; `tinyllama` is the full 22-layer 1.1B model (2.2 GB).
"""

from __future__ import annotations

import torch

TINYLLAMA = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
SMALL = {  # a 4-layer decoder of Llama's proportions, big enough that a decode step is not all overhead
    "hidden_size": 512,
    "intermediate_size": 1408,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 176,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 1024,
}


class LogitsOnly(torch.nn.Module):
    """input_ids -> logits (no cache; one causal sequence per row).

    The all-ones attention mask is what a caller without padding passes; without one,
    transformers looks for packed sequences in the position ids (torch.diff, which the
    TorchScript exporter cannot export)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False, return_dict=True).logits


def causal_lm(shape: dict, num_layers: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised LlamaForCausalLM of `shape` with `num_layers` layers, in eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(num_hidden_layers=num_layers, tie_word_embeddings=False, **shape)
    config._attn_implementation = "eager"  # exportable everywhere; sdpa lowers the same way
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def build(shape: dict, num_layers: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    """`causal_lm` behind `LogitsOnly`: input_ids -> logits, no cache."""
    return LogitsOnly(causal_lm(shape, num_layers, dtype, seed)).eval()


def tiny() -> torch.nn.Module:
    """2 layers, hidden 64: a Llama in a few hundred kB, for tests and the README example."""
    return build(TINY, 2)


def tiny_causal_lm() -> torch.nn.Module:
    """`tiny` as the transformers model itself, for `--task text-generation-with-past` (trtforge
    wraps it to take and return the KV cache)."""
    return causal_lm(TINY, 2)


def small_causal_lm() -> torch.nn.Module:
    """`SMALL` with 4 layers (25 M parameters) as the transformers model, for the decode benchmark."""
    return causal_lm(SMALL, 4)


def tinyllama4_causal_lm() -> torch.nn.Module:
    """4 layers of TinyLlama-1.1B's shape (hidden 2048, 32 heads, 4 KV heads), fp16, as the
    transformers model: the KV-cache export at real widths (`--task text-generation-with-past`)."""
    return causal_lm(TINYLLAMA, 4, torch.float16)


def tiny_fp16() -> torch.nn.Module:
    """`tiny` in fp16: the fp16 LLM's graph (Casts around the norms and the softmax) at test size."""
    return build(TINY, 2, torch.float16)


def layers(num_layers: int) -> torch.nn.Module:
    """The TinyLlama-1.1B shape with `num_layers` layers, fp16 (about 0.1 GB per layer)."""
    return build(TINYLLAMA, num_layers, torch.float16)


def tinyllama() -> torch.nn.Module:
    """TinyLlama-1.1B's full shape: 22 layers, 1.1 B parameters, 2.2 GB in fp16."""
    return layers(22)


def __getattr__(name: str):
    """`layers_<n>` for any n, so a spec names the depth: `scripts.llama_spec:layers_4`."""
    prefix = "layers_"
    if name.startswith(prefix) and name[len(prefix) :].isdigit() and 1 <= int(name[len(prefix) :]) <= 64:
        count = int(name[len(prefix) :])

        def factory() -> torch.nn.Module:
            return layers(count)

        factory.__doc__ = f"The TinyLlama-1.1B shape with {count} layers, fp16."
        return factory
    raise AttributeError(name)
