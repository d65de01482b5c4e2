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

A second gap: before opset 13, Softmax, LogSoftmax and Hardmax work on the input
flattened to 2-D at `axis`; from 13, along `axis` alone. The converter rewrites the first
two (Flatten, op, Reshape) but keeps Hardmax as it is, which changes its result whenever
`axis` is not the last dim (up to 1.0 per element). So when crossing 13, such a Hardmax
is written in the old meaning first: Flatten at `axis`, Hardmax over the last dim of the
2-D tensor (the same under both meanings), Reshape back to the input's shape.
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
            flattened = _flatten_hardmax(light) if current < 13 <= self.target else 0
            if flattened:
                result.count("hardmax_flattened", n=flattened)
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


def _rank(model: onnx.ModelProto, name: str) -> int | None:
    for info in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _flatten_hardmax(model: onnx.ModelProto) -> int:
    """Pre-13 Hardmax not over the last dim -> Shape, Flatten, Hardmax(axis=1), Reshape (in place)."""
    typed = onnx.shape_inference.infer_shapes(model)  # ranks only; the nodes change in `model`
    nodes, changed = [], 0
    for node in model.graph.node:
        if node.op_type != "Hardmax" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = _rank(typed, node.input[0])
        if rank is not None and axis in (rank - 1, -1):
            nodes.append(node)
            continue
        base = node.name or node.output[0]
        shape, flat, hard = f"{base}__shape", f"{base}__flat", f"{base}__hardmax2d"
        nodes += [
            onnx.helper.make_node("Shape", [node.input[0]], [shape], name=shape),
            onnx.helper.make_node("Flatten", [node.input[0]], [flat], name=flat, axis=axis),
            onnx.helper.make_node("Hardmax", [flat], [hard], name=hard, axis=1),
            onnx.helper.make_node("Reshape", [hard, shape], [node.output[0]], name=base),
        ]
        changed += 1
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return changed
