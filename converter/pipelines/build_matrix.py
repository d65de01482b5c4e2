"""`build_matrix`: many independent conversions (models x targets x precisions x recipes) from one manifest.

Each job is one `convert(...)` in a worker process: a local ProcessPoolExecutor ("spawn":
no worker inherits the parent's torch/TensorRT state) or one Ray remote task per job. No
scheduler here: the pool or Ray places the jobs. A job never raises: every exception becomes
its result row, so one broken model does not stop the others; summary.json lists every row.
Paths in the manifest (model files, recipes, `out`) are relative to its folder, so it means
the same from any working directory; `module:factory` specs import as with `convert`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import logging
import multiprocessing
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.backends import BACKEND_CHOICES
from converter.core.errors import (
    BackendUnavailableError,
    ExitCode,
    Interrupted,
    InvalidInputError,
    TrtforgeError,
    UsageError,
)
from converter.core.kv_cache import TASKS
from converter.core.outputs import check_name_length
from converter.core.profiles import ShapeProfile, parse_profiles
from converter.demos.models import DEMOS
from converter.pipelines.convert import convert
from converter.pipelines.model_ref import is_torch_spec
from converter.pipelines.recipe import PRECISIONS, load_recipe, load_yaml_mapping
from converter.pipelines.report import write_report

FORMAT = "trtforge-build-matrix/1"
EXECUTORS = ("local", "ray")
DEFAULT_OUT = "build_matrix_out"
MANIFEST_KEYS = ("out", "models", "targets", "precisions", "recipes", "backend")
MODEL_KEYS = ("model", "name", "task", "shapes")
# A model name or target becomes a folder name: no separators, no '..', nothing a shell mangles.
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TARGET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*")  # no '-': it separates target and precision in a job name
# Environment a job needs on a Ray worker (a local pool's workers inherit it): --limit, threads, cache, offline hubs.
_FORWARDED_ENV = ("TRTFORGE_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class Job:
    """One conversion of the matrix: everything a worker needs, with absolute paths (workers may run elsewhere)."""

    name: str  # '<model name>/<target>-<precision>[-<recipe stem>]', also its folder under the matrix's out
    model: str
    model_name: str
    target: str | None
    precision: str  # the precision label (the recipe's or fp32 when the manifest names none)
    out: str
    recipe: str | None = None
    backend: str | None = None
    task: str | None = None
    shapes: dict[str, ShapeProfile] = field(default_factory=dict)
    set_precision: bool = False  # False: the recipe's own precision (the manifest named none)


@dataclass
class BuildMatrixResult:
    """The summary (`report`, what summary.json holds and `--json` prints) and where it was written."""

    report: dict[str, Any]
    out_dir: Path
    summary: Path

    @property
    def passed(self) -> bool:
        return self.report["failed"] == 0


def load_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest's mapping (the recipe loader's rules: bounded, UTF-8, no YAML aliases)."""
    return load_yaml_mapping(path, "manifest")


def _list(source: str, data: dict[str, Any], key: str, required: bool = False) -> list[Any]:
    """`data[key]` as a non-empty list (absent and optional: [])."""
    if key not in data:
        if required:
            raise InvalidInputError(f"{source}: '{key}' is required (a list, e.g. {key}: [tests.tiny_models:conv_net])")
        return []
    value = data[key]
    if not isinstance(value, list):
        raise InvalidInputError(f"{source}: '{key}' must be a list, got {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{source}: '{key}' is an empty list (leave the key out for the default)")
    return value


def _unique(source: str, key: str, labels: list[Any], what: str = "") -> None:
    """Each label once: a repeat would run (and write) the same job twice."""
    for index, label in enumerate(labels):
        if label in labels[:index]:
            raise InvalidInputError(f"{source}: {key}[{index}]{what} {label!r} repeats {key}[{labels.index(label)}]")


def _default_name(model: str) -> str:
    """A demo's name, a 'module:factory' spec's factory, a file's stem."""
    return model if model in DEMOS else model.rpartition(":")[2] if is_torch_spec(model) else Path(model).stem


def _model(source: str, index: int, entry: Any, base: Path) -> tuple[str, str, str | None, dict[str, ShapeProfile]]:
    """One `models` entry -> (model argument, name, task, shapes); a file path made absolute."""
    where = f"{source}: models[{index}]"
    if isinstance(entry, str):
        entry = {"model": entry}
    if not isinstance(entry, dict):
        raise InvalidInputError(f"{where} must be a model argument or {{model, name, task, shapes}}")
    unknown = sorted(str(k) for k in set(entry) - set(MODEL_KEYS))
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {unknown} (known: {list(MODEL_KEYS)})")
    model = entry.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidInputError(f"{where}.model must be a demo name, module:factory or .onnx path")
    model = model.strip()
    if not is_torch_spec(model) or (base / model).exists():
        model = str((base / model).resolve())  # a file: relative to the manifest, like recipes
    name = entry.get("name", _default_name(model))
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        raise InvalidInputError(f"{where}.name {name!r}: letters, digits, '.', '_', '-' (it names a folder)")
    task = entry.get("task")
    if task is not None and task not in TASKS:
        raise InvalidInputError(f"{where}.task {task!r} not in {TASKS}")
    shapes = entry.get("shapes") or {}
    if not isinstance(shapes, dict) or not all(isinstance(v, str) for v in shapes.values()):
        raise InvalidInputError(f"{where}.shapes must map inputs to SHAPE or MIN/OPT/MAX, e.g. {{x: 1x16/4x16}}")
    try:
        profiles = parse_profiles([f"{k}:{v}" for k, v in shapes.items()])
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}.shapes: {exc}") from exc
    return model, name, task, profiles


def _targets(source: str, data: dict[str, Any]) -> list[str | None]:
    targets = []
    for index, target in enumerate(_list(source, data, "targets")):
        text = str(target) if isinstance(target, (str, int, float)) and not isinstance(target, bool) else ""
        if not _TARGET.fullmatch(text):
            raise InvalidInputError(f"{source}: targets[{index}] {target!r}: a compute capability or target, e.g. sm86")
        targets.append(text)
    _unique(source, "targets", targets)
    return targets or [None]


def _recipes(source: str, data: dict[str, Any], base: Path) -> list[tuple[str | None, str]]:
    """(absolute recipe path or None, its precision) per recipe; each recipe loaded (validated) now."""
    recipes = []
    for index, item in enumerate(_list(source, data, "recipes")):
        if not isinstance(item, str) or not item.strip():
            raise InvalidInputError(f"{source}: recipes[{index}] must be a recipe file path")
        path = (base / item).resolve()
        try:
            precision = load_recipe(path).precision
        except InvalidInputError as exc:
            raise InvalidInputError(f"{source}: recipes[{index}]: {exc}") from exc
        recipes.append((str(path), precision))
    _unique(source, "recipes", [Path(p).stem for p, _ in recipes], " file name")  # the stem names the folder
    return recipes or [(None, "fp32")]


def expand(manifest: str | Path, out: str | Path | None = None) -> tuple[Path, list[Job]]:
    """The manifest validated and expanded: (the matrix's output folder, its jobs in manifest order).

    Anything wrong is one InvalidInputError naming the key, before any job runs.
    """
    path = Path(manifest)
    data, source, base = load_manifest(path), str(path), path.resolve().parent
    unknown = sorted(str(k) for k in set(data) - set(MANIFEST_KEYS))
    if unknown:
        raise InvalidInputError(f"{source}: unknown key(s) {unknown} (known: {list(MANIFEST_KEYS)})")
    if "out" in data and (not isinstance(data["out"], str) or not data["out"].strip()):
        raise InvalidInputError(f"{source}: 'out' must be a folder path, got {data['out']!r}")
    if out is None:
        out = base / data["out"] if "out" in data else DEFAULT_OUT
    out_dir = check_name_length(Path(out)).resolve()
    backend = data.get("backend")
    if backend is not None and backend not in BACKEND_CHOICES:
        raise InvalidInputError(f"{source}: backend {backend!r} not in {BACKEND_CHOICES}")
    models = [_model(source, i, entry, base) for i, entry in enumerate(_list(source, data, "models", True))]
    _unique(source, "models", [name for _, name, _, _ in models], ".name")  # a name is a folder
    precisions = _list(source, data, "precisions")
    for index, precision in enumerate(precisions):
        if precision not in PRECISIONS:
            raise InvalidInputError(f"{source}: precisions[{index}] {precision!r} not in {PRECISIONS}")
    _unique(source, "precisions", precisions)
    targets, recipes = _targets(source, data), _recipes(source, data, base)
    jobs: list[Job] = []
    for (model, model_name, task, shapes), target, (recipe, recipe_precision), precision in itertools.product(
        models, targets, recipes, precisions or [None]
    ):
        # Unique: model names, targets (no '-' in them), precisions and recipe stems each are.
        label = precision or recipe_precision
        name = f"{model_name}/{target or 'default'}-{label}" + (f"-{Path(recipe).stem}" if recipe else "")
        dest = str(check_name_length(out_dir / name))
        jobs.append(Job(name, model, model_name, target, label, dest, recipe, backend, task, shapes, bool(precision)))
    return out_dir, jobs


def _row(job: Job, **fields: Any) -> dict[str, Any]:
    """A result row of `job` (its columns in summary.json's order), with `fields` filled in."""
    row = {"job": job.name, "model": job.model_name, "target": job.target, "precision": job.precision}
    row.update(recipe=job.recipe, out=job.out, status="error", exit_code=ExitCode.INTERNAL, error=None)
    return {**row, "engine_bytes": None, "seconds": None, **fields}


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupted()


def run_job(job: Job, env: dict[str, str] | None = None, trap_sigterm: bool = False) -> dict[str, Any]:
    """One job in a worker: convert(...) -> its result row. Never raises for the job's own failure.

    `trap_sigterm` (local pool): SIGTERM (a broken pool ending its workers, `kill`) unwinds the job,
    so convert removes its staging folder (the default action left a hidden half-written one)."""
    os.environ.update(env or {})
    previous = signal.signal(signal.SIGTERM, _interrupt) if trap_sigterm else None
    started, row = time.perf_counter(), _row(job)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # a model's prints must not end up in `--json` output
            result = convert(
                job.model,
                job.out,
                recipe=job.recipe,
                precision=job.precision if job.set_precision else None,
                backend=job.backend,
                target_gpus=[job.target] if job.target else None,
                shapes=job.shapes or None,
                task=job.task,
            )
        row["engine_bytes"] = result.report.get("stages", {}).get("build", {}).get("engine_bytes")
        verified = result.report.get("verified") != "not verified"
        if result.passed and verified:
            row.update(status="passed", exit_code=ExitCode.OK)
        else:  # convert's own verdict: `trtforge convert` would exit 3 (AccuracyError) for it
            why = "accuracy check failed" if verified else "not verified"
            row.update(status="failed", exit_code=ExitCode.ACCURACY_FAILED, error=f"{why}: see {job.out}/report.json")
    except TrtforgeError as exc:
        row.update(exit_code=exc.exit_code, error=str(exc))
    except (Exception, SystemExit) as exc:  # a bug, or user code exiting: this job's row, not the matrix's end
        row["error"] = _one_line(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _one_line(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def _run_local(jobs: list[Job], workers: int, done: Callable[[int, dict[str, Any]], None]) -> None:
    """A spawn-context process pool. A crashed worker breaks a pool: its unfinished jobs are rerun,
    each in a pool of its own, so only the job that crashes its process gets an error row."""
    context = multiprocessing.get_context("spawn")
    rerun = []
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        futures = {pool.submit(run_job, job, None, True): index for index, job in enumerate(jobs)}
        for future in concurrent.futures.as_completed(futures):
            try:
                done(futures[future], future.result())
            except concurrent.futures.process.BrokenProcessPool:
                rerun.append(futures[future])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: queued jobs never start
    for index in sorted(rerun):
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as alone:
            try:
                done(index, alone.submit(run_job, jobs[index], None, True).result())
            except concurrent.futures.process.BrokenProcessPool:
                done(index, _row(jobs[index], error="the worker process died running this job (crashed or killed)"))


def _run_ray(jobs: list[Job], workers: int, address: str | None, done: Callable[[int, dict[str, Any]], None]) -> None:
    """One Ray remote task per job (no retries: a job that crashes its worker gets an error row)."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError("--executor ray: ray is not installed (pip install trtforge[fleet])") from exc
    started_here = not ray.is_initialized()
    if started_here:
        # No --address and no $RAY_ADDRESS: a new local instance sized to --jobs ("local": never
        # attach by surprise to whatever cluster was started last on this machine).
        attach = address or (None if os.environ.get("RAY_ADDRESS") else "local")
        ray.init(
            address=attach,
            include_dashboard=False,
            ignore_reinit_error=True,
            num_cpus=workers if attach == "local" else None,
            log_to_driver=False,  # workers' output stays in Ray's logs: stdout is the summary's (--json)
            logging_level=logging.WARNING,
        )
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        refs = {task.remote(job, env): index for index, job in enumerate(jobs)}
        pending = list(refs)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                try:
                    row = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # the worker died (max_retries=0) or the task was lost
                    row = _row(jobs[refs[ready[0]]], error=f"ray: {_one_line(exc)}")
                done(refs[ready[0]], row)
        except BaseException:
            for ref in pending:  # Ctrl-C: queued and running jobs are cancelled on the cluster
                ray.cancel(ref, force=True)
            raise
    finally:
        if started_here:
            ray.shutdown()


def build_matrix(
    manifest: str | Path,
    out: str | Path | None = None,
    *,
    executor: str = "local",
    address: str | None = None,
    jobs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> BuildMatrixResult:
    """Every (model, target, precision, recipe) job of `manifest` through convert(), in parallel.

    `out` overrides the manifest's `out`. `executor` "local" runs `jobs` worker processes
    (default min(2, cores)); "ray" one task per job on the cluster at `address` (default:
    a new local Ray instance of `jobs` CPUs). Returns the summary, also written to
    <out>/summary.json; `.passed` is False when any job did not pass (the CLI exits 3).
    """
    if executor not in EXECUTORS:
        raise UsageError(f"executor {executor!r} not in {EXECUTORS}")
    if address and executor != "ray":
        raise UsageError("--address names a Ray cluster: use it with --executor ray")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise UsageError(f"jobs must be a positive integer, got {jobs!r}")
    workers, log = jobs or min(2, os.cpu_count() or 1), log or (lambda _message: None)
    started = time.perf_counter()
    out_dir, matrix = expand(manifest, out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir}: exists and is not a folder")
    log(f"{len(matrix)} jobs on {executor} ({workers if executor == 'local' or not address else 'cluster'} workers)")
    rows: list[dict[str, Any] | None] = [None] * len(matrix)

    def done(index: int, row: dict[str, Any]) -> None:
        rows[index] = row
        seconds = f" ({row['seconds']:.1f} s)" if row.get("seconds") is not None else ""
        error = f": {row['error']}" if row["status"] != "passed" and row.get("error") else ""
        log(f"[{sum(r is not None for r in rows)}/{len(matrix)}] {row['job']}: {row['status']}{seconds}{error}")

    if executor == "ray":
        _run_ray(matrix, workers, address, done)
    else:
        _run_local(matrix, min(workers, len(matrix)), done)
    results = [row for row in rows if row is not None]
    passed = sum(row["status"] == "passed" for row in results)
    report = {"format": FORMAT, "manifest": str(Path(manifest).resolve()), "out": str(out_dir), "executor": executor}
    report.update(jobs=len(matrix), passed=passed, failed=len(matrix) - passed, results=results)
    report["seconds"] = round(time.perf_counter() - started, 3)
    summary = write_report(report, out_dir / "summary.json")
    return BuildMatrixResult(report=report, out_dir=out_dir, summary=summary)
