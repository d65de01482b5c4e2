"""Pass registry: name -> factory taking the pass's options as keyword arguments.

Recipes and the `optimize --passes` flag refer to passes by these names. A new pass
module adds one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converter.core.errors import InvalidInputError
from passes.attention.fuse_attention import FuseAttention
from passes.base import Pass
from passes.blocks.drop_blocks import DropBlocks
from passes.custom_ops.gated_linear_attention import GatedLinearAttention
from passes.custom_ops.group_quant_matmul import GroupQuantMatMul
from passes.fold.cleanup import Cleanup
from passes.fold.dedupe import Dedupe
from passes.fold.fold_batchnorm import FoldBatchNorm
from passes.fold.fold_constants import FoldConstants
from passes.fold.fold_linear import FoldLinear
from passes.fold.fold_pad import FoldPad
from passes.fold.fold_shapes import FoldShapes
from passes.fold.fuse_gelu import FuseGelu
from passes.fold.fuse_norms import FuseNorms
from passes.fold.reparam import Reparam
from passes.fold.upgrade_opset import UpgradeOpset
from passes.precision.precision import Precision

PASSES: dict[str, Callable[..., Pass]] = {
    "cleanup": Cleanup,
    "fold-constants": FoldConstants,
    "fold-shapes": FoldShapes,
    "fold-pad": FoldPad,
    "fold-batchnorm": FoldBatchNorm,
    "reparam": Reparam,
    "fold-linear": FoldLinear,
    "dedupe": Dedupe,
    "fuse-gelu": FuseGelu,
    "fuse-norms": FuseNorms,
    "upgrade-opset": UpgradeOpset,
    "precision": Precision,
    "group-quant-matmul": GroupQuantMatMul,
    "gated-linear-attention": GatedLinearAttention,
    "fuse-attention": FuseAttention,
    "drop-blocks": DropBlocks,
}

DESCRIPTIONS: dict[str, str] = {
    "cleanup": "remove Identity, inference Dropout, no-op Cast, dead nodes, unused initializers (exact)",
    "fold-constants": "evaluate constant subgraphs and static shape arithmetic (exact)",
    "fold-shapes": "dynamic shape arithmetic -> constant Reshape targets via symbolic shapes (exact)",
    "fold-pad": "constant zero Pad folded into the following Conv/AveragePool pads (exact)",
    "fold-batchnorm": "inference BatchNormalization folded into Conv/ConvTranspose/Gemm/MatMul (exact)",
    "reparam": "parallel conv/linear branches summed on one input (RepVGG/RepMLP) -> one conv/linear (exact)",
    "fold-linear": "MatMul+Add->Gemm (2-D), linear chains merged, constant scales/biases absorbed (exact)",
    "dedupe": "merge identical initializers and common subexpressions (exact)",
    "fuse-gelu": "erf/tanh GELU subgraphs -> Gelu (opset >= 20; exact)",
    "fuse-norms": "decomposed LayerNorm/RMSNorm -> LayerNormalization (17) / RMSNormalization (23) (exact)",
    "upgrade-opset": "convert the model to a newer opset (option target, default 20; exact)",
    "precision": "convert float32 compute to fp16/bf16 for strongly typed builders (lossy)",
    "group-quant-matmul": "block-quantized 4/2-bit DequantizeLinear->MatMul -> trtforge::GroupQuantMatMul, packed (exact)",
    "gated-linear-attention": "parallel-form gated linear attention (cumsum-log-gate decay) -> trtforge::GatedLinearAttention (exact)",
    "fuse-attention": "scaled-dot-product attention (masks, causal, GQA) -> Attention (opset 23, upgrades; exact)",
    "drop-blocks": "remove redundant transformer blocks/sub-layers scored on calibration data (lossy)",
}


# Named sequences of passes, usable wherever a pass name is (recipes, --passes).
GROUPS: dict[str, list[str]] = {
    "fold": [
        "cleanup",
        "fold-constants",
        "dedupe",
        "fold-shapes",
        "fold-pad",
        "fold-batchnorm",
        "upgrade-opset",
        "fuse-gelu",
        "fuse-norms",
        "reparam",
        "fold-linear",
        "cleanup",
        "fold-constants",
        "dedupe",
    ],
}


def expand_groups(names_and_options: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Replace group names by their passes (groups take no options)."""
    expanded = []
    for name, options in names_and_options:
        if name in GROUPS:
            if options:
                raise InvalidInputError(f"pass group '{name}' takes no options")
            expanded.extend((member, {}) for member in GROUPS[name])
        else:
            expanded.append((name, options))
    return expanded


def create_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """Instantiate a registered pass, or raise InvalidInputError naming the bad name/option."""
    if name not in PASSES:
        known = ", ".join(sorted(PASSES) + sorted(GROUPS))
        raise InvalidInputError(f"unknown pass '{name}' (known: {known})")
    try:
        return PASSES[name](**(options or {}))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"pass '{name}': bad options {options} ({exc})") from exc


# Quantization (calibrated from PassContext.calibration): SmoothQuant migration, then Q/DQ.
from passes.quant.quantize import Quantize  # noqa: E402
from passes.quant.smoothquant import SmoothQuant  # noqa: E402

PASSES["smoothquant"] = SmoothQuant
PASSES["quantize"] = Quantize
DESCRIPTIONS["smoothquant"] = "SmoothQuant scale migration X.W = (X/s).(sW) from calibration (option alpha; exact)"
DESCRIPTIONS["quantize"] = "calibrated Q/DQ for TensorRT: int8/fp8 W8A8, int4/int2 weight-only, mixed precision (lossy)"


def needs_calibration(names: list[str]) -> bool:
    """Whether any of the named passes (groups expanded) reads calibration data (PassContext.calibration)."""
    expanded = expand_groups([(name, {}) for name in names])
    return any(getattr(PASSES.get(name), "needs_calibration", False) for name, _ in expanded)
