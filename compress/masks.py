"""Weight masks searched on frozen weights (Lottery Jackpots, Zhang et al.).

Every prunable layer (Conv2d, Linear) gets a real-valued score per weight. The forward pass uses
``weight * mask``; the mask keeps exactly the layer's share of weights, and gradients reach the
scores through a straight-through estimator (``weight * (mask + s - s.detach())`` has the value
``weight * mask`` and the gradient ``grad * weight`` for the scores). Only scores train; the
weights never change.

- :func:`layer_rates`: per-layer sparsity from one global magnitude threshold, or uniform;
- :func:`magnitude_masks`: the masks of magnitude pruning at those rates (the search's start);
- :func:`restrict`: the short restriction — pruned weights scoring above the layer's threshold
  and kept weights scoring at or below it swap in equal numbers (a scheduled share of them), so
  the sparsity stays exact and the mask changes slowly;
- :class:`MaskedWeights`: the masks and scores attached to a model with
  ``torch.nn.utils.parametrize``, and removed again leaving zeros in the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

Allocation = Literal["global", "uniform"]
#: initial scores of kept and pruned weights (magnitude initialisation)
KEPT_SCORE, PRUNED_SCORE = 1.0, 0.99


def prunable(model: nn.Module) -> dict[str, nn.Module]:
    """Conv2d and Linear layers by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def _weight(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w.detach()


def layer_rates(model: nn.Module, sparsity: float, allocation: Allocation) -> dict[str, float]:
    """Sparsity of each prunable layer for an overall ``sparsity`` of their weights.

    ``global``: one magnitude threshold across layers (layers with small weights lose more);
    ``uniform``: every layer at ``sparsity``. Rates are exact counts / sizes.

    Raises:
        ValueError: ``sparsity`` outside [0, 1) or an unknown allocation.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), not {sparsity}")
    layers = prunable(model)
    if allocation == "uniform":
        return {n: _count(m, sparsity) / _weight(m).numel() for n, m in layers.items()}
    if allocation != "global":
        raise ValueError(f"unknown allocation {allocation!r}; known: global, uniform")
    mags = torch.cat([_weight(m).abs().flatten() for m in layers.values()])
    n_prune = round(sparsity * mags.numel())
    if n_prune == 0:
        return dict.fromkeys(layers, 0.0)
    # rank all weights at once; the n_prune smallest are pruned (ties broken by position)
    order = torch.argsort(mags, stable=True)
    pruned = torch.zeros(mags.numel(), dtype=torch.bool)
    pruned[order[:n_prune]] = True
    rates, at = {}, 0
    for n, m in layers.items():
        size = _weight(m).numel()
        rates[n] = float(pruned[at : at + size].sum()) / size
        at += size
    return rates


def _count(m: nn.Module, rate: float) -> int:
    """Weights of ``m`` pruned at ``rate`` (rounded)."""
    return round(rate * _weight(m).numel())


def magnitude_masks(model: nn.Module, rates: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Boolean masks keeping each layer's largest-magnitude weights at its rate (exact counts)."""
    masks = {}
    for n, m in prunable(model).items():
        w = _weight(m)
        keep = w.numel() - _count(m, rates.get(n, 0.0))
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        order = torch.argsort(w.abs().flatten(), descending=True, stable=True)
        mask[order[:keep]] = True
        masks[n] = mask.view_as(w)
    return masks


def restrict(scores: torch.Tensor, mask: torch.Tensor, fraction: float = 1.0) -> int:
    """Update ``mask`` in place from ``scores`` under the short restriction; returns the swaps.

    τ is the score at the pruning quantile: the (k+1)-th best score, k = kept weights (the best
    score a weight outside a fresh top-k could have). Pruned weights scoring above τ may come in
    and kept weights scoring at or below τ may go out, in equal numbers: the best
    ``ceil(fraction * min(#in, #out))`` newcomers replace as many of the worst kept weights.
    The number of kept weights never changes.
    """
    flat_s, flat_m = scores.detach().flatten(), mask.view(-1)
    k = int(flat_m.sum())
    if k == 0 or k == flat_m.numel():
        return 0
    tau = torch.topk(flat_s, k + 1, sorted=True).values[-1]
    incoming = (~flat_m & (flat_s > tau)).nonzero().flatten()
    outgoing = (flat_m & (flat_s <= tau)).nonzero().flatten()
    n = math.ceil(fraction * min(len(incoming), len(outgoing)))
    if n == 0:
        return 0
    best_in = incoming[torch.topk(flat_s[incoming], n).indices]
    worst_out = outgoing[torch.topk(flat_s[outgoing], n, largest=False).indices]
    flat_m[best_in] = True
    flat_m[worst_out] = False
    return n


class _Masked(nn.Module):
    """Parametrisation ``weight -> weight * (mask + scores - scores.detach())``."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor, scores: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.clone())
        self.scores = nn.Parameter(scores.clone())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(w.dtype)
        return w * (m + self.scores - self.scores.detach())


class MaskedWeights:
    """Masks and scores attached to ``model``'s prunable layers (weights frozen).

    Use as a context: on exit the parametrisations are removed and the masked weights written
    back (pruned entries exactly zero).
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        self.model = model
        self.layers = {n: m for n, m in prunable(model).items() if n in masks}
        for n, m in self.layers.items():
            mask = masks[n].to(torch.bool)
            scores = torch.where(mask, KEPT_SCORE, PRUNED_SCORE).to(_weight(m).dtype)
            parametrize.register_parametrization(m, "weight", _Masked(mask, scores))
            original = m.parametrizations.weight.original  # type: ignore[union-attr]
            assert isinstance(original, torch.Tensor)
            original.requires_grad_(False)

    def _param(self, name: str) -> _Masked:
        p = self.layers[name].parametrizations.weight[0]  # type: ignore[index,union-attr]
        assert isinstance(p, _Masked)
        return p

    def scores(self) -> Iterator[nn.Parameter]:
        """The trainable scores, one tensor per layer."""
        for n in self.layers:
            yield self._param(n).scores

    def masks(self) -> dict[str, torch.Tensor]:
        """The current masks (copies)."""
        return {n: self._param(n).mask.clone() for n in self.layers}

    def restrict(self, fraction: float = 1.0) -> int:
        """Apply :func:`restrict` to every layer; the total number of swaps."""
        total = 0
        for n in self.layers:
            p = self._param(n)
            total += restrict(p.scores, p.mask, fraction)
        return total

    def remove(self) -> None:
        """Write ``weight * mask`` into each layer and drop the parametrisation."""
        for n, m in self.layers.items():
            mask = self._param(n).mask
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            with torch.no_grad():
                w = m.weight
                assert isinstance(w, torch.Tensor)
                w.mul_(mask.to(w.dtype))
                w.requires_grad_(True)

    def __enter__(self) -> MaskedWeights:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
