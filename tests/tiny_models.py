"""Small torch models for fast end-to-end tests (real images, tiny weights).

`conv_net` is referenced by tests as the spec 'tests.tiny_models:conv_net'; it returns
a ModelSpec, so its real sample data (crops of scikit-learn's photographs) travels
with it and into the exported ONNX metadata.
"""

from __future__ import annotations

import torch

from converter.core.model_spec import ModelSpec
from converter.core.profiles import ShapeProfile
from converter.demos.sample_data import sample_images


class TinyConvNet(torch.nn.Module):
    """conv-BN-ReLU-dropout-conv-pool-linear: exercises folding and cleanup."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.drop = torch.nn.Dropout(0.1)
        self.conv2 = torch.nn.Conv2d(8, 16, 1)
        self.fc = torch.nn.Linear(16, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.bn(self.conv1(image))))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x.reshape(x.shape[0], -1))


def _feeds(num_batches: int, batch_size: int):
    images = (sample_images(num_batches * batch_size, 32) - 0.5) / 0.5
    return [{"image": images[b * batch_size : (b + 1) * batch_size]} for b in range(num_batches)]


def conv_net() -> ModelSpec:
    return ModelSpec(
        name="tests.tiny_models:conv_net",
        factory=lambda: TinyConvNet().eval(),
        input_names=["image"],
        output_names=["logits"],
        sample_feeds=_feeds,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        profiles={"image": ShapeProfile((1, 3, 32, 32), (2, 3, 32, 32), (8, 3, 32, 32))},
        sample_source="spec:tests.tiny_models:conv_net",
        task="classification",
    )


class PlainMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def plain_mlp() -> torch.nn.Module:
    """A bare nn.Module factory: needs --shapes and gets synthetic inputs."""
    return PlainMLP()
