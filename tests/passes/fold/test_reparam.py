"""reparam: parallel conv / linear / identity branches summed by Adds merge into one op."""

from __future__ import annotations

import io
import math

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from tests.passes.fold.test_fold_linear import build, fold, ops

RNG = np.random.default_rng(1)


def reparam(model: onnx.ModelProto, x: np.ndarray):
    return fold(model, x, "reparam")


def w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))


def x_of(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ---- RepVGG exported from torch ----


def _bn(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    return bn.eval()


class RepVGGBlock(nn.Module):
    """3x3 conv+BN + 1x1 conv+BN (+ identity BN when shapes allow), summed, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv3 = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)
        self.conv1 = nn.Conv2d(cin, cout, 1, stride, 0, groups=groups, bias=False)
        self.bn3, self.bn1 = _bn(cout), _bn(cout)
        self.bn_id = _bn(cin) if cin == cout and stride == 1 else None

    def fuse(self) -> RepVGGBlock:
        """Fold the conv branches' BNs in torch, as the brief allows (BN folding is another pass)."""
        self.conv3, self.bn3 = fuse_conv_bn_eval(self.conv3.eval(), self.bn3), nn.Identity()
        self.conv1, self.bn1 = fuse_conv_bn_eval(self.conv1.eval(), self.bn1), nn.Identity()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv3(x)) + self.bn1(self.conv1(x))
        return torch.relu(y + self.bn_id(x) if self.bn_id is not None else y)


def _export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(
        module.eval(),
        (torch.randn(shape),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
    )
    return onnx.load_from_string(buffer.getvalue())


def test_repvgg_from_torch_becomes_one_conv_per_block():
    torch.manual_seed(0)
    blocks = [RepVGGBlock(4, 4), RepVGGBlock(4, 8, stride=2), RepVGGBlock(8, 8, groups=2)]
    model = _export(nn.Sequential(*(b.fuse() for b in blocks)), (1, 4, 8, 8))
    assert ops(model).count("BatchNormalization") == 2 and ops(model).count("Add") == 5
    out, rec = reparam(model, x_of(1, 4, 8, 8))
    assert ops(out) == ["Conv", "Relu"] * 3
    assert rec.changed == {"conv_branches_merged": 3} and rec.nodes_after == 6


# ---- hand-built graphs ----


def _conv(x: str, wname: str, out: str, k: tuple[int, int], pads: list[int], **attrs) -> tuple:
    return ("Conv", [x, wname, wname + "_b"], [out], {"kernel_shape": list(k), "pads": pads, **attrs})


def _inits(cout: int, cin_g: int, **kernels: tuple[int, int]) -> dict[str, np.ndarray]:
    out = {}
    for name, k in kernels.items():
        out[name], out[name + "_b"] = w(cout, cin_g, *k), w(cout)
    return out


def test_acnet_asymmetric_kernels_and_constant_leaf():
    nodes = [
        _conv("x", "K33", "a", (3, 3), [1, 1, 1, 1]),
        _conv("x", "K13", "b", (1, 3), [0, 1, 0, 1]),
        _conv("x", "K31", "c", (3, 1), [1, 0, 1, 0]),
        ("Add", ["a", "b"], ["ab"], {}),
        ("Add", ["c", "t"], ["ct"], {}),
        ("Add", ["ab", "ct"], ["y"], {}),
    ]
    inits = {**_inits(3, 2, K33=(3, 3), K13=(1, 3), K31=(3, 1)), "t": w(1, 3, 1, 1)}
    out, rec = reparam(build(nodes, inits, [1, 2, 6, 7]), x_of(1, 2, 6, 7))
    assert ops(out) == ["Conv"] and rec.changed == {"conv_branches_merged": 1}


def test_grouped_dilated_mixed_kernels_with_scaled_identity():
    d = {"dilations": [2, 2], "group": 2}
    nodes = [
        _conv("x", "K5", "a", (5, 5), [4] * 4, **d),
        _conv("x", "K3", "b", (3, 3), [2] * 4, **d),
        _conv("x", "K1", "c", (1, 1), [0] * 4, **d),
        ("Mul", ["x", "s"], ["xs"], {}),
        ("Sum", ["a", "b"], ["ab"], {}),  # not an Add: stays a leaf, the tree starts above it
        ("Add", ["c", "xs"], ["cx"], {}),
        ("Add", ["cx", "ab"], ["y"], {}),
    ]
    inits = {**_inits(4, 2, K5=(5, 5), K3=(3, 3), K1=(1, 1)), "s": w(4, 1, 1)}
    out, _ = reparam(build(nodes, inits, [1, 4, 8, 8]), x_of(1, 4, 8, 8))
    assert sorted(ops(out)) == ["Add", "Conv", "Conv", "Conv", "Sum"]  # K1 and the scaled identity merged
    nodes[4] = ("Add", ["a", "b"], ["ab"], {})
    out, _ = reparam(build(nodes, inits, [1, 4, 8, 8]), x_of(1, 4, 8, 8))
    assert ops(out) == ["Conv"]


@pytest.mark.parametrize(
    "second, reason",
    [
        (_conv("x", "K2", "b", (3, 3), [2] * 4, dilations=[2, 2]), "dilations differ"),
        (_conv("x", "K2", "b", (3, 3), [0, 0, 2, 2]), "does not centre"),
        (_conv("x", "K2", "b", (3, 3), [1] * 4, auto_pad="NOTSET", group=1, strides=[1, 1]), None),
    ],
)
def test_branches_that_cannot_merge_are_rejected(second, reason):
    nodes = [_conv("x", "K1", "a", (3, 3), [1] * 4), second, ("Add", ["a", "b"], ["y"], {})]
    model = build(nodes, _inits(2, 2, K1=(3, 3), K2=(3, 3)), [1, 2, 5, 5])
    out, rec = reparam(model, x_of(1, 2, 5, 5))
    if reason is None:
        assert ops(out) == ["Conv"]
    else:
        assert ops(out) == ops(model) and reason in rec.rejected[0]["reason"]


@pytest.mark.parametrize("convs", [1, 2])
def test_misaligned_identity_is_kept_apart(convs):
    """A 3x3 dilation-2 kernel with pads (1, 3) has no tap reading x[o]: the identity cannot join."""
    nodes = [_conv("x", f"K{i}", f"c{i}", (3, 3), [1, 1, 3, 3], dilations=[2, 2]) for i in range(convs)]
    nodes += (
        [("Add", ["c0", "c1"], ["a"], {}), ("Add", ["a", "x"], ["y"], {})]
        if convs == 2
        else [("Add", ["c0", "x"], ["y"], {})]
    )
    model = build(nodes, _inits(2, 2, **{f"K{i}": (3, 3) for i in range(convs)}), [1, 2, 5, 5])
    out, rec = reparam(model, x_of(1, 2, 5, 5))
    assert sorted(ops(out)) == (["Add", "Conv"] if convs == 2 else sorted(ops(model)))
    assert "identity branch does not align" in rec.rejected[0]["reason"]


def test_unrelated_leaves_stay():
    nodes = [
        _conv("x", "K3", "a", (3, 3), [1] * 4),
        _conv("x", "K1", "b", (1, 1), [0] * 4),
        ("Relu", ["x"], ["r"], {}),
        ("Add", ["a", "r"], ["ar"], {}),
        ("Add", ["ar", "b"], ["y"], {}),
    ]
    out, _ = reparam(build(nodes, _inits(3, 3, K3=(3, 3), K1=(1, 1)), [1, 3, 5, 5]), x_of(1, 3, 5, 5))
    assert sorted(ops(out)) == ["Add", "Conv", "Relu"]


@pytest.mark.parametrize("opset, merged", [(17, True), (13, False)])
def test_identity_bn_joins_only_in_inference_form(opset, merged):
    """Before opset 14 a BN with its statistics outputs (torch's training-mode export) uses
    batch statistics: not a per-channel scale, so it must not join the conv."""
    bn_outputs = ["xs"] if merged else ["xs", "rm", "rv", "sm", "sv"]
    nodes = [
        _conv("x", "K3", "a", (3, 3), [1] * 4),
        ("BatchNormalization", ["x", "bn0", "bn1", "bn2", "bn3"], bn_outputs, {"epsilon": 1e-3}),
        ("Add", ["a", "xs"], ["y"], {}),
    ]
    inits = {**_inits(3, 3, K3=(3, 3)), **{f"bn{j}": RNG.uniform(0.5, 1.5, 3) for j in range(4)}}
    model = build(nodes, inits, [2, 3, 5, 5], opset=opset)
    out, _ = fold(model, x_of(2, 3, 5, 5), "reparam")
    assert ops(out) == (["Conv"] if merged else ops(model))


@pytest.mark.parametrize("shape", [[5, 4], [2, 5, 4]])
def test_repmlp_linear_branches_and_identity(shape):
    nodes = [
        ("MatMul", ["x", "W1"], ["a"], {}),
        ("MatMul", ["x", "W2"], ["m"], {}),
        ("Add", ["m", "b2"], ["b"], {}),
        ("Add", ["a", "b"], ["ab"], {}),
        ("Add", ["ab", "x"], ["y"], {}),
    ]
    out, rec = reparam(build(nodes, {"W1": w(4, 4), "W2": w(4, 4), "b2": w(4)}, shape), x_of(*shape))
    assert ops(out) == (["Gemm"] if len(shape) == 2 else ["MatMul", "Add"])
    assert rec.changed == {"linear_branches_merged": 1}


# ---- property test: random RepVGG/ACNet-style blocks ----


@st.composite
def rep_blocks(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    cin, hw = draw(st.integers(1, 4)), draw(st.integers(4, 8))
    identity = draw(st.sampled_from([None, "plain", "mul", "bn"]))
    stride = 1 if identity else draw(st.sampled_from([1, 2]))
    cout = cin if identity else draw(st.integers(1, 4))
    group = draw(st.sampled_from([g for g in range(1, 5) if cin % g == 0 and cout % g == 0]))
    dil = draw(st.sampled_from([1, 2]))
    attrs = {"strides": [stride] * 2, "dilations": [dil] * 2, "group": group}
    nodes, inits, leaves = [], {}, []
    for i in range(draw(st.integers(1, 4))):
        k = (draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5])))
        pads = [(k[0] - 1) // 2 * dil, (k[1] - 1) // 2 * dil] * 2
        inits[f"W{i}"] = rng.standard_normal((cout, cin // group, *k)) / math.prod(k)
        ins = ["x", f"W{i}"]
        if draw(st.booleans()):
            inits[f"B{i}"] = rng.standard_normal(cout)
            ins.append(f"B{i}")
        nodes.append(("Conv", ins, [f"c{i}"], {"kernel_shape": list(k), "pads": pads, **attrs}))
        leaves.append(f"c{i}")
    if identity == "mul":
        inits["s"] = rng.standard_normal(draw(st.sampled_from([(), (cin, 1, 1), (1, cin, 1, 1)])))
        nodes.append(("Mul", ["x", "s"], ["xs"], {}))
    elif identity == "bn":
        inits.update({f"bn{j}": rng.uniform(0.5, 1.5, cin) for j in range(4)})
        nodes.append(("BatchNormalization", ["x", "bn0", "bn1", "bn2", "bn3"], ["xs"], {"epsilon": 1e-3}))
    leaves += {None: [], "plain": ["x"]}.get(identity, ["xs"])
    if draw(st.booleans()):
        inits["t"] = rng.standard_normal((1, cout, 1, 1))
        leaves.append("t")
    order = draw(st.permutations(leaves))
    while len(order) > 1:  # a random tree of Adds
        i = draw(st.integers(0, len(order) - 2))
        name = "y" if len(order) == 2 else f"s{len(nodes)}"
        nodes.append(("Add", [order[i], order[i + 1]], [name], {}))
        order = [*order[:i], name, *order[i + 2 :]]
    if order[0] != "y":
        nodes.append(("Relu", [order[0]], ["y"], {}))
    merges = sum(leaf not in ("t",) for leaf in leaves) >= 2
    return build(nodes, inits, [2, cin, hw, hw]), rng.standard_normal((2, cin, hw, hw)).astype(np.float32), merges


@settings(max_examples=200, deadline=None)
@given(rep_blocks())
def test_property_rep_blocks(case):
    model, x, merges = case
    out, rec = reparam(model, x)
    if merges:
        assert [op for op in ops(out) if op != "Relu"] == ["Conv"] and rec.nodes_after < rec.nodes_before
    else:
        assert rec.changed == {}
