"""Search spaces: named optuna distributions, and the encodings surrogates and pymoo need.

A :data:`Space` maps each dimension name to an optuna distribution. A candidate (:data:`Params`)
maps the same names to values. Three encodings turn candidates into vectors:

* :func:`onehot` — one column per categorical choice, integers and floats scaled to [0, 1];
  what kernel models and linear surrogates want.
* :func:`ordinal` — one column per dimension (the choice index for categoricals); what tree
  models and pymoo's integer operators want.
* :func:`pymoo_vars` — pymoo's mixed-variable types (``Choice``, ``Integer``, ``Real``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

Params = dict[str, int | float | str]
Space = dict[str, BaseDistribution]
Measurement = dict[str, float]

__all__ = [
    "Measurement",
    "Params",
    "Space",
    "contains",
    "decode_ordinal",
    "enumerate_space",
    "onehot",
    "ordinal",
    "pymoo_vars",
    "sample",
    "space_size",
    "suggest",
    "validate_space",
]


def validate_space(space: Mapping[str, BaseDistribution]) -> None:
    """Raise ``ValueError`` unless ``space`` is a non-empty map of supported distributions."""
    if not space:
        raise ValueError("the search space is empty: a task must define at least one dimension")
    for name, dist in space.items():
        if not isinstance(dist, CategoricalDistribution | IntDistribution | FloatDistribution):
            raise ValueError(f"dimension {name!r}: unsupported distribution {type(dist).__name__}")


def _choices_or_grid(dist: BaseDistribution) -> Sequence[Any] | None:
    """The finite list of values of ``dist``, or None for a continuous dimension."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return [dist.low + i * dist.step for i in range(n + 1)]
    return None


def space_size(space: Space) -> float:
    """Number of distinct candidates (``inf`` when a dimension is continuous or log-scaled)."""
    size = 1.0
    for dist in space.values():
        grid = _choices_or_grid(dist)
        if grid is None:
            return math.inf
        size *= len(grid)
    return size


def enumerate_space(space: Space) -> Iterator[Params]:
    """Yield every candidate of a finite space in a fixed order (last dimension fastest)."""
    grids = [_choices_or_grid(d) for d in space.values()]
    if any(g is None for g in grids):
        raise ValueError("only finite spaces can be enumerated")
    names = list(space)
    for idx in np.ndindex(*[len(g) for g in grids if g is not None]):
        yield {n: grids[i][j] for i, (n, j) in enumerate(zip(names, idx, strict=True))}  # type: ignore[index]


def contains(space: Space, params: Mapping[str, Any]) -> bool:
    """True if ``params`` names exactly the dimensions of ``space`` with values inside them."""
    if set(params) != set(space):
        return False
    for name, value in params.items():
        try:
            if not space[name]._contains(space[name].to_internal_repr(value)):
                return False
        except (ValueError, TypeError):
            return False
    return True


def sample(space: Space, rng: np.random.Generator) -> Params:
    """Draw one candidate uniformly (log-uniformly for log-scaled dimensions)."""
    out: Params = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = dist.choices[int(rng.integers(len(dist.choices)))]  # type: ignore[assignment]
        elif isinstance(dist, IntDistribution):
            if dist.log:
                v = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high + 1)))
                out[name] = min(int(v), dist.high)
            else:
                n = (dist.high - dist.low) // dist.step
                out[name] = dist.low + dist.step * int(rng.integers(n + 1))
        else:
            assert isinstance(dist, FloatDistribution)
            out[name] = _sample_float(dist, rng)
    return out


def _sample_float(dist: FloatDistribution, rng: np.random.Generator) -> float:
    if dist.log:
        return float(math.exp(rng.uniform(math.log(dist.low), math.log(dist.high))))
    if dist.step is not None:
        n = round((dist.high - dist.low) / dist.step)
        return float(dist.low + dist.step * int(rng.integers(n + 1)))
    return float(rng.uniform(dist.low, dist.high))


def suggest(trial: Any, space: Space) -> Params:
    """Ask an optuna trial for every dimension of ``space``, in order.

    Uses the public ``suggest_*`` calls, so the proposals are exactly those an optuna sampler
    makes for an objective written by hand.
    """
    out: Params = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, IntDistribution):
            out[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            assert isinstance(dist, FloatDistribution)
            out[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return out


def _scale(dist: IntDistribution | FloatDistribution, value: float) -> float:
    """Map a numeric value to [0, 1] (in log space for log-scaled dimensions)."""
    lo, hi, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return 0.0 if hi == lo else (v - lo) / (hi - lo)


def onehot(space: Space, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Encode candidates as rows: one-hot blocks for categoricals, [0, 1] for numbers.

    Returns:
        A float array of shape ``(len(candidates), width)``.
    """
    cols: list[np.ndarray] = []
    for name, dist in space.items():
        values = [c[name] for c in candidates]
        if isinstance(dist, CategoricalDistribution):
            idx = np.array([dist.to_internal_repr(v) for v in values], dtype=int)
            block = np.zeros((len(values), len(dist.choices)))
            block[np.arange(len(values)), idx] = 1.0
            cols.append(block)
        else:
            assert isinstance(dist, IntDistribution | FloatDistribution)
            cols.append(np.array([[_scale(dist, v)] for v in values]).reshape(-1, 1))
    return np.hstack(cols) if cols else np.zeros((len(candidates), 0))


def ordinal(space: Space, candidates: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Encode candidates as rows of one column per dimension.

    Categoricals become their choice index; integers and floats keep their value.
    """
    rows = np.zeros((len(candidates), len(space)))
    for j, (name, dist) in enumerate(space.items()):
        for i, c in enumerate(candidates):
            if isinstance(dist, CategoricalDistribution):
                rows[i, j] = dist.to_internal_repr(c[name])
            else:
                rows[i, j] = float(c[name])
    return rows


def decode_ordinal(space: Space, row: Sequence[float]) -> Params:
    """Inverse of :func:`ordinal` for one row; values are rounded and clipped into the space."""
    out: Params = {}
    for x, (name, dist) in zip(row, space.items(), strict=True):
        if isinstance(dist, CategoricalDistribution):
            i = int(np.clip(round(float(x)), 0, len(dist.choices) - 1))
            out[name] = dist.choices[i]  # type: ignore[assignment]
        elif isinstance(dist, IntDistribution):
            v = int(np.clip(round((float(x) - dist.low) / dist.step), 0, None))
            out[name] = int(min(dist.low + v * dist.step, dist.high))
        else:
            assert isinstance(dist, FloatDistribution)
            v2 = float(np.clip(float(x), dist.low, dist.high))
            if dist.step is not None:
                v2 = dist.low + round((v2 - dist.low) / dist.step) * dist.step
            out[name] = float(min(v2, dist.high))
    return out


def pymoo_vars(space: Space) -> dict[str, Any]:
    """pymoo's mixed-variable description of ``space`` (``Choice`` / ``Integer`` / ``Real``).

    Categorical dimensions become ``Choice`` over choice *indices* so every value is a number;
    :func:`decode_ordinal` turns a pymoo solution (in the order of ``space``) back into Params.
    """
    from pymoo.core.variable import Choice, Integer, Real

    out: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[name] = Choice(options=list(range(len(dist.choices))))
        elif isinstance(dist, IntDistribution):
            out[name] = Integer(bounds=(dist.low, dist.high))
        else:
            assert isinstance(dist, FloatDistribution)
            out[name] = Real(bounds=(dist.low, dist.high))
    return out
