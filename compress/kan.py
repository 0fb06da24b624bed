"""Kolmogorov-Arnold layers whose activation space is selected per node (S-KAN, S-ConvKAN).

A KAN layer from ``F`` inputs to ``F'`` outputs learns one function per edge, ``phi_oi(x_i) =
w_oi * silu(x_i) + sum_b c_oib B_b(x_i)``, and output ``o`` is ``sum_i phi_oi(x_i)``; the
functions ``B_b`` come from a basis (:mod:`nas.compress.kan_bases`: B-spline, Chebyshev,
Fourier, Gaussian RBF, Mexican-hat wavelet, shifted SiLU). :class:`SpaceLayer` is such a layer
for one basis (one *activation space*), vectorised over samples, edges and functions.

**Nodes.** S-KAN (arXiv 2408.08338) lets each node select its activation space. Here a node is
an *output node* of a layer: output ``o`` has one softmax-normalised weight per candidate space,
and selects one space for all of its incoming edge functions. :class:`SelectableKAN` in its
*mixed* form runs every candidate space as a full layer and mixes them per output node,
``y_o = sum_s softmax(a_o / T)_s y_o^(s)`` (``a`` the learned logits, ``T`` a temperature,
spaces outside a node's top-k mask excluded; with a *fade* ``f < 1`` every term but the node's
strongest is multiplied by ``f``, so that at ``f = 0`` pruning changes nothing). In its
*pruned* form each output node keeps its chosen space only: the outputs are grouped by space,
one :class:`SpaceLayer` per space computes its group, and the groups are put back in order (a
loop over at most six spaces, never over nodes). The pruned layer holds only the chosen spaces'
parameters; with every space of the same ``grid + order`` functions it holds exactly as many
as a single-space KAN of the same shape.

**ConvKAN.** :class:`ConvKAN` unfolds ``k x k`` patches (``F.unfold``) and applies a selectable
KAN layer from ``C k k`` inputs to ``C'`` outputs to every patch.

**Spec** (the layer types ``kan`` and ``convkan`` of :mod:`nas.compress.arch`)::

    {"type": "kan", "in": F, "out": F', "spaces": ["bspline", "chebyshev", ...],
     "grid": 5, "order": 3, "range": [-1, 1], "choice": null}
    {"type": "convkan", "in": C, "out": C', "kernel": k, "stride": s, "padding": k // 2, ...}

``choice`` null is the mixed layer (one space alone is always pruned); a list gives each
output node's space as an index into ``spaces``. ``range`` is the interval the bases cover at
first; grid updates move it per input, and the grids are buffers in the state dict, so a saved
model rebuilds with its grids. Defaults: ``spaces ["bspline"]``, ``grid 5``, ``order 3``,
``range [-1, 1]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nas.compress.arch import LayerSpec, Network, SpecError
from nas.compress.kan_bases import BASES, create_basis


class SpaceLayer(nn.Module):
    """A KAN layer of one basis: ``(N, F) -> (N, F')``.

    Parameters ``base_weight`` ``(F', F)`` (the residual ``silu`` term) and ``coef``
    ``(F', F, n)``; buffer ``grid`` ``(F, m)`` (where the basis lives, see
    :mod:`nas.compress.kan_bases`).
    """

    grid: torch.Tensor

    def __init__(
        self, space: str, n_in: int, n_out: int, grid: int, order: int, lo: float, hi: float
    ) -> None:
        super().__init__()
        self.space = space
        self.basis = create_basis(space, grid, order)
        self.register_buffer("grid", self.basis.make_grid(n_in, lo, hi))
        bound = 1.0 / math.sqrt(n_in)
        self.base_weight = nn.Parameter(torch.empty(n_out, n_in).uniform_(-bound, bound))
        std = 1.0 / math.sqrt(n_in * self.basis.n)
        self.coef = nn.Parameter(torch.randn(n_out, n_in, self.basis.n) * std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.basis.features(x, self.grid)  # (N, F, n)
        return F.linear(F.silu(x), self.base_weight) + F.linear(
            feats.flatten(1), self.coef.flatten(1)
        )

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Move the grid to the inputs ``x`` ``(N, F)`` and refit ``coef`` by least squares, so
        each edge function stays as close as it can to what it was on ``x``."""
        old = self.basis.features(x, self.grid).permute(1, 0, 2)  # (F, N, n)
        target = old @ self.coef.permute(1, 2, 0)  # (F, N, F')
        self.grid.copy_(self.basis.adapt(x, self.grid))
        new = self.basis.features(x, self.grid).permute(1, 0, 2).double()
        sol = _ridge(new, target.double()).to(self.coef.dtype)  # (F, n, F')
        if torch.isfinite(sol).all():
            self.coef.copy_(sol.permute(2, 0, 1))

    @torch.no_grad()
    def rows(self, index: torch.Tensor, scale: torch.Tensor) -> SpaceLayer:
        """A layer of the output nodes ``index`` only, their functions multiplied by ``scale``."""
        n_in = self.base_weight.shape[1]
        out = SpaceLayer(self.space, n_in, len(index), self.basis.grid_size, self.basis.order, 0, 1)
        out.grid.copy_(self.grid)
        out.base_weight.copy_(self.base_weight[index] * scale[:, None])
        out.coef.copy_(self.coef[index] * scale[:, None, None])
        return out


def _ridge(a: torch.Tensor, b: torch.Tensor, lam: float = 1e-8) -> torch.Tensor:
    """Batched least squares ``argmin |a c - b|^2 + lam |c|^2`` by the normal equations
    (deterministic, unlike LAPACK's pivoted QR under MKL; ``lam`` relative to the trace)."""
    gram = a.transpose(1, 2) @ a
    scale = gram.diagonal(dim1=1, dim2=2).mean(1).clamp_min(1e-12)
    eye = torch.eye(gram.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(gram + lam * scale[:, None, None] * eye, a.transpose(1, 2) @ b)


class SelectableKAN(nn.Module):
    """A KAN layer whose output nodes each select an activation space (see the module doc).

    Args:
        n_in, n_out: features in and out; inputs may have leading dimensions, ``(..., F)``.
        spaces: candidate bases (names of :data:`~nas.compress.kan_bases.BASES`).
        grid, order: size of every basis (``grid + order`` functions).
        choice: None for the mixed layer; else each output node's space (index into
            ``spaces``). One space alone is always pruned.
        lo, hi: the interval the bases cover at first.
    """

    mask: torch.Tensor  # (F', S) top-k mask of the selective phase (mixed only, not saved)
    gather: torch.Tensor  # (F',) where each node's output sits among the grouped ones (pruned)

    def __init__(
        self,
        n_in: int,
        n_out: int,
        spaces: Sequence[str],
        grid: int = 5,
        order: int = 3,
        choice: Sequence[int] | None = None,
        lo: float = -1.0,
        hi: float = 1.0,
    ) -> None:
        super().__init__()
        if n_in < 1 or n_out < 1 or not spaces or len(set(spaces)) != len(spaces):
            raise ValueError(f"KAN {n_in} -> {n_out} with spaces {list(spaces)}: bad shape or pool")
        if not hi > lo:
            raise ValueError(f"KAN range [{lo}, {hi}] is empty")
        self.n_in, self.n_out, self.spaces = n_in, n_out, list(spaces)
        self.grid_size, self.order, self.bounds = grid, order, (float(lo), float(hi))
        self.temperature = 1.0
        self.fade = 1.0
        if choice is None and len(spaces) == 1:
            choice = [0] * n_out
        self.choice: list[int] | None = None
        self.logits: nn.Parameter | None = None
        if choice is None:
            self.layers = nn.ModuleDict({s: self._space(s, n_out) for s in self.spaces})
            self.logits = nn.Parameter(torch.zeros(n_out, len(self.spaces)))
            self.register_buffer("mask", torch.ones(n_out, len(self.spaces)), persistent=False)
        else:
            self._set_choice(choice)
            counts = [list(choice).count(i) for i in range(len(self.spaces))]
            self.layers = nn.ModuleDict(
                {s: self._space(s, c) for s, c in zip(self.spaces, counts, strict=True) if c}
            )

    def _space(self, space: str, n_out: int) -> SpaceLayer:
        return SpaceLayer(space, self.n_in, n_out, self.grid_size, self.order, *self.bounds)

    def _set_choice(self, choice: Sequence[int]) -> None:
        c = [int(i) for i in choice]
        if len(c) != self.n_out or any(not 0 <= i < len(self.spaces) for i in c):
            raise ValueError(
                f"choice must give one of {len(self.spaces)} spaces for each of {self.n_out} nodes"
            )
        self.choice = c
        grouped = [o for s in range(len(self.spaces)) for o in range(self.n_out) if c[o] == s]
        gather = torch.empty(self.n_out, dtype=torch.long)
        gather[torch.tensor(grouped)] = torch.arange(self.n_out)
        self.register_buffer("gather", gather, persistent=False)

    @property
    def mixed(self) -> bool:
        """True before pruning (every space present, mixed by learned weights)."""
        return self.logits is not None

    def weights(self) -> torch.Tensor:
        """Softmax weight of each space per output node, ``(F', S)`` (one-hot when pruned)."""
        if self.logits is None:
            assert self.choice is not None
            return F.one_hot(torch.tensor(self.choice), len(self.spaces)).float()
        logits = self.logits / self.temperature
        w = torch.softmax(logits.masked_fill(self.mask == 0, -math.inf), dim=1)
        if self.fade < 1.0:  # every space but each node's strongest fades out
            lead = w.detach().argmax(1, keepdim=True)
            w = w * torch.full_like(w, self.fade).scatter_(1, lead, 1.0)
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, self.n_in)
        if self.logits is None:
            parts = [layer(x) for layer in self.layers.values()]
            y = torch.cat(parts, dim=1).index_select(1, self.gather)
        else:
            w = self.weights()
            active = (self.mask > 0).any(0).tolist()
            y = torch.zeros(len(x), self.n_out, dtype=x.dtype, device=x.device)
            for i, s in enumerate(self.spaces):
                if active[i]:
                    y = y + self.layers[s](x) * w[:, i]
        return y.reshape(*lead, self.n_out)

    @torch.no_grad()
    def keep_top(self, k: int) -> None:
        """Selective training: each node keeps only its ``k`` highest-weight spaces."""
        if self.logits is None:
            return
        top = self.weights().topk(min(k, len(self.spaces)), dim=1).indices
        self.mask.zero_().scatter_(1, top, 1.0)

    @torch.no_grad()
    def prune(self) -> None:
        """Keep the highest-weight space of every node; its weight is folded into the kept
        functions (so the layer computes ``w_o y_o^(s)``, what that space contributed)."""
        if self.logits is None:
            return
        w = self.weights()
        choice = w.argmax(1)
        layers = {}
        for i, s in enumerate(self.spaces):
            idx = torch.nonzero(choice == i).flatten()
            if len(idx):
                layers[s] = self.layers[s].rows(idx, w[idx, i])  # type: ignore[operator]
        self.layers = nn.ModuleDict(layers)
        self.logits = None
        del self.mask
        self._set_choice(choice.tolist())

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Grid update of every space on inputs ``x`` ``(..., F)``."""
        x = x.reshape(-1, self.n_in)
        for layer in self.layers.values():
            layer.update_grid(x)  # type: ignore[operator]

    def counts(self) -> dict[str, int]:
        """How many output nodes chose (or, mixed, would choose) each space."""
        choice = self.weights().argmax(1).tolist()
        return {s: choice.count(i) for i, s in enumerate(self.spaces)}

    def to_spec(self) -> LayerSpec:
        return {
            "type": "kan",
            "in": self.n_in,
            "out": self.n_out,
            "spaces": list(self.spaces),
            "grid": self.grid_size,
            "order": self.order,
            "range": list(self.bounds),
            "choice": None if self.choice is None else list(self.choice),
        }


class ConvKAN(nn.Module):
    """A convolution whose kernel is a selectable KAN layer applied to every ``k x k`` patch."""

    def __init__(self, kan: SelectableKAN, channels: int, kernel: int, stride: int, padding: int):
        super().__init__()
        if kan.n_in != channels * kernel * kernel or kernel < 1 or stride < 1 or padding < 0:
            raise ValueError(f"convkan kernel {kernel} / stride {stride} / padding {padding}")
        self.kan = kan
        self.channels, self.kernel, self.stride, self.padding = channels, kernel, stride, padding

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, L, C k k)``."""
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        h2 = (h + 2 * self.padding - self.kernel) // self.stride + 1
        w2 = (w + 2 * self.padding - self.kernel) // self.stride + 1
        y = self.kan(self.patches(x))  # (N, L, C')
        return y.transpose(1, 2).reshape(n, self.kan.n_out, h2, w2)

    def update_grid(self, x: torch.Tensor) -> None:
        self.kan.update_grid(self.patches(x))

    def to_spec(self) -> LayerSpec:
        s = self.kan.to_spec()
        s.update(type="convkan", **{"in": self.channels})
        s.update(kernel=self.kernel, stride=self.stride, padding=self.padding)
        return s


def build_kan(spec: Mapping[str, Any], where: str = "layer") -> nn.Module:
    """The module of a ``kan`` or ``convkan`` layer spec (see the module doc).

    Raises:
        SpecError: unknown space, bad shape, or a choice that does not fit (names ``where``).
    """
    try:
        spaces = [str(s) for s in spec.get("spaces", ["bspline"])]
        unknown = [s for s in spaces if s not in BASES]
        if unknown:
            raise SpecError(f"{where}: unknown KAN space {unknown[0]!r}; known: {', '.join(BASES)}")
        lo, hi = (float(v) for v in spec.get("range", (-1.0, 1.0)))
        conv = spec["type"] == "convkan"
        k = int(spec["kernel"]) if conv else 1
        n_in = int(spec["in"]) * k * k
        kan = SelectableKAN(
            n_in,
            int(spec["out"]),
            spaces,
            int(spec.get("grid", 5)),
            int(spec.get("order", 3)),
            spec.get("choice"),
            lo,
            hi,
        )
        if not conv:
            return kan
        pad = int(spec.get("padding", k // 2))
        return ConvKAN(kan, int(spec["in"]), k, int(spec["stride"]), pad)
    except KeyError as e:
        raise SpecError(f"{where}: {spec.get('type')} layer lacks key {e}") from None
    except (TypeError, ValueError) as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(f"{where}: bad {spec.get('type')} layer: {e}") from None


# -- whole networks ------------------------------------------------------------------------------
def kan_layers(net: nn.Module) -> Iterator[SelectableKAN]:
    """Every selectable KAN layer of ``net`` (those inside ConvKANs included), in order."""
    for m in net.modules():
        if isinstance(m, SelectableKAN):
            yield m


def top_level(net: Network) -> Iterator[tuple[int, SelectableKAN | ConvKAN]]:
    """``(index, module)`` of each KAN layer in ``net.layers``."""
    for i, m in enumerate(net.layers):
        if isinstance(m, SelectableKAN | ConvKAN):
            yield i, m


def prune_network(net: nn.Module) -> None:
    """Prune every mixed layer of ``net`` to one space per node, and update ``net.spec``.

    Raises:
        ValueError: a mixed KAN layer nested inside another layer (its spec could not follow).
    """
    if isinstance(net, Network):
        for i, m in top_level(net):
            (m.kan if isinstance(m, ConvKAN) else m).prune()
            net.spec[i] = m.to_spec()
    if any(layer.mixed for layer in kan_layers(net)):
        raise ValueError("S-KAN layers must be top-level layers of a Network to be pruned")


def keep_top(net: nn.Module, k: int) -> None:
    """Selective training: in every mixed layer, each node keeps its ``k`` strongest spaces."""
    for layer in kan_layers(net):
        layer.keep_top(k)


def set_temperature(net: nn.Module, t: float) -> None:
    """The softmax temperature of every mixed layer (lower: sharper selection)."""
    for layer in kan_layers(net):
        layer.temperature = float(t)


def set_fade(net: nn.Module, fade: float) -> None:
    """Scale every space but each node's strongest by ``fade`` (1: plain mixture, 0: only the
    strongest contributes, so pruning changes nothing)."""
    for layer in kan_layers(net):
        layer.fade = float(fade)


@torch.no_grad()
def update_grids(net: nn.Module, x: torch.Tensor, convolutions: bool = False) -> None:
    """Grid update of every KAN layer, first to last, each on its inputs from ``x`` (with the
    layers before it already updated). ConvKANs only with ``convolutions``."""
    targets = [
        m
        for m in net.modules()
        if isinstance(m, ConvKAN) or (isinstance(m, SelectableKAN) and not _in_conv(net, m))
    ]
    for m in targets:
        if isinstance(m, ConvKAN) and not convolutions:
            continue
        m.update_grid(_input_of(net, m, x))


def _input_of(net: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``module`` receives when ``net`` runs on ``x``."""
    seen: list[torch.Tensor] = []
    hook = module.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        net(x)
    finally:
        hook.remove()
    return seen[0]


def _in_conv(net: nn.Module, layer: SelectableKAN) -> bool:
    return any(isinstance(m, ConvKAN) and m.kan is layer for m in net.modules())


def choices(net: Network) -> list[dict[str, Any]]:
    """Per KAN layer: its index, type, whether it is still mixed, and nodes per space."""
    rows = []
    for i, m in top_level(net):
        kan = m.kan if isinstance(m, ConvKAN) else m
        rows.append(
            {
                "layer": i,
                "type": "convkan" if isinstance(m, ConvKAN) else "kan",
                "shape": [kan.n_in, kan.n_out],
                "mixed": kan.mixed,
                "counts": kan.counts(),
            }
        )
    return rows
