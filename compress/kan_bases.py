"""Function bases of Kolmogorov-Arnold layers, registered by name.

A basis turns inputs ``x`` of shape ``(N, F)`` into features ``(N, F, n)``: ``n`` univariate
functions evaluated on every input. A KAN edge function is then ``w_base * silu(x) + sum_b c_b
B_b(x)`` (:class:`nas.compress.kan.SpaceLayer`); the basis only says what ``B_b`` are and where
they live. Every basis has ``n = grid + order`` functions, so layers of different bases with the
same ``grid`` and ``order`` hold the same number of parameters.

Where the functions live is a per-input tensor, the *grid* (a buffer of the layer, saved with
its weights): for B-splines the knots, ``(F, grid + 2 * order + 1)``; for the other bases the
interval ``[lo, hi]`` they cover, ``(F, 2)``. :meth:`Basis.adapt` moves it to where data lie
(grid update), after which the layer refits its coefficients.

Registered bases:

- ``bspline``: B-splines of degree ``order`` on ``grid`` intervals (the original KAN; grid
  update places knots at data quantiles mixed with a uniform grid, as pykan / efficient-kan).
- ``chebyshev``: Chebyshev polynomials T_0..T_{n-1} of ``tanh(u)``, ``u`` the input scaled so
  ``[lo, hi]`` maps to ``[-1, 1]`` (ChebyKAN squashes with tanh too, which keeps every input in
  the polynomials' domain).
- ``fourier``: ``cos(j π t)`` and ``sin(j π t)``, ``j = 1, 2, ...``, ``t`` the input scaled so
  ``[lo, hi]`` maps to ``[0, 1]`` (half-range series: no periodicity is imposed on the interval).
- ``rbf``: Gaussians ``exp(-((x - c_j) / h)^2)`` on ``n`` uniform centres (FastKAN).
- ``wavelet``: Mexican hats ``(1 - t^2) exp(-t^2 / 2)``, ``t = (x - c_j) / h``, on the same
  centres (Wav-KAN's wavelet with fixed translations and scale, which keeps the layer linear in
  its coefficients).
- ``silu``: the plain activation, shifted: ``silu((x - c_j) / h)`` on the same centres.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

#: relative margin added around the data range by a grid update
MARGIN = 0.01
#: weight of the uniform grid against the quantile grid in a B-spline grid update
GRID_EPS = 0.02


class Basis(ABC):
    """A family of ``grid + order`` univariate functions on an interval per input.

    Args:
        grid: grid intervals (B-splines) or the size parameter of the family.
        order: spline degree (B-splines); adds to the number of functions of every basis.
    """

    name: ClassVar[str] = ""

    def __init__(self, grid: int, order: int) -> None:
        if grid < 1 or order < 0:
            raise ValueError(f"KAN grid {grid} / order {order}: need grid >= 1 and order >= 0")
        self.grid_size = int(grid)
        self.order = int(order)
        self.n = self.grid_size + self.order

    def make_grid(self, n_in: int, lo: float, hi: float) -> torch.Tensor:
        """The initial grid buffer of ``n_in`` inputs on ``[lo, hi]``: ``(n_in, 2)`` here."""
        return torch.tensor([[lo, hi]], dtype=torch.float32).repeat(n_in, 1)

    def adapt(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """A grid fitted to inputs ``x`` ``(N, F)``: the data range plus a small margin."""
        lo, hi = x.min(0).values, x.max(0).values
        pad = MARGIN * (hi - lo) + 1e-4
        return torch.stack([lo - pad, hi + pad], dim=1)

    @abstractmethod
    def features(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """The functions on ``x`` ``(N, F)``: ``(N, F, n)``."""

    @staticmethod
    def scaled(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``x`` mapped so that ``[lo, hi]`` becomes ``[0, 1]``."""
        lo, hi = grid[:, 0], grid[:, -1]
        return (x - lo) / (hi - lo)


class _Centred(Basis):
    """One profile on ``n`` uniform centres spanning ``[lo, hi]``, one spacing ``h`` wide."""

    @abstractmethod
    def profile(self, t: torch.Tensor) -> torch.Tensor:
        """The profile at offsets ``t`` from each centre, in spacings."""

    def features(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        u = self.scaled(x, grid).unsqueeze(-1) * (self.n - 1)  # centres at 0 .. n-1
        centres = torch.arange(self.n, dtype=x.dtype, device=x.device)
        return self.profile(u - centres)


class BSpline(Basis):
    name = "bspline"

    def make_grid(self, n_in: int, lo: float, hi: float) -> torch.Tensor:
        g, k = self.grid_size, self.order
        knots = torch.arange(-k, g + k + 1, dtype=torch.float32) * ((hi - lo) / g) + lo
        return knots.expand(n_in, -1).contiguous()

    def adapt(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Knots at data quantiles, mixed with a uniform grid, extended by ``order`` knots."""
        g, k = self.grid_size, self.order
        xs = torch.sort(x, dim=0).values  # (N, F)
        idx = torch.linspace(0, len(xs) - 1, g + 1).round().long()
        adaptive = xs[idx].T  # (F, g + 1)
        pad = MARGIN * (xs[-1] - xs[0]) + 1e-4
        lo, hi = xs[0] - pad, xs[-1] + pad
        steps = torch.arange(g + 1, dtype=x.dtype, device=x.device) / g
        uniform = lo[:, None] + (hi - lo)[:, None] * steps
        inner = GRID_EPS * uniform + (1 - GRID_EPS) * adaptive
        inner[:, 0], inner[:, -1] = lo, hi
        h = ((hi - lo) / g)[:, None]
        ext = torch.arange(1, k + 1, dtype=x.dtype, device=x.device)
        return torch.cat([lo[:, None] - h * ext.flip(0), inner, hi[:, None] + h * ext], dim=1)

    def features(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """Cox-de Boor recursion, vectorised over samples, inputs and functions."""
        x = x.unsqueeze(-1)
        b = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
        for k in range(1, self.order + 1):
            left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)])
            right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:-k])
            b = left * b[..., :-1] + right * b[..., 1:]
        return b


class Chebyshev(Basis):
    name = "chebyshev"

    def features(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        u = torch.tanh(2.0 * self.scaled(x, grid) - 1.0)
        out = [torch.ones_like(u), u]
        while len(out) < self.n:
            out.append(2.0 * u * out[-1] - out[-2])
        return torch.stack(out[: self.n], dim=-1)


class Fourier(Basis):
    name = "fourier"

    def features(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        t = self.scaled(x, grid).unsqueeze(-1) * math.pi
        n_cos = (self.n + 1) // 2
        j_cos = torch.arange(1, n_cos + 1, dtype=x.dtype, device=x.device)
        j_sin = torch.arange(1, self.n - n_cos + 1, dtype=x.dtype, device=x.device)
        return torch.cat([torch.cos(t * j_cos), torch.sin(t * j_sin)], dim=-1)


class RBF(_Centred):
    name = "rbf"

    def profile(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(t * t))


class Wavelet(_Centred):
    name = "wavelet"

    def profile(self, t: torch.Tensor) -> torch.Tensor:
        t2 = t * t
        return (1.0 - t2) * torch.exp(-0.5 * t2)


class SiLUBasis(_Centred):
    name = "silu"

    def profile(self, t: torch.Tensor) -> torch.Tensor:
        return F.silu(t)


#: name -> basis class, in the order candidate pools list them
BASES: dict[str, type[Basis]] = {}


def register_basis(cls: type[Basis]) -> type[Basis]:
    """Register a basis class under ``cls.name`` (a duplicate name is an error)."""
    if not cls.name or cls.name in BASES:
        raise ValueError(f"basis name {cls.name!r} is empty or registered twice")
    BASES[cls.name] = cls
    return cls


for _cls in (BSpline, Chebyshev, Fourier, RBF, Wavelet, SiLUBasis):
    register_basis(_cls)


def create_basis(name: str, grid: int, order: int) -> Basis:
    """The basis ``name`` with ``grid + order`` functions.

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    if name not in BASES:
        raise ValueError(f"unknown KAN basis {name!r}; known: {', '.join(BASES)}")
    return BASES[name](grid, order)
