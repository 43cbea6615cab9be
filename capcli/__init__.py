"""capcli: batch image captioning with ONNX bundles driven by onnxruntime."""

__version__ = "0.1.0"
