"""Elastic supernets, table-backed spaces and sub-network extraction."""

from __future__ import annotations

from nas.supernets import (
    nb201,  # noqa: F401  (registers "nb201")
    subnet_task,  # noqa: F401  (registers resnet50, mobilenetv3, ...)
)
from nas.supernets._registry import (
    SUPERNETS,
    create_supernet,
    list_supernets,
    register_supernet,
)

__all__ = ["SUPERNETS", "create_supernet", "list_supernets", "register_supernet"]
