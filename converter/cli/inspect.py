"""`trtforge inspect`: summarise an ONNX file or an engine (converter.api.inspect)."""

from __future__ import annotations

import functools

import click

from converter import api
from converter.cli.options import PATH, console, emit, out_option, output_options
from converter.pipelines.report import print_inspect


@click.command()
@click.argument("path", type=PATH)
@out_option("Write the summary as JSON here.", required=False)
@click.option("--layers", is_flag=True, help="List every network layer recorded for an engine.")
@output_options
def inspect(path, out, layers, as_json, quiet):
    """Summarise an ONNX file or a TensorRT engine.

    \b
    Examples:
      trtforge inspect model.onnx
      trtforge inspect model.engine --layers
    """
    info = api.inspect(path, out=out)
    emit(info, as_json, quiet, functools.partial(print_inspect, console=console, layers=layers))
