"""Import the ofa package (Once-for-All's code, a test-only install) without torchvision.

ofa imports ``torchvision.transforms.functional`` at import time, for its data loaders only.
torchvision does not import beside our CPU torch wheel, so we register stand-in modules
(each child also an attribute of its parent) before importing ofa; the networks never use them.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

_STANDINS = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.datasets",
)


def import_ofa() -> Any:
    """The ``ofa.imagenet_classification.elastic_nn.networks`` module, or skip if absent."""
    try:
        import importlib.util

        if importlib.util.find_spec("ofa") is None:
            pytest.skip("the ofa package is not installed (make test installs it)")
    except ValueError:
        pass
    _register_standins()
    from ofa.imagenet_classification.elastic_nn import networks

    return networks


def _placeholder(name: str) -> type:
    """Any class ofa subclasses or names at import time (e.g. RandomResizedCrop)."""
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (), {"__init__": lambda self, *a, **k: None})


def _register_standins(names: tuple[str, ...] = _STANDINS) -> None:
    for name in names:
        if name in sys.modules and not getattr(sys.modules[name], "_nas_standin", False):
            continue  # a real torchvision (or an earlier stand-in) is already there
        mod = types.ModuleType(name)
        mod._nas_standin = True  # type: ignore[attr-defined]
        mod.__getattr__ = _placeholder  # type: ignore[method-assign]
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
