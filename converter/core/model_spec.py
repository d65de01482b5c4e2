"""ModelSpec: what trtforge needs to know of a torch model to export, feed and verify it.

Built-in demos and user `module:factory` functions both produce one; a user factory
may return a ModelSpec itself to ship real sample data with its model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from converter.core.kv_cache import CacheLayout
from converter.core.profiles import ShapeProfile

Feeds = dict[str, np.ndarray]


@dataclass
class ModelSpec:
    """A torch model plus how to feed it."""

    name: str
    factory: Callable[[], Any]  # -> torch.nn.Module in eval mode
    input_names: list[str]
    output_names: list[str]
    sample_feeds: Callable[[int, int], list[Feeds]]  # (num_batches, batch_size) -> feeds
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    profiles: dict[str, ShapeProfile] = field(default_factory=dict)
    sample_source: str = "synthetic"  # "demo:<name>" for real data; recorded in ONNX metadata
    task: str = "generic"  # "embedding" | "classification" | "language-model" | "text-generation-with-past"
    cache: CacheLayout | None = None  # set for a decoder exported with its KV cache
    # the files whose bytes decide the model (its weights): with the code, what identifies a
    # conversion before it runs (the result cache); None = unknown (a user factory)
    weight_files: Callable[[], list[Any]] | None = None
    _module: Any = field(default=None, repr=False)

    def module(self) -> Any:
        """The torch module, built once per spec (export and verification share it)."""
        if self._module is None:
            self._module = self.factory()
        return self._module
