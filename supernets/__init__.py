"""Elastic supernets, table-backed spaces and sub-network extraction."""

from __future__ import annotations

import importlib

from nas.supernets._registry import (
    SUPERNETS,
    create_supernet,
    list_supernets,
    register_supernet,
)
from nas.supernets.families import FAMILIES, build_supernet, load_supernet, save_supernet

__all__ = [
    "FAMILIES",
    "SUPERNETS",
    "build_supernet",
    "create_supernet",
    "list_supernets",
    "load_supernet",
    "register_supernet",
    "save_supernet",
]

# The search tasks need optuna; the networks themselves need torch alone, so that latency tables
# can be built on a machine with nothing but torch (bench/profile_gpu.sh).
for _module in ("nb201", "subnet_task"):  # register "nb201", then resnet50, mobilenetv3, ...
    try:
        importlib.import_module(f"nas.supernets.{_module}")
    except ModuleNotFoundError as _e:
        if (_e.name or "").split(".")[0] not in ("optuna", "scipy", "sklearn"):
            raise
