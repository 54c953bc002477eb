"""Choices and bounds shared by the export modules and their command line (kept free of heavy
imports, so that `zoo --help` does not load torch)."""

import os

POOLINGS = ("avg", "gem", "max")
INPUT_KINDS = ("uint8", "float")
ENGINES = ("auto", "torch", "onnx", "tensorrt")  # auto: the fastest that keeps fp32 accuracy (export.autoselect)
# Bounds of the numeric options: beyond them a value is a typo, and used as given it would hang,
# exhaust memory or abort inside FAISS / ONNX Runtime.
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))
MAX_BATCH = 4096      # also the largest batch the ONNX export records
MAX_K = 10_000
HNSW_M = (2, 256)
OPSETS = (18, 23)     # what torch's dynamo exporter writes (it builds opset 18 and converts upwards)
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def cache_root():
    """sslzoo's cache folder: ``$ZOO_CACHE``, else ``$XDG_CACHE_HOME/sslzoo``, else ``~/.cache/sslzoo``."""
    from pathlib import Path

    root = os.environ.get("ZOO_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                       "sslzoo")
    return Path(root)
