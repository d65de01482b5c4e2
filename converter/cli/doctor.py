"""`trtforge doctor`: backends, GPUs, CUDA, onnxruntime and the targets this machine can build for."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from converter import api
from converter.cli.options import console, emit, output_options


def _print_report(report: dict) -> None:
    facts = Table(show_header=False, box=None)
    backends = ", ".join(
        f"{name} {info['version']}" if info["available"] else f"{name}: not installed"
        for name, info in report["backends"].items()
    )
    gpus = ", ".join(f"{g['name']} ({g['compute']})" for g in report["gpus"]) or "none visible"
    ort = report["onnxruntime"]
    for key, value in (
        ("trtforge", f"{report['trtforge']} (Python {report['python']}, {report['platform']})"),
        ("backends", backends),
        ("GPUs", gpus),
        ("CUDA driver", report["cuda_driver"] or "none"),
        ("nvcc", report["nvcc"] or "not found"),
        ("onnxruntime", f"{ort['version']} ({', '.join(ort['providers'])})" if ort["version"] else "not installed"),
        ("torch", report["torch"] or "not installed"),
    ):
        facts.add_row(key, escape(str(value)))
    console.print(facts)
    table = Table(title="targets (--target-gpu takes their compute capabilities)")
    for column in ("target", "compute", "GPUs", "reachable", "how"):
        table.add_column(column)
    for row in report["targets"]:
        mark = "[green]yes[/green]" if row["reachable"] else "[red]no[/red]"
        table.add_row(row["target"], ", ".join(row["compute"]), escape(row["gpus"]), mark, escape(row["how"]))
    console.print(table)
    ops = ", ".join(f"{op}: {v}" for op, v in report["onnx_ops_first_parsed_in"].items())
    console.print(f"ONNX ops of the opset-23 fusions, first parsed by: {ops}", highlight=False)


@click.command()
@output_options(what="machine report")
def doctor(as_json, quiet):
    """Report backends, GPUs, CUDA, onnxruntime and the targets this machine can build engines for.

    \b
    Examples:
      trtforge doctor
      trtforge doctor --json
    """
    emit(api.doctor(), as_json, quiet, _print_report)
