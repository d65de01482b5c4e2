"""The small trained decoder LM that layer-dropping and attention-fusion work is measured on.

No pretrained decoder installs offline, so we made one: a GPT-style causal LM
(pre-LayerNorm, grouped-query attention with 4 query and 2 key/value heads, GELU
MLP, learned positions), byte-level vocabulary, trained on real English text: the
docstrings of the Python standard library (documentation prose, some code). The
held-out split (every 10th module) gives the perplexity that drop-blocks budgets use.

The trained weights ship with the package (weights/decoder_lm_v2.safetensors, 5 MB,
checked against WEIGHTS_SHA256 on load), so using the demo costs a file read, not a
training run whose length depends on the machine's load (88 minutes were seen on a busy
2-core machine). `python scripts/train_decoder_lm.py --out FILE` retrains on request and
prints the hash to put here.
"""

from __future__ import annotations

import functools
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from converter.core.errors import InvalidInputError

VERSION = "v2"  # v2: the text is built in a fresh interpreter (converter/demos/lm_corpus.py)
WEIGHTS = Path(__file__).with_name("weights") / f"decoder_lm_{VERSION}.safetensors"
WEIGHTS_SHA256 = "425c16069629007387eb6e5d3221a224f38b8d83da2dc1b05aff2120507e7e91"
CONFIG = {"vocab": 256, "d_model": 128, "layers": 8, "heads": 4, "kv_heads": 2, "ffn": 384, "max_seq": 128}


class Attention(torch.nn.Module):
    """Causal grouped-query attention, written out the way many model zoos do."""

    def __init__(self, d: int, heads: int, kv_heads: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, d // heads
        self.q = torch.nn.Linear(d, d)
        self.k = torch.nn.Linear(d, kv_heads * self.head_dim)
        self.v = torch.nn.Linear(d, kv_heads * self.head_dim)
        self.o = torch.nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q = self.q(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        groups = self.heads // self.kv_heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return self.o(out.transpose(1, 2).reshape(b, s, d))


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int, kv_heads: int, ffn: int):
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.attn = Attention(d, heads, kv_heads)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d, ffn), torch.nn.GELU(), torch.nn.Linear(ffn, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class DecoderLM(torch.nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, kv_heads: int, ffn: int, max_seq: int):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d_model)
        self.pos = torch.nn.Embedding(max_seq, d_model)
        self.blocks = torch.nn.ModuleList(Block(d_model, heads, kv_heads, ffn) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d_model)
        self.head = torch.nn.Linear(d_model, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[bytes, bytes]:
    """(train, held-out) bytes: stdlib module docstrings, every 10th module held out.

    Built by converter/demos/lm_corpus.py in a fresh isolated interpreter, so the text does not
    depend on what this process imported or patched (v1 built it in-process and varied).
    """
    script = Path(__file__).with_name("lm_corpus.py")
    done = subprocess.run([sys.executable, "-I", "-S", str(script)], capture_output=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"building the decoder LM's text failed: {done.stderr.decode(errors='replace')[-300:]}")
    train, _, held = done.stdout.partition(b"\0")
    return train, held


def windows(data: bytes, count: int, seq: int, seed: int) -> np.ndarray:
    """`count` windows of `seq` + 1 bytes at seeded random offsets."""
    array = np.frombuffer(data, dtype=np.uint8)
    starts = np.random.default_rng(seed).integers(0, len(array) - seq - 1, count)
    return np.stack([array[s : s + seq + 1] for s in starts]).astype(np.int64)


def perplexity(model: DecoderLM, data: np.ndarray) -> float:
    """exp(mean next-byte cross-entropy) over windows (N, seq + 1)."""
    with torch.no_grad():
        tokens = torch.from_numpy(data)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
    return float(math.exp(loss))


def load(path: Path = WEIGHTS, sha256: str | None = WEIGHTS_SHA256) -> DecoderLM:
    """The trained model from `path`, refusing a file whose hash is not the one shipped."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"decoder-lm weights {path}: {exc.strerror or exc}") from exc
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InvalidInputError(
            f"decoder-lm weights {path}: sha256 differs from the shipped file's "
            "(reinstall trtforge, or retrain with scripts/train_decoder_lm.py and update WEIGHTS_SHA256)"
        )
    from safetensors.torch import load as load_safetensors

    model = DecoderLM(**CONFIG)
    model.load_state_dict(load_safetensors(data))
    return model.eval()


def held_out_windows(count: int, seq: int, seed: int = 1) -> np.ndarray:
    """Held-out evaluation windows (N, seq + 1) of real text, for perplexity."""
    return windows(corpus()[1], count, seq, seed)


def held_out_stream(count: int, seq: int) -> np.ndarray:
    """The first `count` consecutive windows (N, seq) of the held-out text, none sharing a byte."""
    array = np.frombuffer(corpus()[1], dtype=np.uint8)
    if count * seq > len(array):
        raise InvalidInputError(f"decoder-lm sample data: {count} windows of {seq} bytes exceed its {len(array)} bytes")
    return array[: count * seq].reshape(count, seq).astype(np.int64)
