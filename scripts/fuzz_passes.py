"""Differential fuzzer for the exact graph passes: random exporter-like graphs, each pass alone
and the `fold` group, onnxruntime outputs before and after.

Why: an exact pass promises equal outputs on every graph, and the hand-written pass tests
and the hypothesis property tests (tests/passes/test_pass_properties.py) only see the
graphs someone thought of. This tool generates thousands of valid graphs shaped like real
exports (scripts/fuzz_graphs/), runs every pass declaring `exact = True` (those that need
no calibration data) and the `fold` group on each through `passes.manager.run_passes`, and
compares all graph outputs on two random inputs. Each failure is one of

- `mismatch`: outputs (names, order, values within the dtype's tolerance, NaN positions) differ;
- `crash`: the pass raised something other than a TrtforgeError (or ran past the time limit);
- `invalid`: the rewritten model fails `onnx.checker.check_model(full_check=True)`, or
  onnxruntime cannot load or run it.

A TrtforgeError (UnsupportedError...) is the pass refusing on purpose (passes/base.py): it is
counted as `refused`, not as a failure. A generated graph that itself fails the checker or
onnxruntime is a generator bug, reported apart. Every failure gets a reproducer .onnx in
--out: the first few per (pass, class) delta-debugged down to fewer nodes (nodes removed while
the same class of failure persists for the same pass), the rest as generated.

    python scripts/fuzz_passes.py --examples 2000 --seed 0 [--out DIR] [--passes a,b] [--json F]
    python scripts/fuzz_passes.py --seed 0 --only 17          # replay example 17 of seed 0 alone
    python scripts/fuzz_passes.py --replay case.onnx          # replay a saved model

Exit status: 0 without failures or generator errors, 1 otherwise (2: bad arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_graphsurgeon.logger import G_LOGGER  # noqa: E402

from converter.core.errors import TrtforgeError  # noqa: E402
from converter.core.model_io import opset_of  # noqa: E402
from passes.base import PassContext  # noqa: E402
from passes.manager import run_passes  # noqa: E402
from passes.registry import GROUPS, PASSES, PassSpec  # noqa: E402
from scripts.fuzz_graphs import BATCH_DIM, BATCHES, generate, random_feeds  # noqa: E402

MISMATCH, CRASH, INVALID = "mismatch", "crash", "invalid"
FAILURE_CLASSES = (MISMATCH, CRASH, INVALID)
OK, UNCHANGED, REFUSED = "ok", "unchanged", "refused"
# rtol = atol. float64 is not 1e-12: onnxruntime's double kernels of fused ops are less precise
# than the ops they replace (its Attention: ~1.4e-8 from numpy, the decomposed form ~1e-16), and a
# graph dividing by a small normaliser afterwards amplifies that. Any real rewrite error is larger.
TOLERANCES = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-4, "float64": 1e-6}
FEED_SEED = 0
DEFAULT_OUT = "fuzz_failures"
DEFAULT_TIME_LIMIT = 60.0  # seconds one pass may run on one small graph
DEFAULT_MINIMISE_SECONDS = 20.0
DEFAULT_MAX_MINIMISED = 3  # per (pass, class): further failures keep the generated graph


def default_passes() -> list[str]:
    """Every exact pass that needs no calibration data, then the `fold` group."""
    exact = [name for name, cls in PASSES.items() if cls.exact and not cls.needs_calibration]
    return [*exact, "fold"]


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
            raise UnusableModel(_one_line(exc)) from exc
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
            return Verdict(REFUSED, f"{type(exc).__name__}: {_one_line(exc)}")
        except PassTimeout as exc:
            return Verdict(CRASH, f"PassTimeout: {exc}")
        except Exception as exc:
            return Verdict(CRASH, f"{type(exc).__name__}: {_one_line(exc)}")
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
            return Verdict(INVALID, f"checker: {_one_line(exc)}")
        if unchanged:  # same computation as the reference: nothing to run
            return Verdict(UNCHANGED)
        interface = _interface_change(self.model, out)
        if interface:
            return Verdict(MISMATCH, interface)
        try:
            got = run_all(out, self.feeds)
        except Exception as exc:
            return Verdict(INVALID, f"onnxruntime: {_one_line(exc)}")
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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


# --------------------------------------------------------------------------------------
# Minimising a failure
# --------------------------------------------------------------------------------------

TypeInfo = tuple[int, tuple[int, ...]]  # (elem_type, dims) at the first feed


def concrete_types(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, TypeInfo]:
    """Element type and dims of every tensor at `feeds`: initializers, inputs, and every node
    output (the model rerun with them all as outputs)."""
    types: dict[str, TypeInfo] = {t.name: (t.data_type, tuple(t.dims)) for t in model.graph.initializer}
    for name, array in feeds.items():
        types[name] = (onnx.helper.np_dtype_to_tensor_dtype(array.dtype), array.shape)
    inferred = onnx.shape_inference.infer_shapes(model)
    elems = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    names = [o for n in model.graph.node for o in n.output if o and elems.get(o)]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(o, elems[o], None) for o in names)
    with contextlib.suppress(Exception):  # best effort: untyped tensors cannot become inputs
        for name, array in zip(names, session(probe).run(None, feeds), strict=True):
            types[name] = (elems[name], tuple(np.shape(array)))
    return types


def _input_info(name: str, info: TypeInfo, dynamic: bool) -> onnx.ValueInfoProto:
    """A graph input of the tensor's type; its first dim symbolic when the model's batch is."""
    dims: list[int | str] = list(info[1])
    if dynamic and dims and dims[0] == BATCHES[0]:
        dims[0] = BATCH_DIM
    return onnx.helper.make_tensor_value_info(name, info[0], dims)


def _is_dynamic(model: onnx.ModelProto) -> bool:
    return any(d.HasField("dim_param") for i in model.graph.input for d in i.type.tensor_type.shape.dim)


def remove_nodes(model: onnx.ModelProto, drop: set[int], types: dict[str, TypeInfo]) -> onnx.ModelProto | None:
    """`model` without the nodes at positions `drop`, or None when that leaves nothing to run.

    A removed node's output is read, from then on, as one of its inputs of the same type and
    dims; when it has none, the output becomes a graph input, and a graph output it was moves
    to the node's data input. Graph outputs follow their tensor (dropped when it became a
    graph input or constant); dead nodes and unused initializers and inputs go.
    """
    graph, rename, added = model.graph, {}, []
    fed_by: dict[str, str] = {}  # a graph output that became an input -> the removed node's data input

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for index in sorted(drop):
        node = graph.node[index]
        for out in (o for o in node.output if o):
            if out not in types:
                return None
            same = [resolve(i) for i in node.input if i and types.get(resolve(i)) == types[out]]
            if same:
                rename[out] = same[0]
            else:
                added.append(out)
                if node.input and node.input[0]:
                    fed_by[out] = resolve(node.input[0])
    kept = [n for i, n in enumerate(graph.node) if i not in drop]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    g = result.graph
    del g.node[:], g.value_info[:], g.output[:]
    for node in kept:
        copy = g.node.add()
        copy.CopyFrom(node)
        copy.input[:] = [resolve(i) if i else i for i in node.input]
    sources = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | set(added)
    unchanged = {o.name for o in model.graph.output if resolve(o.name) == o.name}
    for out in model.graph.output:
        name = resolve(out.name)
        while name in fed_by and name not in unchanged:  # the output moves up to what its node read
            name = fed_by[name]
        if name in sources:
            continue  # the output is now a graph input or a constant: nothing computes it
        if name == out.name:
            g.output.append(out)
        elif name not in unchanged and name in types and all(o.name != name for o in g.output):
            elem, dims = types[name][0], [None] * len(types[name][1])  # rank only: inference fills in the rest
            g.output.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    dynamic = _is_dynamic(model)
    g.input.extend(_input_info(name, types[name], dynamic) for name in added)
    return _without_dead_code(result)


def _without_dead_code(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """Drop nodes no output depends on, then unused initializers and inputs; None if no node is left."""
    g = model.graph
    needed = {o.name for o in g.output}
    live = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    if not live or not g.output:
        return None
    nodes = list(reversed(live))
    del g.node[:]
    g.node.extend(nodes)
    initializers = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(initializers)
    outputs = {o.name for o in g.output}
    inputs = [i for i in g.input if i.name in needed or i.name in outputs]
    del g.input[:]
    g.input.extend(inputs)
    return model


def _without_output(model: onnx.ModelProto, index: int) -> onnx.ModelProto | None:
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    del candidate.graph.output[index]
    return _without_dead_code(candidate) if candidate.graph.output else None


def minimise(model: onnx.ModelProto, still_fails: Callable[[onnx.ModelProto], bool], seconds: float) -> onnx.ModelProto:
    """A smaller model on which `still_fails` holds: graph outputs, then chunks of nodes (halved
    down to single nodes) removed greedily while it keeps failing, until `seconds` are spent."""
    deadline = time.monotonic() + seconds
    current = model
    for index in reversed(range(len(current.graph.output))):
        candidate = _without_output(current, index) if len(current.graph.output) > 1 else None
        if candidate is not None and still_fails(candidate):
            current = candidate
    types = concrete_types(current, feeds_for(current)[0])
    chunk = max(1, len(current.graph.node) // 2)
    while time.monotonic() < deadline:
        shrunk, start = False, 0
        while start < len(current.graph.node) and time.monotonic() < deadline:
            drop = set(range(start, min(start + chunk, len(current.graph.node))))
            candidate = remove_nodes(current, drop, types)
            if candidate is not None and still_fails(candidate):
                current, shrunk = candidate, True
                types = concrete_types(current, feeds_for(current)[0])
            else:
                start += chunk
        if not shrunk:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return current


def signature(verdict: Verdict) -> tuple[str, str]:
    """What a minimised failure must keep: its class, and for a crash the exception type, for an
    invalid model the stage and kind of error (names and numbers left out): a reproducer of one
    bug must not slide into another."""
    if verdict.kind == CRASH:
        return verdict.kind, verdict.message.split(":", 1)[0]
    if verdict.kind == INVALID:
        return verdict.kind, " ".join(re.sub(r"'[^']*'|\(.*?\)|\d+", "", verdict.message).split())[:80]
    return verdict.kind, ""


def fails_the_same(pass_name: str, verdict: Verdict, seconds: float | None) -> Callable[[onnx.ModelProto], bool]:
    """The minimiser's test: a valid model on which the pass fails with the same signature."""
    wanted = signature(verdict)

    def check(candidate: onnx.ModelProto) -> bool:
        try:
            again = Reference.of(candidate).judge(pass_name, seconds)
        except UnusableModel:
            return False
        return signature(again) == wanted

    return check


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class Failure:
    pass_name: str
    kind: str
    seed: int
    index: int
    message: str
    nodes: int = 0
    reproducer: str | None = None
    reproducer_nodes: int | None = None
    minimised: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["pass"], data["class"] = data.pop("pass_name"), data.pop("kind")
        return data


@dataclass
class ExampleResult:
    index: int
    verdicts: dict[str, str] = field(default_factory=dict)  # pass -> verdict kind
    failures: list[Failure] = field(default_factory=list)
    refusals: list[Failure] = field(default_factory=list)
    generator_error: str | None = None


@dataclass
class Options:
    seed: int
    passes: list[str]
    time_limit: float | None = DEFAULT_TIME_LIMIT
    minimise_seconds: float = DEFAULT_MINIMISE_SECONDS
    max_minimised: int = DEFAULT_MAX_MINIMISED


def check_example(index: int, options: Options) -> ExampleResult:
    """Generate example `index` and judge every pass on it."""
    result = ExampleResult(index)
    try:
        graph = generate(options.seed, index)
        reference = Reference.of(graph.model)
    except UnusableModel as exc:
        result.generator_error = str(exc)
        return result
    except Exception as exc:  # the generator itself failed
        result.generator_error = f"{type(exc).__name__}: {_one_line(exc)}"
        return result
    for name in options.passes:
        verdict = reference.judge(name, options.time_limit)
        result.verdicts[name] = verdict.kind
        record = Failure(name, verdict.kind, options.seed, index, verdict.message, len(graph.model.graph.node))
        if verdict.kind in FAILURE_CLASSES:
            result.failures.append(record)
        elif verdict.kind == REFUSED:
            result.refusals.append(record)
    return result


def judge_model(model: onnx.ModelProto, passes: list[str], time_limit: float | None = DEFAULT_TIME_LIMIT) -> dict:
    """Every pass's verdict on one saved model: {pass: Verdict} (raises UnusableModel if it is not valid)."""
    reference = Reference.of(model)
    return {name: reference.judge(name, time_limit) for name in passes}


def reproduce(failure: Failure, options: Options, out_dir: Path, shrink: bool) -> Failure:
    """Write the failure's reproducer (minimised when `shrink`) and note where it went."""
    model = generate(failure.seed, failure.index).model
    if shrink:
        check = fails_the_same(failure.pass_name, Verdict(failure.kind, failure.message), options.time_limit)
        model = minimise(model, check, options.minimise_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{failure.pass_name}-{failure.kind}-s{failure.seed}-i{failure.index}.onnx"
    onnx.save(model, str(path))
    failure.reproducer, failure.reproducer_nodes, failure.minimised = str(path), len(model.graph.node), shrink
    return failure


def _quiet() -> None:
    """Keep onnxruntime's and onnx-graphsurgeon's notes off the terminal (workers too)."""
    ort.set_default_logger_severity(4)  # a candidate failing to run, while minimising, is expected
    G_LOGGER.severity = G_LOGGER.ERROR


def _map(func: Callable, items: list, jobs: int) -> Iterator:
    """`func` over `items`, in worker processes when jobs > 1 (results in any order)."""
    if jobs <= 1 or len(items) <= 1:
        yield from map(func, items)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(jobs, initializer=_quiet) as pool:
        yield from pool.imap_unordered(func, items, chunksize=max(1, min(8, len(items) // (4 * jobs))))


@dataclass
class Report:
    seed: int
    examples: int
    passes: list[str]
    jobs: int
    seconds: float = 0.0
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    refusals: list[Failure] = field(default_factory=list)
    generator_errors: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.generator_errors)

    def by_class(self) -> dict[str, int]:
        found = Counter(f.kind for f in self.failures)
        return {kind: found.get(kind, 0) for kind in FAILURE_CLASSES}

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "examples": self.examples,
            "passes": self.passes,
            "jobs": self.jobs,
            "seconds": round(self.seconds, 2),
            "seconds_per_example": round(self.seconds / max(1, self.examples), 4),
            "failures_by_class": self.by_class(),
            "counts": self.counts,
            "failures": [f.to_dict() for f in self.failures],
            "refused": [
                {k: v for k, v in f.to_dict().items() if k not in ("reproducer_nodes", "minimised")}
                for f in self.refusals
            ],
            "generator_errors": self.generator_errors,
        }

    def summary(self) -> str:
        classes = ", ".join(f"{k} {v}" for k, v in self.by_class().items())
        return (
            f"fuzz_passes: seed {self.seed}, {self.examples} examples x {len(self.passes)} passes: "
            f"{len(self.failures)} failures ({classes}), {len(self.refusals)} refused, "
            f"{len(self.generator_errors)} generator errors; {self.seconds:.1f} s "
            f"({self.seconds / max(1, self.examples):.3f} s/example, {self.jobs} jobs)"
        )


def fuzz(
    examples: int,
    seed: int,
    passes: list[str] | None = None,
    out_dir: Path | str | None = DEFAULT_OUT,
    only: int | None = None,
    jobs: int = 1,
    time_limit: float | None = DEFAULT_TIME_LIMIT,
    minimise_seconds: float = DEFAULT_MINIMISE_SECONDS,
    max_minimised: int = DEFAULT_MAX_MINIMISED,
) -> Report:
    """Generate and judge `examples` graphs of `seed` (`only`: that one index) with `passes`
    (default: the exact ones and `fold`), in `jobs` processes; then write a reproducer for every
    failure into `out_dir` (None: none written), the first `max_minimised` per (pass, class)
    minimised for up to `minimise_seconds` each. Returns the report."""
    _quiet()
    start = time.perf_counter()
    options = Options(seed, passes or default_passes(), time_limit, minimise_seconds, max_minimised)
    indices = [only] if only is not None else list(range(examples))
    report = Report(seed, len(indices), options.passes, jobs)
    counts: dict[str, Counter] = defaultdict(Counter)
    for result in _map(functools.partial(check_example, options=options), indices, jobs):
        for name, kind in result.verdicts.items():
            counts[name][kind] += 1
        report.failures.extend(result.failures)
        report.refusals.extend(result.refusals)
        if result.generator_error:
            report.generator_errors.append({"seed": seed, "index": result.index, "message": result.generator_error})
    report.counts = {name: dict(sorted(counts[name].items())) for name in options.passes}
    report.failures.sort(key=lambda f: (f.pass_name, f.kind, f.index))
    report.refusals.sort(key=lambda f: (f.pass_name, f.index))
    report.generator_errors.sort(key=lambda e: e["index"])
    if out_dir is not None and report.failures:
        report.failures = _write_reproducers(report.failures, options, Path(out_dir), jobs)
    report.seconds = time.perf_counter() - start
    return report


def _write_reproducers(failures: list[Failure], options: Options, out_dir: Path, jobs: int) -> list[Failure]:
    """Reproducers for all failures; the first `max_minimised` of each (pass, class) minimised."""
    seen: Counter = Counter()
    tasks = []
    for failure in failures:
        seen[(failure.pass_name, failure.kind)] += 1
        tasks.append((failure, seen[(failure.pass_name, failure.kind)] <= options.max_minimised))
    work = functools.partial(_reproduce_task, options=options, out_dir=out_dir)
    done = list(_map(work, tasks, jobs))
    return sorted(done, key=lambda f: (f.pass_name, f.kind, f.index))


def _reproduce_task(task: tuple[Failure, bool], options: Options, out_dir: Path) -> Failure:
    return reproduce(task[0], options, out_dir, shrink=task[1])


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _pass_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PASSES and n not in GROUPS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown pass {unknown} (known: {', '.join(sorted(PASSES) + sorted(GROUPS))})"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="number of graphs (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, help="run only example I of the seed (replay)")
    parser.add_argument("--passes", type=_pass_list, help="comma-separated passes/groups (default: exact ones + fold)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"folder for reproducers (default {DEFAULT_OUT}/)")
    parser.add_argument("--json", help="write the summary as JSON to this file")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, help="seconds per pass and graph")
    parser.add_argument("--minimise-seconds", type=float, default=DEFAULT_MINIMISE_SECONDS)
    parser.add_argument("--max-minimised", type=int, default=DEFAULT_MAX_MINIMISED, help="per pass and class")
    parser.add_argument("--replay", nargs="+", metavar="MODEL", help="judge saved .onnx files instead of generating")
    args = parser.parse_args(argv)
    if args.examples < 0 or args.jobs < 1 or (args.only is not None and args.only < 0):
        parser.error("--examples and --only must be >= 0, --jobs >= 1")
    return args


def replay(paths: list[str], passes: list[str]) -> int:
    """Judge saved models; print one line per failing pass; 1 when any fails."""
    _quiet()
    failed = False
    for path in paths:
        try:
            verdicts = judge_model(onnx.load(path), passes)
        except UnusableModel as exc:
            print(f"{path}: not a valid model to replay: {exc}")
            failed = True
            continue
        bad = {name: v for name, v in verdicts.items() if v.kind in FAILURE_CLASSES}
        for name, verdict in bad.items():
            print(f"{path}: {name}: {verdict.kind}: {verdict.message}")
        print(f"{path}: {len(bad)} of {len(passes)} passes fail")
        failed = failed or bool(bad)
    return int(failed)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    passes = args.passes or default_passes()
    if args.replay:
        return replay(args.replay, passes)
    report = fuzz(
        args.examples,
        args.seed,
        passes,
        args.out,
        args.only,
        args.jobs,
        args.time_limit,
        args.minimise_seconds,
        args.max_minimised,
    )
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    for failure in report.failures:
        print(f"  {failure.pass_name} {failure.kind} #{failure.index}: {failure.message} -> {failure.reproducer}")
    for error in report.generator_errors:
        print(f"  generator error #{error['index']}: {error['message']}")
    print(report.summary())
    return int(report.failed)


if __name__ == "__main__":
    sys.exit(main())
