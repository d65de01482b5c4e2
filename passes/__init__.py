"""Graph passes (families in sub-folders; infra in base.py, manager.py, registry.py).

onnx-graphsurgeon logs warnings to stderr that say nothing to trtforge's users ("colored
module is not installed", "Could not convert: BFLOAT16 to a NumPy type": bf16 tensors stay
ONNX-typed, which the precision pass expects); trtforge reports what matters itself.
"""

from onnx_graphsurgeon.logger import G_LOGGER

G_LOGGER.severity = G_LOGGER.ERROR
