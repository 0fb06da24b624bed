"""Import facenet-pytorch's MTCNN networks (a test-only install) without torchvision.

``facenet_pytorch/__init__.py`` imports its face-recognition and training modules as well, and
``models/mtcnn.py`` imports torchvision (for its detection pipeline, which the R-Net / O-Net
never use). So the package is entered through a bare stand-in of its top-level module (its real
folder as ``__path__``, its ``__init__`` not run) and torchvision is replaced by the stand-ins
that the ofa compatibility tests use.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from typing import Any

import pytest

from tests.supernets.ofa_compat import _register_standins

_STANDINS = (
    "torchvision",
    "torchvision.transforms",
    "torchvision.transforms.functional",
    "torchvision.ops",
    "torchvision.ops.boxes",
)


def import_mtcnn() -> Any:
    """The ``facenet_pytorch.models.mtcnn`` module, or skip if facenet-pytorch is absent."""
    if "facenet_pytorch.models.mtcnn" in sys.modules:
        return sys.modules["facenet_pytorch.models.mtcnn"]
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the facenet-pytorch package is not installed (make test installs it)")
    _register_standins(_STANDINS)
    if "facenet_pytorch" not in sys.modules:
        package = types.ModuleType("facenet_pytorch")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["facenet_pytorch"] = package
    from facenet_pytorch.models import mtcnn

    return mtcnn
