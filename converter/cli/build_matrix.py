"""`trtforge build-matrix`: MANIFEST's models x targets x precisions x recipes (converter.api.build_matrix)."""

from __future__ import annotations

from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from converter import api
from converter.cli.options import (
    PATH,
    POSITIVE_INT,
    choice_option,
    console,
    emit,
    out_option,
    output_options,
    progress,
)
from converter.core.errors import AccuracyError

_STATUS = {"passed": "[green]passed[/green]", "failed": "[red]failed[/red]", "error": "[red]error[/red]"}


def _print_summary(report: dict[str, Any]) -> None:
    """One row per job (its folder, verdict, exit code, time, engine size, error), then the totals."""
    table = Table(title=f"build matrix ({report['executor']})")
    for column, justify in (("job", "left"), ("status", "left"), ("exit", "right"), ("seconds", "right")):
        table.add_column(column, justify=justify)
    table.add_column("engine MB", justify="right")
    table.add_column("error", overflow="fold")
    for row in report["results"]:
        seconds = "-" if row["seconds"] is None else f"{row['seconds']:.1f}"
        size = "-" if row["engine_bytes"] is None else f"{row['engine_bytes'] / 1e6:.2f}"
        error = escape(row["error"] or "")
        table.add_row(escape(row["job"]), _STATUS[row["status"]], str(row["exit_code"]), seconds, size, error)
    console.print(table)
    console.print(
        f"{report['jobs']} jobs: {report['passed']} passed, {report['failed']} failed in {report['seconds']:.1f} s; "
        f"outputs in {escape(report['out'])}",
        highlight=False,
    )


@click.command("build-matrix")
@click.argument("manifest", type=PATH)
@out_option(
    "Matrix output folder: <out>/<model>/<target>-<precision>[-<recipe>]/ and summary.json "
    "(default: the manifest's `out`, else build_matrix_out).",
    required=False,
)
@choice_option("--executor", ("local", "ray"), "local", "Where jobs run: local worker processes, or a Ray cluster.")
@click.option(
    "--address",
    metavar="ADDR",
    help="Ray cluster to use (e.g. auto, HOST:6379, ray://HOST:10001); "
    "default: a new local Ray instance of --jobs CPUs.",
)
@click.option(
    "--jobs", "-j", type=POSITIVE_INT, help="Parallel jobs (local workers / local Ray CPUs); default min(2, cores)."
)
@output_options(what="summary")
def build_matrix(manifest, out, executor, address, jobs, as_json, quiet):
    """Convert every model x target x precision x recipe of MANIFEST, in parallel.

    Each job is one `trtforge convert` run in a worker process (--executor local) or a
    Ray task (--executor ray); a job that fails is a row of the summary, never the end of
    the others. MANIFEST (YAML) names the models and the axes; paths in it are relative
    to its folder:

    \b
      out: matrix_out                 # optional (-o overrides)
      models:                         # demo, module:factory or .onnx
        - efficientnet-lite0
        - {model: mypkg.models:make_net, name: net, shapes: {image: 1x3x224x224}}
      targets: [sm86, sm89]           # optional; one target per job
      precisions: [fp32, fp16]        # optional
      recipes: [fast.yaml]            # optional
      backend: tensorrt-rtx           # optional

    <out>/summary.json (trtforge-build-matrix/1) holds one row per job: status (passed,
    failed: accuracy, error: it raised), exit code, error, engine bytes, seconds. Exits 3
    when any job did not pass.
    """
    silent = quiet or as_json
    with progress("building the matrix...", silent) as log:
        result = api.build_matrix(manifest, out, executor=executor, address=address, jobs=jobs, log=log)
    emit(result.report, as_json, quiet, _print_summary)
    if not silent:
        console.print(f"summary: {escape(str(result.summary))}", highlight=False)
    if not result.passed:
        raise AccuracyError(
            f"{result.report['failed']} of {result.report['jobs']} jobs did not pass: see {result.summary}"
        )
