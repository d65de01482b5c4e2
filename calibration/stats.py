"""Streaming activation statistics: one onnxruntime forward pass per batch, bounded memory.

For every requested tensor, `TensorStats` keeps min/max, a histogram of |x| (binning a strided sample of at most
BINNED_PER_RUN values per run) and
optionally the per-channel |x| maximum (last axis; SmoothQuant) and the Gram matrix
x^T x over the last axis (Hessian-aware weight rounding). Each batch's values are
folded into these fixed-size summaries and dropped, so memory depends on the number
of tensors and bins, never on the number of samples (onnxruntime's own histogram
calibrator keeps every batch's outputs and runs out of memory on BERT).

The histogram has BINS bins over [0, R], R a power of two. When a batch exceeds R, R
doubles and pairs of bins merge: exact, so the result is the same however the data is
split into batches or chunks, and two summaries merge exactly. Non-finite values (an attention mask's -inf) are counted, not binned.

`collect_statistics` exposes the tensors as extra graph outputs and runs the model in
chunks: the rows of a batch are split so that one run's exposed outputs stay under a
memory budget, and if one sample alone exceeds it the tensors are split into groups,
each its own session.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from calibration.data import CalibrationData, Feeds
from calibration.reduce import float_ranks, fold_reduced, serialize_with_reductions
from converter.core.errors import InvalidInputError
from converter.core.external_data import OrtWeights
from converter.core.ort_session import cpu_session, serialized

BINS = 2048
# Rows per run of the in-graph reductions: they read each activation again right after
# it is made, cheaper while a run's activations stay in cache, and the arena stays small
# (EfficientNet-Lite0, 256 images: 1.6-1.7 s in runs of 2 to 16 rows, 1.9-2.1 s in runs
# of 32; MiniLM, seq 64: no difference between 8 and 64).
REDUCED_ROWS_PER_RUN = 8
# Histograms bin at most about this many values of each tensor per run (a prime stride
# through the values, never a divisor of the channel count, so every channel is visited);
# min/max and channel maxima always see every value. Percentile, entropy and MSE ranges
# from 2^18 values a run differ from full binning far below one bin.
BINNED_PER_RUN = 1 << 18
_PRIMES = (1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97)


def _stride(size: int, channels: int) -> int:
    wanted = -(-size // BINNED_PER_RUN)
    for p in _PRIMES:
        if p >= wanted and (p == 1 or channels % p):
            return p
    return next(p for p in reversed(_PRIMES) if channels % p)


@dataclass
class TensorStats:
    """Mergeable summary of one tensor over every sample seen."""

    name: str
    count: int = 0
    nonfinite: int = 0
    min: float = math.inf
    max: float = -math.inf
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, np.int64))
    hist_range: float = 0.0
    channel_amax: np.ndarray | None = None
    gram: np.ndarray | None = None
    gram_rows: int = 0

    @property
    def amax(self) -> float:
        return max(abs(self.min), abs(self.max)) if self.count else 0.0

    def _grow(self, amax: float) -> None:
        if self.hist_range <= 0:  # a power of two, so any two histograms merge exactly
            self.hist_range = 2.0 ** math.ceil(math.log2(amax)) if amax > 0 else 2.0**-40
        while amax > self.hist_range:
            self.hist = self.hist.reshape(-1, 2).sum(1)
            self.hist = np.concatenate([self.hist, np.zeros(BINS - len(self.hist), np.int64)])
            self.hist_range *= 2

    def update(self, x: np.ndarray, histogram: bool = True, channels: bool = False, gram: bool = False) -> None:
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.size == 0:
            return
        x = x.astype(np.float32, copy=False)
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN/Inf propagate into min/max
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - finite.sum())
            x = np.where(finite, x, 0.0).astype(np.float32)
            lo, hi = float(x.min()), float(x.max())
        self.count += x.size
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        if channels and x.ndim >= 1:
            cmax = np.abs(x.reshape(-1, x.shape[-1])).max(0)
            if self.channel_amax is not None and self.channel_amax.shape == cmax.shape:
                cmax = np.maximum(self.channel_amax, cmax)
            self.channel_amax = cmax
        if gram and x.ndim >= 1:
            rows = x.reshape(-1, x.shape[-1])
            self.gram = (rows.T @ rows).astype(np.float64) + (self.gram if self.gram is not None else 0.0)
            self.gram_rows += rows.shape[0]
        if histogram:
            self._grow(max(-lo, hi))
            stride = _stride(x.size, x.shape[-1] if x.ndim else 1)
            a = np.abs(x.ravel()[::stride])
            np.multiply(a, BINS / self.hist_range, out=a)
            counts = np.bincount(a.astype(np.int32), minlength=BINS + 1)
            counts[BINS - 1] += counts[BINS:].sum()  # |x| == range lands one past the end
            self.hist += counts[:BINS]

    def merge(self, other: TensorStats) -> TensorStats:
        """Combine two summaries of the same tensor (e.g. from two processes).

        The smaller range doubles (exactly) until it covers the larger; the larger
        histogram is re-binned proportionally onto that range unless the two ranges
        are powers of two apart (then the merge is exact).
        """
        out = TensorStats(self.name, self.count + other.count, self.nonfinite + other.nonfinite)
        out.min, out.max = min(self.min, other.min), max(self.max, other.max)
        parts = sorted((p for p in (self, other) if p.hist_range > 0), key=lambda p: p.hist_range)
        if parts:
            out.hist_range = parts[0].hist_range
            while out.hist_range < parts[-1].hist_range * (1 - 1e-9):
                out.hist_range *= 2
        for part in parts:
            hist, rng = part.hist.copy(), part.hist_range
            while rng * 2 <= out.hist_range * (1 + 1e-9):
                hist = np.concatenate([hist.reshape(-1, 2).sum(1), np.zeros(BINS // 2, np.int64)])
                rng *= 2
            if abs(rng - out.hist_range) > 1e-9 * out.hist_range:
                hist = _rebin(hist, rng, out.hist_range)
            out.hist = out.hist + hist
        for key in ("channel_amax", "gram"):
            a, b = getattr(self, key), getattr(other, key)
            setattr(
                out, key, b if a is None else a if b is None else (np.maximum(a, b) if key == "channel_amax" else a + b)
            )
        out.gram_rows = self.gram_rows + other.gram_rows
        return out

    def bin_edges(self) -> np.ndarray:
        return np.linspace(0.0, self.hist_range, BINS + 1)


def _rebin(hist: np.ndarray, old_range: float, new_range: float) -> np.ndarray:
    """Counts over [0, old_range] spread proportionally onto BINS bins over [0, new_range >= old_range]."""
    cumulative = np.concatenate([[0], np.cumsum(hist)]).astype(np.float64)
    edges = np.linspace(0, new_range, BINS + 1) * (BINS / old_range)
    at = np.interp(np.minimum(edges, BINS), np.arange(BINS + 1), cumulative)
    counts = np.diff(np.rint(at)).astype(np.int64)
    counts[-1] += int(hist.sum()) - int(counts.sum())
    return counts


@dataclass
class CollectResult:
    stats: dict[str, TensorStats]
    samples: int
    batches: int
    runs: int
    groups: int
    rows_per_run: int
    shapes: list[dict[str, list[int]]]


def _session(model: onnx.ModelProto, outputs: list[str], threads: int) -> ort.InferenceSession:
    """A CPU session whose outputs are `outputs`; the model's own outputs are restored afterwards."""
    saved = list(model.graph.output)
    del model.graph.output[:]
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in outputs)
    try:
        blob, weights = serialized(model)
    finally:
        del model.graph.output[:]
        model.graph.output.extend(saved)
    return _session_from(blob, weights, threads)


def _session_from(blob: bytes, weights: OrtWeights, threads: int, arena: bool = False) -> ort.InferenceSession:
    """`arena=False` returns activation memory between runs (their outputs are kept while numpy folds them);
    a session whose outputs are a few numbers keeps the arena: fresh pages for every activation cost 30 %.
    No spinning: numpy runs between runs. Optimized: the model calibrated is the float one, not a
    low-precision Q/DQ graph onnxruntime miscomputes (converter/core/ort_session.py)."""
    try:
        return cpu_session(blob, optimize=True, threads=threads, arena=arena, spinning=False, weights=weights)
    except Exception as exc:  # ORT's own exception types
        raise InvalidInputError(
            f"onnxruntime cannot load the model for calibration ({str(exc).splitlines()[0]})"
        ) from exc


def _fixed_batch_inputs(model: onnx.ModelProto) -> set[str]:
    """Inputs whose first dimension is a number: their rows cannot be split into smaller runs."""
    fixed = set()
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            fixed.add(vi.name)
    return fixed


def _split_rows(feeds: Feeds, rows: int, fixed: set[str]) -> Iterable[Feeds]:
    """Runs of at most `rows` rows; the whole batch when its inputs do not share a splittable first axis
    (a static batch size, a scalar or a [1, ...] input broadcast over the batch, no inputs at all)."""
    lengths = {v.shape[0] if v.ndim else None for v in feeds.values()}
    total = lengths.pop() if len(lengths) == 1 else None
    if total is None or total <= rows or fixed & feeds.keys():
        yield feeds
        return
    for start in range(0, total, rows):
        yield {k: v[start : start + rows] for k, v in feeds.items()}


def _plan(
    model: onnx.ModelProto, names: list[str], feeds: Feeds, budget: float, threads: int, fixed: set[str]
) -> tuple[list[list[str]], list[ort.InferenceSession], int]:
    """Run one sample to size the outputs; return tensor groups, their sessions and rows per run."""
    probe = next(iter(_split_rows(feeds, 1, fixed)))
    session = _session(model, names, threads)
    sizes = [v.nbytes for v in session.run(names, probe)]
    per_sample = max(sum(sizes), 1)
    if per_sample <= budget:
        return [names], [session], max(1, int(budget // per_sample))
    del session
    groups, current, used = [], [], 0.0
    for n, size in zip(names, sizes, strict=True):
        if current and used + size > budget:
            groups.append(current)
            current, used = [], 0.0
        current.append(n)
        used += size
    groups.append(current)
    return groups, [_session(model, g, threads) for g in groups], 1


def collect_statistics(
    model: onnx.ModelProto,
    tensors: list[str],
    data: CalibrationData,
    histogram: bool = True,
    channels: Iterable[str] = (),
    gram: Iterable[str] = (),
    budget_mb: float = 128.0,
    threads: int = 0,
) -> CollectResult:
    """Stream `data` through `model`, summarising each of `tensors` (see module docstring)."""
    channels, gram = set(channels), set(gram)
    graph_inputs = {i.name for i in model.graph.input}
    wanted = list(dict.fromkeys(tensors))
    stats = {n: TensorStats(n) for n in wanted}
    from_graph = [n for n in wanted if n not in graph_inputs]
    # without histograms, onnxruntime reduces min/max (and channel maxima) itself (calibration/reduce.py)
    ranks = {n: r for n, r in float_ranks(model, from_graph).items() if n not in gram} if not histogram else {}
    from_graph = [n for n in from_graph if n not in ranks]
    reduced = None
    if ranks:
        (blob, weights), plan = serialize_with_reductions(model, list(ranks), channels)
        reduced_outputs = [o for r in plan for o in r.outputs]
        reduced = _session_from(blob, weights, threads, arena=True)
        del blob
    input_names = [i.name for i in model.graph.input if i.name not in {x.name for x in model.graph.initializer}]
    budget, fixed = budget_mb * (1 << 20), _fixed_batch_inputs(model)
    groups: list[list[str]] | None = None
    sessions: list[ort.InferenceSession] = []
    rows_per_run, runs, samples, batches = 1, 0, 0, 0
    shapes: list[dict[str, list[int]]] = []

    def fold(names: list[str], values: list[np.ndarray]) -> None:
        for n, v in zip(names, values, strict=True):
            stats[n].update(v, histogram, n in channels, n in gram)

    # Statistics of one run are folded in a worker thread while onnxruntime computes the
    # next run (both release the GIL); at most two runs' outputs are alive at a time.
    worker = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    try:
        for feeds in data:
            feeds = {k: v for k, v in feeds.items() if k in input_names}
            shape = {k: list(v.shape) for k, v in sorted(feeds.items())}
            if shape not in shapes:
                shapes.append(shape)
            for n in wanted:
                if n in graph_inputs and n in feeds:
                    stats[n].update(feeds[n], histogram, n in channels, n in gram)
            for chunk in _split_rows(feeds, REDUCED_ROWS_PER_RUN, fixed) if reduced is not None else ():
                fold_reduced(stats, plan, dict(zip(reduced_outputs, reduced.run(reduced_outputs, chunk), strict=True)))
                runs += 1
            if groups is None and from_graph:  # size one sample's outputs, then plan chunks
                groups, sessions, rows_per_run = _plan(model, from_graph, feeds, budget, threads, fixed)
                runs += 1
            for group, session in zip(groups or [], sessions, strict=True):
                for chunk in _split_rows(feeds, rows_per_run, fixed):
                    values = session.run(group, chunk)
                    runs += 1
                    if pending is not None:
                        pending.result()
                    pending = worker.submit(fold, group, values)
                    del values
            samples += int(next(iter(feeds.values())).shape[0]) if feeds else 0
            batches += 1
        if pending is not None:
            pending.result()
    finally:
        worker.shutdown(wait=True)
    if not batches:
        raise InvalidInputError(f"{data.source}: calibration data yielded no batches")
    return CollectResult(stats, samples, batches, runs, len(groups or []), rows_per_run, shapes)
