"""`optimize`: ONNX -> ONNX through named passes, and the check every use case makes first.

`check_passes` builds every pass of a recipe (groups expanded) before any stage
runs, so a bad pass name or option fails in well under a second, before an export
or a build. Passes that declare they need calibration data get the model's own real
sample data (converter/pipelines/calibration_source.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from converter.core.model_io import load_model, opset_of, save_model, weights_nbytes
from converter.core.outputs import Outputs
from converter.core.progress import Step
from converter.pipelines import calibration_source
from converter.pipelines.recipe import Recipe
from converter.pipelines.report import new_report, write_report
from passes.base import PassContext
from passes.manager import PassRecord, run_passes
from passes.registry import PassSpec, build_passes, pass_count

OnStage = Callable[[PassRecord, onnx.ModelProto], None]


def check_passes(specs: list[PassSpec]) -> None:
    """Build every pass (groups expanded) once: a bad name or option raises InvalidInputError now.

    The pass manager builds them again when it runs: a use case calls this before its
    first stage (an export, a build) so that a bad recipe costs nothing.
    """
    build_passes(specs)


def as_specs(passes: list[str | PassSpec]) -> list[PassSpec]:
    return [p if isinstance(p, PassSpec) else PassSpec(p) for p in passes]


@dataclass
class OptimizeResult:
    path: Path
    records: list[PassRecord]
    nodes_before: int
    nodes_after: int
    report: dict[str, Any] = field(default_factory=dict)


def optimize(
    onnx_path: str | Path,
    out: str | Path,
    *,
    passes: list[str | PassSpec] | None = None,
    precision: str = "fp32",
    on_stage: OnStage | None = None,
    report_path: str | Path | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> OptimizeResult:
    """Run the passes (default: the fold group; fp16/bf16 append the precision pass) and write `out`.

    `log` hears what a terminal shows while it runs: the load once done, each pass as it
    ends, the save as it starts (minutes each on a multi-GB model)."""
    recipe = Recipe(precision=precision)
    if passes is not None:
        recipe.passes = as_specs(passes)
    specs = recipe.effective_passes()
    check_passes(specs)
    started = time.perf_counter()
    model = load_model(onnx_path)  # a broken file's error stays the only line printed
    nodes_before = len(model.graph.node)
    seconds = time.perf_counter() - started
    log(f"loaded {onnx_path}: {nodes_before} nodes, {weights_nbytes(model) / 1e6:,.1f} MB of weights ({seconds:.2f} s)")

    done: list[str] = []

    def progress(record: PassRecord) -> None:
        done.append(record.name)
        text = f"{record.name}: {record.nodes_before} -> {record.nodes_after} nodes ({record.seconds:.2f} s)"
        log(Step("passes", len(done), pass_count(specs), text))

    ctx = PassContext(opset=opset_of(model), calibration=calibration_source.for_optimize(specs, model))
    result, records = run_passes(model, specs, ctx, on_stage, on_record=progress)
    del model  # the source's weights are not needed to save the result: one copy fewer at the peak
    with Outputs(inputs=[Path(onnx_path)]) as outputs:  # the ONNX and the report, together or neither
        log(f"saving {out}")
        save_model(result, outputs.path(out))
        optimized = OptimizeResult(Path(out), records, nodes_before, len(result.graph.node))
        optimized.report = optimize_report(optimized)
        if report_path:
            write_report(optimized.report, outputs.path(report_path))
    return optimized


def optimize_report(result: OptimizeResult) -> dict[str, Any]:
    """The report of an optimize run: its passes and node counts; nothing is verified (`passed` None)."""
    report = new_report("optimize")
    report["passes"] = [r.to_dict() for r in result.records]
    report["stages"]["optimize"] = {
        "seconds": round(sum(r.seconds for r in result.records), 3),
        "summary": f"{result.nodes_before} -> {result.nodes_after} nodes",
    }
    report["verified"] = "not verified"
    return report


def pass_catalogue() -> dict[str, Any]:
    """What `trtforge passes` lists: every registered pass (description, capabilities, options with
    their defaults) and every group, so a build step can discover them (--json)."""
    import dataclasses

    from passes.base import CAPABILITIES
    from passes.registry import DESCRIPTIONS, GROUPS, PASSES

    def default(f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        return f.default_factory() if f.default_factory is not dataclasses.MISSING else None

    entries = []
    for name, cls in PASSES.items():
        options = {f.name: default(f) for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
        entries.append(
            {
                "name": name,
                "description": DESCRIPTIONS[name],
                **{cap: getattr(cls, cap) for cap in CAPABILITIES},
                "options": options,
            }
        )
    return {"passes": entries, "groups": dict(GROUPS)}
