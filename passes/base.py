"""The pass contract: one base class, `Pass`, with its capabilities declared on the class.

A pass is a dataclass holding its options (validated in `__post_init__`, so a bad
value fails when the registry builds the recipe's passes, before anything runs). It
declares, as class attributes:

- `name`: the name recipes use; the registry maps it to the class;
- `level`: "graph" -> `run(graph, ctx) -> PassResult` rewrites an onnx-graphsurgeon
  graph in place; "model" -> `run_model(model, ctx) -> (model, PassResult)` for what
  lives on the ModelProto (opsets, local functions, initializer types gs cannot
  export) or needs the whole model (running it in onnxruntime). The manager
  (passes/manager.py) dispatches on it;
- `exact` (default False): outputs stay equal within float tolerance. Lossy passes
  keep the default and the verifier measures what they cost; the property tests
  (tests/passes/test_pass_properties.py) check every pass that says it is exact;
- `keeps_types` (graph passes; default False): the pass only removes nodes and rewires
  readers to tensors of the same value (new tensors are constants), in ways shape
  inference does not see through differently (removing an Identity in shape
  arithmetic would not qualify: inference's data propagation stops at Identity).
  Re-inferring afterwards would tell nothing new, so the manager skips it (the
  property tests check this);
- `reads_weights` (model passes; default True): False when the pass never reads or
  rewrites weight values, so the manager may hand it the model without its large
  weights and bind them back by name afterwards;
- `needs_calibration` (default False): the pass reads `ctx.calibration`, so the
  pipelines find calibration data for recipes that contain it;
- `needs_plugins` (default ""): why the graph it writes pays off only where a backend
  runs trtforge's plugins (full TensorRT); `convert` refuses the pass for a backend
  without plugins instead of building a worse engine.
Each default is the safe value: a pass that says nothing is treated as lossy, gets its
types re-inferred and the full model, and is not handed data it never asked for.

The manager hands every pass a graph (or model) of its own, cleans up dead nodes
afterwards, times it and records the result, so a pass module holds only
find / check / rewrite. Contract for every pass:
- it returns a PassResult saying what it changed (counts by kind, touched node names),
  which candidates it left alone and why, the opset it moved the model to
  (`opset`, when it changed it) and structured findings (`details`, shown in the
  report under the pass); it never changes `ctx`;
- running it twice changes nothing the second time (idempotent);
- it never raises on a graph it does not understand: it records why it skipped. A
  TrtforgeError it raises on purpose (bad data: InvalidInputError; a valid model it
  cannot handle: UnsupportedError) reaches the user as it is; any other exception
  is a bug, reported as PassFailedError naming the pass (exit code 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import onnx
import onnx_graphsurgeon as gs

from calibration.data import CalibrationData, Feeds, from_feeds

Level = Literal["graph", "model"]
LEVELS: tuple[Level, ...] = ("graph", "model")
CAPABILITIES = ("level", "exact", "keeps_types", "reads_weights", "needs_calibration")


@dataclass
class PassContext:
    """What a pass may know beyond the graph: target opset, shapes, calibration data, options.

    `calibration` may be given as a list of feed dicts: it is wrapped into a
    CalibrationData (an empty list means no data), so passes see one type.
    """

    opset: int
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calibration: CalibrationData | list[Feeds] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.calibration, list):
            self.calibration = from_feeds(self.calibration) if self.calibration else None


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
    opset: int | None = None  # the default-domain opset the pass moved the model to, when it changed it
    details: dict[str, Any] = field(default_factory=dict)  # structured findings (JSON-ready) for the report

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


class PassFailedError(RuntimeError):
    """A pass raised an exception it did not mean to: a bug in trtforge (exit code 1), not the user's input."""

    def __init__(self, pass_name: str, exc: BaseException):
        super().__init__(f"pass '{pass_name}' failed: {type(exc).__name__}: {exc}")
        self.pass_name = pass_name


class Pass:
    """Base of every pass: subclasses are dataclasses of options that declare the capabilities
    (module docstring) and implement `run` (level "graph") or `run_model` (level "model")."""

    name: ClassVar[str]
    level: ClassVar[Level]
    exact: ClassVar[bool] = False
    keeps_types: ClassVar[bool] = False
    reads_weights: ClassVar[bool] = True
    needs_calibration: ClassVar[bool] = False
    needs_plugins: ClassVar[str] = ""

    def requires_calibration(self) -> bool:
        """Whether this pass, with these options, cannot do its job without calibration data.

        `needs_calibration` says the pass reads data when there is some; this says a run
        without any would silently change nothing (e.g. int8 Q/DQ without activation
        ranges), so the pipelines refuse it before anything runs.
        """
        return self.needs_calibration

    def output_precision(self) -> str | None:
        """The float precision the graph computes in after this pass ("fp16", "bf16"), when the pass
        lowers it: the verifier then applies that precision's default tolerances. None: unchanged."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse, at import, a pass whose declarations do not hold together."""
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "name", None), str):
            raise TypeError(f"{cls.__name__}: a pass declares its registered name (name = '...')")
        level = getattr(cls, "level", None)
        if level not in LEVELS:
            raise TypeError(f"{cls.__name__}: level must be one of {LEVELS}, got {level!r}")
        method = "run" if level == "graph" else "run_model"
        if getattr(cls, method) is getattr(Pass, method):
            raise TypeError(f"{cls.__name__}: a {level}-level pass implements {method}()")

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        """Rewrite `graph` in place (level "graph")."""
        raise NotImplementedError(f"{self.name} is a {self.level}-level pass")

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        """Return the rewritten model (level "model"); `model` itself when nothing changed."""
        raise NotImplementedError(f"{self.name} is a {self.level}-level pass")
