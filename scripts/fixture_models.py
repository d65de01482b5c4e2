"""Generated models for benchmarks and tests that no package ships.

`repvgg_spec()`: a RepVGG-style CNN in its *training-time* form (every block sums a
3x3 conv+BN branch, a 1x1 conv+BN branch and, where shapes allow, an identity BN
branch), with randomised BN statistics so folding is not trivially exact. Structural
re-parameterization must turn each block into one 3x3 conv. Verified on crops of
real photographs.
"""

from __future__ import annotations

import torch

from converter.core.model_spec import ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.sample_data import sample_images


def _bn(channels: int) -> torch.nn.BatchNorm2d:
    bn = torch.nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return bn


class RepVGGBlock(torch.nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.dense = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _bn(cout))
        self.pointwise = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, 0, bias=False), _bn(cout))
        self.identity = _bn(cout) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.pointwise(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return torch.relu(y)


class RepVGGNet(torch.nn.Module):
    def __init__(self, widths=(16, 16, 32, 32, 64, 64), classes: int = 10):
        super().__init__()
        torch.manual_seed(0)
        blocks, cin = [], 3
        for i, width in enumerate(widths):
            blocks.append(RepVGGBlock(cin, width, 2 if i in (0, 2, 4) else 1))
            cin = width
        self.blocks = torch.nn.Sequential(*blocks)
        self.head = torch.nn.Linear(cin, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(image).mean(dim=(2, 3)))


def _feeds(num_batches: int, batch_size: int):
    images = (sample_images(num_batches * batch_size, 64) - 0.5) / 0.5
    return [{"image": images[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


def repvgg_spec() -> ModelSpec:
    return ModelSpec(
        name="scripts.fixture_models:repvgg_spec",
        factory=lambda: RepVGGNet().eval(),
        input_names=["image"],
        output_names=["logits"],
        sample_feeds=_feeds,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        profiles={"image": ShapeProfile((1, 3, 64, 64), (4, 3, 64, 64), (16, 3, 64, 64))},
        sample_source="spec:scripts.fixture_models:repvgg_spec",
        task="classification",
    )
