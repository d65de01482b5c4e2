"""Upgrade the default-domain opset (e.g. 17 -> 20) so newer fused ops can be used.

Gelu is opset 20, Attention and RMSNormalization opset 23. The conversion is
onnx's version converter (it rewrites ops whose signature changed, e.g. Reduce*
axes becoming an input at 18); the model's meaning is unchanged. This is a
model-level pass (`run_model`), since the opset lives on the model, not the graph.
Never downgrades: a model already at or above the target is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx.version_converter

from passes.base import PassContext, PassResult


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@dataclass
class UpgradeOpset:
    """Convert the model to `target` opset (no-op when it is already there)."""

    target: int = 20
    name: str = "upgrade-opset"
    exact: bool = True

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        current = default_opset(model)
        if current >= self.target:
            result.notes.append(f"opset {current} >= {self.target}: unchanged")
            return model, result
        try:
            upgraded = onnx.version_converter.convert_version(model, self.target)
        except Exception as exc:  # the converter raises plain RuntimeError/ValueError with long text
            raise ValueError(f"opset {current} -> {self.target} conversion failed: {str(exc).splitlines()[0]}") from exc
        ctx.opset = self.target
        result.count("opset_upgraded", f"{current}->{self.target}")
        return upgraded, result
