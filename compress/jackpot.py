"""``jackpot``: sparse sub-networks of pre-trained weights found by searching masks only
(Lottery Jackpots, Zhang et al., TPAMI).

The trained weights never change: a mask per prunable layer is searched by training real-valued
scores through a straight-through estimator (:mod:`nas.compress.masks`), starting from the
magnitude-pruning mask (scores 1.0 kept / 0.99 pruned) and changing under the short restriction
(kept and pruned weights swap in equal numbers, a cosine-decaying share of them), so the
sparsity is exact at every step. BatchNorm's affine parameters stay frozen unless ``train_bn``
lets them train; its running statistics are re-estimated during the search (the model runs in
training mode, as in the authors' code): they are statistics, not trained weights. With labelled
data the scores minimise cross-entropy; without (a model judged by drift) they minimise every
head's squared error to the original's outputs on probe images drawn with another seed than the
probes the model is judged on.

A candidate of the search core is the overall sparsity and how it is spread over layers
(``global``: one magnitude threshold; ``uniform``), or with ``per_layer`` one sparsity per
prunable layer. Evaluations are cached by candidate within a process: the search is costly and
a strategy may propose a candidate twice.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from optuna.distributions import CategoricalDistribution
from torch import nn

from nas.compress.arch import Network
from nas.compress.masks import (
    Allocation,
    MaskedWeights,
    layer_rates,
    magnitude_masks,
    prunable,
)
from nas.compress.task import CompressionTask
from nas.search.errors import UserError
from nas.search.space import Params, Space
from nas.search.task import register_task

log = logging.getLogger("nas")

SPARSITIES_PCT = (80, 90, 95)
LAYER_SPARSITIES_PCT = (50, 70, 80, 90, 95, 98)
PROBE_IMAGES = 2048
PROBE_SEED = 3


@dataclass(frozen=True)
class SearchSettings:
    """How one mask is searched."""

    epochs: float = 5.0
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    schedule: Literal["cosine", "all"] = "cosine"
    train_bn: bool = False
    init: Literal["magnitude", "random"] = "magnitude"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise UserError(f"search epochs must be positive, not {self.epochs}")
        if not self.lr > 0:
            raise UserError(f"search lr must be positive, not {self.lr}")
        if self.schedule not in ("cosine", "all"):
            raise UserError(f"schedule {self.schedule!r}: cosine or all")
        if self.init not in ("magnitude", "random"):
            raise UserError(f"init {self.init!r}: magnitude or random")


def random_masks(
    model: nn.Module, rates: Mapping[str, float], seed: int
) -> dict[str, torch.Tensor]:
    """Masks keeping a random set of weights of each layer at its rate (exact counts)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for n, m in prunable(model).items():
        w = m.weight
        assert isinstance(w, torch.Tensor)
        keep = w.numel() - round(rates.get(n, 0.0) * w.numel())
        mask = torch.zeros(w.numel(), dtype=torch.bool)
        mask[torch.randperm(w.numel(), generator=g)[:keep]] = True
        out[n] = mask.view_as(w)
    return out


def search_mask(
    model: Network,
    rates: Mapping[str, float],
    settings: SearchSettings,
    *,
    data: str | None,
    device: str = "cpu",
    evaluate: Any = None,
) -> tuple[Network, list[dict[str, Any]]]:
    """A copy of ``model`` with a mask searched at ``rates`` (weights unchanged, pruned ones zero).

    Args:
        rates: sparsity of each prunable layer (by module name).
        data: labelled data to minimise cross-entropy on, or None to match the original's
            outputs on probe images.
        evaluate: optional ``evaluate(model) -> dict`` called after each epoch (history).

    Returns:
        The masked model (eval mode) and one history row per epoch (loss, swaps, extra metrics).
    """
    from nas.supernets.train import lr_at

    torch.manual_seed(settings.seed)
    net = copy.deepcopy(model).to(device)
    teacher = model.eval().to(device) if data is None else None
    start = (
        magnitude_masks(net, rates)
        if settings.init == "magnitude"
        else random_masks(net, rates, settings.seed)
    )
    for p in net.parameters():
        p.requires_grad_(False)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    history: list[dict[str, Any]] = []
    with MaskedWeights(net, start) as mw:
        trainable: list[nn.Parameter] = list(mw.scores())
        if settings.train_bn:
            for bn in bns:
                for p in bn.parameters():
                    p.requires_grad_(True)
                    trainable.append(p)
        opt = torch.optim.SGD(
            trainable,
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        per_epoch = math.ceil(_epoch_size(data) / settings.batch_size)
        total = max(1, math.ceil(settings.epochs * per_epoch))
        step, epoch = 0, 0
        while step < total:
            # as the authors' code: the model in training mode, so BatchNorm normalises with
            # batch statistics and re-estimates its running ones; its affine parameters train
            # only with train_bn
            net.train()
            loss_sum, n, swaps = 0.0, 0, 0
            for x, target in _batches(net, model, data, settings, epoch, device):
                if step >= total:
                    break
                for group in opt.param_groups:
                    group["lr"] = lr_at(step / total, settings.lr, warmup=0.0)
                loss = _loss(net(x), target, data is not None)
                if not torch.isfinite(loss):
                    raise UserError(f"mask search diverged: the loss became {loss.item()}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                frac = 1.0 if settings.schedule == "all" else _cosine(step / total)
                swaps += mw.restrict(frac) if frac > 0 else 0
                loss_sum, n, step = loss_sum + loss.item() * len(x), n + len(x), step + 1
            epoch += 1
            row: dict[str, Any] = {"epoch": epoch, "loss": round(loss_sum / max(n, 1), 5)}
            row["swaps"] = swaps
            if evaluate is not None:
                net.eval()
                row.update(evaluate(net))
            history.append(row)
            log.info("mask search epoch %d: loss %.4f, %d swaps", epoch, row["loss"], swaps)
        del teacher
    for p in net.parameters():
        p.requires_grad_(True)
    return net.eval(), history


def _cosine(t: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def _loss(out: Any, target: Any, labelled: bool) -> torch.Tensor:
    from nas.compress.finetune import match_heads

    return F.cross_entropy(out, target) if labelled else match_heads(out, target)


def _epoch_size(data: str | None) -> int:
    from nas.compress.datasets import load_data

    return len(load_data(data, "train")) if data else PROBE_IMAGES


def _batches(
    net: Network,
    original: Network,
    data: str | None,
    s: SearchSettings,
    epoch: int,
    device: str,
) -> Iterator[tuple[torch.Tensor, Any]]:
    from nas.compress.datasets import batches, load_data
    from nas.compress.drift import probe_images

    seed = s.seed * 1000 + epoch
    if data:
        train = load_data(data, "train")
        for x, y in batches(train, net.preprocessing, s.batch_size, shuffle=True, seed=seed):
            yield x.to(device), y.to(device)
        return
    half = PROBE_IMAGES // 2
    x = probe_images(net.preprocessing, noise=half, digits=half, seed=PROBE_SEED + s.seed)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(x), s.batch_size):
        xb = x[order[i : i + s.batch_size]].to(device)
        with torch.no_grad():
            target = original.eval()(xb)
        yield xb, target  # outside no_grad: the caller trains on it


@register_task("jackpot")
class JackpotTask(CompressionTask):
    """Mask search on frozen pre-trained weights (see the module docstring).

    Method options (``nas compress --method jackpot --set key=value``): ``sparsity`` (a fraction;
    default: search 0.8 / 0.9 / 0.95), ``allocation`` (``global``, ``uniform``, or ``search``:
    both), ``per_layer`` (one sparsity per layer instead), ``search_epochs``, ``lr``,
    ``schedule`` (``cosine`` or ``all``), ``train_bn``, ``init`` (``magnitude`` or ``random``).
    """

    name: str = "jackpot"
    default_strategy = "tpe"
    recalibrate = False  # BatchNorm is part of what the method freezes or trains

    def __init__(
        self,
        *args: Any,
        sparsity: float | None = None,
        allocation: str = "search",
        per_layer: bool = False,
        search_epochs: float = 5.0,
        lr: float = 0.1,
        schedule: str = "cosine",
        train_bn: bool = False,
        init: str = "magnitude",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if sparsity is not None and not 0.0 < float(sparsity) < 1.0:
            raise UserError(f"sparsity must be a fraction in (0, 1), not {sparsity}")
        if allocation not in ("global", "uniform", "search"):
            raise UserError(f"allocation {allocation!r}: global, uniform or search")
        self.sparsity = None if sparsity is None else float(sparsity)
        self.allocation = allocation
        self.per_layer = bool(per_layer)
        self.settings = SearchSettings(
            epochs=float(search_epochs),
            lr=float(lr),
            schedule=schedule,  # type: ignore[arg-type]
            train_bn=bool(train_bn),
            init=init,  # type: ignore[arg-type]
            seed=self.seed,
        )
        self.layers = list(prunable(self.original))
        self._space = self._make_space()
        self._cache: dict[str, dict[str, float]] = {}

    def _make_space(self) -> Space:
        if self.per_layer:
            choices = LAYER_SPARSITIES_PCT
            return {
                f"layer{i}_pct": CategoricalDistribution(choices) for i in range(len(self.layers))
            }
        pct = (round(self.sparsity * 100, 4),) if self.sparsity is not None else SPARSITIES_PCT
        alloc = ("global", "uniform") if self.allocation == "search" else (self.allocation,)
        return {
            "sparsity_pct": CategoricalDistribution(pct),
            "allocation": CategoricalDistribution(alloc),
        }

    def space(self) -> Space:
        return self._space

    def rates(self, params: Params) -> dict[str, float]:
        """Per-layer sparsity of candidate ``params``."""
        if self.per_layer:
            return {n: float(params[f"layer{i}_pct"]) / 100 for i, n in enumerate(self.layers)}
        allocation: Allocation = "global" if params["allocation"] == "global" else "uniform"
        return layer_rates(self.original, float(params["sparsity_pct"]) / 100, allocation)

    def apply(self, model: Network, params: Params) -> Network:
        net, history = search_mask(
            model, self.rates(params), self.settings, data=self.data, device=self.device
        )
        net.origin = {**model.origin, "mask_search": history}
        return net

    def evaluate(self, params: Params) -> dict[str, float]:
        key = repr(sorted(params.items()))
        if key not in self._cache:
            self._cache[key] = super().evaluate(params)
        return dict(self._cache[key])

    def options(self) -> dict[str, Any]:
        return {
            "sparsity": self.sparsity,
            "allocation": self.allocation,
            "per_layer": self.per_layer,
            **asdict(self.settings),
            "bn": "trained" if self.settings.train_bn else "frozen",
        }
