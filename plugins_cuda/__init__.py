"""Custom ops TensorRT lacks: one folder per op (kernel.cu, reference.py, onnx.py, plugin.py).

Not built yet: the custom-plugin issue lands GroupQuantMatMul and GatedLinearAttention
here. The backend seam already reports that TensorRT-RTX has no plugin API, so every
op will also ship as an ONNX local function that its parser inlines.
"""
