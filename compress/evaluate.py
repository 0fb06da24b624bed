"""Measuring a model on data: top-1 accuracy, and BatchNorm recalibration."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


def top1(model: nn.Module, batches: Iterable[Batch], device: str = "cpu") -> float:
    """Top-1 accuracy in percent (0-100) of ``model`` (eval mode) over ``batches``.

    Raises:
        ValueError: no samples, or the model produced non-finite logits.
    """
    was_training = model.training
    model.eval().to(device)
    right = total = 0
    try:
        with torch.no_grad():
            for x, y in batches:
                logits = model(x.to(device))
                if not torch.isfinite(logits).all():
                    raise ValueError("the model produced NaN or infinite outputs")
                right += int((logits.argmax(1).cpu() == y).sum())
                total += int(y.numel())
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("no samples to measure accuracy on")
    return 100.0 * right / total


def recalibrate_bn(model: nn.Module, batches: Iterable[Batch], device: str = "cpu") -> int:
    """Re-estimate every BatchNorm's running mean and variance on ``batches``.

    A sub-network extracted from a weight-sharing supernet inherits statistics gathered over
    many sub-networks; Once-for-All re-estimates them on a few thousand training images before
    measuring accuracy. Statistics are the exact average over the batches (momentum None).
    Leaves the model in eval mode and returns the number of images used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train().to(device)
    seen = 0
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device))
                seen += int(x.shape[0])
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
    return seen
