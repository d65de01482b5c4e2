"""Custom ops TensorRT lacks: one folder per op, one ONNX domain (`trtforge`), versioned.

Each op folder holds:
- kernel.cu     the CUDA kernels (compiled by build.py for sm_80 ... sm_121);
- reference.py  the torch definition of correct;
- onnx.py       the op as an ONNX local function made of standard ops: onnxruntime CPU
                runs it and TensorRT-RTX (no plugin API) inlines it;
- plugin.py     the full-TensorRT plugin (ahead-of-time kernels, no Python at run time).

Ops: group_quant_matmul (W4A16/W2A16 weight-only GEMM) and gated_linear_attention.
"""

DOMAIN = "trtforge"
DOMAIN_VERSION = 1  # bump when an op's inputs, attributes or semantics change
