"""The Pass seam: `run(graph, ctx) -> PassResult`.

A pass rewrites an onnx-graphsurgeon graph in place and returns a PassResult that
says what it changed (counts by kind, touched node names) and which candidates it
looked at but left alone, with the reason. The manager (passes/manager.py) hands
every pass a graph of its own, cleans up dead nodes afterwards, times it and
records the result, so a pass module holds only find / check / rewrite.

Contract for every pass:
- exact passes keep outputs equal within float tolerance; lossy passes say so
  (`exact = False`) and the verifier measures what they cost;
- running a pass twice changes nothing the second time (idempotent);
- a pass never raises on a graph it does not understand: it records why it skipped.

Optional class attributes the manager reads (absent means the safe default):
- `keeps_types = True`: the pass only removes nodes and rewires readers to tensors of
  the same value (new tensors are constants), in ways shape inference does not see
  through differently (removing an Identity in shape arithmetic would not qualify:
  inference's data propagation stops at Identity). Re-inferring afterwards would tell
  nothing new, so the manager skips it (tests/test_pass_properties.py checks this);
- `reads_weights = False` (model-level passes): the pass never reads or rewrites weight
  values, so it may be handed the model without its large weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import onnx_graphsurgeon as gs


@dataclass
class PassContext:
    """What a pass may know beyond the graph: target opset, shapes, calibration data, options."""

    opset: int
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calibration: Any = None  # a calibration.CalibrationData when the recipe supplies one
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rejection:
    """A candidate a pass examined and did not rewrite, and why."""

    node: str
    reason: str


@dataclass
class PassResult:
    """What one pass did to the graph."""

    changed: dict[str, int] = field(default_factory=dict)
    touched: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def count(self, kind: str, node_name: str | None = None, n: int = 1) -> None:
        """Record `n` changes of `kind`, optionally naming the node touched."""
        self.changed[kind] = self.changed.get(kind, 0) + n
        if node_name:
            self.touched.append(node_name)

    def reject(self, node_name: str, reason: str) -> None:
        self.rejected.append(Rejection(node_name, reason))

    @property
    def total_changes(self) -> int:
        return sum(self.changed.values())


class Pass(Protocol):
    """A graph rewrite. Implementations are small classes or dataclasses holding options."""

    name: str
    exact: bool

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult: ...
