"""`convert`: model -> optimized ONNX -> engine, with accuracy measured at every stage.

The stages are the other use cases' own (export_model, run_passes, the backend's
build); this module only orders them, measures each one against the reference
(torch, or the source ONNX) on the same real inputs (converter/verification/
reference.py), and writes the report. Everything is written into a staging folder
and moved into place only when the whole run succeeded. The caller's Recipe is
never changed: flags are merged into a copy, and every pass is built (checked)
before the first stage runs.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.backends import Backend, BuildConfig, EngineArtifact, ShapeProfile, get_backend, runtime_cache_for
from converter.backends.runtime_cache import RuntimeCache
from converter.core.artifact_cache import ArtifactCache
from converter.core.errors import Interrupted, InvalidInputError
from converter.core.model_io import load_model, opset_of, save_model
from converter.core.outputs import check_name_length
from converter.core.progress import Step
from converter.demos.models import DEFAULT_DEMO
from converter.pipelines import calibration_source
from converter.pipelines.budget.choose import BudgetOptions, BudgetSearch, budget_for
from converter.pipelines.cached_build import ConversionLookup, build_engine, open_cache
from converter.pipelines.convert_checks import VerificationStages
from converter.pipelines.convert_outputs import CONVERT_OUTPUTS, point_at, publish, refuse_overwriting_inputs
from converter.pipelines.convert_recipe import recipe_for_run
from converter.pipelines.export import export_model
from converter.pipelines.generation_check import (
    DECODER_PASSES,
    engine_shapes,
    is_cache_model,
)
from converter.pipelines.html_report import write_html
from converter.pipelines.model_ref import ModelRef, default_profiles, is_torch_spec, resolve_model
from converter.pipelines.recipe import Recipe
from converter.pipelines.report import artifact, new_report, write_report
from converter.verification.reference import Reference, StageChecks, pass_accuracy, verdict
from passes.base import PassContext
from passes.manager import PassRecord, run_passes
from passes.registry import PassSpec, pass_count

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class ConvertResult:
    report: dict[str, Any]
    out_dir: Path
    engine: Path | None = None
    onnx: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.report.get("passed"))


def convert(
    model: str | None = None,
    out: str | Path = "trtforge_out",
    *,
    recipe: Recipe | str | Path | None = None,
    precision: str | None = None,
    backend: str | None = None,
    target_gpus: list[str] | None = None,
    shapes: dict[str, ShapeProfile] | None = None,
    profiles: list[dict[str, ShapeProfile]] | None = None,
    inputs: str | Path | None = None,
    log: Log = _quiet,
    trust_model_code: bool = False,
    task: str | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool | None = None,
    budget: BudgetOptions | str | None = None,
    calib: str | Path | None = None,
    runtime_cache: str | Path | None = None,
) -> ConvertResult:
    """Model (demo, 'module:factory' or .onnx) -> optimized ONNX -> engine, verified at every stage.

    Flags given here override the recipe (in a copy: `recipe` itself is not changed);
    the recipe actually used is in the report. `trust_model_code` lets an ONNX file's
    metadata name a `module:factory` whose code is imported for sample data and
    profiles (off: only built-in demos). The cache (`cache_dir`, default per user;
    `use_cache=False` for none; None: on unless TRTFORGE_CACHE=0) returns an identical earlier run's outputs, else the
    engine of an identical final ONNX (pipelines/cached_build.py). `budget` (BudgetOptions, or its
    text: "cosine>=0.99") searches the passes and precision first (pipelines/budget/choose.py);
    `calib` is the recipe's `calibration` data for passes that need it. `runtime_cache`
    (TensorRT-RTX, where a GPU runs the engine): the file keeping its JIT-compiled kernels.
    """
    started = time.perf_counter()
    rec = recipe_for_run(recipe, precision, backend, target_gpus, shapes, profiles, calib)
    out_dir = check_name_length(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidInputError(f"{out_dir}: exists and is not a folder")
    if is_torch_spec(str(model or DEFAULT_DEMO)):  # a file loads in a moment; a torch model can take seconds
        log(f"loading {model or DEFAULT_DEMO}")
    loaded = time.perf_counter()
    ref = resolve_model(model or DEFAULT_DEMO, rec.shapes, task=task)
    if recipe is None and is_cache_model(ref):
        rec.passes.append(PassSpec(DECODER_PASSES))  # a decoder engine wants its attention fused
    search = budget_for(budget, ref, precision or (rec.precision if rec.precision != "fp32" else None))
    kernels = runtime_cache_for(rec.backend, runtime_cache)
    refuse_overwriting_inputs(out_dir, [p for p in (ref.path, inputs, recipe) if isinstance(p, (str, Path))])
    calibration_source.require_own_samples(rec.effective_passes(), ref.metadata, ref.spec, rec.calibration)
    load_stage = {"seconds": round(time.perf_counter() - loaded, 3), "summary": f"{ref.kind} model"}
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.resolve().name}.trtforge-", dir=parent))
    except OSError as exc:
        raise InvalidInputError(f"{out_dir}: cannot create the output folder ({exc.strerror})") from exc
    # A failure or a signal leaves the output folder (and any input inside it) exactly as it
    # was: every file, the reports included, is written into the staging folder first.
    try:
        cache = open_cache(cache_dir, False if search and search.uncacheable else use_cache)
        backend_used = get_backend(rec.backend)
        key = {**rec.to_dict(), "budget": search.key()} if search else rec.to_dict()
        cached = ConversionLookup.find(cache, ref, key, task, inputs, backend_used, trust_model_code)
        restored = cached.restore(stage) if cached.hit else None
        if restored is not None:
            log("cache hit: copying the outputs of an identical earlier run")
            result = ConvertResult(report=restored, out_dir=stage)
        else:
            run = _Run(ref, rec, stage, log, trust_model_code, cache, search, runtime_cache=kernels)
            run.report["stages"]["load"] = load_stage
            result = run.convert(inputs)
            result.report["cache"] = cached.report()
        writing = time.perf_counter()
        point_at(out_dir, result)
        if not cached.hit:  # a hit keeps the first run's page (drawing its plots again costs most of a hit)
            write_html(result.report, stage / "report.html")
        result.report["stages"]["write"] = {
            "seconds": round(time.perf_counter() - writing, 3),
            "summary": f"{out_dir} (report.json, report.html)",
        }
        result.report["wall_seconds"] = round(time.perf_counter() - started, 3)
        write_report(result.report, stage / "report.json")
        cached.remember(stage, CONVERT_OUTPUTS)
        publish(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return result


@dataclass
class _Run(VerificationStages):
    """One conversion into a staging folder: the stages, in order, and what they share
    (the verification stages are in convert_checks.py)."""

    ref: ModelRef
    rec: Recipe
    out_dir: Path
    log: Log
    trust_model_code: bool
    cache: ArtifactCache | None = None
    search: BudgetSearch | None = None
    report: dict[str, Any] = field(default_factory=lambda: new_report("convert"))
    reference: Reference | None = None
    runtime_cache: RuntimeCache | None = None

    @contextlib.contextmanager
    def stage(self, name: str, message: str) -> Iterator[dict[str, Any]]:
        """One timed stage of the report (wall time, so the stages add up to the run), announced first."""
        start = time.perf_counter()
        entry = self.report["stages"].setdefault(name, {})
        try:
            self.log(message)  # inside the try: a signal right after the announcement names this stage
            yield entry
        except (Interrupted, KeyboardInterrupt) as exc:  # the CLI says which stage was stopped
            exc.stage = getattr(exc, "stage", None) or name  # type: ignore[union-attr]
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)

    def convert(self, inputs: str | Path | None) -> ConvertResult:
        self.report["recipe"] = self.rec.to_dict()
        source_path, source = self.source()
        self.verify_setup(source_path, source, inputs)
        self.search_recipe(source)
        opt_path, optimized = self.optimize(source)
        self.verify_optimized(source, opt_path, optimized)
        backend, engine = self.build(source, opt_path)
        self.verify_engine(source, backend, engine)
        self.verify_generation(source, opt_path, backend, engine)
        if self.runtime_cache is not None:
            self.report["runtime_cache"] = self.runtime_cache.status()
        self.report["verified"], self.report["passed"] = verdict(
            self.report["verification"], engines=["model.engine"], onnx_files=["model.opt.onnx"]
        )
        return ConvertResult(report=self.report, out_dir=self.out_dir)

    def source(self) -> tuple[Path, onnx.ModelProto]:
        """1. the source graph: the torch model exported (model.onnx), or the ONNX file given."""
        spec, rec = self.ref.spec, self.rec
        if spec is None:
            source_path = self.ref.path
        else:
            with self.stage("export", f"exporting {spec.name} ({rec.exporter})") as entry:
                exported = export_model(
                    spec, self.out_dir / "model.onnx", exporter=rec.exporter, opset=rec.opset, profiles=rec.shapes
                )
                entry.update(
                    summary=f"{exported.num_nodes} nodes, opset {exported.opset}",
                    exporter=exported.exporter,
                    opset=exported.opset,
                    nodes=exported.num_nodes,
                )
            source_path = exported.path
            self.report["artifacts"].append(artifact(source_path, "onnx"))
        self.report["input"] = {"model": self.ref.text, "kind": self.ref.kind}
        return source_path, load_model(source_path)

    def search_recipe(self, source: onnx.ModelProto) -> None:
        """1b. `--budget`: the passes and precision searched for; then converted like any recipe."""
        if self.search is not None:
            with self.stage("search", f"searching for the smallest graph within {self.search.text}") as entry:
                self.rec, self.report["search"] = self.search.run(source, self.ref.spec, self.rec, self.log)
                self.report["recipe"] = self.rec.to_dict()
                entry["summary"] = self.report["search"]["summary"]

    def optimize(self, source: onnx.ModelProto) -> tuple[Path, onnx.ModelProto]:
        """2. the passes, with accuracy after each one (lossy passes switch to the recipe's tolerance)."""
        rec, reference = self.rec, self.reference
        lowered = False
        checks = StageChecks(reference)

        def measure(record: PassRecord, stage_model: onnx.ModelProto) -> None:
            nonlocal lowered
            lowered = lowered or not record.exact
            try:
                tol = self.tolerance(source) if lowered else self.tolerance(source, "fp32")
                record.accuracy = pass_accuracy(checks.check(stage_model, record.name, tol))
            except InvalidInputError as exc:
                record.accuracy = {"skipped": str(exc)}
            done.append(record.name)
            self.log(Step("passes", len(done), total, f"{record.name}: {record.nodes_after} nodes"))

        specs, done = rec.effective_passes(), []
        total = pass_count(specs)
        with self.stage(
            "optimize", f"running passes {', '.join(s.name for s in specs)}, each checked against the reference"
        ) as entry:
            calib = calibration_source.for_convert(
                specs, source, self.ref.spec, rec.verify_batches, rec.verify_batch_size, rec.calibration
            )
            ctx = PassContext(opset=opset_of(source), calibration=calib)
            optimized, records = run_passes(source, specs, ctx, measure)
            opt_path = save_model(optimized, self.out_dir / "model.opt.onnx")
            entry["summary"] = f"{len(source.graph.node)} -> {len(optimized.graph.node)} nodes"
        self.report["passes"] = [r.to_dict() for r in records]
        self.report["artifacts"].append(artifact(opt_path, "onnx"))
        return opt_path, optimized

    def build(self, source: onnx.ModelProto, opt_path: Path) -> tuple[Backend, EngineArtifact]:
        """3. the engine, with the spec's (or the metadata's) profiles under the recipe's shapes."""
        rec = self.rec
        defaults = default_profiles(source, self.ref.spec, self.trust_model_code)
        shapes = engine_shapes(source, defaults, rec.shapes, rec.profiles)
        config = BuildConfig(**shapes, target_gpus=list(rec.target_gpus), precision=rec.precision)
        backend = get_backend(rec.backend)
        with self.stage("build", f"building the engine ({backend.name}, {rec.precision})") as entry:
            engine = build_engine(
                backend,
                opt_path,
                self.out_dir / "model.engine",
                config,
                self.cache,
                source_label="model.opt.onnx",
                progress=self.log,
            )
            side, network = engine.sidecar, engine.sidecar["network"]
            entry.update(
                backend=side["backend"],
                targets=side.get("targets"),
                engine_bytes=side["engine_bytes"],
                engine_build_seconds=side["build_seconds"],
                summary=f"{side['backend']} {side.get('targets')}, "
                f"{network['num_layers']} network layers, {side['engine_bytes'] / 1e6:.1f} MB, "
                f"{len(side['optimization_profiles'])} profile(s), cache {side.get('cache', 'off')}",
            )
        entry["cache"] = side.get("cache", "off")
        self.report["engine_profiles"] = side["optimization_profiles"]
        keys = ("num_layers", "layer_types", "tensor_dtypes", "inputs", "outputs")
        self.report["network"] = {k: network[k] for k in keys}
        self.report["artifacts"] += [artifact(engine.path, "engine"), artifact(engine.sidecar_path, "sidecar")]
        return backend, engine
