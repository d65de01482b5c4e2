"""Random, valid ONNX graphs shaped like what exporters write, for the pass fuzzer.

Why a generator of its own: the hypothesis strategy of the property tests
(tests/graph_strategies.py) builds tiny elementwise graphs; the passes' real targets are
the subgraphs exporters emit (Conv/BN/Pad stacks, RepVGG branches, MatMul+bias chains,
Shape->Gather->Concat->Reshape arithmetic, decomposed LayerNorm/RMSNorm/GELU, attention
blocks). This package writes those, in the spellings exporters vary (operand order, Pow or
Mul, Div or Mul by the reciprocal, ReduceMean axes as attribute or input by opset), next to
what must not be rewritten (non-zero pads, padded following convs, shared weights,
graph outputs in the middle of a pattern), so a pass that is not exact shows it on
onnxruntime outputs.

`generate(seed, index)` is deterministic: example `index` uses its own generator seeded
from (seed, index), so any example can be rebuilt alone. Every graph is meant to pass
`onnx.checker.check_model(full_check=True)` and to run in onnxruntime CPU at batch sizes
`BATCHES` (dynamic batch) or its fixed batch; one that does not is a bug here.
Blocks record the families they cover in `FuzzGraph.families` (FAMILIES lists them).

Modules: `builder` (values, initializers, opset-aware node spellings), one per family of blocks
(`elementwise`, `images`, `sequences`, `shapes`), and `assemble` (choosing blocks, `generate`,
`random_feeds`).
"""

from scripts.fuzz_graphs.assemble import generate, random_feeds
from scripts.fuzz_graphs.builder import BATCH_DIM, BATCHES, FAMILIES, OPSETS, FuzzGraph

__all__ = ["BATCHES", "BATCH_DIM", "FAMILIES", "OPSETS", "FuzzGraph", "generate", "random_feeds"]
