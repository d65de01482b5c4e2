"""Train the small decoder LM that layer-dropping and attention-fusion work is measured on.

No pretrained decoder installs offline, so we make one: a GPT-style causal LM
(pre-LayerNorm, grouped-query attention with 4 query and 2 key/value heads, GELU
MLP, learned positions), byte-level vocabulary, trained on real English text: the
docstrings of the Python standard library (documentation prose, some code). The
held-out split (every 10th module) gives the perplexity that drop-blocks budgets use.

    python scripts/train_decoder_lm.py            # trains if no cached model, prints perplexity
    python scripts/train_decoder_lm.py --force    # retrain
    trtforge convert decoder-lm                   # the same model as a built-in demo

The weights are cached in $TRTFORGE_CACHE (default ~/.cache/trtforge) as
decoder_lm_v2.pt; training takes about two minutes on 2 CPU cores.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

VERSION = "v2"  # v2: the text is built in a fresh interpreter (converter/demos/lm_corpus.py)
CONFIG = {"vocab": 256, "d_model": 128, "layers": 8, "heads": 4, "kv_heads": 2, "ffn": 384, "max_seq": 128}
TRAIN = {"steps": 900, "batch": 24, "seq": 96, "lr": 3e-3, "seed": 0}


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


def cache_path() -> Path:
    root = Path(os.environ.get("TRTFORGE_CACHE", Path.home() / ".cache" / "trtforge"))
    return root / f"decoder_lm_{VERSION}.pt"


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


def train(log=print) -> DecoderLM:
    torch.manual_seed(TRAIN["seed"])
    text, held = corpus()
    model = DecoderLM(**CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN["lr"], weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, TRAIN["lr"], total_steps=TRAIN["steps"], pct_start=0.1)
    start = time.time()
    for step in range(TRAIN["steps"]):
        batch = torch.from_numpy(windows(text, TRAIN["batch"], TRAIN["seq"], seed=step))
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, CONFIG["vocab"]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == TRAIN["steps"] - 1:
            log(f"step {step:4d}  loss {loss.item():.3f}  {time.time() - start:.0f} s")
    model.eval()
    log(f"held-out perplexity {perplexity(model, windows(held, 64, TRAIN['seq'], seed=1)):.3f} (bytes)")
    return model


def load_or_train(force: bool = False, log=print) -> DecoderLM:
    """The cached trained model, training (and caching, atomically) when absent."""
    path = cache_path()
    if path.exists() and not force:
        model = DecoderLM(**CONFIG)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = train(log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return model


def held_out_windows(count: int, seq: int, seed: int = 1) -> np.ndarray:
    """Held-out evaluation windows (N, seq + 1) of real text, for perplexity."""
    return windows(corpus()[1], count, seq, seed)
