"""The strategy interface: an optuna sampler that proposes a whole candidate at once.

A strategy holds no trial history of its own. Every call receives the study and reads the
history from it (as optuna's samplers do), so a resumed run or a second worker continues the
same search. Caches are allowed, but must be rebuilt from ``study.trials`` when they miss.
Randomness is derived from ``(seed, trial.number)`` so the same seed gives the same proposals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective
from nas.search.registry import Registry
from nas.search.space import Params, Space, validate_space

#: prefix of the system attributes where optuna's ``Trial.set_constraint`` stores violations
CONSTRAINT_PREFIX = "constraints:"
#: user attribute the runner sets on a trial that must not count (budget already met)
SURPLUS_ATTR = "nas:surplus"

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: register a :class:`Strategy` subclass under ``name``."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        return STRATEGIES.register(name)(cls)

    return deco


def create_strategy(
    name: str,
    space: Space,
    objectives: Sequence[Objective],
    *,
    seed: int | None = None,
    **options: Any,
) -> Strategy:
    """Build the strategy registered as ``name`` for this space and these objectives."""
    return STRATEGIES.get(name)(space, objectives, seed=seed, **options)


def list_strategies() -> list[str]:
    """Names of every registered strategy."""
    return STRATEGIES.names()


def violations_of(trial: FrozenTrial) -> dict[str, float]:
    """Constraint violations stored with ``Trial.set_constraint`` (``<= 0`` = satisfied)."""
    n = len(CONSTRAINT_PREFIX)
    return {
        k[n:]: float(v) for k, v in trial.system_attrs.items() if k.startswith(CONSTRAINT_PREFIX)
    }


def is_feasible(trial: FrozenTrial) -> bool:
    """True when every stored constraint violation is ``<= 0`` (no constraints: True)."""
    return all(v <= 0 for v in violations_of(trial).values())


def completed(study: Study) -> list[FrozenTrial]:
    """COMPLETE trials with finite objective values, in trial-number order."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.values is not None and all(math.isfinite(v) for v in t.values):
            out.append(t)
    return sorted(out, key=lambda t: t.number)


class Strategy(BaseSampler):
    """Base class of every ``nas`` strategy.

    Subclasses implement :meth:`propose`. The whole candidate comes from ``sample_relative``;
    ``sample_independent`` only serves parameters outside the task's space.

    Args:
        space: the task's search space.
        objectives: what to optimise, in the study's order.
        seed: seed of every random choice; ``None`` for a fresh one.
        constrained: whether trials carry constraint violations (``Trial.set_constraint``).
    """

    name: ClassVar[str] = "base"
    #: whether the strategy handles several objectives (False: the runner refuses them)
    multi_objective: ClassVar[bool] = True
    #: whether the strategy needs the task's candidate pool and training-free metrics (RoBoT);
    #: the job then passes ``pool``, ``metrics`` and ``metric_names`` from ``task.training_free``
    needs_training_free: ClassVar[bool] = False
    #: whether the strategy takes a ``budget`` option (evaluations of the run), which the job
    #: passes unless the user's strategy options set it
    uses_budget: ClassVar[bool] = False
    #: whether the strategy belongs to one task and takes it as the ``task`` option (a plugin's
    #: own search, e.g. N2N's two-stage policies); the job passes it
    needs_task: ClassVar[bool] = False

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
    ) -> None:
        validate_space(space)
        if not objectives:
            raise ValueError("a strategy needs at least one objective")
        if len(objectives) > 1 and not self.multi_objective:
            raise ValueError(f"strategy {self.name!r} optimises one objective only")
        self.space: Space = dict(space)
        self.objectives = tuple(objectives)
        entropy = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        self.seed = entropy % 2**31 if seed is None else int(seed)
        self.constrained = constrained
        self._fallback = RandomSampler(seed=self.seed)

    # -- optuna sampler protocol ------------------------------------------------------------
    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self.space)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return dict(self.propose(study, trial))

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        # Proposals derive their randomness from (seed, trial number); nothing to reseed.
        self._fallback.reseed_rng()

    # -- what subclasses write --------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        """Return the whole next candidate (every dimension of ``self.space``)."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def rng(self, trial: FrozenTrial, *salt: int) -> np.random.Generator:
        """A generator that depends only on the seed, the trial number and ``salt``."""
        return np.random.default_rng([self.seed, trial.number, *salt])

    def history(self, study: Study) -> tuple[list[Params], np.ndarray, np.ndarray]:
        """Measured candidates so far.

        Returns:
            ``(params, values, feasible)``: the params of every COMPLETE trial, their objective
            values as an array of shape ``(n, len(objectives))`` in the objectives' own
            directions, and a boolean feasibility mask of shape ``(n,)``.
        """
        trials = [t for t in completed(study) if set(t.params) >= set(self.space)]
        params = [{k: t.params[k] for k in self.space} for t in trials]
        values = np.array([t.values for t in trials], dtype=float).reshape(-1, len(self.objectives))
        feasible = np.array([is_feasible(t) for t in trials], dtype=bool)
        return params, values, feasible

    def signs(self) -> np.ndarray:
        """+1 for maximised objectives, -1 for minimised: ``values * signs`` is maximised."""
        return np.array([1.0 if o.direction == "maximize" else -1.0 for o in self.objectives])


class OptunaStrategy(Strategy):
    """A strategy that *is* one of optuna's samplers, unchanged.

    Every sampler call is delegated, so with the same seed the proposals are exactly those of
    the sampler used directly on an objective that suggests the same dimensions in order.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        self.sampler: BaseSampler = self.make_sampler()

    def make_sampler(self) -> BaseSampler:
        """Build the wrapped optuna sampler (seeded with ``self.seed``).

        optuna's samplers read constraint violations from the trials themselves
        (``Trial.set_constraint``), so no ``constraints_func`` is needed.
        """
        raise NotImplementedError

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


__all__ = [
    "CONSTRAINT_PREFIX",
    "STRATEGIES",
    "SURPLUS_ATTR",
    "OptunaStrategy",
    "Strategy",
    "completed",
    "create_strategy",
    "is_feasible",
    "list_strategies",
    "register_strategy",
    "violations_of",
]
