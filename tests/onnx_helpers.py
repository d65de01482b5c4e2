"""Build and run small ONNX graphs in tests: one model builder, one onnxruntime runner.

Sessions open through `converter.core.ort_session.cpu_session`, the product's one place for
onnxruntime options. `optimize=True` (the default) keeps onnxruntime's own graph optimizations,
as a plain session has them; tests that compare graphs as written pass `optimize=False`: where
onnxruntime's fusions would hide a difference, or where it rewrites DequantizeLinear -> MatMul
into its own approximate kernel.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from converter.core.ort_session import cpu_session

Shape = Sequence[int | str] | None
Tensors = Mapping[str, Shape] | Iterable[onnx.ValueInfoProto]


def _values(tensors: Tensors) -> list[onnx.ValueInfoProto]:
    """Value infos as given, or float tensors from a name -> shape mapping."""
    if isinstance(tensors, Mapping):
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in tensors.items()]
    return list(tensors)


def make_model(
    nodes: Iterable[onnx.NodeProto],
    inputs: Tensors,
    outputs: Tensors,
    initializers: Mapping[str, np.ndarray] | Iterable[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    ir_version: int | None = 8,
    name: str = "g",
) -> onnx.ModelProto:
    """One graph of the default domain. Inputs and outputs: value infos, or {name: shape} for float
    tensors; initializers: tensors, or {name: array} (stored in the array's own dtype);
    `ir_version=None` keeps onnx's current one."""
    if isinstance(initializers, Mapping):
        initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()]
    graph = helper.make_graph(list(nodes), name, _values(inputs), _values(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, optimize: bool = True) -> list[np.ndarray]:
    """Every output of one onnxruntime CPU run."""
    return cpu_session(model, optimize=optimize).run(None, dict(feeds))


def first_output(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], *, optimize: bool = True) -> np.ndarray:
    return run(model, feeds, optimize=optimize)[0]
