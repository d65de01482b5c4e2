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
import functools
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnx_graphsurgeon.logger import G_LOGGER  # noqa: E402

from passes.registry import GROUPS, PASSES  # noqa: E402
from scripts.fuzz_graphs import generate  # noqa: E402
from scripts.fuzz_judge import (  # noqa: E402
    DEFAULT_TIME_LIMIT,
    FAILURE_CLASSES,
    REFUSED,
    Reference,
    UnusableModel,
    Verdict,
    one_line,
)
from scripts.fuzz_minimise import fails_the_same, minimise  # noqa: E402

DEFAULT_OUT = "fuzz_failures"
DEFAULT_MINIMISE_SECONDS = 20.0
DEFAULT_MAX_MINIMISED = 3  # per (pass, class): further failures keep the generated graph


def default_passes() -> list[str]:
    """Every exact pass that needs no calibration data, then the `fold` group."""
    exact = [name for name, cls in PASSES.items() if cls.exact and not cls.needs_calibration]
    return [*exact, "fold"]


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
        result.generator_error = f"{type(exc).__name__}: {one_line(exc)}"
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
