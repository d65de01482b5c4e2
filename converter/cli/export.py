"""`trtforge export`: a torch MODEL -> ONNX (converter.api.export)."""

from __future__ import annotations

import click
from rich.markup import escape

from converter import api
from converter.cli.options import (
    choice_option,
    console,
    emit,
    onnx_out_option,
    output_options,
    shapes_option,
    task_option,
)
from converter.core.errors import UsageError
from converter.core.profiles import parse_profiles
from converter.pipelines.export import EXPORTERS


def parse_dtypes(items: tuple[str, ...]) -> dict[str, str]:
    """'--dtypes ids:int64' (repeatable) -> {'ids': 'int64'}; anything else is a usage error."""
    parsed = {}
    for item in items:
        name, sep, dtype = item.partition(":")
        if not sep or not name or not dtype:
            raise UsageError(f"--dtypes '{item}': expected NAME:DTYPE, e.g. input_ids:int64")
        parsed[name] = dtype
    return parsed


@click.command()
@click.argument("model")
@onnx_out_option
@choice_option("--exporter", EXPORTERS, "torchscript", None)
@click.option("--opset", type=int, help="ONNX opset (default 17 torchscript, 18 dynamo).")
@click.option(
    "--static",
    is_flag=True,
    help="No dynamic axes: inputs fixed at --shapes, else batch 1 at the model's usual size (default: dynamic batch, and sequence for text).",
)
@click.option("--dtypes", multiple=True, metavar="NAME:DTYPE", help="Input dtype for module:factory specs.")
@click.option(
    "--output-names",
    metavar="A,B",
    help="Names of the graph outputs, in order (module:factory default: output, or output_0, output_1, ...).",
)
@task_option(
    "text-generation-with-past: a decoder LM with its KV cache (past_key_values.* in, present.* out), "
    "for a demo with a cache form or a transformers causal LM."
)
@shapes_option
@output_options
def export(model, out, exporter, opset, static, dtypes, output_names, task, shapes, as_json, quiet):
    """Export a torch MODEL (demo name or module:factory) to ONNX.

    \b
    Examples:
      trtforge export minilm -o minilm.onnx
      trtforge export efficientnet-lite0 -o effnet.onnx --exporter dynamo
      trtforge export decoder-lm --task text-generation-with-past -o lm/model.onnx
      trtforge export mypkg.models:make_net --shapes image:1x3x224x224 -o net.onnx
      trtforge export scripts.llama_spec:tiny --shapes input_ids:1x8/1x64/1x128 --dtypes input_ids:int64 --output-names logits -o llama/model.onnx
    """
    result = api.export(
        model,
        out,
        exporter=exporter,
        opset=opset,
        shapes=parse_profiles(shapes),
        dtypes=parse_dtypes(dtypes),
        dynamic=not static,
        output_names=[n.strip() for n in output_names.split(",")] if output_names else None,
        task=task,
    )

    def print_export(d: dict) -> None:
        console.print(
            f"exported {escape(model)} -> {escape(d['path'])} ({d['nodes']} nodes, opset {d['opset']}, {d['exporter']}, {d['seconds']} s)"
        )

    emit(result.report, as_json, quiet, print_export)
