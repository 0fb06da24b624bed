"""Masks on frozen weights (the lottery-jackpot groundwork): allocation, magnitude masks, the
short restriction keeping sparsity exact, and the straight-through scores."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nas.compress import create_model
from nas.compress.masks import (
    MaskedWeights,
    layer_rates,
    magnitude_masks,
    prunable,
    restrict,
)


def test_global_and_uniform_rates_hit_the_sparsity() -> None:
    net = create_model("resnet20", width=0.25)
    sizes = {n: m.weight.numel() for n, m in prunable(net).items()}
    total = sum(sizes.values())
    for allocation in ("global", "uniform"):
        rates = layer_rates(net, 0.9, allocation)
        pruned = sum(round(rates[n] * sizes[n]) for n in sizes)
        assert abs(pruned - 0.9 * total) <= len(sizes)
    g = layer_rates(net, 0.9, "global")
    assert len({round(r, 3) for r in g.values()}) > 1  # layers lose different shares
    with pytest.raises(ValueError, match="allocation"):
        layer_rates(net, 0.9, "bogus")  # type: ignore[arg-type]


def test_magnitude_masks_keep_the_largest_weights() -> None:
    net = create_model("resnet20", width=0.25)
    masks = magnitude_masks(net, layer_rates(net, 0.8, "uniform"))
    for n, m in prunable(net).items():
        w, mask = m.weight.detach().abs(), masks[n]
        assert int(mask.sum()) == w.numel() - round(0.8 * w.numel())
        assert w[mask].min() >= w[~mask].max()


def test_restriction_swaps_in_equal_numbers() -> None:
    g = torch.Generator().manual_seed(0)
    for fraction in (1.0, 0.5, 0.0):
        for _ in range(20):
            mask = torch.rand(200, generator=g) < 0.1
            scores = torch.rand(200, generator=g)
            kept = int(mask.sum())
            swaps = restrict(scores, mask, fraction)
            assert int(mask.sum()) == kept
            if fraction == 0.0:
                assert swaps == 0
    mask = torch.tensor([True, True, False, False])
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2])  # weight 2 beats weight 0
    assert restrict(scores, mask) == 1 and mask.tolist() == [False, True, True, False]


def test_scores_learn_while_weights_stay_frozen() -> None:
    torch.manual_seed(0)
    net = create_model("resnet20", width=0.25)
    w0 = {n: m.weight.detach().clone() for n, m in prunable(net).items()}
    masks = magnitude_masks(net, layer_rates(net, 0.9, "global"))
    kept = {n: int(m.sum()) for n, m in masks.items()}
    x, y = net.example_input(16), torch.randint(10, (16,))
    with MaskedWeights(net, masks) as mw:
        opt = torch.optim.SGD(list(mw.scores()), lr=10.0)
        swaps = 0
        for _ in range(4):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            swaps += mw.restrict()
            assert {n: int(m.sum()) for n, m in mw.masks().items()} == kept
        final = mw.masks()
    assert swaps > 0 and any(not torch.equal(final[n], masks[n]) for n in masks)
    for n, m in prunable(net).items():
        assert torch.equal(m.weight.detach(), w0[n] * final[n])
        assert m.weight.requires_grad
