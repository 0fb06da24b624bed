"""Random search, and optuna's TPE and GP samplers used unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optuna.samplers import BaseSampler, GPSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial

from nas.search.objectives import Objective
from nas.search.space import Params, Space, sample
from nas.search.strategies._base import OptunaStrategy, Strategy, register_strategy


@register_strategy("random")
class RandomStrategy(Strategy):
    """Uniform random candidates; the baseline every other strategy must beat."""

    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        return sample(self.space, self.rng(trial))


@register_strategy("tpe")
class TPEStrategy(OptunaStrategy):
    """optuna's Tree-structured Parzen Estimator.

    Args:
        n_startup_trials: random trials before the model is used (optuna's default, 10).
        multivariate: model the dimensions jointly. Our default is True for any number of
            objectives (optuna 5 defaults to True for one objective, False for several): on
            the conformance problem the joint model finds better candidates sooner.
        **kwargs: passed to :class:`optuna.samplers.TPESampler` unchanged.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        n_startup_trials: int = 10,
        multivariate: bool = True,
        **tpe_options: Any,
    ) -> None:
        self._tpe_options = dict(
            tpe_options, n_startup_trials=n_startup_trials, multivariate=multivariate
        )
        super().__init__(space, objectives, seed=seed, constrained=constrained)

    def make_sampler(self) -> BaseSampler:
        return TPESampler(seed=self.seed, **self._tpe_options)


@register_strategy("gp")
class GPStrategy(OptunaStrategy):
    """optuna's Gaussian-process sampler (log EI; log EHVI for several objectives).

    Args:
        n_startup_trials: random trials before the GP is used (optuna's default, 10).
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        n_startup_trials: int = 10,
    ) -> None:
        self._n_startup = n_startup_trials
        super().__init__(space, objectives, seed=seed, constrained=constrained)

    def make_sampler(self) -> BaseSampler:
        return GPSampler(
            seed=self.seed,
            n_startup_trials=self._n_startup,
            warn_independent_sampling=False,
        )
