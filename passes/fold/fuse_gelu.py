"""GELU written out in elementary ops -> one `Gelu` node (opset 20; exact).

Recognised by what it computes, in any association order of the final product:
- erf form:  x * 0.5 * (1 + erf(x / sqrt(2)))          (or x * (1/sqrt(2)) inside erf)
- tanh form: x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  -> approximate="tanh"
(x^3 as Pow(x, 3) or x * x * x). Every intermediate must have exactly one reader.
Below opset 20 there is no Gelu op: candidates are reported as rejected (run
`upgrade-opset` first); TensorRT fuses the elementary form by itself anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from passes.base import Pass, PassContext, PassResult
from passes.pattern_utils import is_scalar, only_consumer, other_input, producer, product_from

SQRT2 = math.sqrt(2.0)
TANH_SCALE = math.sqrt(2.0 / math.pi)


def _scaled_input(tensor: gs.Tensor, divisor: float) -> gs.Tensor | None:
    """x when `tensor` is x / divisor or x * (1 / divisor), else None."""
    node = producer(tensor, ("Div", "Mul"))
    if node is None or only_consumer(tensor) is None:
        return None
    x, c = node.inputs
    if node.op == "Div":
        return x if is_scalar(c, divisor) else None
    if is_scalar(c, 1.0 / divisor):
        return x
    return c if is_scalar(x, 1.0 / divisor) else None


def _half_x_product(one_plus: gs.Tensor, x: gs.Tensor) -> gs.Node | None:
    """The root Mul of (one_plus * x * 0.5) in any order, else None."""
    found = product_from(one_plus, 2)
    if found is None:
        return None
    root, factors, _ = found
    if any(f is x for f in factors) and any(is_scalar(f, 0.5) for f in factors):
        return root
    return None


def _one_plus(activation: gs.Node) -> gs.Tensor | None:
    add = only_consumer(activation.outputs[0])
    if add is None or add.op != "Add":
        return None
    other = other_input(add, activation.outputs[0])
    return add.outputs[0] if other is not None and is_scalar(other, 1.0) else None


def _is_cube_of(tensor: gs.Tensor, x: gs.Tensor) -> bool:
    node = producer(tensor, ("Pow", "Mul"))
    if node is None:
        return False
    if node.op == "Pow":
        return node.inputs[0] is x and is_scalar(node.inputs[1], 3.0)
    a, b = node.inputs
    square = b if a is x else (a if b is x else None)
    inner = producer(square, "Mul") if square is not None else None
    return inner is not None and inner.inputs[0] is x and inner.inputs[1] is x


def _tanh_argument(tensor: gs.Tensor) -> gs.Tensor | None:
    """x when `tensor` is sqrt(2/pi) * (x + 0.044715 * x^3), else None."""
    outer = producer(tensor, "Mul")
    if outer is None:
        return None
    a, b = outer.inputs
    inner = b if is_scalar(a, TANH_SCALE) else (a if is_scalar(b, TANH_SCALE) else None)
    add = producer(inner, "Add") if inner is not None else None
    if add is None:
        return None
    for x, cubic in (add.inputs, add.inputs[::-1]):
        scaled = producer(cubic, "Mul")
        if scaled is None:
            continue
        p, q = scaled.inputs
        cube = q if is_scalar(p, 0.044715) else (p if is_scalar(q, 0.044715) else None)
        if cube is not None and _is_cube_of(cube, x):
            return x
    return None


@dataclass
class FuseGelu(Pass):
    """Replace elementary-op GELU subgraphs by the opset-20 Gelu op."""

    name = "fuse-gelu"
    level = "graph"
    exact = True

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        result = PassResult()
        for node in list(graph.nodes):
            if node.op == "Erf":
                x = _scaled_input(node.inputs[0], SQRT2)
                approximate = "none"
            elif node.op == "Tanh":
                x = _tanh_argument(node.inputs[0])
                approximate = "tanh"
            else:
                continue
            one_plus = _one_plus(node) if x is not None else None
            root = _half_x_product(one_plus, x) if one_plus is not None else None
            if root is None:
                if x is not None:
                    result.reject(node.name, f"{node.op} reads x but the rest is not 0.5 * x * (1 + {node.op.lower()})")
                continue
            if ctx.opset < 20:
                result.reject(node.name, f"GELU found but opset {ctx.opset} < 20 has no Gelu: run upgrade-opset first")
                continue
            out = root.outputs[0]
            root.outputs.clear()
            graph.nodes.append(
                gs.Node(
                    "Gelu",
                    name=f"{node.name}_gelu",
                    attrs={"approximate": approximate},
                    inputs=[x],
                    outputs=[out],
                )
            )
            result.count(f"gelu_{approximate}_fused", node.name)
        return result
