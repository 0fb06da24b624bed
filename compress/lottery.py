"""Iterative magnitude pruning with rewinding (the Lottery Ticket procedure), a baseline that
does train weights.

Round 0 trains the dense network from its seeded initialisation; every later round prunes
``rate`` of the remaining Conv2d / Linear weights (global magnitude), rewinds the survivors to
their values after ``rewind_epochs`` of round 0 (Frankle et al.'s rewinding; 0 = the
initialisation), and trains again with the mask held. After round r the sparsity is
``1 - (1 - rate) ** r``: 83 / 91 / 96 % after rounds 8 / 11 / 14 at the default 20 %.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from nas.compress.arch import Network
from nas.compress.masks import layer_rates, magnitude_masks, prunable
from nas.search.errors import UserError

log = logging.getLogger("nas")


@dataclass(frozen=True)
class IMPSettings:
    rounds: int = 14
    epochs: int = 5
    rate: float = 0.2
    rewind_epochs: int = 1
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.epochs < 1 or not 0 < self.rate < 1:
            raise UserError("IMP needs rounds >= 1, epochs >= 1 and 0 < rate < 1")
        if not 0 <= self.rewind_epochs <= self.epochs:
            raise UserError("IMP rewinds to an epoch of the first round (0 .. epochs)")


def train_masked(
    net: Network, data: str, s: IMPSettings, masks: dict[str, torch.Tensor], seed: int
) -> Iterator[int]:
    """Train ``net`` for ``s.epochs`` with ``masks`` held; yields after each epoch."""
    from nas.compress.datasets import batches, load_data
    from nas.supernets.train import lr_at

    train = load_data(data, "train")
    decay = [p for p in net.parameters() if p.ndim > 1]
    rest = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=s.lr,
        momentum=0.9,
        nesterov=True,
    )
    layers = prunable(net)
    steps = s.epochs * math.ceil(len(train) / s.batch_size)
    done = 0
    for epoch in range(s.epochs):
        net.train()
        for x, y in batches(
            train,
            net.preprocessing,
            s.batch_size,
            shuffle=True,
            seed=seed * 1000 + epoch,
            augment=True,
        ):
            for group in opt.param_groups:
                group["lr"] = lr_at(done / steps, s.lr, warmup=0.05)
            loss = F.cross_entropy(net(x), y)
            if not torch.isfinite(loss):
                raise UserError(f"IMP training diverged: the loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for name, mask in masks.items():
                    w = layers[name].weight
                    assert isinstance(w, torch.Tensor)
                    w.mul_(mask)
            done += 1
        yield epoch + 1


def iterative_magnitude_pruning(
    init: Network, data: str, settings: IMPSettings, *, evaluate: Any
) -> list[dict[str, Any]]:
    """Run IMP from the (untrained) ``init``; one row per round: sparsity, ``evaluate(net)``
    (e.g. validation and test top-1), epochs trained so far, seconds."""
    t0 = time.monotonic()
    net = copy.deepcopy(init)
    names = list(prunable(net))
    masks = {n: torch.ones(_shape(prunable(net)[n]), dtype=torch.bool) for n in names}
    rewind: dict[str, torch.Tensor] | None = None
    rows, epochs = [], 0
    for r in range(settings.rounds + 1):
        for epoch in train_masked(net, data, settings, masks, settings.seed + r):
            epochs += 1
            if r == 0 and epoch == settings.rewind_epochs:
                rewind = copy.deepcopy(net.state_dict())
        if rewind is None:  # rewind_epochs == 0: the initialisation
            rewind = copy.deepcopy(init.state_dict())
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        row = {"round": r, "sparsity": 1 - kept / total, "epochs_trained": epochs}
        row |= evaluate(net.eval())
        row["seconds"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        log.info("IMP round %d: sparsity %.3f %s", r, row["sparsity"], row)
        if r == settings.rounds:
            break
        # prune rate of the remaining weights: the global threshold over surviving magnitudes
        target = 1 - (1 - settings.rate) ** (r + 1)
        masks = _prune(net, masks, target)
        net.load_state_dict(rewind)
        with torch.no_grad():
            for n, m in prunable(net).items():
                w = m.weight
                assert isinstance(w, torch.Tensor)
                w.mul_(masks[n])
    return rows


def _shape(m: torch.nn.Module) -> tuple[int, ...]:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return tuple(w.shape)


def _prune(
    net: Network, masks: dict[str, torch.Tensor], sparsity: float
) -> dict[str, torch.Tensor]:
    """Masks at overall ``sparsity`` by global magnitude, never reviving a pruned weight."""
    probe = copy.deepcopy(net)
    with torch.no_grad():
        for n, m in prunable(probe).items():
            w = m.weight
            assert isinstance(w, torch.Tensor)
            w.mul_(masks[n])  # pruned weights are zero: they rank last
    return magnitude_masks(probe, layer_rates(probe, sparsity, "global"))
