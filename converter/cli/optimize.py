"""`trtforge optimize`: ONNX -> ONNX through graph passes (converter.api.optimize)."""

from __future__ import annotations

import click

from converter import api
from converter.cli.options import (
    PATH,
    choice_option,
    emit,
    names,
    onnx_out_option,
    output_options,
    precision_flags,
    progress,
    summary,
)
from converter.pipelines.recipe import PRECISIONS


@click.command()
@click.argument("onnx_file", type=PATH)
@onnx_out_option
@click.option("--passes", default="fold", show_default=True, help="Comma-separated pass names (see `trtforge passes`).")
@choice_option("--precision", PRECISIONS, "fp32", "fp16/bf16 append the precision pass.")
@click.option("--save-report", "report_path", type=PATH, help="Write the JSON report here.")
@output_options
@precision_flags
def optimize(onnx_file, out, passes, as_json, quiet, **options):
    """Rewrite ONNX_FILE through graph passes.

    \b
    Examples:
      trtforge optimize model.onnx -o model.opt.onnx
      trtforge optimize model.onnx -o model.fp16.onnx --precision fp16
    """
    with progress("optimizing...", quiet or as_json) as log:
        result = api.optimize(onnx_file, out, passes=names(passes), log=log, **options)
    emit(result.report, as_json, quiet, summary)
