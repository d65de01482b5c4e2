"""GroupQuantMatMul (W4A16/W2A16): y = x · dequant(W)ᵀ (+ bias) with per-group scale and zero point.

Files: kernel.cu (CUDA GEMV + tiled GEMM), reference.py (torch definition of correct,
packing and the group quantiser), packing.py (numpy packing used by the pass),
onnx.py (the ONNX local function), plugin.py (full-TensorRT AOT plugin).
"""
