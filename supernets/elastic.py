"""What every elastic (weight-sharing) supernet offers, whatever its family.

A supernet is an ``nn.Module`` whose forward runs the *active* sub-network. A sub-network is a
flat params dict (``d0``, ``e3``, ``k7``, ``w1``, ``r``, ...) — the same dict the search core
proposes. ``r`` is the input resolution: it selects nothing inside the network, but it is part
of the candidate (latency, MACs and accuracy depend on it) and of the extracted model's
preprocessing.

This module imports torch only (no optuna), so supernets build on a bare torch install.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from nas.compress.arch import LayerSpec, Network, Preprocessing, build

Choice = int | float
SubnetParams = dict[str, int | float | str]


class ElasticSupernet(nn.Module, ABC):
    """Base class of the elastic supernets (OFA ResNet50, MobileNetV3, ...)."""

    #: registry name (``resnet50``, ``mobilenetv3``, ...)
    name: ClassVar[str]
    #: the default resolution choices; a checkpoint trained at others replaces them
    default_resolutions: ClassVar[tuple[int, ...]] = (128, 144, 160, 176, 192, 208, 224)

    def __init__(self, n_classes: int = 1000, preprocessing: Preprocessing | None = None):
        super().__init__()
        self.n_classes = n_classes
        self.resolutions: tuple[int, ...] = self.default_resolutions
        self.preprocessing = preprocessing or Preprocessing()

    # -- the space -------------------------------------------------------------------------
    @abstractmethod
    def choices(self) -> dict[str, tuple[Choice, ...]]:
        """Every dimension but ``r``, in a fixed order, with its ordered choices."""

    def dimensions(self) -> dict[str, tuple[Choice, ...]]:
        """Every searchable dimension, ``r`` last."""
        return {**self.choices(), "r": tuple(self.resolutions)}

    def largest(self) -> SubnetParams:
        """The largest sub-network at the largest resolution."""
        return {k: max(v) for k, v in self.dimensions().items()}

    def smallest(self) -> SubnetParams:
        """The smallest sub-network at the smallest resolution."""
        return {k: min(v) for k, v in self.dimensions().items()}

    def sample(self, rng: random.Random) -> SubnetParams:
        """A uniformly random sub-network."""
        return {k: rng.choice(v) for k, v in self.dimensions().items()}

    def check(self, params: Mapping[str, Any]) -> SubnetParams:
        """``params`` validated against :meth:`dimensions` (``r`` optional: largest).

        Raises:
            ValueError: a missing dimension, or a value outside its choices (named).
        """
        dims = self.dimensions()
        out: SubnetParams = {}
        for k, choices in dims.items():
            if k not in params:
                if k == "r":
                    out[k] = max(choices)
                    continue
                raise ValueError(f"{self.name}: sub-network lacks dimension {k!r}")
            v = params[k]
            if not any(v == c for c in choices):
                shown = ", ".join(str(c) for c in choices)
                raise ValueError(f"{self.name}: {k}={v!r} is outside the space ({shown})")
            out[k] = v
        return out

    # -- the active sub-network ------------------------------------------------------------
    @abstractmethod
    def set_active(self, params: Mapping[str, Any]) -> None:
        """Make ``params`` the sub-network that :meth:`forward` runs."""

    @abstractmethod
    def arch_spec(self, params: Mapping[str, Any]) -> list[LayerSpec]:
        """The layer spec (nas.compress.arch) of sub-network ``params``."""

    @abstractmethod
    def copy_weights(self, net: Network, params: Mapping[str, Any]) -> None:
        """Copy the weights of sub-network ``params`` into ``net`` (built from its spec)."""

    def extract(self, params: Mapping[str, Any]) -> Network:
        """Sub-network ``params`` as a standalone model with its weights copied.

        Its outputs equal the supernet's with ``params`` active (in eval mode). Its
        preprocessing is the supernet's at resolution ``params["r"]``.
        """
        p = self.check(params)
        r = int(p["r"])
        pre = Preprocessing(
            input_size=(r, r),
            channels=self.preprocessing.channels,
            mean=self.preprocessing.mean,
            std=self.preprocessing.std,
            classes=self.preprocessing.classes,
        )
        net = build(self.arch_spec(p), pre)
        with torch.no_grad():
            self.copy_weights(net, p)
        return net.train(self.training)

    # -- Once-for-All compatibility --------------------------------------------------------
    @abstractmethod
    def to_ofa(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Keyword arguments of the ofa package's ``set_active_subnet`` for ``params``."""

    def convert_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename the keys of an Once-for-All state_dict to ours (identity by default)."""
        return sd

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (stored with checkpoints)."""
        return {"n_classes": self.n_classes}
