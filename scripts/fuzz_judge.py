"""The pass fuzzer's judge (scripts/fuzz_passes.py): one pass on one model, run in onnxruntime
before and after, and the verdict (ok, unchanged, refused, mismatch, crash, invalid)."""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from converter.core.errors import TrtforgeError
from converter.core.model_io import opset_of
from passes.base import PassContext
from passes.manager import run_passes
from passes.registry import PassSpec
from scripts.fuzz_graphs import BATCHES, random_feeds

MISMATCH, CRASH, INVALID = "mismatch", "crash", "invalid"
FAILURE_CLASSES = (MISMATCH, CRASH, INVALID)
OK, UNCHANGED, REFUSED = "ok", "unchanged", "refused"
# rtol = atol. float64 is not 1e-12: onnxruntime's double kernels of fused ops are less precise
# than the ops they replace (its Attention: ~1.4e-8 from numpy, the decomposed form ~1e-16), and a
# graph dividing by a small normaliser afterwards amplifies that. Any real rewrite error is larger.
TOLERANCES = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-4, "float64": 1e-6}
FEED_SEED = 0
DEFAULT_TIME_LIMIT = 60.0  # seconds one pass may run on one small graph


# --------------------------------------------------------------------------------------
# Running models
# --------------------------------------------------------------------------------------


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    """One thread, no graph optimizations: onnxruntime's own fusions must neither hide a
    difference nor make one."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def feeds_for(model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """The two inputs every model is compared on (fixed rng; dynamic batch at two sizes)."""
    rng = np.random.default_rng(FEED_SEED)
    return [random_feeds(model, run, rng) for run in range(len(BATCHES))]


def run_all(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Every output of one session, for each feed."""
    sess = session(model)
    return [sess.run(None, feed) for feed in feeds]


def first_difference(got: np.ndarray, want: np.ndarray) -> str | None:
    """Why `got` is not `want` within the tolerance of its dtype; None when it is."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"{got.dtype}{list(got.shape)} instead of {want.dtype}{list(want.shape)}"
    if got.dtype.kind not in "fc":
        bad = got != want
        return f"{int(bad.sum())} of {bad.size} values differ" if bad.any() else None
    tol = TOLERANCES.get(got.dtype.name, 1e-4)
    g, w = got.astype(np.float64), want.astype(np.float64)
    if (np.isnan(g) != np.isnan(w)).any():
        return f"NaN at {int((np.isnan(g) != np.isnan(w)).sum())} other positions"
    with np.errstate(invalid="ignore"):
        bad = ~np.isnan(w) & ~((g == w) | (np.abs(g - w) <= tol + tol * np.abs(w)))
    if not bad.any():
        return None
    where = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return f"{int(bad.sum())} of {bad.size} values off (e.g. {g[where]:.6g} vs {w[where]:.6g}, tol {tol:g})"


def fingerprint(model: onnx.ModelProto) -> str:
    """The model's computation (graph without value_info, opsets): equal prints, equal outputs."""
    graph = onnx.GraphProto()
    graph.CopyFrom(model.graph)
    del graph.value_info[:]
    digest = hashlib.sha256(graph.SerializeToString(deterministic=True))
    digest.update(repr(sorted((o.domain, o.version) for o in model.opset_import)).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------
# Judging one pass on one model
# --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    kind: str  # ok / unchanged / refused / mismatch / crash / invalid
    message: str = ""


class UnusableModel(Exception):
    """The model under test itself fails the checker or onnxruntime (for a generated graph: a generator bug)."""


class PassTimeout(BaseException):
    """A pass ran past the time limit. A BaseException: the manager must not wrap it."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise PassTimeout in the block after `seconds` (main thread, POSIX; else no limit)."""
    usable = seconds and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise PassTimeout(f"did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Reference:
    """A valid model, its feeds and outputs; judges rewritten versions of it (cached by fingerprint)."""

    model: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    outputs: list[list[np.ndarray]]
    key: str  # its fingerprint
    cache: dict[str, Verdict] = field(default_factory=dict)

    @classmethod
    def of(cls, model: onnx.ModelProto) -> Reference:
        try:
            onnx.checker.check_model(model, full_check=True)
            feeds = feeds_for(model)
            outputs = run_all(model, feeds)
        except Exception as exc:
            raise UnusableModel(one_line(exc)) from exc
        wrong = undeclared_shapes(model, outputs)
        if wrong:
            raise UnusableModel(wrong)
        return cls(model, feeds, outputs, fingerprint(model))

    def judge(self, pass_name: str, seconds: float | None = DEFAULT_TIME_LIMIT) -> Verdict:
        """Run `pass_name` (a pass or group) on the model and judge what it returns."""
        try:
            with time_limit(seconds):
                out, _ = run_passes(self.model, [PassSpec(pass_name)], PassContext(opset=opset_of(self.model)))
        except TrtforgeError as exc:
            return Verdict(REFUSED, f"{type(exc).__name__}: {one_line(exc)}")
        except PassTimeout as exc:
            return Verdict(CRASH, f"PassTimeout: {exc}")
        except Exception as exc:
            return Verdict(CRASH, f"{type(exc).__name__}: {one_line(exc)}")
        return self.judge_model(out)

    def judge_model(self, out: onnx.ModelProto) -> Verdict:
        key = fingerprint(out)
        if key not in self.cache:
            self.cache[key] = self._judge(out, unchanged=key == self.key)
        return self.cache[key]

    def _judge(self, out: onnx.ModelProto, unchanged: bool) -> Verdict:
        try:
            onnx.checker.check_model(out, full_check=True)
        except Exception as exc:
            return Verdict(INVALID, f"checker: {one_line(exc)}")
        if unchanged:  # same computation as the reference: nothing to run
            return Verdict(UNCHANGED)
        interface = _interface_change(self.model, out)
        if interface:
            return Verdict(MISMATCH, interface)
        try:
            got = run_all(out, self.feeds)
        except Exception as exc:
            return Verdict(INVALID, f"onnxruntime: {one_line(exc)}")
        wrong = undeclared_shapes(out, got)
        if wrong:
            return Verdict(INVALID, f"declared shapes: {wrong}")
        names = [o.name for o in out.graph.output]
        for run, (have, want) in enumerate(zip(got, self.outputs, strict=True)):
            for name, g, w in zip(names, have, want, strict=True):
                problem = first_difference(np.asarray(g), np.asarray(w))
                if problem:
                    return Verdict(MISMATCH, f"output '{name}' (input {run}): {problem}")
        return Verdict(OK)


def undeclared_shapes(model: onnx.ModelProto, outputs: list[list[np.ndarray]]) -> str | None:
    """Which graph output has dims other than it declares (onnxruntime only warns), if any."""
    for values in outputs:
        for info, value in zip(model.graph.output, values, strict=True):
            shape = info.type.tensor_type.shape
            if not info.type.tensor_type.HasField("shape"):
                continue
            declared = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
            actual = list(np.shape(value))
            if len(declared) != len(actual) or any(
                d is not None and d != a for d, a in zip(declared, actual, strict=True)
            ):
                return f"output '{info.name}' declared {declared}, computed {actual}"
    return None


def _interface_change(before: onnx.ModelProto, after: onnx.ModelProto) -> str | None:
    names = [o.name for o in before.graph.output]
    if [o.name for o in after.graph.output] != names:
        return f"outputs {[o.name for o in after.graph.output]} instead of {names}"
    inputs = {i.name for i in before.graph.input}
    if {i.name for i in after.graph.input} != inputs:
        return f"inputs {sorted(i.name for i in after.graph.input)} instead of {sorted(inputs)}"
    return None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
