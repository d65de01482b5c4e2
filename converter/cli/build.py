"""`trtforge build`: ONNX -> TensorRT engine + sidecar (converter.api.build)."""

from __future__ import annotations

import click
from rich.markup import escape

from converter import api
from converter.cli.options import (
    PATH,
    backend_option,
    cache_options,
    choice_option,
    console,
    emit,
    out_option,
    output_options,
    precision_flags,
    profile_option,
    progress,
    shapes_option,
    target_gpu_option,
    trtexec_shapes_options,
)
from converter.core.profiles import parse_profile_groups, parse_profiles, trtexec_shapes
from converter.pipelines.recipe import PRECISIONS

PRECISION_HELP = (
    "Recorded in the sidecar (default: the float type of the graph's weights); the graph's types decide "
    "(run `optimize --precision` first)."
)


def print_build(d: dict) -> None:
    console.print(
        f"built {escape(d['engine'])} ({d['engine_bytes'] / 1e6:.1f} MB) with {d['backend']} {d['backend_version']} "
        f"for {', '.join(d.get('targets') or [])} in {d['build_seconds']} s; "
        f"{d['network']['num_layers']} network layers"
    )


@click.command()
@click.argument("onnx_file", type=PATH)
@out_option("Output engine file (trtexec: --save-engine).", aliases=("--save-engine",))
@backend_option()
@target_gpu_option
@click.option("--timing-cache", type=PATH, help="Timing cache file (full TensorRT).")
@choice_option("--precision", PRECISIONS, None, PRECISION_HELP)
@click.option("--verbose", is_flag=True, help="Print the builder's log.")
@click.option(
    "--workspace",
    "workspace_mb",
    type=click.IntRange(1, 1 << 22),
    metavar="MiB",
    help="Builder workspace limit (trtexec: --memPoolSize=workspace:N).",
)
@click.option(
    "--builder-optimization-level",
    type=click.IntRange(0, 5),
    metavar="0-5",
    help="Builder optimization level (trtexec: --builderOptimizationLevel).",
)
@click.option(
    "--strip-weights",
    is_flag=True,
    help="An engine without its weights, refit from the ONNX on the target (needs a GPU to build).",
)
@click.option("--refit", "refittable", is_flag=True, help="A refittable engine (needs a GPU to build).")
@click.option("--version-compatible", is_flag=True, help="Full TensorRT: runs on later TensorRT versions.")
@click.option("--hardware-compatible", is_flag=True, help="Full TensorRT: one engine for Ampere and later GPUs.")
@shapes_option
@trtexec_shapes_options
@cache_options
@profile_option
@output_options
@precision_flags
def build(onnx_file, out, shapes, min_shapes, opt_shapes, max_shapes, profiles, as_json, quiet, **options):
    """Build a TensorRT engine from ONNX_FILE (writes OUT and OUT.json).

    \b
    Examples:
      trtforge build model.onnx -o model.engine --shapes image:1x3x224x224/4x3x224x224/16x3x224x224
      trtforge build model.onnx -o model.engine --backend tensorrt-rtx --target-gpu sm89 --target-gpu sm120
      trtforge build lm.onnx -o lm.engine --profile input_ids:1x1/1x32/4x64 --profile input_ids:1x1/1x1/16x1
      trtforge build model.onnx --save-engine m.engine --min-shapes image:1x3x224x224 --opt-shapes image:4x3x224x224 --max-shapes image:8x3x224x224
    """
    items = [*shapes, *trtexec_shapes(min_shapes, opt_shapes, max_shapes)]
    with progress("building the engine...", quiet or as_json) as log:
        engine = api.build(
            onnx_file, out, shapes=parse_profiles(items), profiles=parse_profile_groups(profiles), log=log, **options
        )
    emit(engine.report, as_json, quiet, print_build)
