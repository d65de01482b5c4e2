"""`trtforge quantize`: calibrated Q/DQ for TensorRT (a thin shell over converter.pipelines.quantize.quantize)."""

from __future__ import annotations

from pathlib import Path

import click

from calibration.data import IMAGE_NORMS
from converter.pipelines.quantize import METHODS
from converter.pipelines.quantize import quantize as run_quantize
from converter.pipelines.report import new_report, to_json, write_report
from passes.quant.quantize import MODES


def _print_summary(report: dict) -> None:
    from converter.cli.options import console

    acc = report.get("accuracy") or {}
    qdq = report["qdq"]
    console.print(
        f"[bold]{report['mode']}[/bold] {report['model']} -> {report['output']}: "
        f"{qdq['qdq_pairs']} activation Q/DQ pairs, {qdq['dequantize_linear']} DequantizeLinear, "
        f"method {report.get('method')}, SmoothQuant alpha {report.get('smoothquant_alpha')}"
    )
    if acc:
        console.print(
            f"accuracy on {acc['data']} ({acc['samples']} samples): mean cosine {acc['mean_cosine']:.5f}, "
            f"min {acc['min_cosine']:.5f}, top-1 agreement {acc['top1_agreement']:.3f}"
        )
    mixed = report.get("mixed_precision")
    if mixed:
        console.print(
            f"budget {mixed['max_drop']}: {mixed['high_precision_layers']} layers kept in high precision, "
            f"{mixed['quantized_layers']} quantized; met={mixed['met']} ({mixed['evaluations']} evaluations, "
            f"{mixed['seconds']} s)"
        )
    size = report["onnx_bytes"]
    console.print(f"ONNX {size['before'] / 1e6:.1f} MB -> {size['after'] / 1e6:.1f} MB")


@click.command()
@click.argument("model")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output .onnx file.")
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="int8",
    show_default=True,
    help="int8/fp8: W8A8 with calibrated activations; int4-wo/int2-wo: weight-only, block-wise.",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="Calibration data: folder of .npz/.npy, images, or .txt (one sentence a line). "
    "Default: the model's own real sample data (demos).",
)
@click.option(
    "--calib-method",
    type=click.Choice(METHODS),
    default="auto",
    show_default=True,
    help="Activation range observer; auto scores each on a calibration subset.",
)
@click.option(
    "--smoothquant",
    default="auto",
    show_default=True,
    metavar="auto|off|ALPHA",
    help="SmoothQuant migration strength for MatMuls (auto: searched on a calibration subset).",
)
@click.option(
    "--budget",
    "--max-cosine-drop",
    "budget",
    type=float,
    help="Keep the most sensitive layers in high precision until 1 - mean cosine <= this, e.g. 0.005.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16"]),
    default="fp32",
    show_default=True,
    help="Precision of what stays unquantized (fp16: int8 GEMMs + fp16 elsewhere, the smallest engine).",
)
@click.option("--validate", type=click.Path(path_type=Path), help="Validation data (same formats as --calib).")
@click.option("--exclude-op", multiple=True, metavar="OP", help="Op type kept in high precision (repeatable).")
@click.option("--exclude-name", multiple=True, metavar="PATTERN", help="Node name pattern kept in high precision.")
@click.option(
    "--block-size", type=click.Choice(["32", "64", "128"]), help="Weight-only block size (int4 128, int2 64)."
)
@click.option("--batch-size", type=int, default=16, show_default=True, help="Calibration batch size.")
@click.option("--max-length", type=int, default=128, show_default=True, help="Token limit for text calibration.")
@click.option("--tokenizer", type=click.Path(path_type=Path), help="Tokenizer folder for text (default: the demo's).")
@click.option("--image-norm", type=click.Choice(sorted(IMAGE_NORMS)), default="imagenet", show_default=True)
@click.option(
    "--cache-dir", type=click.Path(path_type=Path), help="Calibration cache folder (a rerun skips collection)."
)
@click.option("--calib-table", type=click.Path(path_type=Path), help="Also write a TensorRT calibration table (int8).")
@click.option("--save-report", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def quantize(
    model,
    out,
    mode,
    calib,
    calib_method,
    smoothquant,
    budget,
    precision,
    validate,
    exclude_op,
    exclude_name,
    block_size,
    batch_size,
    max_length,
    tokenizer,
    image_norm,
    cache_dir,
    calib_table,
    save_report,
    quiet,
    as_json,
):
    """Quantize MODEL (.onnx, or a demo name: exported and folded first) with calibrated Q/DQ.

    \b
    Examples:
      trtforge quantize minilm -o minilm.int8.onnx
      trtforge quantize model.onnx -o model.int8.onnx --calib calib_npz/ --calib-method mse
      trtforge quantize model.onnx -o q.onnx --calib sentences.txt --tokenizer tok/ --budget 0.005
      trtforge quantize efficientnet-lite0 -o effnet.fp8.onnx --mode fp8
      trtforge quantize model.onnx -o model.w4.onnx --mode int4-wo --block-size 64
    """
    from converter.cli.options import err_console

    log = (lambda msg: None) if (quiet or as_json) else (lambda msg: err_console.print(f"[dim]{msg}[/dim]"))
    result = run_quantize(
        model,
        out,
        mode,
        calib,
        calib_method,
        smoothquant,
        budget,
        validate,
        list(exclude_op),
        list(exclude_name),
        int(block_size) if block_size else None,
        batch_size,
        max_length,
        tokenizer,
        image_norm,
        cache_dir,
        calib_table,
        precision=precision,
        log=log,
    )
    report = {**new_report("quantize"), **result.report, "output": str(result.path)}
    if save_report:
        write_report(report, save_report)
    if as_json:
        click.echo(to_json(report))
    elif not quiet:
        _print_summary(report)
