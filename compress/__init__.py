"""Compression plugins and what they share with the supernets: architectures, data, model files.

``nas.compress.load_model(path)`` rebuilds any model this project saved (safetensors + JSON);
``load_checkpoint(path, arch, arch_kwargs)`` loads anyone's state_dict into a zoo architecture
(``list_models()``) or an importable factory.
"""

from __future__ import annotations

from nas.compress.arch import Network, Preprocessing, build
from nas.compress.loading import build_model, load_checkpoint
from nas.compress.model_io import ModelFileError, export_onnx, load_model, save_model
from nas.compress.zoo import create_model, list_models, register_model

__all__ = [
    "ModelFileError",
    "Network",
    "Preprocessing",
    "build",
    "build_model",
    "create_model",
    "export_onnx",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_model",
]
