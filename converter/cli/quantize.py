"""`trtforge quantize`: calibrated Q/DQ for TensorRT (converter.api.quantize)."""

from __future__ import annotations

import click
from rich.markup import escape

from calibration.data import IMAGE_NORMS
from converter import api
from converter.cli.options import (
    PATH,
    POSITIVE_INT,
    FiniteFloat,
    batch_size_option,
    choice_option,
    console,
    emit,
    onnx_out_option,
    output_options,
    progress,
    shapes_option,
)
from converter.core.profiles import parse_profiles
from converter.pipelines.quantize import ALGORITHM_CHOICES, HIGH_PRECISIONS, METHODS
from passes.quant.quantize import MODES

ALGORITHM_HELP = (
    "int4-wo rounding: rtn (round to nearest, no data), awq (activation-aware scales and clipping), "
    "gptq (Hessian error feedback), awq-gptq (AWQ's scales, GPTQ's rounding), "
    "auto (the best of them on the calibration subset)."
)
MODE_HELP = "int8/fp8: W8A8 with calibrated activations; int4-wo/int2-wo: weight-only, block-wise."
CALIB_HELP = (
    "Calibration data: a folder of .npz/.npy, images or .txt (one sentence a line), or one .npz/.npy/.txt file. "
    "Default: the model's own real sample data (demos)."
)
METHOD_HELP = "Activation range observer; auto scores each on a calibration subset."
SMOOTHQUANT_HELP = "SmoothQuant migration strength for MatMuls (auto: searched on a calibration subset)."
BUDGET_HELP = "Keep the most sensitive layers in high precision until 1 - mean cosine <= this, e.g. 0.005."
PRECISION_HELP = "Precision of what stays unquantized (fp16: int8 GEMMs + fp16 elsewhere, the smallest engine)."


def print_quantize(report: dict) -> None:
    acc = report.get("accuracy") or {}
    qdq = report["qdq"]
    console.print(
        f"[bold]{report['mode']}[/bold] {escape(report['model'])} -> {escape(report['output'])}: "
        f"{qdq['qdq_pairs']} activation Q/DQ pairs, {qdq['dequantize_linear']} DequantizeLinear, "
        f"method {report.get('method')}, SmoothQuant alpha {report.get('smoothquant_alpha')}"
    )
    if acc:
        console.print(
            f"accuracy on {escape(str(acc['data']))} ({acc['samples']} samples): mean cosine {acc['mean_cosine']:.5f}, "
            f"min {acc['min_cosine']:.5f}, top-1 agreement {acc['top1_agreement']:.3f}"
        )
    mixed = report.get("mixed_precision")
    if mixed:
        console.print(
            f"budget {mixed['max_drop']}: {mixed['high_precision_layers']} layers kept in "
            f"{mixed.get('kept_as', 'high precision')}, "
            f"{mixed['quantized_layers']} quantized; met={mixed['met']} ({mixed['evaluations']} evaluations, "
            f"{mixed['seconds']} s)"
        )
    for table in report.get("embeddings") or []:
        block = f", block {table['block']}" if table["block"] else ", per row"
        console.print(
            f"embedding {escape(table['table'])} {table['shape'][0]}x{table['shape'][1]}: int{table['bits']}{block}, "
            f"relative error {table['error']:.4f}",
            highlight=False,
        )
    size = report["weight_bytes"]
    console.print(f"weights {size['before'] / 1e6:.1f} MB -> {size['after'] / 1e6:.1f} MB")


@click.command()
@click.argument("model")
@onnx_out_option
@choice_option("--mode", MODES, "int8", MODE_HELP)
@click.option("--calib", type=PATH, help=CALIB_HELP)
@choice_option("--calib-method", METHODS, "auto", METHOD_HELP, "method")
@click.option("--smoothquant", default="auto", show_default=True, metavar="auto|off|ALPHA", help=SMOOTHQUANT_HELP)
@click.option("--budget", "--max-cosine-drop", "max_cosine_drop", type=FiniteFloat(0.0, 2.0), help=BUDGET_HELP)
@click.option(
    "--keep-bits",
    type=click.Choice(["8", "16"]),
    default="16",
    show_default=True,
    help="With --budget in int4-wo/int2-wo: the layers kept out of 4/2 bits stay float (16) or become int8 weight-only (8).",
)
@choice_option("--precision", HIGH_PRECISIONS, "fp32", PRECISION_HELP)
@click.option("--validate", "validation", type=PATH, help="Validation data (same formats as --calib).")
@click.option(
    "--exclude-op", "exclude_ops", multiple=True, metavar="OP", help="Op type kept in high precision (repeatable)."
)
@click.option(
    "--exclude-name",
    "exclude_names",
    multiple=True,
    metavar="PATTERN",
    help="Node name pattern kept in high precision.",
)
@choice_option("--block-size", ["32", "64", "128"], None, "Weight-only block size (int4 128, int2 64).")
@choice_option("--algorithm", ALGORITHM_CHOICES, "rtn", ALGORITHM_HELP)
@click.option(
    "--embeddings",
    type=click.Choice(["int8", "int4"]),
    help="Also store embedding tables (Gather data) in 8 bits per row or 4 bits per block (--block-size).",
)
@click.option(
    "--act-order/--no-act-order",
    default=True,
    show_default=True,
    help="gptq, awq-gptq: round input rows in order of decreasing Hessian diagonal (free at inference).",
)
@batch_size_option("Calibration batch size.")
@click.option(
    "--search-samples",
    type=POSITIVE_INT,
    default=64,
    show_default=True,
    help="Calibration samples the auto method/SmoothQuant search and the --budget sensitivity run on.",
)
@click.option(
    "--max-length", type=POSITIVE_INT, default=128, show_default=True, help="Token limit for text calibration."
)
@click.option("--tokenizer", type=PATH, help="Tokenizer folder for text (default: the demo's).")
@choice_option("--image-norm", sorted(IMAGE_NORMS), "imagenet", None)
@click.option("--cache-dir", type=PATH, help="Calibration cache folder (a rerun skips collection).")
@click.option("--calib-table", type=PATH, help="Also write a TensorRT calibration table (int8).")
@click.option("--save-report", "report_path", type=PATH, help="Write the JSON report here.")
@shapes_option
@output_options(what="report")
def quantize(model, out, block_size, keep_bits, embeddings, shapes, as_json, quiet, **options):
    """Quantize MODEL (.onnx, or a torch model: a demo or module:factory, exported and folded first) with calibrated Q/DQ.

    \b
    Examples:
      trtforge quantize minilm -o minilm.int8.onnx
      trtforge quantize model.onnx -o model.int8.onnx --calib calib_npz/ --calib-method mse
      trtforge quantize minilm.onnx -o q.onnx --calib sentences.txt --tokenizer tok/ --budget 0.005
      trtforge quantize efficientnet-lite0 -o effnet.fp8.onnx --mode fp8
      trtforge quantize model.onnx -o model.w4.onnx --mode int4-wo --block-size 64
      trtforge quantize decoder-lm -o lm.w4.onnx --mode int4-wo --algorithm gptq
      trtforge quantize minilm -o minilm.w4e8.onnx --mode int4-wo --embeddings int8
      trtforge quantize mypkg.models:make_net --shapes image:1x3x224x224 -o net.int8.onnx --calib calib_npz/
    """
    with progress("quantizing...", quiet or as_json) as log:
        result = api.quantize(
            model,
            out,
            block_size=int(block_size) if block_size else None,
            keep_bits=int(keep_bits),
            embeddings=int(embeddings[3:]) if embeddings else None,
            shapes={name: prof.opt for name, prof in parse_profiles(shapes).items()},
            log=log,
            **options,
        )
    emit(result.report, as_json, quiet, print_quantize)
