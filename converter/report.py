"""The JSON report every command can write, and its terminal summary (rich).

The report is the machine-readable record of a run: inputs, the recipe actually used,
per-stage timings, per-pass statistics and accuracy, verification metrics and every
artifact with its sha256. Build steps read it; humans read the summary.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from converter.export import TRTFORGE_VERSION
from converter.model_io import atomic_write_text, sha256_file

REPORT_FORMAT = "trtforge-report/1"


def artifact(path: str | Path, kind: str) -> dict[str, Any]:
    path = Path(path)
    return {"kind": kind, "path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def new_report(command: str) -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "trtforge_version": TRTFORGE_VERSION,
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


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, default=_json_default, allow_nan=False)


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    return atomic_write_text(path, to_json(report) + "\n")


def _sci(value: Any) -> str:
    return "-" if value is None else f"{value:.2e}"


def _fixed(value: Any, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verification_table(comparisons: list[dict[str, Any]]) -> tuple[Table, list[str]]:
    """The metrics table plus the notes (skip reasons, failures) printed under it."""
    reference = comparisons[0]["reference"] if comparisons else ""
    table = Table(title=f"Verification against {reference}")
    for column in ("candidate", "output", "max-abs", "mean-abs", "cosine", "SNR dB", "top-1", "status"):
        table.add_column(column, no_wrap=column in ("candidate", "status"))
    notes: list[str] = []
    for comp in comparisons:
        if comp.get("skipped"):
            table.add_row(comp["candidate"], "-", "-", "-", "-", "-", "-", "[yellow]skipped[/yellow]")
            notes.append(f"{comp['candidate']}: {comp['skipped']}")
            continue
        for out in comp["outputs"]:
            status = "[green]pass[/green]" if out["passed"] else "[red]FAIL[/red]"
            if not out["passed"]:
                notes.append(f"{comp['candidate']} / {out['name']}: {out['failure']}")
            table.add_row(
                comp["candidate"],
                out["name"],
                _sci(out["max_abs"]),
                _sci(out["mean_abs"]),
                _fixed(out["cosine"]),
                _fixed(out["snr_db"], 1),
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
            rec["name"],
            f"{rec['nodes_before']}->{rec['nodes_after']}",
            changes,
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
            table.add_row(name, _fixed(stage.get("seconds"), 2), stage.get("summary", ""))
        console.print(table)
    if report.get("passes"):
        console.print(passes_table(report["passes"]))
    if report.get("verification"):
        table, notes = verification_table(report["verification"])
        console.print(table)
        for note in notes:
            console.print(f"  {note}", highlight=False)
    for item in report.get("artifacts", []):
        console.print(f"{item['kind']:>8}: {item['path']} ({item['bytes'] / 1e6:.1f} MB)")
    if report.get("passed") is not None:
        verdict = "[green]PASSED[/green]" if report["passed"] else "[red]ACCURACY CHECK FAILED[/red]"
        console.print(f"verification: {verdict}")
