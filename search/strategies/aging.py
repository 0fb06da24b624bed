"""Aging (regularized) evolution with a Pareto tournament (Real et al. 2019; EvoNorms 2020).

The *population* is the ``population_size`` newest measured candidates (COMPLETE trials, by
trial number): when a new member arrives the oldest leaves, whatever its quality. Until the
population is full, candidates are uniformly random. Then each proposal is a *tournament*: a
random subset of ``sample_size`` members, its Pareto front (non-dominated on every objective,
in each objective's direction; with constraints, feasible members first), one front member
picked at random, and *one* dimension of it mutated (a categorical takes another choice, an
integer or float another value drawn uniformly, within its step). A child equal to a candidate
the study already holds (any state but FAIL: rejected and pruned ones included) is drawn again,
up to ``retries`` times, then a random unseen candidate is tried.

No state is kept between calls: everything is rebuilt from ``study.trials``, so several workers
and resumed runs share one evolution, and randomness comes from ``(seed, trial.number)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective
from nas.search.space import Params, Space, sample
from nas.search.strategies._base import Strategy, completed, is_feasible, register_strategy


def pareto_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows no other row dominates (every column maximised)."""
    n = len(values)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        better_eq = np.all(values >= values[i], axis=1)
        strictly = np.any(values > values[i], axis=1)
        if np.any(better_eq & strictly):
            keep[i] = False
    return keep


def mutate_value(dist: BaseDistribution, value: Any, rng: np.random.Generator) -> Any:
    """Another value of ``dist`` than ``value`` (``value`` itself if there is no other)."""
    if isinstance(dist, CategoricalDistribution):
        others = [c for c in dist.choices if c != value]
        return others[int(rng.integers(len(others)))] if others else value
    if isinstance(dist, IntDistribution):
        n = (dist.high - dist.low) // dist.step
        if n == 0:
            return value
        k = int(rng.integers(n))
        v = dist.low + dist.step * k
        return v if v != value else dist.high
    assert isinstance(dist, FloatDistribution)
    return sample({"v": dist}, rng)["v"]


def _key(params: Params, space: Space) -> tuple[Any, ...]:
    return tuple(params.get(name) for name in space)


@register_strategy("aging")
class AgingEvolution(Strategy):
    """Aging evolution with a Pareto tournament and one-dimension mutation (module docstring).

    Args:
        population_size: members kept (the newest measured candidates).
        sample_size: members drawn for each tournament.
        retries: redraws of a child already in the study before a random candidate is tried.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        population_size: int = 8,
        sample_size: int = 4,
        retries: int = 50,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        if population_size < 2 or not 1 <= sample_size <= population_size:
            raise ValueError(
                "population_size must be at least 2 and sample_size between 1 and it, got "
                f"{population_size} and {sample_size}"
            )
        self.population_size = int(population_size)
        self.sample_size = int(sample_size)
        self.retries = int(retries)

    def population(self, study: Study) -> list[FrozenTrial]:
        """The newest ``population_size`` measured members, oldest first."""
        members = [t for t in completed(study) if set(t.params) >= set(self.space)]
        return members[-self.population_size :]

    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        rng = self.rng(trial)
        seen = self._seen(study, trial)
        members = self.population(study)
        if len(members) < self.population_size:
            return self._random(rng, seen)
        for _ in range(self.retries):
            parent = self._tournament(members, rng)
            child = dict(parent)
            name = list(self.space)[int(rng.integers(len(self.space)))]
            child[name] = mutate_value(self.space[name], child[name], rng)
            if _key(child, self.space) not in seen:
                return child
        return self._random(rng, seen)

    def _tournament(self, members: list[FrozenTrial], rng: np.random.Generator) -> Params:
        idx = rng.choice(len(members), size=self.sample_size, replace=False)
        picked = [members[int(i)] for i in idx]
        if self.constrained:
            feasible = [t for t in picked if is_feasible(t)]
            picked = feasible or picked
        values = np.array([t.values for t in picked], dtype=float) * self.signs()
        front = [t for t, keep in zip(picked, pareto_mask(values), strict=True) if keep]
        parent = front[int(rng.integers(len(front)))]
        return {name: parent.params[name] for name in self.space}

    def _seen(self, study: Study, trial: FrozenTrial) -> set[tuple[Any, ...]]:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return {
            _key(dict(t.params), self.space)
            for t in study.get_trials(deepcopy=False, states=states)
            if t.number != trial.number and t.params
        }

    def _random(self, rng: np.random.Generator, seen: set[tuple[Any, ...]]) -> Params:
        params = sample(self.space, rng)
        for _ in range(self.retries):
            if _key(params, self.space) not in seen:
                break
            params = sample(self.space, rng)
        return params
