"""Choices shared by the export modules and their command line (kept free of heavy imports, so
that `zoo --help` does not load torch)."""

POOLINGS = ("avg", "gem", "max")
INPUT_KINDS = ("uint8", "float")
ENGINES = ("torch", "onnx", "tensorrt")
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
