"""S-KAN training: the three phases of arXiv 2408.08338, and the function-fitting tasks.

:func:`train_skan` trains any network holding :class:`~nas.compress.kan.SelectableKAN` layers
(plain KANs and MLPs too: they simply train for the same number of steps) in three phases:

1. **full** — every candidate space of every node and the per-node softmax weights train
   together (the S-KAN paper's "full training");
2. **selective** — each node keeps only its ``keep`` highest-weight spaces (top-k mask, chosen
   once at the start of the phase: the paper's selective training continues with the strongest
   candidates only), and over the first 60 % of the phase every kept space but the node's
   current strongest *fades* out linearly (multiplied by a factor falling from 1 to 0), so the
   strongest space takes over the others' part while they still help; the rest of the phase
   trains with the strongest alone. (A softmax temperature annealed towards 0 is available too,
   ``temperature``; it made the loss jump at the end of the phase and is off by default.)
3. **finetune** — each node is pruned to its single highest-weight space (its weight folded
   into the kept function, see :meth:`~nas.compress.kan.SelectableKAN.prune`; after the fade
   this changes nothing) and the pruned network is fine-tuned.

Adam, a fresh optimiser per phase (the parameters change at pruning) with a cosine learning
rate decay within each phase, for every model alike. :meth:`Phases.split` gives 5 % of the
steps to the full phase, 10 % to the selective one and 85 % to fine-tuning: on held-out seeds
(100, 101) of the fitting tasks at 2,000 steps, longer full phases (15-30 %) left the pruned
network too few steps and were worse, and selection after 5 % of the steps was about as good as
after 10 %. Grid updates (B-spline knots at data quantiles, the other bases' intervals at the
data range, coefficients refitted) run every ``grid_every`` steps in the first half of
training.

Function fitting (``FIT_TASKS``, in the style of the KAN paper): inputs drawn uniformly from
the task's domain and given to the network rescaled to ``[-1, 1]``; 1,000 training and 1,000
test points per seed; the figure is the test RMSE on the task's own scale.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nas.compress.arch import Network, Preprocessing, build
from nas.compress.kan import (
    kan_layers,
    keep_top,
    prune_network,
    set_fade,
    set_temperature,
    update_grids,
)
from nas.compress.kan_bases import BASES
from nas.search.errors import UserError

Batch = tuple[torch.Tensor, torch.Tensor]
#: part of the selective phase over which the weaker spaces fade out (the rest trains without)
FADE_PART = 0.6
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Phases:
    """Optimiser steps of the three phases, and how selection narrows.

    Attributes:
        full, selective, finetune: steps of each phase.
        keep: spaces each node keeps in the selective phase.
        temperature: softmax temperature at the end of the selective phase.
    """

    full: int
    selective: int
    finetune: int
    keep: int = 2
    temperature: float = 1.0
    selection_lr: float = 1.0

    def __post_init__(self) -> None:
        if min(self.full, self.selective, self.finetune) < 0 or self.total < 1:
            raise UserError("S-KAN phases need a non-negative number of steps, at least 1 in all")
        if self.keep < 1 or not 0 < self.temperature <= 1:
            raise UserError("S-KAN keep must be >= 1 and the temperature in (0, 1]")

    @property
    def total(self) -> int:
        return self.full + self.selective + self.finetune

    @classmethod
    def split(cls, steps: int, fractions: tuple[float, float] = (0.05, 0.1)) -> Phases:
        """``steps`` in all: ``fractions`` of them full and selective, the rest fine-tuning."""
        full = round(steps * fractions[0])
        selective = round(steps * fractions[1])
        return cls(full, selective, max(steps - full - selective, 0))


def train_skan(
    net: nn.Module,
    batch: Callable[[int], Batch],
    loss_fn: LossFn,
    phases: Phases,
    *,
    lr: float = 1e-2,
    grid_every: int = 0,
    grid_batch: torch.Tensor | None = None,
) -> list[dict[str, Any]]:
    """Train ``net`` in the three phases (see the module doc); returns one row per phase.

    Args:
        batch: ``batch(step) -> (x, y)``, the training batch of each global step.
        loss_fn: ``loss_fn(net(x), y)``.
        grid_every: grid update every this many steps in the first half (0: never).
        grid_batch: the inputs of grid updates (default: the step's batch).

    Raises:
        UserError: the loss became NaN or infinite.
    """
    history: list[dict[str, Any]] = []
    step, t0 = 0, time.monotonic()
    for phase, n in (
        ("full", phases.full),
        ("selective", phases.selective),
        ("finetune", phases.finetune),
    ):
        if phase == "selective":
            keep_top(net, phases.keep)
        if phase == "finetune":
            prune_network(net)
        opt = _adam(net, lr, phases.selection_lr)
        loss = torch.tensor(math.nan)
        for i in range(n):
            if phase == "selective":
                done = min(1.0, (i + 1) / (FADE_PART * n))
                set_temperature(net, 1.0 + (phases.temperature - 1.0) * done)
                set_fade(net, 1.0 - done)
            x, y = batch(step)
            if grid_every and step % grid_every == 0 and step < phases.total // 2:
                update_grids(net, grid_batch if grid_batch is not None else x)
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * 0.5 * (1 + math.cos(math.pi * i / n))
            loss = _step(net, opt, loss_fn, x, y)
            step += 1
        history.append(
            {"phase": phase, "steps": n, "loss": float(loss), "seconds": time.monotonic() - t0}
        )
    return history


def _adam(net: nn.Module, lr: float, selection_lr: float) -> torch.optim.Optimizer:
    """Adam; the selection logits learn ``selection_lr`` times faster than the functions."""
    logits = [layer.logits for layer in kan_layers(net) if layer.logits is not None]
    ids = {id(p) for p in logits}
    rest = [p for p in net.parameters() if id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest, "base_lr": lr}]
    if logits:
        groups.append({"params": logits, "base_lr": lr * selection_lr})
    return torch.optim.Adam(groups, lr=lr)


def _step(
    net: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(x), y)
    if not torch.isfinite(loss):
        raise UserError(f"S-KAN training diverged: the loss became {loss.item()} (lower the lr)")
    loss.backward()
    opt.step()
    return loss.detach()


# -- function fitting ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FitTask:
    """A function to fit: its inputs' domain and the function on arrays ``(N, n_in)``."""

    name: str
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    fn: Callable[[np.ndarray], np.ndarray]
    text: str

    @property
    def n_in(self) -> int:
        return len(self.lo)


def _j0(x: np.ndarray) -> np.ndarray:
    from scipy.special import j0

    return np.asarray(j0(20.0 * x[:, 0]))


def _compose4(x: np.ndarray) -> np.ndarray:
    a = np.sin(np.pi * (x[:, 0] ** 2 + x[:, 1] ** 2))
    b = np.sin(np.pi * (x[:, 2] ** 2 + x[:, 3] ** 2))
    return np.exp(0.5 * (a + b))


FIT_TASKS: dict[str, FitTask] = {
    t.name: t
    for t in (
        FitTask("bessel_j0", (-1.0,), (1.0,), _j0, "J0(20x), x in [-1, 1]"),
        FitTask(
            "exp_sin_sq",
            (-1.0, -1.0),
            (1.0, 1.0),
            lambda x: np.exp(np.sin(np.pi * x[:, 0]) + x[:, 1] ** 2),
            "exp(sin(pi x) + y^2), x, y in [-1, 1]",
        ),
        FitTask("xy", (-1.0, -1.0), (1.0, 1.0), lambda x: x[:, 0] * x[:, 1], "x y in [-1, 1]^2"),
        FitTask(
            "x_over_y", (0.5, 0.5), (1.5, 1.5), lambda x: x[:, 0] / x[:, 1], "x / y in [0.5, 1.5]^2"
        ),
        FitTask("sin_hf", (-1.0,), (1.0,), lambda x: np.sin(5.0 * np.pi * x[:, 0]), "sin(5 pi x)"),
        FitTask(
            "compose4",
            (-1.0,) * 4,
            (1.0,) * 4,
            _compose4,
            "exp((sin(pi (x1^2 + x2^2)) + sin(pi (x3^2 + x4^2))) / 2) in [-1, 1]^4",
        ),
        FitTask(
            "kink",
            (-1.0, -1.0),
            (1.0, 1.0),
            lambda x: np.abs(x[:, 0] - 0.2) + np.maximum(x[:, 1], 0.0) * x[:, 0],
            "|x - 0.2| + max(y, 0) x (derivative jumps at x = 0.2 and y = 0)",
        ),
    )
}


def fit_task(name: str) -> FitTask:
    """The fitting task ``name``.

    Raises:
        UserError: unknown name (the message lists the known ones).
    """
    if name not in FIT_TASKS:
        raise UserError(f"unknown fitting task {name!r}; known: {', '.join(FIT_TASKS)}")
    return FIT_TASKS[name]


def fit_data(task: FitTask, n: int, seed: int) -> Batch:
    """``n`` points: inputs rescaled to ``[-1, 1]`` ``(n, n_in)`` and targets ``(n, 1)``."""
    rng = np.random.default_rng(seed)
    lo, hi = np.array(task.lo), np.array(task.hi)
    x = lo + (hi - lo) * rng.random((n, task.n_in))
    y = task.fn(x)
    xs = 2.0 * (x - lo) / (hi - lo) - 1.0
    return torch.tensor(xs, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)[:, None]


def parse_spaces(text: str | list[str]) -> list[str]:
    """``all``, a pool name of :data:`POOLS`, or comma-separated basis names."""
    if isinstance(text, list):
        names = text
    elif text in POOLS:
        names = POOLS[text]
    else:
        names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in BASES]
    if unknown or not names:
        raise UserError(
            f"unknown KAN space {unknown[0] if unknown else text!r}; known: {', '.join(BASES)}, "
            f"or a pool: {', '.join(POOLS)}"
        )
    return list(names)


#: named candidate pools (the search chooses one per layer)
POOLS: dict[str, list[str]] = {
    "all": list(BASES),
    "bspline": ["bspline"],
    "bspline+chebyshev": ["bspline", "chebyshev"],
    "rbf+wavelet": ["rbf", "wavelet"],
    "fourier+silu": ["fourier", "silu"],
}


def kan_spec(
    sizes: list[int], spaces: list[str] | list[list[str]], grid: int = 5, order: int = 3
) -> list[dict[str, Any]]:
    """Layer specs of a KAN ``sizes[0] -> ... -> sizes[-1]`` (spaces per layer or shared)."""
    per_layer = spaces if spaces and isinstance(spaces[0], list) else [spaces] * len(sizes)
    return [
        {
            "type": "kan",
            "in": a,
            "out": b,
            "spaces": list(per_layer[i]),
            "grid": grid,
            "order": order,
            "choice": None,
        }
        for i, (a, b) in enumerate(itertools.pairwise(sizes))
    ]


def fit_network(n_in: int, spec: list[dict[str, Any]]) -> Network:
    """A network of fitting layers; its preprocessing describes inputs ``(1, 1, n_in)``."""
    pre = Preprocessing(input_size=(1, n_in), channels=1, mean=(0.0,), std=(1.0,))
    return build(spec, pre)


def mlp(sizes: list[int]) -> nn.Sequential:
    """A SiLU MLP ``sizes[0] -> ... -> sizes[-1]`` (the same-size baseline)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def mlp_width(n_in: int, params: int, hidden_layers: int = 2) -> int:
    """The hidden width of an MLP with ``hidden_layers`` equal hidden layers whose parameter
    count is closest to ``params`` (one output)."""

    def count(h: int) -> int:
        return mlp_params([n_in] + [h] * hidden_layers + [1])

    return min(range(1, 1000), key=lambda h: abs(count(h) - params))


def mlp_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in itertools.pairwise(sizes))


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def fit(
    task: FitTask,
    net: nn.Module,
    steps: int,
    seed: int,
    *,
    lr: float = 1e-2,
    n_train: int = 1000,
    grid_every: int = 200,
    phases: Phases | None = None,
) -> dict[str, Any]:
    """Train ``net`` on ``task`` full-batch for ``steps`` steps (three phases); test RMSE.

    Returns:
        ``rmse`` (test), ``train_rmse``, ``params`` (after pruning), ``seconds``, ``history``.
    """
    torch.manual_seed(seed)
    x, y = fit_data(task, n_train, seed)
    xt, yt = fit_data(task, 1000, 10_000 + seed)
    t0 = time.monotonic()
    history = train_skan(
        net,
        lambda step: (x, y),
        lambda p, t: torch.mean((p - t) ** 2),
        phases or Phases.split(steps),
        lr=lr,
        grid_every=grid_every if any(True for _ in kan_layers(net)) else 0,
    )
    net.eval()
    with torch.no_grad():
        test = float(torch.sqrt(torch.mean((net(xt) - yt) ** 2)))
        train = float(torch.sqrt(torch.mean((net(x) - y) ** 2)))
    return {
        "rmse": test,
        "train_rmse": train,
        "params": count_params(net),
        "seconds": round(time.monotonic() - t0, 2),
        "history": history,
    }
