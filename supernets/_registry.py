"""The registry of supernets and table-backed search spaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nas.search.registry import Registry

if TYPE_CHECKING:
    from nas.search.task import Task

SupernetFactory = Callable[..., "Task"]
SUPERNETS: Registry[SupernetFactory] = Registry("supernet")


def register_supernet(name: str) -> Callable[[SupernetFactory], SupernetFactory]:
    """Decorator: register a factory ``(hw=..., data=..., **options) -> Task`` as ``name``."""
    return SUPERNETS.register(name)


def create_supernet(name: str, **options: Any) -> Task:
    """Build the search task of supernet ``name`` (e.g. ``hw="raspi4"``, ``data="cifar10"``)."""
    return SUPERNETS.get(name)(**options)


def list_supernets() -> list[str]:
    """Names of every registered supernet."""
    return SUPERNETS.names()
