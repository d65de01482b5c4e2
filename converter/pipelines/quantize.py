"""The quantize use case: ONNX (or a torch model) + calibration data -> Q/DQ ONNX, with the choices made and their cost.

Steps: resolve the model (a torch model, demo or `module:factory`, is exported and
folded first); read calibration data (converter/pipelines/calibration_source.py: a
folder, or the model's own real sample data, never random noise); for W8A8 modes
pick the SmoothQuant alpha and the calibration method that score best on a
calibration subset (`auto`); run the `smoothquant` and `quantize` passes (passes/)
through the pass manager, with mixed precision when a budget is given; measure the
result on validation data (or the calibration subset) and write the model, the
report and optionally a TensorRT calibration table.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from calibration.cache import write_trt_table
from calibration.data import CalibrationData, first_samples, from_feeds
from calibration.sensitivity import Evaluator, Metric, run_outputs, sample_cosines, top1_agreement
from converter.core.errors import InvalidInputError
from converter.core.external_data import to_array
from converter.core.metadata import TASK, metadata_value
from converter.core.model_io import load_model, opset_of, save_model, weights_nbytes
from converter.core.outputs import Outputs
from converter.pipelines import calibration_source
from converter.pipelines.export import export_model
from converter.pipelines.model_ref import ModelRef, resolve_model
from converter.pipelines.report import new_report, write_report
from passes.base import PassContext
from passes.manager import run_passes
from passes.quant.quantize import ALGORITHMS, MODES, WEIGHT_ONLY
from passes.registry import PassSpec

METHODS = ("auto", "minmax", "percentile", "entropy", "mse")
ALGORITHM_CHOICES = (*ALGORITHMS, "auto")
ALPHAS = (0.6, 0.8, 0.9, 1.0)
HIGH_PRECISIONS = ("fp32", "fp16", "bf16")
Log = Callable[[str], None]
Data = str | Path | CalibrationData | None


def _quiet(_msg: str) -> None:
    pass


@dataclass
class QuantizeOptions:
    """What to quantize how (the CLI's flags; every field is also a keyword of converter.api.quantize)."""

    mode: str = "int8"  # see passes.quant.quantize.MODES
    calib: Data = None  # a folder/.txt, CalibrationData, or None: the model's own sample data
    method: str = "auto"  # activation range observer (METHODS); auto: scored on a calibration subset
    smoothquant: str | float | None = "auto"  # auto | off | an alpha
    max_cosine_drop: float | None = None  # mixed-precision budget
    keep_bits: int = 16  # 4/2-bit weight-only budget: layers kept out stay float (16) or int8 weight-only (8)
    validation: Data = None
    exclude_ops: list[str] = field(default_factory=list)
    exclude_names: list[str] = field(default_factory=list)
    block_size: int | None = None  # weight-only modes
    # int4-wo rounding: rtn | awq | gptq | awq-gptq, or auto (the best on the calibration subset)
    algorithm: str = "rtn"
    act_order: bool = True  # gptq, awq-gptq: rows in order of decreasing Hessian diagonal
    batch_size: int = 16
    max_length: int = 128  # token limit for text calibration
    tokenizer: str | Path | None = None  # default: the demo's
    image_norm: str = "imagenet"
    cache_dir: str | Path | None = None
    calib_table: str | Path | None = None  # also write a TensorRT calibration table (int8)
    search_samples: int = 64
    metric: Metric | None = None  # search metric; default: cosine, or top-1 + cosine for classifiers
    precision: str = "fp32"  # what stays unquantized
    embeddings: int | None = None  # also store embedding tables (Gather data) in 8 or 4 bits (quantize-embeddings)
    shapes: dict[str, tuple[int, ...]] | None = None  # input shapes of a bare nn.Module factory

    def check(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"--mode '{self.mode}' not in {MODES}")
        if self.method not in METHODS:
            raise InvalidInputError(f"--calib-method '{self.method}' not in {METHODS}")
        if self.algorithm not in ALGORITHM_CHOICES:
            raise InvalidInputError(f"--algorithm '{self.algorithm}' not in {', '.join(ALGORITHM_CHOICES)}")
        if self.algorithm not in ("rtn", "auto") and self.mode != "int4-wo":
            raise InvalidInputError(f"--algorithm {self.algorithm} is for --mode int4-wo")
        if self.keep_bits not in (8, 16):
            raise InvalidInputError(f"--keep-bits {self.keep_bits}: 8 or 16")
        if self.keep_bits == 8 and (self.mode not in ("int4-wo", "int2-wo") or self.max_cosine_drop is None):
            raise InvalidInputError("--keep-bits 8 is the int8 tier of --mode int4-wo/int2-wo with --budget")
        if self.embeddings not in (None, 8, 4):
            raise InvalidInputError(f"--embeddings {self.embeddings}: int8 or int4")
        if self.precision not in HIGH_PRECISIONS:
            raise InvalidInputError(f"--precision '{self.precision}' not in {', '.join(HIGH_PRECISIONS)}")
        if self.cache_dir and Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise InvalidInputError(f"--cache-dir {self.cache_dir}: exists and is not a folder")

    def pass_options(self) -> dict[str, Any]:
        """The options the quantize pass takes from these (the search and budget add their own)."""
        options: dict[str, Any] = {
            "exclude_ops": list(self.exclude_ops),
            "exclude_names": list(self.exclude_names),
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
        }
        if self.block_size:
            options["block_size"] = self.block_size
        if self.keep_bits != 16:
            options["keep_bits"] = self.keep_bits
        if self.mode == "int4-wo" and self.algorithm != "auto":
            options.update(algorithm=self.algorithm, act_order=self.act_order)
        return options

    def data(self, which: Data, model: onnx.ModelProto, ref: ModelRef) -> CalibrationData | None:
        return calibration_source.load(
            which, model, self.batch_size, self.max_length, self.tokenizer, self.image_norm, spec=ref.spec
        )


@dataclass
class QuantizeResult:
    path: Path
    report: dict[str, Any] = field(default_factory=dict)


def _source_model(ref: ModelRef, work: Path, log: Log) -> Path:
    """An ONNX file as is; a torch model (demo or module:factory) is exported and folded first."""
    if ref.spec is None:
        return ref.path
    log(f"exporting {ref.text} and running the fold passes")
    exported = load_model(export_model(ref.spec, work / "model.onnx").path)
    folded, _ = run_passes(exported, [PassSpec("fold")], PassContext(opset=opset_of(exported)))
    return save_model(folded, work / "model.opt.onnx")


def _passes(mode: str, alpha: float | None, method: str, options: dict[str, Any]) -> list[PassSpec]:
    specs = [PassSpec("smoothquant", {"alpha": alpha, "cache_dir": options.get("cache_dir")})] if alpha else []
    return specs + [PassSpec("quantize", {"mode": mode, "method": method, **options})]


def _search(model, mode, data, evaluator, alphas, methods, options, log) -> tuple[float | None, str, list[dict]]:
    """The best (alpha, method) on the calibration subset, by coordinate search; the pair and the table.

    First every alpha with the first method, then every other method at the best alpha:
    len(alphas) + len(methods) - 1 candidates instead of the full grid's product (MiniLM:
    8 instead of 20; the full grid picked the same pair, alpha 0.9 with minmax, because the
    alpha moves the scores far more than the observer does).
    """
    table: list[dict[str, Any]] = []
    subset = from_feeds(evaluator.feeds, f"{data.source} (subset)")
    quick = {**options, "cache_dir": None, "max_cosine_drop": None}

    def score(alpha: float | None, method: str) -> dict[str, Any]:
        candidate, _ = run_passes(
            model, _passes(mode, alpha, method, quick), PassContext(opset_of(model), calibration=subset)
        )
        result = evaluator.score(candidate)
        table.append({"smoothquant_alpha": alpha, "method": method, **result.to_dict()})
        log(f"alpha {alpha} method {method}: mean cosine {result.mean_cosine:.5f}")
        return table[-1]

    best_alpha = min((score(alpha, methods[0]) for alpha in alphas), key=lambda row: row["drop"])
    best = min([best_alpha] + [score(best_alpha["smoothquant_alpha"], m) for m in methods[1:]], key=lambda r: r["drop"])
    return best["smoothquant_alpha"], best["method"], table


def _choose(
    source: onnx.ModelProto, data: CalibrationData | None, opts: QuantizeOptions, report: dict[str, Any], log: Log
) -> tuple[float | None, str, Evaluator | None]:
    """(SmoothQuant alpha, observer, the search's evaluator): searched when more than one pair is possible."""
    method = "minmax" if opts.method == "auto" else opts.method
    if data is None or opts.mode in WEIGHT_ONLY:
        return None, method, None
    alphas = _alphas(opts.smoothquant, source)
    methods = ["minmax", "percentile", "entropy", "mse"] if opts.method == "auto" else [opts.method]
    if len(alphas) * len(methods) == 1:
        return alphas[0], method, None
    start = time.perf_counter()
    metric = opts.metric or (classification_drop if metadata_value(source, TASK) == "classification" else None)
    evaluator = Evaluator(source, first_samples(data, opts.search_samples), metric)
    alpha, method, table = _search(source, opts.mode, data, evaluator, alphas, methods, opts.pass_options(), log)
    report["search"] = {
        "table": table,
        "seconds": round(time.perf_counter() - start, 2),
        "samples": sum(len(next(iter(f.values()))) for f in evaluator.feeds),
    }
    return alpha, method, evaluator


def _choose_algorithm(
    source: onnx.ModelProto, data: CalibrationData | None, opts: QuantizeOptions, report: dict[str, Any], log: Log
) -> tuple[QuantizeOptions, Evaluator | None]:
    """`--algorithm auto`: every int4 rounding algorithm scored on the calibration subset, the best kept
    (round-to-nearest without data); any other choice as given."""
    if opts.algorithm != "auto":
        return opts, None
    if data is None or opts.mode != "int4-wo":
        return dataclasses.replace(opts, algorithm="rtn"), None
    start = time.perf_counter()
    evaluator = Evaluator(source, first_samples(data, opts.search_samples), opts.metric)
    subset = from_feeds(evaluator.feeds, f"{data.source} (subset)")
    table = []
    for algorithm in ALGORITHMS:
        trial = dataclasses.replace(opts, algorithm=algorithm, cache_dir=None)
        candidate, _ = run_passes(
            source,
            _passes(opts.mode, None, "minmax", trial.pass_options()),
            PassContext(opset_of(source), calibration=subset),
        )
        table.append({"algorithm": algorithm, **evaluator.score(candidate).to_dict()})
        log(f"int4 {algorithm}: mean cosine {table[-1]['mean_cosine']:.5f}")
    best = min(table, key=lambda row: row["drop"])
    report["search"] = {"table": table, "seconds": round(time.perf_counter() - start, 2), "chose": best["algorithm"]}
    return dataclasses.replace(opts, algorithm=best["algorithm"]), evaluator


def _quantize(
    source: onnx.ModelProto,
    data: CalibrationData | None,
    opts: QuantizeOptions,
    choice: tuple[float | None, str],
    report: dict[str, Any],
    log: Log,
) -> onnx.ModelProto:
    """The chosen smoothquant + quantize passes (+ precision for the rest), recorded in `report`."""
    alpha, method = choice
    options = opts.pass_options()
    if opts.max_cosine_drop is not None:
        options.update(max_cosine_drop=float(opts.max_cosine_drop), sensitivity_samples=opts.search_samples)
    log(f"quantizing ({opts.mode}, method {method}, smoothquant alpha {alpha})")
    start = time.perf_counter()
    specs = _passes(opts.mode, alpha, method, options)
    if opts.embeddings:  # tables read by Gathers: the quantize pass leaves them float
        table_options = {"bits": opts.embeddings, **({"block_size": opts.block_size} if opts.block_size else {})}
        specs.append(PassSpec("quantize-embeddings", table_options))
    if opts.precision != "fp32":  # what stays unquantized runs in fp16/bf16 (strongly typed engines)
        specs.append(PassSpec("precision", {"target": opts.precision}))
    quantized, records = run_passes(source, specs, PassContext(opset_of(source), calibration=data))
    report.update(
        precision=opts.precision,
        method=method,
        smoothquant_alpha=alpha,
        seconds=round(time.perf_counter() - start, 2),
        calibration={"source": data.source, "samples": data.count} if data is not None else None,
        algorithm=opts.algorithm if opts.mode == "int4-wo" else None,
        weight_only_layers=next((r.details["weight_only"] for r in records if "weight_only" in r.details), None),
        embeddings=next((r.details["embeddings"] for r in records if "embeddings" in r.details), None),
        passes=[r.to_dict() for r in records],
        qdq=count_qdq(quantized),
        # weights from dims and types: a lazily loaded model's ByteSize() leaves its mapped weights out
        weight_bytes={"before": weights_nbytes(source), "after": weights_nbytes(quantized)},
    )
    mixed = _mixed_report(records, options)
    if mixed:
        report["mixed_precision"] = {
            **mixed,
            "kept_as": "int8 weight-only" if opts.keep_bits == 8 else "high precision",
        }
    return quantized


def quantize(
    model: str | Path,
    out: str | Path,
    options: QuantizeOptions | None = None,
    *,
    log: Log = _quiet,
    report_path: str | Path | None = None,
    **fields: Any,
) -> QuantizeResult:
    """Quantize `model` (see module docstring); returns the output path and the report.

    `fields` are QuantizeOptions fields (`mode="int8", calib="calib/"`), over `options`.
    """
    opts = dataclasses.replace(options or QuantizeOptions(), **fields)
    opts.check()
    ref = resolve_model(model, opts.shapes)
    report: dict[str, Any] = {**new_report("quantize"), "model": str(model), "mode": opts.mode, "calibration": None}
    with tempfile.TemporaryDirectory(prefix="trtforge-quantize-") as work:
        source_path = _source_model(ref, Path(work), log)
        source = load_model(source_path)
        data = opts.data(opts.calib, source, ref)
        if data is None and opts.mode not in WEIGHT_ONLY:
            raise InvalidInputError(
                f"{source_path}: {opts.mode} needs calibration data: give --calib DIR (.npz/.npy, images or .txt) or --calib FILE.npz"
            )
        if opts.algorithm not in ("rtn", "auto") and data is None:
            raise InvalidInputError(
                f"{source_path}: --algorithm {opts.algorithm} needs calibration data (the layer inputs' Hessians): give --calib"
            )
        opts, evaluator = _choose_algorithm(source, data, opts, report, log)
        alpha, method, search_evaluator = _choose(source, data, opts, report, log)
        evaluator = search_evaluator or evaluator
        quantized = _quantize(source, data, opts, (alpha, method), report, log)
        val = opts.data(opts.validation, source, ref) if opts.validation else None
        subset = (
            evaluator.feeds if evaluator else (first_samples(data, opts.search_samples) if data is not None else None)
        )
        report["accuracy"] = measure(
            source, quantized, list(val) if val is not None else subset, "validation" if val else "calibration subset"
        )
        inputs = [p for p in (ref.path, opts.calib, opts.validation) if isinstance(p, (str, Path))]
        with Outputs(inputs=[Path(p) for p in inputs]) as outputs:  # all of them, or none
            save_model(quantized, outputs.path(out))
            if opts.calib_table and opts.mode == "int8":
                write_trt_table(outputs.path(opts.calib_table), qdq_ranges(quantized))
                report["calib_table"] = str(opts.calib_table)
            report["output"] = str(out)
            if report_path:
                write_report(report, outputs.path(report_path))
    return QuantizeResult(Path(out), report)


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


def _mixed_report(records, options) -> dict[str, Any] | None:
    """The mixed-precision choice the quantize pass reported (its record's details), or None."""
    if options.get("max_cosine_drop") is None:
        return None
    found = [r.details["mixed_precision"] for r in records if r.name == "quantize" and "mixed_precision" in r.details]
    return found[-1] if found else None


def classification_drop(candidate, reference) -> float:
    """Search metric for classifiers: top-1 disagreement plus 1 - mean cosine of the logits."""
    return (1.0 - top1_agreement(candidate, reference)) + 1.0 - float(sample_cosines(candidate, reference).mean())


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
            scale = to_array(inits[node.input[1]])
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
