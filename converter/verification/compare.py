"""Run the same real inputs through two stages and compare their outputs.

Stages are runners: the torch module, an ONNX graph in onnxruntime (CPU) and a
TensorRT engine (GPU only). Metrics per output, over all sample batches:
max-abs, mean-abs, max-rel (max-abs over the reference's max magnitude), cosine
similarity, SNR in dB and, for classifiers, top-1 agreement. An output passes when
every element satisfies |cand - ref| <= atol + rtol * |ref| and cosine >= min_cosine.
When a stage cannot run here (an engine without a GPU) the comparison is recorded
as skipped with the reason, never as passed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime as ort

from converter.core.errors import InvalidInputError
from converter.core.ort_session import cpu_session
from converter.verification.tolerances import Tolerances

ort.set_default_logger_severity(3)

Feeds = dict[str, np.ndarray]


class Runner(Protocol):
    name: str

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]: ...


class TorchRunner:
    """A torch module called with the feeds in input order; outputs named by `output_names`."""

    def __init__(self, module, input_names: list[str], output_names: list[str], name: str = "torch"):
        self.module, self.input_names, self.output_names, self.name = module, input_names, output_names, name

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InvalidInputError(f"{self.name}: inputs {missing} missing from the sample data")
        with torch.no_grad():
            result = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names))
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        if isinstance(result, dict):
            values = list(result.values())
        names = self.output_names or [f"output_{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise InvalidInputError(f"{self.name}: the module returned {len(values)} outputs, its spec names {names}")
        return {n: v.detach().float().numpy() for n, v in zip(names, values, strict=True)}


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


class OnnxRunner:
    """onnxruntime on CPU; feeds are cast to the graph's input types, extra feeds dropped."""

    def __init__(self, model: str | Path | onnx.ModelProto, name: str = "onnx"):
        self.name = name
        try:
            self.session = cpu_session(model)
        except Exception as exc:  # ORT raises its own exception types
            raise InvalidInputError(f"{name}: onnxruntime cannot load the graph ({str(exc).splitlines()[0]})") from exc
        self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        missing = sorted(set(self.inputs) - set(feeds))
        if missing:
            raise InvalidInputError(f"{self.name}: inputs {missing} missing from the sample data")
        ready = {n: np.asarray(feeds[n]).astype(t, copy=False) for n, t in self.inputs.items()}
        try:
            values = self.session.run(None, ready)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument) as exc:
            # the graph cannot compute these inputs (shapes it does not accept): the inputs' or the graph's fault
            shapes = ", ".join(f"{n} {list(np.shape(v))}" for n, v in list(ready.items())[:4])
            message = str(exc).split("Status Message:")[-1].strip().splitlines()[0][:200]
            raise InvalidInputError(f"{self.name}: onnxruntime failed on inputs ({shapes}, ...): {message}") from exc
        return {
            n: np.asarray(v).astype(np.float32) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
            for n, v in zip(self.output_names, values, strict=True)
        }


class EngineRunner:
    """A TensorRT engine through a backend's runtime (needs a GPU)."""

    def __init__(self, backend, engine_path: Path, name: str = "engine", runtime_cache=None):
        self.backend, self.engine_path, self.name = backend, Path(engine_path), name
        self.runtime_cache = runtime_cache  # a backends.runtime_cache.RuntimeCache, or None

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outputs = self.backend.run(self.engine_path, feeds, runtime_cache=self.runtime_cache)
        return {k: v.astype(np.float32) for k, v in outputs.items()}


@dataclass
class OutputMetrics:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    cosine: float
    snr_db: float
    top1_agreement: float | None
    passed: bool
    failure: str = ""
    top5_agreement: float | None = None  # reference top-1 within the candidate's top-5


@dataclass
class Comparison:
    reference: str
    candidate: str
    tolerances: dict[str, float]
    outputs: list[OutputMetrics] = field(default_factory=list)
    skipped: str = ""
    samples: int = 0
    note: str = ""  # caveats on what the numbers mean (e.g. how fp16 was computed)
    # a lossy stage judged by an accuracy budget ({"budget", "value", "met", "metrics"}), not elementwise
    budget: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        if self.budget is not None:
            return not self.skipped and bool(self.budget["met"])
        return not self.skipped and all(o.passed for o in self.outputs)

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("pass" if self.passed else "FAIL")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        data["passed"] = self.passed
        return data


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else (1e9 if x > 0 else -1e9)


def output_metrics(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerances, classify: bool) -> OutputMetrics:
    """Metrics for one output, over all samples concatenated along the batch axis."""
    if ref.shape != cand.shape:
        return OutputMetrics(
            name,
            math.inf,
            math.inf,
            math.inf,
            0.0,
            -math.inf,
            None,
            False,
            f"shape {list(cand.shape)} != reference {list(ref.shape)}",
        )
    ref64, cand64 = ref.astype(np.float64).ravel(), cand.astype(np.float64).ravel()
    if not np.all(np.isfinite(cand64)):
        return OutputMetrics(name, math.inf, math.inf, math.inf, 0.0, -math.inf, None, False, "non-finite values")
    diff = np.abs(cand64 - ref64)
    scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
    norms = float(np.linalg.norm(ref64) * np.linalg.norm(cand64))
    cosine = float(np.dot(ref64, cand64) / norms) if norms > 0 else float(np.array_equal(ref64, cand64))
    noise = float(np.sum(diff**2))
    signal = float(np.sum(ref64**2))
    snr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    top1 = top5 = None
    if classify and ref.ndim >= 2 and ref.shape[-1] > 1:
        ref_rows, cand_rows = ref.reshape(-1, ref.shape[-1]), cand.reshape(-1, cand.shape[-1])
        ref_top = ref_rows.argmax(-1)
        top1 = float(np.mean(ref_top == cand_rows.argmax(-1)))
        k = min(5, ref.shape[-1])
        cand_top5 = np.argpartition(-cand_rows, k - 1, axis=-1)[:, :k]
        top5 = float(np.mean([t in row for t, row in zip(ref_top, cand_top5, strict=True)]))
    tol = tol.for_output(name)
    within = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(ref64)))
    failure = ""
    if not within:
        worst = int(np.argmax(diff - tol.rtol * np.abs(ref64)))
        failure = f"|diff| {diff[worst]:.3g} > atol + rtol*|ref| = {tol.atol + tol.rtol * abs(ref64[worst]):.3g}"
    elif cosine < tol.min_cosine:
        failure = f"cosine {cosine:.6f} < {tol.min_cosine}"
    return OutputMetrics(
        name=name,
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=float(diff.max() / scale) if scale > 0 and diff.size else 0.0,
        cosine=cosine,
        snr_db=_finite(snr),
        top1_agreement=top1,
        top5_agreement=top5,
        passed=not failure,
        failure=failure,
    )


def collect(runner: Runner, feeds_list: list[Feeds]) -> dict[str, np.ndarray]:
    """Run every batch, concatenate each output along axis 0 (flattening per batch if shapes vary)."""
    per_output: dict[str, list[np.ndarray]] = {}
    for feeds in feeds_list:
        for name, value in runner.run(feeds).items():
            per_output.setdefault(name, []).append(np.asarray(value))
    merged = {}
    for name, parts in per_output.items():
        same_tail = all(p.shape[1:] == parts[0].shape[1:] for p in parts)
        merged[name] = (
            np.concatenate(parts) if same_tail and parts[0].ndim else np.concatenate([p.ravel() for p in parts])
        )
    return merged


def compare_results(
    ref_name: str,
    reference: dict[str, np.ndarray],
    cand_name: str,
    candidate: dict[str, np.ndarray],
    tol: Tolerances,
    classify: bool = False,
    samples: int = 0,
) -> Comparison:
    """Compare collected outputs by name (or by position when the names differ)."""
    comparison = Comparison(ref_name, cand_name, asdict(tol), samples=samples)
    names = list(reference)
    if all(n in candidate for n in names):
        pairs = [(n, n) for n in names]
    elif len(candidate) == len(names):  # unnamed torch outputs: match by position
        pairs = list(zip(names, candidate, strict=True))
    else:
        pairs = [(n, n if n in candidate else None) for n in names]
    for ref_out, cand_out in pairs:
        if cand_out is None:
            comparison.outputs.append(_missing(ref_out))
        else:
            comparison.outputs.append(output_metrics(ref_out, reference[ref_out], candidate[cand_out], tol, classify))
    if not comparison.outputs:
        comparison.skipped = "the reference has no outputs"
    return comparison


def _missing(name: str) -> OutputMetrics:
    nan = float("nan")
    return OutputMetrics(name, nan, nan, nan, nan, nan, None, False, "output missing from the candidate")


def skipped(ref_name: str, cand_name: str, tol: Tolerances, reason: str) -> Comparison:
    return Comparison(ref_name, cand_name, asdict(tol), skipped=reason)
