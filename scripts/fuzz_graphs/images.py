"""Image blocks (NCHW): Conv/BN/Pad stacks, pooling, RepVGG branches."""

from __future__ import annotations

import numpy as np

from scripts.fuzz_graphs.builder import Builder, Value
from scripts.fuzz_graphs.elementwise import activation, channel_const, scale_shift


def conv_out(size: int, k: int, pads: tuple[int, int], stride: int, dilation: int = 1, ceil: bool = False) -> int:
    span = size + pads[0] + pads[1] - dilation * (k - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


def ceil_is_unambiguous(size: int, k: int, pads: tuple[int, int], stride: int) -> bool:
    """ceil_mode where no last window starts in the right padding: there onnx's shape inference
    and runtimes disagree (some drop that window), so the generator does not go there."""
    return (conv_out(size, k, pads, stride, ceil=True) - 1) * stride < size + pads[0]


Kernel = tuple[int, int]


def _centred(kernel: Kernel, dilation: int) -> list[int]:
    """Centred ("same") pads [top, left, bottom, right] for odd kernels."""
    ph, pw = (dilation * (k - 1) // 2 for k in kernel)
    return [ph, pw, ph, pw]


def _fits(x: Value, kernel: Kernel, pads: list[int], dilation: int) -> bool:
    return all(
        x.shape[2 + i] + pads[i] + pads[2 + i] >= dilation * (kernel[i] - 1) + 1 and pads[i] >= 0 for i in range(2)
    )


def conv(
    b: Builder,
    x: Value,
    cout: int | None = None,
    kernel: Kernel | None = None,
    pads: list[int] | None = None,
    stride: int = 1,
    dilation: int = 1,
    group: int = 1,
    bias: bool | None = None,
    auto_pad: str | None = None,
) -> Value:
    """Conv with constant weights; centred ("same") pads by default, else the pads given;
    `auto_pad` SAME_UPPER / VALID instead of pads. Falls back to 1x1 where the kernel does not fit."""
    b.families.add("conv")
    cin = x.shape[1]
    cout = cout or cin
    kernel = kernel or b.pick([(1, 1), (3, 3), (3, 3)])
    if pads is None:
        pads = _centred(kernel, dilation) if b.chance(0.8) else [0, 0, 0, 0]
    if not _fits(x, kernel, [0] * 4 if auto_pad == "VALID" else pads, dilation):
        kernel, pads, dilation, auto_pad = (1, 1), [0, 0, 0, 0], 1, None
    weight = b.weight(cout, cin // group, *kernel, fan_in=cin // group * kernel[0] * kernel[1])
    inputs = [x.name, weight]
    if b.chance(0.6) if bias is None else bias:
        inputs.append(b.const(b.vector(cout)))
    attrs: dict = {"kernel_shape": list(kernel)}
    if auto_pad is None:
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
    if stride != 1:
        attrs["strides"] = [stride, stride]
    if dilation != 1:
        attrs["dilations"] = [dilation, dilation]
    if group != 1:
        attrs["group"] = group
    spatial = []
    for i, size in enumerate(x.shape[2:]):
        if auto_pad == "SAME_UPPER":
            spatial.append(-(-size // stride))
        else:
            p = (0, 0) if auto_pad == "VALID" else (pads[i], pads[2 + i])
            spatial.append(conv_out(size, kernel[i], p, stride, dilation))
    return b.node("Conv", inputs, (x.shape[0], cout, *spatial), **attrs)


def conv_transpose(b: Builder, x: Value) -> Value:
    """ConvTranspose (stride 1 or 2, grouped sometimes) [-> BN]: BN folds into it per output channel."""
    b.families.add("conv")
    cin = x.shape[1]
    cout = int(b.pick([2, 4, 6]))
    group = 2 if cin % 2 == 0 and b.chance(0.3) else 1
    k, stride = int(b.pick([1, 2, 3])), int(b.pick([1, 1, 2]))
    p = int(b.rng.integers(0, (k - 1) // 2 + 1)) if k > 1 else 0
    inputs = [x.name, b.weight(cin, cout // group, k, k, fan_in=cin * k * k // group)]
    if b.chance(0.5):
        inputs.append(b.const(b.vector(cout)))
    attrs: dict = {"kernel_shape": [k, k], "pads": [p, p, p, p]}
    if stride != 1:
        attrs["strides"] = [stride, stride]
    if group != 1:
        attrs["group"] = group
    spatial = [(d - 1) * stride - 2 * p + k for d in x.shape[2:]]
    y = b.node("ConvTranspose", inputs, (x.shape[0], cout, *spatial), **attrs)
    return batchnorm(b, y) if b.chance(0.7) else y


def batchnorm(b: Builder, x: Value) -> Value:
    """BatchNormalization in inference form (training_mode=0 spelled out sometimes, opset >= 14)."""
    b.families.add("batchnorm")
    c = x.shape[1]
    params = [
        b.const(b.rng.uniform(0.5, 1.5, c), "gamma", share=False),
        b.const(b.vector(c), "beta", share=False),
        b.const(b.vector(c), "mean", share=False),
        b.const(b.rng.uniform(0.5, 2.0, c), "var", share=False),
    ]
    attrs = {}
    if b.chance(0.5):
        attrs["epsilon"] = float(b.pick([1e-5, 1e-3]))
    if b.opset >= 14 and b.chance(0.3):
        attrs["training_mode"] = 0
    return b.node("BatchNormalization", [x.name, *params], x.shape, **attrs)


def conv_block(b: Builder, x: Value) -> Value:
    """Conv [-> BN] [-> activation]: square or 1xk/kx1 kernels, sometimes strided, dilated,
    depthwise, with asymmetric pads or auto_pad; or a ConvTranspose."""
    if b.chance(0.12):
        return conv_transpose(b, x)
    cin = x.shape[1]
    depthwise = b.chance(0.2)
    stride = 2 if b.chance(0.15) and min(x.shape[2:]) >= 6 else 1
    cout = cin if depthwise else int(b.pick([2, 3, 4, 6, 8]))
    kernel = b.pick([(1, 1), (3, 3), (3, 3), (3, 3), (1, 3), (3, 1), (5, 5), (2, 2)])
    dilation = 2 if b.chance(0.1) else 1
    pads = None if b.chance(0.85) else [int(v) for v in b.rng.integers(0, 3, 4)]
    dilated_same = dilation != 1  # onnxruntime has no dilated SAME_UPPER
    auto_pad = b.pick(["SAME_UPPER", "VALID"]) if b.chance(0.08) and not dilated_same else None
    y = conv(b, x, cout, kernel, pads, stride, dilation, group=cin if depthwise else 1, auto_pad=auto_pad)
    if b.chance(0.6):
        y = batchnorm(b, y)
    if b.chance(0.6):
        y = activation(b, y)
    return y


def bn_then_conv(b: Builder, x: Value) -> Value:
    """[activation ->] BN -> Conv (sometimes depthwise or strided): the BN folds forward only into
    an unpadded Conv."""
    y = batchnorm(b, activation(b, x) if b.chance(0.5) else x)
    kernel = b.pick([(1, 1), (3, 3), (3, 3), (1, 3)])
    pads = _centred(kernel, 1) if b.chance(0.4) else [0, 0, 0, 0]
    depthwise = b.chance(0.25)
    stride = 2 if b.chance(0.15) and min(y.shape[2:]) >= 6 else 1
    cout = y.shape[1] if depthwise else int(b.pick([2, 4, 6]))
    return conv(b, y, cout, kernel, pads, stride=stride, group=y.shape[1] if depthwise else 1)


def _pads_tensor(b: Builder, x: Value, spatial: list[int]) -> tuple[list[str], list[int]]:
    """The Pad inputs (pads [, constant_value [, axes]]) and the full [begin..., end...] pads."""
    full = [0, 0, spatial[0], spatial[1], 0, 0, spatial[2], spatial[3]]
    if b.chance(0.1):  # a channel pad: never foldable into the conv's spatial pads
        full[1] = 1
    if b.chance(0.08) and min(x.shape[2:]) >= 4:  # a crop: negative pads
        full[2] = -1
    value = None
    if b.chance(0.5):
        value = b.scalar(0.0 if b.chance(0.8) else 0.5, "padval", rank0=True)
    if b.opset >= 18 and full[1] == 0 and b.chance(0.4):
        axes = [2, 3] if b.chance(0.5) else [-2, -1]
        inputs = [b.ints([full[2], full[3], full[6], full[7]], "pads"), value or "", b.ints(axes, "axes")]
        return inputs, full
    return [b.ints(full, "pads")] + ([value] if value else []), full


def pad_block(b: Builder, x: Value) -> Value:
    """Pad (zeros, usually) -> Conv / AveragePool / MaxPool: the "same" padding exporters write."""
    b.families.add("pad")
    spatial = [int(v) for v in b.rng.integers(0, 3, 4)]
    inputs, full = _pads_tensor(b, x, spatial)
    mode = "constant" if b.chance(0.85) else "reflect"
    if mode == "reflect":
        spatial = [min(p, d - 1) for p, d in zip(spatial, [*x.shape[2:], *x.shape[2:]], strict=True)]
        full = [0, 0, spatial[0], spatial[1], 0, 0, spatial[2], spatial[3]]
        inputs = [b.ints(full, "pads")]
    attrs = {"mode": mode} if mode != "constant" or b.chance(0.3) else {}
    shape = tuple(d + full[i] + full[i + 4] for i, d in enumerate(x.shape))
    padded = b.node("Pad", [x.name, *inputs], shape, **attrs)
    reader = b.pick(["Conv", "Conv", "AveragePool", "MaxPool"])
    if reader == "Conv":
        kernel = b.pick([(1, 1), (3, 3), (3, 3)])
        pads = _centred(kernel, 1) if b.chance(0.3) else [0, 0, 0, 0]
        return conv(b, padded, int(b.pick([2, 4])), kernel, pads, auto_pad="VALID" if b.chance(0.15) else None)
    return pool(b, padded, op=reader)


def pool(b: Builder, x: Value, op: str | None = None) -> Value:
    """MaxPool / AveragePool (kernel, stride, pads, ceil_mode, count_include_pad) or GlobalAveragePool."""
    b.families.add("pooling")
    op = op or b.pick(["MaxPool", "AveragePool", "GlobalAveragePool"])
    if op == "GlobalAveragePool":
        return b.node(op, [x.name], (*x.shape[:2], 1, 1))
    k = int(b.pick([1, 2, 3])) if min(x.shape[2:]) >= 3 else 1
    stride = int(b.pick([1, 1, 2]))
    p = int(b.rng.integers(0, (k - 1) // 2 + 1)) if k > 1 else 0
    ceil = b.chance(0.2) and all(ceil_is_unambiguous(d, k, (p, p), stride) for d in x.shape[2:])
    attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": [p, p, p, p]}
    if ceil:
        attrs["ceil_mode"] = 1
    if op == "AveragePool" and b.chance(0.5):
        attrs["count_include_pad"] = 1
    shape = (*x.shape[:2], *(conv_out(d, k, (p, p), stride, ceil=ceil) for d in x.shape[2:]))
    return b.node(op, [x.name], shape, **attrs)


def conv_chain(b: Builder, x: Value) -> Value:
    """Conv -> [per-channel scale/shift] -> pointwise Conv: one Conv after fold-linear."""
    b.families.add("conv")
    stride = 2 if b.chance(0.2) and min(x.shape[2:]) >= 6 else 1
    y = conv(b, x, cout=int(b.pick([2, 3, 4])), stride=stride, dilation=2 if b.chance(0.1) else 1)
    if b.chance(0.5):
        y = scale_shift(b, y)
    if b.chance(0.15):  # a depthwise pointwise conv: per-channel scale, not foldable as a chain
        return conv(b, y, cout=y.shape[1], kernel=(1, 1), group=y.shape[1])
    return conv(b, y, cout=int(b.pick([2, 4, 6])), kernel=(1, 1))


def _add_tree(b: Builder, terms: list[Value]) -> Value:
    """Sum the terms with Adds in a random association order."""
    terms = list(terms)
    while len(terms) > 1:
        i = int(b.rng.integers(len(terms) - 1))
        left, right = terms.pop(i), terms.pop(i)
        shape = tuple(np.broadcast_shapes(left.shape, right.shape))
        terms.insert(i, b.binary("Add", left.name, right.name, shape))
    return terms[0]


REPVGG_STYLES = ("repvgg", "repvgg", "acnet", "depthwise", "dilated", "misaligned", "strided")


def _rep_branches(b: Builder, x: Value, style: str) -> list[Value]:
    """The conv branches of one re-parameterizable block (same output shape each)."""
    c = x.shape[1]
    if style == "acnet":  # 3x3 + 1x3 + 3x1, centred
        return [conv(b, x, c, k, _centred(k, 1)) for k in ((3, 3), (1, 3), (3, 1))]
    if style == "misaligned":  # equal output shapes, kernels not aligned: must not merge
        return [conv(b, x, c, (3, 3), [1, 1, 1, 1]), conv(b, x, c, (3, 3), [2, 1, 0, 1])]
    if style == "strided":
        return [conv(b, x, c, (3, 3), [1, 1, 1, 1], stride=2), conv(b, x, c, (1, 1), [0, 0, 0, 0], stride=2)]
    group = c if style == "depthwise" else 1
    dilation = 2 if style == "dilated" else 1
    return [
        conv(b, x, c, (3, 3), _centred((3, 3), dilation), dilation=dilation, group=group),
        conv(b, x, c, (1, 1), [0, 0, 0, 0], group=group),
    ]


def repvgg(b: Builder, x: Value) -> Value:
    """RepVGG / ACNet branches on one input summed: kxk (+BN), 1x1 (+BN), identity (BN, x or x*s);
    also depthwise, dilated, strided and misaligned variants."""
    b.families.add("repvgg")
    c = x.shape[1]
    style = b.pick(REPVGG_STYLES)
    if min(x.shape[2:]) < 3:
        style = "repvgg"
    branches = [batchnorm(b, br) if b.chance(0.4) else br for br in _rep_branches(b, x, style)]
    identity = "none" if style == "strided" else b.pick(["bn", "x", "scale", "none"])
    if identity == "bn":
        branches.append(batchnorm(b, x))
    elif identity == "x":
        branches.append(x)
    elif identity == "scale":
        branches.append(b.binary("Mul", x.name, channel_const(b, x, b.rng.uniform(0.5, 1.5, c)), x.shape))
    if b.chance(0.2):
        branches.append(Value(channel_const(b, x, b.vector(c)), (1, c, 1, 1)))
    b.rng.shuffle(branches)
    return _add_tree(b, branches)


def to_vector(b: Builder, x: Value) -> Value:
    """Image -> [B, F]: GlobalAveragePool + Flatten, Flatten, ReduceMean over H,W, or a Reshape."""
    style = b.pick(["gap_flatten", "flatten", "reduce", "reshape"])
    if style == "gap_flatten":
        b.families.add("pooling")
        pooled = b.node("GlobalAveragePool", [x.name], (*x.shape[:2], 1, 1))
        return b.node("Flatten", [pooled.name], x.shape[:2], axis=1)
    if style == "flatten":
        b.families.add("reshape_ops")
        return b.node("Flatten", [x.name], (x.shape[0], int(np.prod(x.shape[1:]))), axis=1)
    if style == "reduce":
        return b.reduce_mean(x, [2, 3], keepdims=0)
    return b.reshape(x, (x.shape[0], int(np.prod(x.shape[1:]))))
