"""Compression plugins and what they share with the supernets: architectures, data, model files.

``nas.compress.load_model(path)`` rebuilds any model this project saved (safetensors + JSON).
"""

from __future__ import annotations

from nas.compress.arch import Network, Preprocessing, build
from nas.compress.model_io import ModelFileError, export_onnx, load_model, save_model

__all__ = [
    "ModelFileError",
    "Network",
    "Preprocessing",
    "build",
    "export_onnx",
    "load_model",
    "save_model",
]
