"""The trained decoder-lm with a KV cache: the same weights, the forward a generation loop calls.

`DecoderLMWithPast` takes the cache interface of converter/core/kv_cache.py (input_ids,
attention_mask over past + new tokens, position_ids, past K/V per layer) and returns the
logits and the grown cache. Its attention is the demo's, with the past keys and values
concatenated in front of the new ones and a mask that is causal with the past as offset
and drops the padded positions of attention_mask. With an empty past and an all-ones mask
it computes exactly what `DecoderLM.forward` computes (tested).
"""

from __future__ import annotations

import math

import torch

from converter.core.kv_cache import CacheLayout
from converter.demos.decoder_lm import CONFIG, Attention, DecoderLM


def attend(attn: Attention, x: torch.Tensor, past_k, past_v, keep: torch.Tensor):
    """Attention over past + new keys; `keep` [b, 1, s, past + s] is True where a query may look."""
    b, s, d = x.shape
    q = attn.q(x).view(b, s, attn.heads, attn.head_dim).transpose(1, 2)
    k = attn.k(x).view(b, s, attn.kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.v(x).view(b, s, attn.kv_heads, attn.head_dim).transpose(1, 2)
    k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    groups = attn.heads // attn.kv_heads
    scores = (q @ k.repeat_interleave(groups, dim=1).transpose(-2, -1)) / math.sqrt(attn.head_dim)
    scores = scores.masked_fill(~keep, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v.repeat_interleave(groups, dim=1)
    return attn.o(out.transpose(1, 2).reshape(b, s, d)), k, v


class DecoderLMWithPast(torch.nn.Module):
    """DecoderLM's weights behind the cache interface (flat past K/V arguments, flat presents)."""

    def __init__(self, model: DecoderLM, skip_attention: frozenset[int] = frozenset()):
        super().__init__()
        self.model = model
        # layers whose attention is skipped (the reference for drop-blocks on a cache graph):
        # they read no past and return no present, as the pruned graph's renumbered cache
        self.skip_attention = skip_attention

    def forward(self, input_ids, attention_mask, position_ids, *past):
        model = self.model
        x = model.tok(input_ids) + model.pos(position_ids)
        s = input_ids.shape[1]
        past_len = past[0].shape[2] if past else 0
        query_pos = torch.arange(s, device=x.device) + past_len
        key_pos = torch.arange(past_len + s, device=x.device)
        causal = key_pos[None, :] <= query_pos[:, None]
        # the padding mask read at the key positions (a Gather, as transformers does): then its
        # dim is the keys' own to a shape inference; attention_mask's is another symbol, which
        # would stop the symbolic shapes the attention fusion proves GQA with
        padding = attention_mask[:, key_pos][:, None, None, :].bool()
        keep = causal[None, None] & padding
        presents = []
        for index, block in enumerate(model.blocks):
            if index not in self.skip_attention:
                cached = len(presents)
                out, k, v = attend(block.attn, block.ln1(x), past[cached], past[cached + 1], keep)
                x = x + out
                presents += [k, v]
            x = x + block.mlp(block.ln2(x))
        return (model.head(model.ln_f(x)), *presents)


def layout() -> CacheLayout:
    """decoder-lm's cache: 8 layers of 2 KV heads x 32, up to its 128 learned positions."""
    head_dim = CONFIG["d_model"] // CONFIG["heads"]
    return CacheLayout(
        num_layers=CONFIG["layers"], kv_heads=CONFIG["kv_heads"], head_dim=head_dim, max_length=CONFIG["max_seq"]
    )


def module() -> DecoderLMWithPast:
    from converter.demos.decoder_lm import load

    return DecoderLMWithPast(load()).eval()
