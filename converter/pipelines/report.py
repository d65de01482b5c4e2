"""The JSON report every command can write, and its terminal summary (rich).

The report is the machine-readable record of a run: inputs, the recipe actually used,
per-stage timings, per-pass statistics and accuracy, verification metrics and every
artifact with its sha256. Build steps read it; humans read the summary.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from converter.core.model_io import atomic_write_text, sha256_file
from converter.core.version import __version__

REPORT_FORMAT = "trtforge-report/1"


def artifact(path: str | Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    return {"kind": kind, "path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def new_report(command: str) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "trtforge_version": __version__,
        "command": command,
        "environment": {"python": sys.version.split()[0], "platform": platform.platform()},
        "stages": {},
        "passes": [],
        "verification": [],
        "artifacts": [],
        "passed": None,
    }


def _json_default(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _finite_only(value: Any) -> Any:
    """JSON has no inf/nan: such metrics are written as the strings "inf", "-inf", "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_only(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_only(v) for v in value]
    return value


def to_json(report: dict[str, Any]) -> str:
    plain = json.loads(json.dumps(report, default=_json_default))  # dataclasses/paths -> plain values
    return json.dumps(_finite_only(plain), indent=2, allow_nan=False)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, to_json(report) + "\n")


def _sci(value: Any) -> str:
    return "-" if value is None else f"{value:.2e}"


def _fixed(value: Any, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _snr(value: Any) -> str:
    """SNR in dB; the metric stores identical outputs (no noise) as a large sentinel."""
    if value is None:
        return "-"
    return "identical" if value >= 1e9 else f"{value:.1f}"


def verification_table(comparisons: list[dict[str, Any]]) -> tuple[Table, list[str]]:
    """The metrics table plus the notes (skip reasons, failures) printed under it."""
    reference = comparisons[0]["reference"] if comparisons else ""
    table = Table(title=f"Verification against {escape(str(reference))}")
    for column in ("candidate", "output", "max-abs", "mean-abs", "cosine", "SNR dB", "top-1", "status"):
        table.add_column(column, no_wrap=column in ("candidate", "status"))
    notes: list[str] = []
    for comp in comparisons:
        if comp.get("skipped"):
            table.add_row(escape(comp["candidate"]), "-", "-", "-", "-", "-", "-", "[yellow]skipped[/yellow]")
            notes.append(f"{comp['candidate']}: {comp['skipped']}")
            continue
        budget = comp.get("budget")
        if budget:
            verdict = "keeps" if budget["met"] else "MISSES"
            notes.append(f"{comp['candidate']}: judged by the budget {budget['budget']}: {budget['value']} ({verdict})")
        for out in comp["outputs"]:
            passed = budget["met"] if budget else out["passed"]
            status = "[green]pass[/green]" if passed else "[red]FAIL[/red]"
            if not out["passed"] and not budget:
                notes.append(f"{comp['candidate']} / {out['name']}: {out['failure']}")
            table.add_row(
                escape(comp["candidate"]),
                escape(out["name"]),
                _sci(out["max_abs"]),
                _sci(out["mean_abs"]),
                _fixed(out["cosine"]),
                _snr(out["snr_db"]),
                _fixed(out["top1_agreement"], 3),
                status,
            )
    return table, notes


def passes_table(records: list[dict[str, Any]]) -> Table:
    table = Table(title="Passes")
    for column in ("pass", "nodes", "changes", "s", "cosine"):
        table.add_column(column)
    for rec in records:
        changes = ", ".join(f"{k}={v}" for k, v in rec["changed"].items()) or "none"
        table.add_row(
            escape(rec["name"]),
            f"{rec['nodes_before']}->{rec['nodes_after']}",
            escape(changes),
            _fixed(rec["seconds"], 2),
            _fixed(rec.get("accuracy", {}).get("min_cosine")),
        )
    return table


def print_summary(report: dict[str, Any], console: Console | None = None) -> None:
    """A readable terminal summary of any report."""
    console = console or Console()
    stages = report.get("stages", {})
    if stages:
        table = Table(title=f"trtforge {report['command']}")
        table.add_column("stage")
        table.add_column("seconds")
        table.add_column("result")
        for name, stage in stages.items():
            table.add_row(name, _fixed(stage.get("seconds"), 2), escape(str(stage.get("summary", ""))))
        if report.get("wall_seconds") is not None:
            table.add_row("total (wall)", _fixed(report["wall_seconds"], 2), "")
        console.print(table)
    if report.get("passes"):
        console.print(passes_table(report["passes"]))
    if report.get("verification"):
        table, notes = verification_table(report["verification"])
        console.print(table)
        for note in notes:
            console.print(f"  {escape(note)}", highlight=False)
    samples = report.get("input", {}).get("samples", {})
    if samples.get("source") == "synthetic" and report.get("verification"):
        console.print(
            "[yellow]warning:[/yellow] verified on synthetic random inputs (the model names no real sample data): "
            "a pass says little about accuracy on real data; give --load-inputs"
        )
    for item in report.get("artifacts", []):
        console.print(f"{item['kind']:>8}: {escape(item['path'])} ({item['bytes'] / 1e6:.1f} MB)", highlight=False)
    kernels = report.get("runtime_cache")
    if kernels:
        console.print(f"runtime cache: {escape(kernels['path'])}: {escape(kernels['status'])}", highlight=False)
    generation = report.get("generation")
    if generation:
        colour = "green" if generation["identical"] else "yellow"
        console.print(f"generation: [{colour}]{escape(generation['summary'])}[/{colour}]", highlight=False)
    if report.get("passed") is None and not report.get("verification"):
        return  # nothing was compared (optimize): no verdict to print
    if report.get("verified") == "not verified":
        console.print("verification: [yellow]NOT VERIFIED[/yellow] (no final artifact could be run here)")
    elif report.get("passed") is not None:
        verdict = "[green]PASSED[/green]" if report["passed"] else "[red]ACCURACY CHECK FAILED[/red]"
        console.print(f"verification: {verdict} (checked: {report.get('verified', 'onnx')})")


def print_inspect(info: dict[str, Any], console: Console, layers: bool = False) -> None:
    """Terminal form of `inspect`'s result (ONNX or engine)."""
    if info["kind"] == "onnx":
        console.print(
            f"[bold]{escape(str(info['path']))}[/bold]: ONNX, {info['num_nodes']} nodes, {info['num_params']:,} params "
            f"({info['weight_bytes'] / 1e6:.1f} MB), opsets {info['opsets']}"
        )
        for label in ("inputs", "outputs"):
            for io in info[label]:
                console.print(f"  {label[:-1]:>6} {escape(io['name'])}: {io['dtype']} {io['shape']}", highlight=False)
        console.print("  ops: " + ", ".join(f"{k} {v}" for k, v in info["ops"].items()))
        console.print("  weight dtypes: " + json.dumps(info["weight_dtypes"]))
        return
    console.print(f"[bold]{escape(str(info['path']))}[/bold]: engine, {info['engine_bytes'] / 1e6:.1f} MB")
    side = info.get("sidecar")
    if side:
        net = side["network"]
        console.print(
            f"  backend {side['backend']} {side['backend_version']}, targets {side.get('targets')}, "
            f"precision {side['precision']}"
        )
        groups = side.get("optimization_profiles") or [side["profiles"]]
        for index, group in enumerate(groups):
            label = f"profile {index} " if len(groups) > 1 else "profile "
            for name, prof in group.items():
                console.print(f"  {label}{escape(name)}: min {prof['min']} opt {prof['opt']} max {prof['max']}")
        console.print(f"  network (recorded at build): {net['num_layers']} layers")
        console.print("    layer types: " + ", ".join(f"{k} {v}" for k, v in net["layer_types"].items()))
        console.print("    tensor dtypes: " + ", ".join(f"{k} {v}" for k, v in net["tensor_dtypes"].items()))
        if layers:
            for layer in net["layers"]:
                console.print(
                    f"    {layer['type']:<18} {layer['precision']:<6} {escape(layer['name'])}", highlight=False
                )
    if info.get("note"):
        console.print(f"  [yellow]{escape(info['note'])}[/yellow]")
    if "engine_detail" in info:
        console.print(f"  [yellow]{escape(info['engine_detail'])}[/yellow]")
