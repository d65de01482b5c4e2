"""The quantize API: ONNX (or a demo) + calibration data -> Q/DQ ONNX, with the choices made and their cost.

Steps: load the model; read calibration data (a folder, or the model's own real
sample data, never random noise); for W8A8 modes pick the SmoothQuant alpha and the
calibration method that score best on a calibration subset (`auto`); run the
`smoothquant` and `quantize` passes (passes/) through the pass manager, with mixed
precision when a budget is given; measure the result on validation data (or the
calibration subset) and write the model, the report and optionally a TensorRT
calibration table.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from calibration.cache import write_trt_table
from calibration.data import CalibrationData, from_feeds
from calibration.readers import load_calibration
from calibration.sensitivity import Evaluator, Metric, run_outputs, sample_cosines, top1_agreement
from converter.core.errors import InvalidInputError
from converter.core.metadata import SAMPLE_DATA, TASK, metadata_value
from converter.core.model_io import load_model, opset_of, save_model
from converter.demos.models import DEMOS
from passes.base import PassContext
from passes.manager import PassSpec, run_passes
from passes.quant.quantize import MODES, WEIGHT_ONLY

METHODS = ("auto", "minmax", "percentile", "entropy", "mse")
ALPHAS = (0.6, 0.8, 0.9, 1.0)
Log = Callable[[str], None]


@dataclass
class QuantizeResult:
    path: Path
    report: dict[str, Any] = field(default_factory=dict)


def _source_model(model: str, work: Path, log: Log) -> Path:
    """An .onnx path as is; a demo name is exported and folded first."""
    if Path(model).exists() or model.endswith(".onnx"):
        return Path(model)
    if model not in DEMOS:
        raise InvalidInputError(f"'{model}': no such file, and not a demo ({', '.join(DEMOS)})")
    from converter import api

    log(f"exporting {model} and running the fold passes")
    api.export(model, work / "model.onnx")
    api.optimize(work / "model.onnx", work / "model.opt.onnx", ["fold"])
    return work / "model.opt.onnx"


def sample_calibration(model: onnx.ModelProto, batches: int, batch_size: int, skip: int = 0) -> CalibrationData | None:
    """The model's own real sample data (ONNX metadata 'trtforge.sample_data' naming a demo), or None."""
    from converter.pipelines.model_ref import feeds_for_source

    source = metadata_value(model, SAMPLE_DATA)
    feeds = feeds_for_source(source, skip + batches, batch_size) if source else None
    return from_feeds(feeds[skip:], source) if feeds else None


def _subset(data: CalibrationData, samples: int) -> list[dict[str, np.ndarray]]:
    feeds, rows = [], 0
    for batch in data:
        feeds.append(batch)
        rows += len(next(iter(batch.values())))
        if rows >= samples:
            break
    return feeds


def _passes(mode: str, alpha: float | None, method: str, options: dict[str, Any]) -> list[PassSpec]:
    specs = [PassSpec("smoothquant", {"alpha": alpha, "cache_dir": options.get("cache_dir")})] if alpha else []
    return specs + [PassSpec("quantize", {"mode": mode, "method": method, **options})]


def _search(model, mode, data, evaluator, alphas, methods, options, log) -> tuple[float | None, str, list[dict]]:
    """Score every (alpha, method) on the calibration subset; the best pair and the table."""
    table = []
    subset = from_feeds(evaluator.feeds, f"{data.source} (subset)")
    for alpha in alphas:
        for method in methods:
            quick = {**options, "cache_dir": None, "max_cosine_drop": None}
            candidate, _ = run_passes(
                model, _passes(mode, alpha, method, quick), PassContext(opset_of(model), calibration=subset)
            )
            score = evaluator.score(candidate)
            table.append({"smoothquant_alpha": alpha, "method": method, **score.to_dict()})
            log(f"alpha {alpha} method {method}: mean cosine {score.mean_cosine:.5f}")
    best = min(table, key=lambda row: row["drop"])
    return best["smoothquant_alpha"], best["method"], table


def quantize(
    model: str | Path,
    out: str | Path,
    mode: str = "int8",
    calib: str | Path | CalibrationData | None = None,
    method: str = "auto",
    smoothquant: str | float | None = "auto",
    max_cosine_drop: float | None = None,
    validation: str | Path | CalibrationData | None = None,
    exclude_ops: list[str] | None = None,
    exclude_names: list[str] | None = None,
    block_size: int | None = None,
    batch_size: int = 16,
    max_length: int = 128,
    tokenizer: str | Path | None = None,
    image_norm: str = "imagenet",
    cache_dir: str | Path | None = None,
    calib_table: str | Path | None = None,
    search_samples: int = 64,
    metric: Metric | None = None,
    precision: str = "fp32",
    log: Log = lambda _msg: None,
) -> QuantizeResult:
    """Quantize `model` (see module docstring); returns the output path and the report."""
    if mode not in MODES:
        raise InvalidInputError(f"--mode '{mode}' not in {MODES}")
    if method not in METHODS:
        raise InvalidInputError(f"--calib-method '{method}' not in {METHODS}")
    if precision not in ("fp32", "fp16", "bf16"):
        raise InvalidInputError(f"--precision '{precision}' not in fp32, fp16, bf16")
    with tempfile.TemporaryDirectory(prefix="trtforge-quantize-") as work:
        source_path = _source_model(str(model), Path(work), log)
        source = load_model(source_path)
        data = _data(calib, source, batch_size, max_length, tokenizer, image_norm, skip=0)
        if data is None and mode not in WEIGHT_ONLY:
            raise InvalidInputError(
                f"{source_path}: {mode} needs calibration data: give --calib DIR (.npz/.npy, images or .txt)"
            )
        options = {
            "exclude_ops": list(exclude_ops or []),
            "exclude_names": list(exclude_names or []),
            "cache_dir": str(cache_dir) if cache_dir else None,
        }
        if block_size:
            options["block_size"] = block_size
        report: dict[str, Any] = {"model": str(model), "mode": mode, "calibration": None}
        task = metadata_value(source, TASK)
        metric = metric or (classification_drop if task == "classification" else None)
        evaluator = None
        alpha, chosen, start = None, ("minmax" if method == "auto" else method), time.perf_counter()
        if data is not None and mode not in WEIGHT_ONLY:
            alphas = _alphas(smoothquant, source)
            methods = ["minmax", "percentile", "entropy", "mse"] if method == "auto" else [method]
            if len(alphas) * len(methods) > 1:
                evaluator = Evaluator(source, _subset(data, search_samples), metric)
                alpha, chosen, table = _search(source, mode, data, evaluator, alphas, methods, options, log)
                report["search"] = {
                    "table": table,
                    "seconds": round(time.perf_counter() - start, 2),
                    "samples": sum(len(next(iter(f.values()))) for f in evaluator.feeds),
                }
            else:
                alpha = alphas[0]
        if max_cosine_drop is not None:
            options.update(max_cosine_drop=float(max_cosine_drop), sensitivity_samples=search_samples)
        log(f"quantizing ({mode}, method {chosen}, smoothquant alpha {alpha})")
        ctx = PassContext(opset_of(source), calibration=data)
        start = time.perf_counter()
        specs = _passes(mode, alpha, chosen, options)
        if precision != "fp32":  # what stays unquantized runs in fp16/bf16 (strongly typed engines)
            specs.append(PassSpec("precision", {"target": precision}))
        quantized, records = run_passes(source, specs, ctx)
        report.update(
            precision=precision,
            method=chosen,
            smoothquant_alpha=alpha,
            seconds=round(time.perf_counter() - start, 2),
            calibration={"source": data.source, "samples": data.count} if data is not None else None,
            passes=[r.to_dict() for r in records],
            qdq=count_qdq(quantized),
            onnx_bytes={"before": source.ByteSize(), "after": quantized.ByteSize()},
        )
        mixed = _mixed_report(records, options)
        if mixed:
            report["mixed_precision"] = mixed
        path = save_model(quantized, out)
        val = _data(validation, source, batch_size, max_length, tokenizer, image_norm, skip=0) if validation else None
        subset = evaluator.feeds if evaluator else (_subset(data, search_samples) if data is not None else None)
        report["accuracy"] = measure(
            source, quantized, list(val) if val is not None else subset, "validation" if val else "calibration subset"
        )
        if calib_table and mode == "int8":
            report["calib_table"] = str(write_trt_table(calib_table, qdq_ranges(quantized)))
    return QuantizeResult(path, report)


def _alphas(smoothquant: str | float | None, model: onnx.ModelProto) -> list[float | None]:
    if smoothquant in (None, "off", "none", 0, "0"):
        return [None]
    if smoothquant == "auto":
        has_matmul = any(n.op_type == "MatMul" for n in model.graph.node)
        return [None, *ALPHAS] if has_matmul else [None]
    try:
        return [float(smoothquant)]
    except ValueError as exc:
        raise InvalidInputError(f"--smoothquant '{smoothquant}': give auto, off or an alpha in [0, 1]") from exc


def _data(calib, model, batch_size, max_length, tokenizer, image_norm, skip) -> CalibrationData | None:
    if isinstance(calib, CalibrationData):
        return calib.check(model)
    if calib:
        return load_calibration(calib, model, batch_size, tokenizer, max_length, image_norm).check(model)
    return sample_calibration(model, 8, batch_size, skip)


def _mixed_report(records, options) -> dict[str, Any] | None:
    if options.get("max_cosine_drop") is None:
        return None
    from passes.quant import quantize as quantize_pass

    mixed = quantize_pass.LAST_MIXED
    return mixed.to_dict() if mixed is not None else None


def classification_drop(candidate, reference) -> float:
    """Search metric for classifiers: top-1 disagreement plus 1 - mean cosine of the logits."""
    return (1.0 - top1_agreement(candidate, reference)) + 1.0 - float(sample_cosines(candidate, reference).mean())


def calibration_for_convert(
    passes: list[PassSpec], model: onnx.ModelProto, spec, skip_batches: int, batch_size: int, batches: int = 16
) -> CalibrationData | None:
    """Real calibration data for a convert recipe with quantize/smoothquant passes, or None.

    The spec's (or the ONNX metadata's) real sample data, skipping the batches the
    verifier uses, so accuracy is not measured on the calibration samples.
    """
    if not any(p.name in ("quantize", "smoothquant") for p in passes):
        return None
    if spec is not None and spec.sample_source != "synthetic":
        feeds = spec.sample_feeds(skip_batches + batches, batch_size)[skip_batches:]
        return from_feeds(feeds, spec.sample_source)
    return sample_calibration(model, batches, batch_size, skip_batches)


def count_qdq(model: onnx.ModelProto) -> dict[str, int]:
    ops = [n.op_type for n in model.graph.node]
    q, dq = ops.count("QuantizeLinear"), ops.count("DequantizeLinear")
    return {"quantize_linear": q, "dequantize_linear": dq, "qdq_pairs": q, "weight_only_dq": dq - q}


def qdq_ranges(model: onnx.ModelProto) -> dict[str, float]:
    """amax (scale * 127) of each activation QuantizeLinear, keyed by the tensor it quantizes."""
    inits = {i.name: i for i in model.graph.initializer}
    ranges = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]])
            if scale.size == 1:
                ranges[node.input[0]] = float(scale.ravel()[0]) * 127.0
    return ranges


def measure(reference, candidate, feeds, where: str) -> dict[str, Any] | None:
    """Per-sample cosine (mean/min) and top-1 agreement of `candidate` vs `reference` on `feeds`."""
    if not feeds:
        return None
    ref, cand = run_outputs(reference, feeds), run_outputs(candidate, feeds)
    cos = sample_cosines(cand, ref)
    return {
        "data": where,
        "samples": int(len(cos)),
        "mean_cosine": round(float(cos.mean()), 6),
        "min_cosine": round(float(cos.min()), 6),
        "top1_agreement": round(top1_agreement(cand, ref), 4),
    }
