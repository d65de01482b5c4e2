"""Scores for transformer blocks and sub-layers on calibration data, streamed batch by batch.

- Block Influence (ShortGPT): BI = 1 - E_token[cos(h_in, h_out)] for a block's input
  and output hidden states, and the same for each sub-layer (its stream input and
  output: "What Matters in Transformers" drops the attention sub-layers whose input
  and output are most alike). Tokens are weighted by `attention_mask` when the feeds
  carry one of the right shape, so padding does not count.
- The direct measure: what removing a unit does to the final outputs: per-sample
  cosine to the original outputs, and for language models perplexity (next-token
  cross-entropy on the fed tokens) and KL(original || pruned) per token.

Every number comes from the gated graph (passes/blocks/rewiring.gated_model), run block
by block (passes/blocks/segmented.py): a removal set is a choice of boolean gate inputs,
computed exactly as the rewired graph computes it. Only running sums are kept, never
every activation of every sample; the original outputs are kept (final outputs only)
for the cosine and KL references.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx

from converter.core.kv_cache import PRESENT_PREFIX
from converter.core.metadata import TASK, metadata_value
from passes.blocks.discovery import BlockGraph
from passes.blocks.liveness import live
from passes.blocks.rewiring import GATE_PREFIX, gated_model, plan, substitutions
from passes.blocks.segmented import SegmentedSession

Feeds = dict[str, np.ndarray]
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclass
class LanguageModelIO:
    """Which input holds the token ids and which output the next-token logits."""

    tokens: str
    logits: str


def language_model_io(model: onnx.ModelProto) -> LanguageModelIO | None:
    """Token input and logits output when the metadata says the model is a language model."""
    task = metadata_value(model, TASK)
    if task != "language-model":
        return None
    ints = [
        i.name
        for i in model.graph.input
        if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    ]
    return LanguageModelIO(ints[0], model.graph.output[0].name) if ints and model.graph.output else None


def _token_cosine(a: np.ndarray, b: np.ndarray, weights: np.ndarray | None) -> tuple[float, float]:
    """(sum of per-token cosines, total weight) over the last axis."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    if weights is None:
        return float(cos.sum()), float(cos.size)
    w = weights.reshape(-1).astype(np.float64)
    return float((cos * w).sum()), float(w.sum())


def _row_cosine(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    o = out.reshape(out.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(r, axis=1) * np.linalg.norm(o, axis=1)
    return np.where(norms > 0, (r * o).sum(1) / np.maximum(norms, 1e-300), 1.0)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclass
class OutputMetrics:
    """Streaming accumulator for the final-output metrics of one removal set."""

    lm: LanguageModelIO | None = None
    cos_sum: float = 0.0
    cos_min: float = 1.0
    samples: int = 0
    nll: float = 0.0
    kl: float = 0.0
    tokens: int = 0

    def add(self, out: dict[str, np.ndarray], ref: dict[str, np.ndarray], feeds: Feeds) -> None:
        # a decoder's KV cache (present.*) is state, not a result: removing a layer removes its
        # cache outputs and renumbers the rest (cache_io.py); the logits judge the model
        judged = [n for n in ref if not n.startswith(PRESENT_PREFIX)]
        cos = np.mean([_row_cosine(ref[n], out[n]) for n in judged], axis=0)
        self.cos_sum += float(cos.sum())
        self.cos_min = min(self.cos_min, float(cos.min()))
        self.samples += len(cos)
        if self.lm is not None:
            logp = _log_softmax(out[self.lm.logits][:, :-1])
            target = feeds[self.lm.tokens][:, 1:]
            self.nll -= float(np.take_along_axis(logp, target[..., None], -1).sum())
            ref_logp = _log_softmax(ref[self.lm.logits][:, :-1])
            self.kl += float((np.exp(ref_logp) * (ref_logp - logp)).sum())
            self.tokens += target.size

    def result(self) -> dict[str, float]:
        values = {"cosine": self.cos_sum / max(self.samples, 1), "min_cosine": self.cos_min}
        if self.lm is not None and self.tokens:
            values["ppl"] = math.exp(self.nll / self.tokens)
            values["kl"] = self.kl / self.tokens
        return values


class GatedSession:
    """Runs the model with any set of units removed, block by block (passes/blocks/segmented.py:
    onnxruntime holds a few blocks' weights at a time, not the model's)."""

    def __init__(self, model: onnx.ModelProto, bg: BlockGraph, probe: bool = False, budget_bytes: int | None = None):
        """`probe` also exposes the stream tensors and MatMul operands (for BI and FLOPs); `budget_bytes`
        bounds the weights kept sessions hold (SegmentedSession)."""
        self.bg = bg
        self.units = bg.units("all")
        self.outputs = [o.name for o in model.graph.output]
        self.matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
        expose = []
        if probe:
            expose = [t for u in self.units for t in (u.input, u.output)]
            expose += [t for n in self.matmuls for t in (n.input[0], n.output[0])]
        gated = gated_model(model, self.units, expose)
        gates = [GATE_PREFIX + u.name for u in self.units]
        self.segments = SegmentedSession(gated, [b.output for b in bg.blocks], gates, budget_bytes)

    def close(self) -> None:
        """Drop onnxruntime's sessions (their copies of the weights)."""
        self.segments.close()

    def gates(self, removed: Iterable[str]) -> dict[str, bool]:
        off = {u.name for u in plan(self.bg, removed)}
        return {GATE_PREFIX + u.name: u.name not in off for u in self.units}

    def run(self, feeds: Feeds, removed: Iterable[str] = (), outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        return self.segments.run(feeds, self.gates(removed), outputs or self.outputs)

    def run_many(
        self, batches: list[Feeds], removal_sets: list[Iterable[str]]
    ) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """(batch index, set index, outputs) of every batch with every removal set, in one wavefront."""
        return self.segments.run_many(batches, [self.gates(r) for r in removal_sets], self.outputs)

    def block_influence(self, batches: Iterable[Feeds]) -> dict[str, float]:
        """BI per unit (blocks and sub-layers) with nothing removed, streamed over `batches`."""
        sums: dict[str, list[float]] = {u.name: [0.0, 0.0] for u in self.units}
        tensors = list(dict.fromkeys(t for u in self.units for t in (u.input, u.output)))
        for feeds in batches:
            values = self.run(feeds, (), tensors)
            mask = feeds.get("attention_mask")
            for u in self.units:
                a, b = values[u.input], values[u.output]
                weights = mask if mask is not None and mask.shape == a.shape[:-1] else None
                s, w = _token_cosine(a, b, weights)
                sums[u.name][0] += s
                sums[u.name][1] += w
        return {name: 1.0 - s / max(w, 1e-30) for name, (s, w) in sums.items()}

    def matmul_flops(self, feeds: Feeds) -> dict[str, float]:
        """FLOPs per sample of every MatMul/Gemm node (2 x multiply-adds) at the shapes of `feeds`."""
        names = list(dict.fromkeys(t for n in self.matmuls for t in (n.input[0], n.output[0])))
        values = self.run(feeds, (), names)
        batch = max(len(next(iter(feeds.values()))), 1)
        flops = {}
        for n in self.matmuls:
            a, out = values[n.input[0]], values[n.output[0]]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            k = a.shape[-2] if (n.op_type == "Gemm" and trans_a) else a.shape[-1]
            flops[n.name] = 2.0 * out.size * k / batch
        return flops


@dataclass
class Costs:
    """Parameters and estimated FLOPs of the model, and what a removal set saves of them."""

    graph: onnx.GraphProto
    bg: BlockGraph
    params: dict[str, int]  # constant float tensor -> elements
    flops: dict[str, float] = field(default_factory=dict)  # node name -> FLOPs per sample
    total_params: int = 0
    total_flops: float = 0.0

    @classmethod
    def of(cls, model: onnx.ModelProto, bg: BlockGraph, flops: dict[str, float] | None = None) -> Costs:
        params = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES}
        for n in model.graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].t.data_type in FLOAT_TYPES:
                params[n.output[0]] = int(np.prod(n.attribute[0].t.dims))
        costs = cls(model.graph, bg, params, dict(flops or {}))
        costs.total_params, costs.total_flops = costs._live(())
        return costs

    def _live(self, removed: Iterable[str]) -> tuple[int, float]:
        nodes, tensors = live(self.graph, substitutions(plan(self.bg, removed)))
        params = sum(n for t, n in self.params.items() if t in tensors)
        flops = sum(self.flops.get(self.graph.node[i].name, 0.0) for i in nodes)
        return params, flops

    def saved(self, removed: Iterable[str]) -> dict[str, float]:
        """Parameters and FLOPs removed by `removed`, absolute and as fractions of the model."""
        params, flops = self._live(removed)
        saved_p, saved_f = self.total_params - params, self.total_flops - flops
        return {
            "params_saved": saved_p,
            "params_saved_frac": saved_p / max(self.total_params, 1),
            "flops_saved": saved_f,
            "flops_saved_frac": saved_f / self.total_flops if self.total_flops else 0.0,
        }
