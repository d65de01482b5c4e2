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
from passes.model_utils import is_large, without_large_weights


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
            # Convert a copy without the large weights (the converter serialises the whole
            # model; op adapters never read weight values), then put the weights back.
            upgraded = onnx.version_converter.convert_version(without_large_weights(model), self.target)
            large = {init.name: init for init in model.graph.initializer if is_large(init)}
            for init in upgraded.graph.initializer:
                if init.name in large:
                    init.CopyFrom(large[init.name])
            # The converter drops local functions and custom-domain imports (trtforge ops):
            # they carry their own opset imports, so they come back unchanged.
            if not upgraded.functions:
                upgraded.functions.extend(model.functions)
            domains = {o.domain for o in upgraded.opset_import}
            upgraded.opset_import.extend(o for o in model.opset_import if o.domain not in domains)
        except Exception as exc:  # the converter raises plain RuntimeError/ValueError with long text
            raise ValueError(f"opset {current} -> {self.target} conversion failed: {str(exc).splitlines()[0]}") from exc
        ctx.opset = self.target
        result.count("opset_upgraded", f"{current}->{self.target}")
        return upgraded, result
