"""The KV-cache interface of a decoder LM's graph: names, shapes, profiles, and how to find it.

A graph exported with a cache (`--task text-generation-with-past`) takes

    input_ids [batch, sequence], attention_mask [batch, past + sequence] (1 = attend),
    position_ids [batch, sequence], past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim]

and returns `logits [batch, sequence, vocab]` and `present.{i}.key / .value
[batch, kv_heads, past + sequence, head_dim]`: Optimum's names, so its graphs and ours are
read the same way. The layout is recorded in the ONNX metadata (`trtforge.kv_cache`) and,
for a graph without it (Optimum's), read back from the input names and shapes.

One engine serves both phases with two optimization profiles: prefill (past 0, the
prompt up to `max_prompt` tokens) and decode (one token, past 1 .. `max_length` - 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from converter.core.errors import InvalidInputError
from converter.core.profiles import ShapeProfile

TASK_WITH_PAST = "text-generation-with-past"
TASKS = ("default", TASK_WITH_PAST)
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
CACHE_IO_PREFIXES = (PAST_PREFIX, PRESENT_PREFIX)
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT = re.compile(r"^present\.(\d+)\.(key|value)$")


def cache_tensor(name: str) -> tuple[str, int, str] | None:
    """("past" | "present", layer, "key" | "value") for a cache input/output name, else None."""
    for role, pattern in (("past", _PAST), ("present", _PRESENT)):
        found = pattern.match(name)
        if found:
            return role, int(found.group(1)), found.group(2)
    return None


_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class CacheLayout:
    """How many cache tensors a decoder has and their shape: [batch, kv_heads, length, head_dim]."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str = "float32"
    max_length: int = 128  # prompt + generated tokens the engine's profiles allow
    max_prompt: int = 64
    max_batch: int = 4

    def __post_init__(self) -> None:
        for key in ("num_layers", "kv_heads", "head_dim", "max_length", "max_prompt", "max_batch"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidInputError(f"kv cache layout: {key} must be a positive integer, got {value!r}")
        if self.dtype not in _NUMPY_DTYPES:
            raise InvalidInputError(f"kv cache layout: dtype {self.dtype!r} not in {sorted(_NUMPY_DTYPES)}")
        if self.max_prompt > self.max_length:
            raise InvalidInputError(f"kv cache layout: max_prompt {self.max_prompt} > max_length {self.max_length}")

    def past_names(self) -> list[str]:
        return [f"past_key_values.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "position_ids", *self.past_names()]

    def output_names(self) -> list[str]:
        return ["logits", *self.present_names()]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {
            "input_ids": {0: "batch", 1: "sequence"},
            "position_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "total_sequence"},
            "logits": {0: "batch", 1: "sequence"},
        }
        axes.update({name: {0: "batch", 2: "past_sequence"} for name in self.past_names()})
        axes.update({name: {0: "batch", 2: "total_sequence"} for name in self.present_names()})
        return axes

    def _profile(self, seq: tuple[int, int, int], past: tuple[int, int, int]) -> dict[str, ShapeProfile]:
        batch = (1, 1, self.max_batch)

        def shape(*dims_at: tuple[int, int, int]) -> ShapeProfile:
            return ShapeProfile(*(tuple(d[k] for d in dims_at) for k in range(3)))

        total = tuple(s + p for s, p in zip(seq, past, strict=True))
        profile = {"input_ids": shape(batch, seq), "position_ids": shape(batch, seq)}
        profile["attention_mask"] = shape(batch, total)
        heads, dim = (self.kv_heads,) * 3, (self.head_dim,) * 3
        profile.update({name: shape(batch, heads, past, dim) for name in self.past_names()})
        return profile

    def profiles(self) -> list[dict[str, ShapeProfile]]:
        """[prefill, decode]: past 0 with a prompt of 1 .. max_prompt; one token after 1 .. max_length - 1."""
        last = self.max_length - 1
        prefill = self._profile((1, max(1, self.max_prompt // 2), self.max_prompt), (0, 0, 0))
        decode = self._profile((1, 1, 1), (1, max(1, last // 2), last))
        return [prefill, decode]

    @property
    def numpy_dtype(self) -> type:
        return _NUMPY_DTYPES[self.dtype]

    def empty_past(self, batch: int) -> dict[str, np.ndarray]:
        """The past of a prefill: every cache tensor with length 0."""
        return {
            name: np.zeros((batch, self.kv_heads, 0, self.head_dim), self.numpy_dtype) for name in self.past_names()
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "trtforge.kv_cache") -> CacheLayout:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in data if k in cls.__dataclass_fields__})
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{where}: not a kv cache layout ({exc})") from exc


def step_feeds(tokens: np.ndarray, past: dict[str, np.ndarray], past_len: int) -> dict[str, np.ndarray]:
    """One generation step's feeds: `tokens` [batch, seq] after `past_len` cached positions
    (no padding: the mask is all ones, positions continue from the past), and the cache."""
    batch, seq = tokens.shape
    return {
        "input_ids": tokens.astype(np.int64),
        "attention_mask": np.ones((batch, past_len + seq), np.int64),
        "position_ids": np.broadcast_to(np.arange(past_len, past_len + seq), (batch, seq)).astype(np.int64),
        **past,
    }


def synthetic_feeds(layout: CacheLayout, batch: int, vocab: int, seed: int, past: int = 15) -> dict[str, np.ndarray]:
    """Seeded random feeds that are consistent as a decode step: one token after `past` cached
    positions (random cache values, mask and positions that agree with its length)."""
    rng = np.random.default_rng(seed)
    cache = {
        name: rng.standard_normal((batch, layout.kv_heads, past, layout.head_dim)).astype(layout.numpy_dtype)
        for name in layout.past_names()
    }
    return step_feeds(rng.integers(0, vocab, (batch, 1)), cache, past)


def layout_from_inputs(inputs: dict[str, list], dtype_of: dict[str, str]) -> CacheLayout | None:
    """The layout of a graph whose inputs (name -> dims, ints or names) follow the cache naming, else None.

    Every layer must have both a key and a value input, all of rank 4 with the same static
    head count and head dim: a graph that looks half like a cache model is refused, not guessed.
    """
    found = {name: _PAST.match(name) for name in inputs}
    past = {name: m for name, m in found.items() if m}
    if not past:
        return None
    layers = sorted({int(m.group(1)) for m in past.values()})
    expected = {f"past_key_values.{i}.{kind}" for i in range(len(layers)) for kind in ("key", "value")}
    if set(past) != expected or "input_ids" not in inputs:
        raise InvalidInputError(
            f"the graph has cache inputs {sorted(past)[:4]}... but not input_ids and a key and value for "
            f"layers 0..{len(layers) - 1}: not a decoder with a KV cache trtforge can drive"
        )
    if any(len(inputs[name]) != 4 for name in past):
        raise InvalidInputError("cache inputs past_key_values.*: need rank 4 [batch, kv_heads, past, head_dim]")
    shapes = {tuple(inputs[name][1::2]) for name in past}
    if len(shapes) != 1 or not all(isinstance(d, int) and d > 0 for d in next(iter(shapes))):
        raise InvalidInputError("cache inputs past_key_values.*: need one static [kv_heads, head_dim] for all layers")
    (kv_heads, head_dim) = next(iter(shapes))
    dtype = dtype_of.get("past_key_values.0.key", "float32")
    return CacheLayout(num_layers=len(layers), kv_heads=kv_heads, head_dim=head_dim, dtype=dtype)
