"""Decoder LMs behind the KV-cache interface (converter/core/kv_cache.py), and their sample feeds.

- `HFWithPast` wraps a transformers causal LM (Llama, Mistral, Qwen2, ...: anything that
  takes a `DynamicCache`): flat past tensors in, a DynamicCache filled from them, the
  logits and the cache's tensors out. It reads the cache through `layers[i].keys/values`,
  what the exported graph computes, not one transformers version's legacy tuple format,
  and passes it as `cache` or `past_key_values`, whichever the forward takes (5.x renamed it).
- `cache_feeds`: real feeds for a cache graph: a prompt of real text is prefilled in torch
  and the next tokens come with that cache, so verification and calibration see the
  decode phase with a real past, not zeros.
- `spec_with_past`: the ModelSpec of either.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from converter.core.errors import InvalidInputError
from converter.core.kv_cache import TASK_WITH_PAST, CacheLayout, step_feeds
from converter.core.model_spec import Feeds, ModelSpec


def hf_with_past(model: Any) -> Any:
    """A transformers causal LM -> a module with the flat cache interface (torch imported here)."""
    import torch
    from transformers import DynamicCache

    class HFWithPast(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model
            # transformers 5.x renamed `past_key_values` (argument and output) to `cache`
            takes = inspect.signature(model.forward).parameters
            self.cache_argument = "cache" if "cache" in takes else "past_key_values"

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            for index in range(len(past) // 2):
                cache.update(past[2 * index], past[2 * index + 1], index)
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{self.cache_argument: cache},
            )
            presents = []
            for layer in getattr(out, self.cache_argument).layers:
                presents += [layer.keys, layer.values]
            return (out.logits, *presents)

    return HFWithPast(model).eval()


def hf_layout(model: Any, max_length: int = 128, max_prompt: int = 64) -> CacheLayout:
    """The cache layout a transformers decoder's config implies (GQA: kv heads, not query heads)."""
    config = getattr(model, "config", None)
    try:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        layers = config.num_hidden_layers
    except AttributeError as exc:
        raise InvalidInputError(
            f"{type(model).__name__}: not a transformers decoder (its config has no {exc.name})"
        ) from exc
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    limit = min(max_length, getattr(config, "max_position_embeddings", max_length))
    return CacheLayout(layers, kv_heads, head_dim, dtype, limit, min(max_prompt, limit))


# The sample source of a wrapped transformers decoder: real text (the held-out split's bytes
# as token ids) run through the model itself. Not a name a file's metadata can resolve (the
# model is random-weight or the user's), so a graph alone gets consistent synthetic feeds.
HELD_OUT_TEXT = "text:held-out"


def prompt_tokens(count: int, length: int, vocab: int, seed: int = 100) -> np.ndarray:
    """`count` prompts of `length` tokens: held-out real text bytes (ids below `vocab`)."""
    from converter.demos.decoder_lm import held_out_windows

    return held_out_windows(count, length, seed=seed)[:, :length] % vocab


def cache_feeds(module: Any, layout: CacheLayout, tokens: np.ndarray, prefix: int) -> Feeds:
    """Feeds for `tokens[:, prefix:]` with the cache torch made from `tokens[:, :prefix]`."""
    import torch

    batch = tokens.shape[0]
    feeds = step_feeds(tokens[:, :prefix], layout.empty_past(batch), 0)
    with torch.no_grad():
        out = module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in layout.input_names()))
    past = {name: t.numpy() for name, t in zip(layout.past_names(), out[1:], strict=True)}
    return step_feeds(tokens[:, prefix:], past, prefix)


def spec_with_past(
    name: str, factory: Callable[[], Any], layout: CacheLayout, vocab: int, sample_source: str = "synthetic"
) -> ModelSpec:
    """A ModelSpec for a module with the cache interface; its samples continue real text after a cached prompt."""
    spec: ModelSpec

    def feeds(num_batches: int, batch_size: int) -> list[Feeds]:
        """One new token after a cached prompt of real text: a decode step (the decode profile's shape)."""
        length = min(48, layout.max_length)
        tokens = [prompt_tokens(batch_size, length, vocab, seed=100 + b) for b in range(num_batches)]
        return [cache_feeds(spec.module(), layout, t, prefix=length - 1) for t in tokens]

    spec = ModelSpec(
        name=name,
        factory=factory,
        input_names=layout.input_names(),
        output_names=layout.output_names(),
        sample_feeds=feeds,
        dynamic_axes=layout.dynamic_axes(),
        profiles=layout.profiles()[1],
        sample_source=sample_source,
        task=TASK_WITH_PAST,
        cache=layout,
    )
    return spec
