"""Quantize: calibrated Q/DQ for TensorRT (int8 / fp8 W8A8, int4 / int2 weight-only).

A model-level pass (`run_model`): it runs the model in onnxruntime on the
calibration data of `ctx.calibration` (a calibration.CalibrationData), so it needs
the whole model, and the weight-only formats need opset 21 (DequantizeLinear with
block_size). Placement follows TensorRT's rules (passes/quant/rules.py), the number
formats are in passes/quant/formats.py, activation ranges come from calibration/
(streamed statistics, one observer per `method`, cached by model and data).

Options: mode (int8 | fp8 | int4-wo | int2-wo | int8-wo: per-channel int8 weights with float
activations, W8A16), algorithm for int4-wo (rtn | awq | gptq | awq-gptq: round-to-nearest, or
calibrated: awq.py, gptq.py, AWQ's scales with GPTQ's rounding; act_order for the GPTQ ones, on
by default: its block scales are fixed up front, so it costs nothing at inference), method
(minmax | percentile | entropy | mse), percentile, exclude_ops, exclude_names (fnmatch
patterns), include_names, block_size (int4 default 128, int2 default 64), quantize_bmm,
residual, pooling, cache_dir. Lossy (`exact = False`): the verifier measures what it cost.

Mixed precision: with `max_cosine_drop`, the pass scores every quantized layer
alone on the first `sensitivity_samples` calibration samples
(calibration/sensitivity.py) and keeps the most sensitive ones in high precision,
the fewest that bring 1 - mean cosine to the budget; the choice is reported in the
result's `details["mixed_precision"]` (calibration.sensitivity.MixedPrecision.to_dict()).
In the 4/2-bit weight-only modes, `keep_bits` says what the kept layers become: float
(16, the graph's type) or int8 weight-only (8); the search measures that tier, not float.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from calibration.cache import calibrate
from calibration.data import first_samples
from calibration.sensitivity import Evaluator, choose_high_precision, layer_sensitivity
from converter.core.model_io import opset_of
from passes.base import Pass, PassContext, PassResult
from passes.fold.upgrade_opset import UpgradeOpset
from passes.model_utils import graph_to_model, import_graph, release_values
from passes.pattern_utils import constant_array
from passes.quant.formats import (
    activation_qdq,
    decoupled_int2,
    dequantize_block,
    per_channel_fp8,
    per_channel_int8,
    weight_dq,
)
from passes.quant.layerwise import quantize_sequentially
from passes.quant.rules import Placement, place
from passes.quant.weight_rounding import Rounding, input_scales

MODES = ("int8", "fp8", "int4-wo", "int2-wo", "int8-wo")
ALGORITHMS = ("rtn", "awq", "gptq", "awq-gptq")  # int4-wo rounding: round-to-nearest, or calibrated
METHODS = ("minmax", "percentile", "entropy", "mse")
WEIGHT_ONLY = ("int4-wo", "int2-wo", "int8-wo")  # int8-wo: per-channel int8 weights, float activations (W8A16)
BLOCK_OPSET = 21
FP8_OPSET = 19
FP16_QDQ_OPSET = 19  # QuantizeLinear of float16 activations, with float16 scales


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", name)


@dataclass
class Quantize(Pass):
    """Insert Q/DQ (see module docstring)."""

    name = "quantize"
    level = "model"  # runs the model in onnxruntime; weight-only formats need opset 21
    exact = False
    needs_calibration = True

    mode: str = "int8"
    method: str = "mse"
    percentile: float = 99.99
    exclude_ops: list[str] = field(default_factory=list)
    exclude_names: list[str] = field(default_factory=list)
    block_size: int | None = None
    quantize_bmm: bool = True
    residual: bool = True
    pooling: bool = True
    cache_dir: str | None = None
    budget_mb: float = 128.0
    include_names: list[str] | None = None
    max_cosine_drop: float | None = None
    sensitivity_samples: int = 64
    algorithm: str = "rtn"
    act_order: bool = True
    sequential: bool = True  # calibrated weight-only: layer by layer, on the quantized layers' outputs
    keep_bits: int = 16  # with max_cosine_drop in int4/int2-wo: layers kept out stay float (16) or int8-wo (8)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode '{self.mode}' not in {MODES}")
        if self.method not in METHODS:
            raise ValueError(f"method '{self.method}' not in {', '.join(METHODS)}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm '{self.algorithm}' not in {', '.join(ALGORITHMS)}")
        if self.algorithm != "rtn" and self.mode != "int4-wo":
            raise ValueError(f"algorithm '{self.algorithm}' is for mode int4-wo (int2-wo always rounds with GPTQ)")
        self.block_size = self.block_size or (128 if self.mode == "int4-wo" else 64)
        if self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_size {self.block_size} not in 16, 32, 64, 128, 256")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile} not in (0, 100]")
        if self.budget_mb <= 0:
            raise ValueError(f"budget_mb must be > 0, got {self.budget_mb}")
        if self.max_cosine_drop is not None and self.max_cosine_drop < 0:
            raise ValueError(f"max_cosine_drop must be >= 0, got {self.max_cosine_drop}")
        if self.keep_bits not in (8, 16) or (self.keep_bits == 8 and self.mode not in ("int4-wo", "int2-wo")):
            raise ValueError(f"keep_bits {self.keep_bits}: 16, or 8 (the int8 tier of mode int4-wo/int2-wo)")
        if self.sensitivity_samples < 1:
            raise ValueError(f"sensitivity_samples must be >= 1, got {self.sensitivity_samples}")
        if self.cache_dir and os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            raise ValueError(f"cache_dir {self.cache_dir} exists and is not a folder")

    @property
    def weight_only(self) -> bool:
        return self.mode in WEIGHT_ONLY

    def requires_calibration(self) -> bool:
        """W8A8 needs activation ranges, AWQ and GPTQ the layer inputs' Hessians; round-to-nearest
        weight-only formats quantize weights without data."""
        return not self.weight_only or self.algorithm != "rtn"

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        if self.max_cosine_drop is None:
            return self._quantize(model, ctx)
        return self._mixed(model, ctx)

    def _mixed(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        full, result = replace(self, max_cosine_drop=None)._quantize(model, ctx)
        setup = self._sensitivity_setup(model, ctx, result)
        if setup is None:
            return full, result
        build, layers, evaluator = setup
        mixed = choose_high_precision(build, layers, evaluator, float(self.max_cosine_drop))
        if not mixed.kept:
            result.notes.append(f"budget {self.max_cosine_drop}: met with every layer quantized")
            result.details["mixed_precision"] = mixed.to_dict()
            return full, result
        final, result = replace(
            self, max_cosine_drop=None, exclude_names=list(self.exclude_names) + mixed.kept
        )._quantize(model, ctx)
        final, tier = self._kept_tier(final, mixed.kept, ctx)
        if tier is not None:
            result.details.setdefault("weight_only", {}).update(tier.details.get("weight_only", {}))
        kept_as = "int8 weight-only" if self.keep_bits == 8 else "high precision"
        result.count("kept_high_precision", n=len(mixed.kept))
        result.notes.append(
            f"budget {self.max_cosine_drop}: {len(mixed.kept)} of {len(layers)} layers kept in {kept_as}, "
            f"drop {mixed.score.drop:.5f} (all quantized: {mixed.full_score.drop:.5f}), "
            f"{mixed.evaluations} evaluations"
        )
        result.details["mixed_precision"] = mixed.to_dict()
        return final, result

    def ranked_layers(self, model: onnx.ModelProto, ctx: PassContext) -> list[str]:
        """The layers this pass quantizes, most sensitive first: the final outputs' damage with each alone quantized."""
        setup = self._sensitivity_setup(model, ctx, replace(self, max_cosine_drop=None)._quantize(model, ctx)[1])
        return [name for name, _ in layer_sensitivity(*setup)] if setup else []

    def _sensitivity_setup(self, model: onnx.ModelProto, ctx: PassContext, result: PassResult):
        """(build(include, exclude), the quantized layers, an evaluator on the first samples), or None."""
        weighted = set(_weighted_names(model))
        layers = [name for name in dict.fromkeys(result.touched) if name in weighted]
        if ctx.calibration is None or not layers:
            return None

        def build(include: list[str] | None, exclude: list[str]) -> onnx.ModelProto:
            names = list(self.exclude_names) + exclude
            variant = replace(self, max_cosine_drop=None, include_names=include, exclude_names=names)
            return self._kept_tier(variant._quantize(model, ctx)[0], exclude, ctx)[0]

        return build, layers, Evaluator(model, first_samples(ctx.calibration, self.sensitivity_samples))

    def _kept_tier(self, model: onnx.ModelProto, kept: list[str], ctx: PassContext):
        """keep_bits 8: the kept layers as int8 weight-only (no data needed); (model, its result or None)."""
        if self.keep_bits != 8 or not kept:
            return model, None
        tier = Quantize(mode="int8-wo", include_names=list(kept), exclude_ops=list(self.exclude_ops))
        return tier._quantize(model, ctx)

    def _quantize(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        needed = BLOCK_OPSET if self.weight_only else (FP8_OPSET if self.mode == "fp8" else 0)
        if not self.weight_only and _float16(model):
            needed = max(needed, FP16_QDQ_OPSET)
        if opset_of(model) < needed:
            model, upgrade = UpgradeOpset(target=needed).run_model(model, ctx)
            result.opset = upgrade.opset
            result.count("opset_upgraded")
        graph = import_graph(model)
        plan = place(
            graph,
            self.weight_only,
            list(self.exclude_ops),
            list(self.exclude_names),
            self.quantize_bmm,
            self.residual,
            self.pooling,
            1 if self.mode == "int8-wo" else self.block_size,  # per-channel: any K
            self.include_names,
        )
        for node_name, why in plan.rejected:
            result.reject(node_name, why)
        if not plan.weights and not plan.activations:
            result.notes.append("nothing to quantize")
            return model, result
        if self._calibrated_weights and ctx.calibration is not None and self.sequential:
            self._quantize_sequentially(model, graph, plan, ctx, result)
            graph.cleanup(remove_unused_graph_inputs=False).toposort()
            return graph_to_model(graph, model), result
        ranges, hessians = self._calibrate(model, plan, ctx, result)
        if ranges is None and not self.weight_only:
            return model, result
        self._rewrite_activations(graph, plan, ranges or {}, result)
        self._rewrite_weights(graph, plan, hessians, result)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        out = graph_to_model(graph, model)
        return out, result

    @property
    def _calibrated_weights(self) -> bool:
        """Weight-only rounding that needs the layer inputs' Hessians (int2, or int4 by AWQ/GPTQ)."""
        return self.weight_only and (self.mode == "int2-wo" or self.algorithm != "rtn")

    def _quantize_sequentially(self, model, graph: gs.Graph, plan: Placement, ctx: PassContext, result) -> None:
        """Layer by layer, each calibrated on the quantized layers before it (passes/quant/layerwise.py)."""
        start = time.perf_counter()

        def layers(sites: list, grams: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self._rewrite_weights(graph, replace(plan, weights=sites), grams, result)

        batches = list(ctx.calibration)
        handed = quantize_sequentially(model, graph, plan.weights, batches, layers)
        rest = [site for site in plan.weights if site.node.name not in set(handed)]
        if rest:  # unnamed nodes cannot be placed in a segment: round to nearest, reported so
            self._rewrite_weights(graph, replace(plan, weights=rest), {}, result)
        rows = sum(len(next(iter(b.values()))) for b in batches)
        result.notes.append(
            f"calibration: layer by layer, sequential, {len(batches)} batches ({rows} samples), "
            f"{time.perf_counter() - start:.2f} s"
        )

    def _calibrate(self, model, plan: Placement, ctx: PassContext, result: PassResult):
        """Activation ranges (W8A8) or layer-input Gram matrices (int2, AWQ, GPTQ); None when no data."""
        data = ctx.calibration
        if self.weight_only:
            if (self.mode != "int2-wo" and self.algorithm == "rtn") or data is None:
                return None, {}
            inputs = {site.node.inputs[0].name for site in plan.weights if site.node.op in ("MatMul", "Gemm")}
            cal = calibrate(
                model,
                sorted(inputs),
                data,
                self.cache_dir,
                gram=sorted(inputs),
                budget_mb=self.budget_mb,
                histogram=False,
            )
            result.notes.append(_describe(cal))
            return None, {n: s.gram for n, s in cal.stats.items() if s.gram is not None}
        if data is None:
            for tensor in plan.activations:
                result.reject(tensor, "no calibration data: activation range unknown")
            result.notes.append("no calibration data (ctx.calibration): nothing quantized")
            return None, {}
        cal = calibrate(
            model,
            sorted(plan.activations),
            data,
            self.cache_dir,
            budget_mb=self.budget_mb,
            histogram=self.method != "minmax",
        )
        result.notes.append(_describe(cal))
        fmt = "fp8" if self.mode == "fp8" else "int8"
        ranges = cal.ranges(self.method, fmt, self.percentile)
        self._drop_unquantizable(plan, cal.stats, ranges, result)
        return ranges, {}

    def _drop_unquantizable(self, plan: Placement, stats, ranges: dict[str, float], result: PassResult) -> None:
        """Tensors with non-finite values or no range: their readers stay in high precision."""
        bad = {n for n, s in stats.items() if s.nonfinite or not (ranges.get(n, 0) > 0) or not s.count}
        if not bad:
            return
        dropped = {node.name for n in bad for node, _ in plan.activations[n]}
        for name in sorted(bad):
            result.reject(name, "non-finite or all-zero in calibration: left in high precision")
        for tensor in list(plan.activations):
            plan.activations[tensor] = [(nd, i) for nd, i in plan.activations[tensor] if nd.name not in dropped]
            if not plan.activations[tensor]:
                del plan.activations[tensor]
        plan.weights = [w for w in plan.weights if w.node.name not in dropped]

    def _rewrite_activations(
        self, graph: gs.Graph, plan: Placement, ranges: dict[str, float], result: PassResult
    ) -> None:
        fmt = "fp8" if self.mode == "fp8" else "int8"
        qmax = 448.0 if fmt == "fp8" else 127.0
        for name, readers in plan.activations.items():
            tensor = plan.tensors[name]
            nodes, dq_out = activation_qdq(tensor, ranges[name] / qmax, fmt, _safe(name))
            graph.nodes.extend(nodes)
            for node, index in readers:
                node.inputs[index] = dq_out
                result.touched.append(node.name)
            result.count("activation_qdq")

    def _rewrite_weights(
        self,
        graph: gs.Graph,
        plan: Placement,
        hessians: dict[str, np.ndarray],
        result: PassResult,
    ) -> dict[str, np.ndarray]:
        """Quantize the plan's weights; {input: 1/s} of the inputs AWQ's scales were folded into."""
        done: dict[tuple[str, int], gs.Variable] = {}
        folded: dict[str, np.ndarray] = {}
        factors: dict = {}  # GPTQ's inverse Hessian factor, shared by the layers reading one input
        grams = {id(site): hessians.get(site.node.inputs[0].name) for site in plan.weights}  # before AWQ rewires
        smooth = {}
        if "awq" in self.algorithm:
            smooth = input_scales(graph, plan, hessians, self.block_size, result, folded)
        for site in plan.weights:
            const = site.node.inputs[site.index]
            key = (const.name, site.axis)
            if key not in done:
                stored = constant_array(const)
                w = stored if self.mode == "int4-wo" else np.asarray(stored, np.float32)  # int4: converts by slices
                rounding = Rounding(grams[id(site)], smooth.get(const.name), factors=factors)
                node, done[key] = self._quantize_weight(const.name, w, site, rounding, stored.dtype)
                if self.weight_only:
                    result.details.setdefault("weight_only", {})[site.node.name] = rounding.report
                del stored, w  # one weight in working precision at a time
                release_values(const)
                graph.nodes.append(node)
            site.node.inputs[site.index] = done[key]
            result.count("weight_dq", site.node.name)
        return folded

    def _quantize_weight(
        self, name: str, w: np.ndarray, site, rounding: Rounding, dtype: np.dtype | type = np.float32
    ) -> tuple[gs.Node, gs.Variable]:
        """The weight's DequantizeLinear; its scales in `dtype`, the weight's own (fp16 stays fp16)."""
        prefix = _safe(name)
        if self.mode == "int8":
            q, scale = per_channel_int8(w, site.axis, dtype)
            return weight_dq(prefix, q, scale, site.axis)
        if self.mode == "int8-wo":  # per output channel (as W8A8), not along K as the block formats
            axis = 1 - site.axis
            q, scale = per_channel_int8(w, axis, dtype)
            deq = q.astype(np.float32) * np.expand_dims(scale.astype(np.float32), site.axis)
            k_first, approx = (w, deq) if site.axis == 0 else (w.T, deq.T)
            rounding.measure(np.asarray(k_first, np.float32), approx, "rtn", 8, 0)
            return weight_dq(prefix, q, scale, axis)
        if self.mode == "fp8":
            q, scale = per_channel_fp8(w, site.axis, dtype)
            return weight_dq(prefix, q, scale, site.axis)
        k_first = w if site.axis == 0 else w.T  # blocks run along K
        if self.mode == "int4-wo":
            q, scale = rounding.int4(k_first, self.block_size, self.algorithm, self.act_order, dtype)
        else:
            q, scale = decoupled_int2(k_first, self.block_size, rounding.gram if site.axis == 0 else None)
            scale = scale.astype(dtype)
            how = "decoupleQ, gptq rounding" if rounding.gram is not None else "decoupleQ, round-to-nearest"
            rounding.measure(k_first, dequantize_block(q, scale, self.block_size), how, 2, self.block_size)
        if site.axis == 1:
            q, scale = q.T.copy(), scale.T.copy()
        return weight_dq(prefix, q, scale, site.axis, self.block_size)


def _float16(model: onnx.ModelProto) -> bool:
    """The graph computes in float16 (an fp16 LLM): activation scales are then float16."""
    graph, half = model.graph, onnx.TensorProto.FLOAT16
    infos = (*graph.input, *graph.output, *graph.value_info)
    return any(i.type.tensor_type.elem_type == half for i in infos) or any(
        i.data_type == half for i in graph.initializer
    )


def _weighted_names(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]


def _describe(cal) -> str:
    origin = "from cache" if cal.from_cache else f"{cal.runs} onnxruntime runs"
    return (
        f"calibration: {len(cal.stats)} tensors, {cal.samples} samples, {len(cal.shapes)} input shapes, "
        f"{origin}, {cal.seconds:.2f} s"
    )
