"""Upgrade the default-domain opset (e.g. 17 -> 20) so newer fused ops can be used.

Gelu is opset 20, Attention and RMSNormalization opset 23. The conversion is
onnx's version converter (it rewrites ops whose signature changed, e.g. Reduce*
axes becoming an input at 18); the model's meaning is unchanged. This is a
model-level pass (`run_model`), since the opset lives on the model, not the graph.
Never downgrades: a model already at or above the target is left alone. A model the
converter cannot convert raises UnsupportedError, with the converter's first line.

One gap of the converter is filled here: before opset 14 a BatchNormalization in
training form is marked by its extra outputs (Y, running mean/var, saved mean/var:
what torch.onnx.export writes for a model in training mode); from 14 by
`training_mode=1`, with saved mean/var gone. The converter refuses the 5-output form
and turns a 3-output one into an invalid training_mode=0 node. So, when crossing
opset 14, unused saved mean/var outputs are dropped first and the node is marked
training_mode=1 after: it keeps normalizing with batch statistics, as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx.version_converter

from converter.core.errors import UnsupportedError
from converter.core.model_io import opset_of
from passes.base import Pass, PassContext, PassResult
from passes.model_utils import is_large, without_large_weights


@dataclass
class UpgradeOpset(Pass):
    """Convert the model to `target` opset (no-op when it is already there)."""

    name = "upgrade-opset"
    level = "model"
    exact = True
    # The converter rewrites op signatures, never weight values: the manager may hand it
    # a model without its large weights and bind them back afterwards.
    reads_weights = False

    target: int = 20

    def __post_init__(self) -> None:
        newest = onnx.defs.onnx_opset_version()
        if not 7 <= self.target <= newest:
            raise ValueError(f"target opset {self.target} not in 7..{newest} (this onnx's newest)")

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        result = PassResult()
        current = opset_of(model)
        if current >= self.target:
            result.notes.append(f"opset {current} >= {self.target}: unchanged")
            return model, result
        try:
            # Convert a copy without the large weights (the converter serialises the whole
            # model; op adapters never read weight values), then put the weights back.
            light = without_large_weights(model)
            training = _unmark_training_batchnorms(light) if current < 14 <= self.target else set()
            upgraded = onnx.version_converter.convert_version(light, self.target)
            for node in upgraded.graph.node:
                if node.op_type == "BatchNormalization" and node.output[0] in training:
                    node.attribute.append(onnx.helper.make_attribute("training_mode", 1))
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
            message = f"opset {current} -> {self.target} conversion failed: {str(exc).splitlines()[0]}"
            raise UnsupportedError(message) from exc
        result.opset = self.target
        result.count("opset_upgraded", f"{current}->{self.target}")
        return upgraded, result


def _unmark_training_batchnorms(model: onnx.ModelProto) -> set[str]:
    """Drop the saved mean/var outputs of training-form BatchNormalization nodes (opset < 14,
    in place); return their Y outputs. Raises ValueError when a dropped output is read."""
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    training = set()
    for node in model.graph.node:
        if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
            continue
        if sum(1 for name in node.output if name) <= 1:
            continue  # inference form
        dropped = [name for name in node.output[3:] if name]
        if any(name in read for name in dropped):
            raise ValueError(f"BatchNormalization '{node.name}' saved mean/var outputs are read; opset 14 has none")
        del node.output[3:]
        training.add(node.output[0])
    return training
