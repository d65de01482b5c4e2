"""`trtforge drop-blocks`: parse the flags, call converter.api.drop_blocks, print its report.

The use case lives in converter/pipelines/drop_blocks.py; the selection flags are the
fields of passes/blocks/config.py's DropConfig (same names, same defaults).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import click
from rich.markup import escape

from converter import api
from converter.cli.options import (
    COSINE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE_INT,
    console,
    emit,
    err_console,
    output_options,
    shapes_option,
    target_gpu_option,
    trust_option,
)
from converter.core.profiles import parse_profiles
from converter.pipelines.block_report import print_summary
from converter.pipelines.export import EXPORTERS
from passes.blocks.config import GRANULARITIES, METHODS, METRICS, SCORES, DropConfig

DEFAULT = DropConfig()
CONFIG_FIELDS = {f.name for f in fields(DropConfig)}


def _config(flags: dict[str, Any]) -> DropConfig:
    """The DropConfig the flags name (popped from `flags`); --method attention-only is oneshot over attention."""
    options = {name: flags.pop(name) for name in CONFIG_FIELDS}
    if options["method"] == "attention-only":
        options["method"], options["granularity"] = "oneshot", "attention"
    return DropConfig(**options)


@click.command("drop-blocks")
@click.argument("model")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Pruned .onnx to write.")
@click.option(
    "--method",
    type=click.Choice([*reversed(METHODS), "attention-only"]),
    default=DEFAULT.method,
    show_default=True,
    help="iterative: re-scored search over blocks and sub-layers (FinerCut + beam); oneshot: rank once (ShortGPT); "
    "attention-only: oneshot over attention sub-layers by BI.",
)
@click.option(
    "--granularity",
    type=click.Choice(GRANULARITIES),
    help="Units to choose from (default: block for oneshot, all = blocks and sub-layers for iterative).",
)
@click.option("--score", type=click.Choice(SCORES), default=DEFAULT.score, show_default=True, help="oneshot ranking.")
@click.option("--remove", type=POSITIVE_INT, help="Number of units to remove.")
@click.option("--target-params", type=FRACTION, help="Fraction of parameters to remove, e.g. 0.2.")
@click.option("--target-flops", type=FRACTION, help="Fraction of estimated FLOPs to remove.")
@click.option(
    "--max-ppl-increase", type=NON_NEGATIVE, help="Budget: relative perplexity increase on validation data (0.1 = 10%)."
)
@click.option("--min-cosine", type=COSINE, help="Budget: mean output cosine to the original on validation data.")
@click.option("--metric", type=click.Choice(METRICS), default=DEFAULT.metric, show_default=True)
@click.option(
    "--beam",
    type=POSITIVE_INT,
    default=DEFAULT.beam,
    show_default=True,
    help="iterative: partial sets kept per step (1 = greedy).",
)
@click.option(
    "--refine/--no-refine",
    default=DEFAULT.refine,
    show_default=True,
    help="iterative: exchange removed units for kept ones while that lowers the calibration damage.",
)
@click.option("--drop", "drop_names", help="Remove exactly these units, e.g. block3,attn5 (no search).")
@click.option("--exporter", type=click.Choice(EXPORTERS), default="torchscript", show_default=True)
@click.option("--load-inputs", "calib_inputs", type=click.Path(path_type=Path), help="Calibration inputs (.npz).")
@click.option("--validation-inputs", "val_inputs", type=click.Path(path_type=Path), help="Validation inputs (.npz).")
@click.option("--calibration-samples", "calib_samples", type=POSITIVE_INT, default=64, show_default=True)
@click.option("--validation-samples", "val_samples", type=POSITIVE_INT, default=128, show_default=True)
@click.option("--batch-size", type=POSITIVE_INT, default=16, show_default=True)
@click.option(
    "--report-dir", type=click.Path(path_type=Path), help="Where report.json and scores.png go (default OUT.drop/)."
)
@click.option("--build/--no-build", default=True, show_default=True, help="Build TensorRT-RTX engines before/after.")
@shapes_option
@target_gpu_option
@trust_option
@output_options
def drop_blocks(model, out, drop_names, shapes, target_gpus, as_json, quiet, **flags):
    """Remove redundant transformer blocks / sub-layers from MODEL (.onnx, demo or module:factory).

    \b
    Examples:
      trtforge drop-blocks minilm -o minilm.pruned.onnx --min-cosine 0.95
      trtforge drop-blocks decoder-lm -o lm.pruned.onnx --max-ppl-increase 0.1
      trtforge drop-blocks decoder-lm -o lm.pruned.onnx --method oneshot --remove 2      # ShortGPT
      trtforge drop-blocks minilm -o m.onnx --method attention-only --remove 3
      trtforge drop-blocks lm.onnx -o p.onnx --target-params 0.2 --load-inputs calib.npz
      trtforge drop-blocks lm.onnx -o p.onnx --drop block3,attn5
    """
    config = _config(flags)
    drop = [n.strip() for n in drop_names.split(",") if n.strip()] if drop_names else None
    if not drop:
        try:
            config.check(is_lm=True)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
    log = (
        (lambda m: None)
        if (quiet or as_json)
        else (lambda m: err_console.print(f"[dim]{escape(m)}[/dim]", highlight=False))
    )
    result = api.drop_blocks(
        model,
        out,
        config=config,
        drop=drop,
        shapes=parse_profiles(shapes),
        target_gpus=list(target_gpus),
        log=log,
        **flags,
    )
    emit(result.report, as_json, quiet, lambda report: print_summary(report, console))
