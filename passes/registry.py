"""Pass registry: the passes recipes and `optimize --passes` name, and their validation.

Every pass class is listed once in `REGISTERED`, with the line `trtforge passes`
prints for it; its name is the class's declared `name`. A new pass module adds one
line there. `build_passes` turns a recipe's pass list into pass objects before
anything runs: an unknown name, an unknown option or a bad value is an
InvalidInputError naming the pass and the option, with a "did you mean" where a
registered name is close.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from converter.core.errors import InvalidInputError
from passes.attention.fuse_attention import FuseAttention
from passes.attention.fuse_rotary import FuseRotary
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
from passes.fold.remove_noops import RemoveNoops
from passes.fold.reparam import Reparam
from passes.fold.upgrade_opset import UpgradeOpset
from passes.precision.precision import Precision
from passes.quant.quantize import Quantize
from passes.quant.quantize_embeddings import QuantizeEmbeddings
from passes.quant.smoothquant import SmoothQuant

# fmt: off
REGISTERED: list[tuple[type[Pass], str]] = [
    (Cleanup, "remove Identity, inference Dropout, no-op Cast, dead nodes, unused initializers (exact)"),
    (RemoveNoops, "identity Reshapes, Reshape chains, x*1 and x/1 removed (exact)"),
    (FoldConstants, "evaluate constant subgraphs and static shape arithmetic (exact)"),
    (FoldShapes, "dynamic shape arithmetic -> constant Reshape targets via symbolic shapes (exact)"),
    (FoldPad, "constant zero Pad folded into the following Conv/AveragePool pads (exact)"),
    (FoldBatchNorm, "inference BatchNormalization folded into Conv/ConvTranspose/Gemm/MatMul (exact)"),
    (Reparam, "parallel conv/linear branches summed on one input (RepVGG/RepMLP) -> one conv/linear (exact)"),
    (FoldLinear, "MatMul+Add->Gemm (2-D), linear chains merged, constant scales/biases absorbed (exact)"),
    (Dedupe, "merge identical initializers and common subexpressions (exact)"),
    (FuseGelu, "erf/tanh GELU subgraphs -> Gelu (opset >= 20; exact)"),
    (FuseNorms, "decomposed LayerNorm/RMSNorm -> LayerNormalization (17) / RMSNormalization (23) (exact)"),
    (UpgradeOpset, "convert the model to a newer opset (option target, default 20; exact)"),
    (Precision, "convert float32 compute to fp16/bf16 for strongly typed builders (lossy)"),
    (GroupQuantMatMul, "block-quantized 4/2-bit DequantizeLinear->MatMul -> trtforge::GroupQuantMatMul, packed (exact)"),
    (GatedLinearAttention, "parallel-form gated linear attention (cumsum-log-gate decay) -> trtforge::GatedLinearAttention (exact)"),
    (FuseAttention, "scaled-dot-product attention (masks, causal, GQA) -> Attention (opset 23, upgrades; exact)"),
    (FuseRotary, "rotary position embedding (x*cos + rotate_half(x)*sin) -> RotaryEmbedding (opset 23; exact)"),
    (DropBlocks, "remove redundant transformer blocks/sub-layers scored on calibration data (lossy)"),
    (SmoothQuant, "SmoothQuant scale migration X.W = (X/s).(sW) from calibration (option alpha; exact)"),
    (Quantize, "calibrated Q/DQ for TensorRT: int8/fp8 W8A8, int4/int2 weight-only, mixed precision (lossy)"),
    (QuantizeEmbeddings, "embedding tables (Gather data) stored int8 per row or int4 per block behind a DequantizeLinear (lossy)"),
]
# fmt: on

PASSES: dict[str, type[Pass]] = {cls.name: cls for cls, _ in REGISTERED}
DESCRIPTIONS: dict[str, str] = {cls.name: text for cls, text in REGISTERED}

# Named sequences of passes, usable wherever a pass name is (recipes, --passes).
GROUPS: dict[str, list[str]] = {
    "fold": [
        "cleanup",
        "fold-constants",
        "dedupe",
        "fold-shapes",
        "remove-noops",
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
    # The fusions that need opset 23 (Attention with GQA, RMSNormalization, RotaryEmbedding): asked for, not in
    # "fold", whose opset-20 output every TensorRT 10.x parses (Jetson's included); these need
    # TensorRT >= 10.15 or TensorRT-RTX. fuse-attention moves the model to 23 when it finds attention.
    "fuse-opset23": ["fuse-attention", "fuse-norms", "fuse-rotary"],
}


@dataclass
class PassSpec:
    """A pass by name with its options, as written in a recipe."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


def _did_you_mean(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def pass_count(specs: list[PassSpec]) -> int:
    """How many passes `specs` run, groups expanded (a progress bar's total)."""
    return len(expand_groups([(s.name, s.options) for s in specs]))


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


def _fits(value: Any, hint: Any) -> bool:
    """Whether an option value (as YAML/JSON give it) fits a field's type annotation.

    Lists and tuples stand for each other; an int is a float; bool is never a number.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin in (list, tuple):
        element = args[0] if args else Any
        return isinstance(value, list | tuple) and all(_fits(v, element) for v in value)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _check_options(cls: type[Pass], options: dict[str, Any]) -> None:
    """Every option is a field of the pass, of its type; else InvalidInputError naming it."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    for key, value in options.items():
        if key not in fields:
            takes = f"options: {', '.join(fields)}" if fields else "it takes no options"
            raise InvalidInputError(f"pass '{cls.name}': unknown option '{key}' ({_did_you_mean(key, fields)}{takes})")
        if not _fits(value, hints[key]):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise InvalidInputError(f"pass '{cls.name}': option '{key}' = {value!r} is not {expected}")


def create_pass(name: str, options: dict[str, Any] | None = None) -> Pass:
    """Instantiate a registered pass, or raise InvalidInputError naming the bad name/option."""
    if name not in PASSES:
        known = sorted(PASSES) + sorted(GROUPS)
        raise InvalidInputError(f"unknown pass '{name}' ({_did_you_mean(name, known)}known: {', '.join(known)})")
    cls, options = PASSES[name], options or {}
    _check_options(cls, options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:  # the pass's own checks of its values (__post_init__)
        raise InvalidInputError(f"pass '{name}': bad options {options} ({exc})") from exc


def build_passes(specs: list[PassSpec]) -> list[tuple[PassSpec, Pass]]:
    """Every pass of a recipe (groups expanded), built and validated before any of them runs."""
    expanded = expand_groups([(s.name, s.options) for s in specs])
    return [(PassSpec(name, options), create_pass(name, options)) for name, options in expanded]


def requiring_calibration(specs: list[PassSpec]) -> list[str]:
    """The passes of `specs` (groups expanded) that would change nothing without calibration data."""
    return list(dict.fromkeys(spec.name for spec, pass_ in build_passes(specs) if pass_.requires_calibration()))


def needs_calibration(names: list[str]) -> bool:
    """Whether any of the named passes (groups expanded) reads calibration data (PassContext.calibration)."""
    expanded = expand_groups([(name, {}) for name in names])
    return any(name in PASSES and PASSES[name].needs_calibration for name, _ in expanded)
