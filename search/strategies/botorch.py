"""BoTorch Bayesian optimisation on a sampled candidate pool (qLogNEI / qLogNEHVI).

Each proposal rebuilds the model from the study: one Gaussian process per outcome (a batched
multi-output ``SingleTaskGP`` with standardised outputs) fitted with ``fit_gpytorch_mll``, then
the acquisition — qLogNoisyExpectedImprovement for one objective, qLogNoisyExpectedHypervolume-
Improvement for several — scores a pool of candidates with ``optimize_acqf_discrete``. The pool
is random candidates plus one- and two-dimension mutations of the best measured candidates;
measured candidates are left out. The whole space is never enumerated (optuna-integration's
BoTorchSampler does, and took ~11 s a trial on NAS-Bench-201's six dimensions).

Constraints: when trials carry violations (``Trial.set_constraint``), their largest violation is
modelled as one more outcome and passed to the acquisition as a constraint (``<= 0`` feasible),
so infeasible trials still inform the objective models and candidates are weighted by their
probability of being feasible. The hypervolume reference point and the incumbents use feasible
trials only (all trials while none is feasible).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial

from nas.search.objectives import Objective
from nas.search.space import Params, Space, onehot, ordinal, sample
from nas.search.strategies._base import (
    Strategy,
    completed,
    register_strategy,
    violations_of,
)

if TYPE_CHECKING:
    import torch
    from botorch.acquisition import AcquisitionFunction
    from botorch.models.model import Model

Kernel = Literal["onehot", "categorical"]
_KERNELS: tuple[str, ...] = ("onehot", "categorical")


@register_strategy("botorch")
class BoTorchStrategy(Strategy):
    """BoTorch GP + qLogNEI / qLogNEHVI, maximised over a sampled candidate pool.

    Args:
        space: the task's search space.
        objectives: what to optimise, in the study's order.
        seed: seed of every random choice; ``None`` for a fresh one.
        constrained: whether trials carry constraint violations. Violations are modelled
            whenever measured trials carry them, so this flag only documents intent.
        n_startup_trials: random proposals before the model is used.
        pool_size: random candidates scored per proposal (besides the mutations).
        n_incumbents: best measured candidates whose mutations join the pool.
        n_mutations: one-dimension and, as many again, two-dimension mutations per incumbent.
        mc_samples: quasi-Monte-Carlo samples of the acquisition.
        kernel: ``"onehot"``: an RBF kernel with one lengthscale per column (ARD) on the
            one-hot encoding; ``"categorical"``: botorch's ``MixedSingleTaskGP`` (a Hamming-
            distance kernel) on the choice indices.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        n_startup_trials: int = 10,
        pool_size: int = 2000,
        n_incumbents: int = 5,
        n_mutations: int = 100,
        mc_samples: int = 128,
        kernel: Kernel = "onehot",
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        for name, value, low in (
            ("n_startup_trials", n_startup_trials, 2),
            ("pool_size", pool_size, 1),
            ("n_incumbents", n_incumbents, 0),
            ("n_mutations", n_mutations, 0),
            ("mc_samples", mc_samples, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(_KERNELS)}, got {kernel!r}")
        self.n_startup_trials = n_startup_trials
        self.pool_size = pool_size
        self.n_incumbents = n_incumbents
        self.n_mutations = n_mutations
        self.mc_samples = mc_samples
        self.kernel: Kernel = kernel

    # -- proposal ---------------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        rng = self.rng(trial)
        params, values, feasible = self.history(study)
        if len(params) < self.n_startup_trials:
            return sample(self.space, rng)
        y = values * self.signs()
        violation = self._violations(study)
        pool = self._pool(params, self._incumbents(y, feasible, violation), rng)
        if not pool:  # every candidate of a small space is measured already
            return sample(self.space, rng)
        return pool[self._choose(params, y, violation, feasible, pool, int(rng.integers(2**31)))]

    def _choose(
        self,
        params: list[Params],
        y: np.ndarray,
        violation: np.ndarray | None,
        feasible: np.ndarray,
        pool: list[Params],
        seed: int,
    ) -> int:
        """Index of the pool candidate with the highest acquisition value."""
        import torch
        from botorch.optim import optimize_acqf_discrete

        with torch.random.fork_rng():
            torch.manual_seed(seed)
            outcomes = y if violation is None else np.column_stack([y, violation])
            x = self._tensor(self._encode(params))
            model = self._fit(x, self._tensor(outcomes))
            acqf = self._acquisition(model, x, y, feasible, violation is not None, seed)
            choices = self._tensor(self._encode(pool))
            with torch.no_grad():
                best, _ = optimize_acqf_discrete(acqf, q=1, choices=choices, unique=False)
        return int((choices == best).all(dim=-1).nonzero()[0, 0])

    # -- constraints ------------------------------------------------------------------------
    def _trials(self, study: Study) -> list[FrozenTrial]:
        """The trials behind :meth:`history`, in the same order."""
        return [t for t in completed(study) if set(t.params) >= set(self.space)]

    def _violations(self, study: Study) -> np.ndarray | None:
        """Each trial's largest constraint violation (``<= 0`` feasible), made finite; None
        when no trial carries a violation."""
        stored = [violations_of(t) for t in self._trials(study)]
        if not any(stored):
            return None
        v = np.array([max(s.values(), default=0.0) for s in stored])
        finite = np.isfinite(v)
        worst = float(v[finite].max()) if finite.any() else 1.0
        return np.where(finite, v, max(worst, 0.0) + 1.0 + abs(worst))

    # -- candidates -------------------------------------------------------------------------
    def _incumbents(
        self, y: np.ndarray, feasible: np.ndarray, violation: np.ndarray | None
    ) -> list[int]:
        """Indices of the best measured trials: feasible Pareto fronts first, then least
        violating; within a front, highest mean of the standardised objectives first."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        z = (y - y.mean(axis=0)) / np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
        order: list[int] = []
        ok = np.flatnonzero(feasible)
        if len(ok):
            for front in NonDominatedSorting().do(-y[ok]):
                idx = ok[np.asarray(front, dtype=int)]
                order.extend(int(i) for i in idx[np.argsort(-z[idx].mean(axis=1), kind="stable")])
                if len(order) >= self.n_incumbents:
                    break
        if len(order) < self.n_incumbents and violation is not None:
            bad = np.flatnonzero(~feasible)
            order.extend(int(i) for i in bad[np.argsort(violation[bad], kind="stable")])
        return order[: self.n_incumbents]

    def _pool(
        self, params: list[Params], incumbents: list[int], rng: np.random.Generator
    ) -> list[Params]:
        """Random candidates and mutations of the incumbents, unmeasured and without repeats."""
        seen = {_key(p) for p in params}
        pool: list[Params] = []
        for i in incumbents:
            for n_dims in (1, 2):
                for _ in range(self.n_mutations):
                    _add(pool, seen, self._mutate(params[i], n_dims, rng))
        for _ in range(self.pool_size):
            _add(pool, seen, sample(self.space, rng))
        return pool

    def _mutate(self, params: Params, n_dims: int, rng: np.random.Generator) -> Params:
        """``params`` with ``n_dims`` dimensions redrawn (categoricals to another choice)."""
        out = dict(params)
        names = list(self.space)
        for j in rng.choice(len(names), size=min(n_dims, len(names)), replace=False):
            name = names[int(j)]
            dist = self.space[name]
            if isinstance(dist, CategoricalDistribution) and len(dist.choices) > 1:
                others = [c for c in dist.choices if c != params[name]]
                out[name] = others[int(rng.integers(len(others)))]  # type: ignore[assignment]
            else:
                out[name] = sample({name: dist}, rng)[name]
        return out

    # -- model and acquisition --------------------------------------------------------------
    def _encode(self, candidates: Sequence[Params]) -> np.ndarray:
        """One-hot rows, or (categorical kernel) choice indices with numbers scaled to [0, 1]."""
        if self.kernel == "onehot":
            return onehot(self.space, candidates)
        rows = ordinal(self.space, candidates)
        for j, dist in enumerate(self.space.values()):
            if isinstance(dist, IntDistribution | FloatDistribution):
                rows[:, j] = onehot({"x": dist}, [{"x": v} for v in rows[:, j]])[:, 0]
        return rows

    def _cat_dims(self) -> list[int]:
        return [
            j for j, d in enumerate(self.space.values()) if isinstance(d, CategoricalDistribution)
        ]

    @staticmethod
    def _tensor(a: np.ndarray) -> torch.Tensor:
        import torch

        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> Model:
        """A GP per outcome (batched), standardised outputs, fitted by maximum likelihood."""
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import MixedSingleTaskGP, SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        transform = Standardize(m=y.shape[-1])
        cat_dims = self._cat_dims()
        model: SingleTaskGP
        if self.kernel == "categorical" and cat_dims:
            model = MixedSingleTaskGP(x, y, cat_dims=cat_dims, outcome_transform=transform)
        else:
            model = SingleTaskGP(x, y, outcome_transform=transform)
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        return model

    def _acquisition(
        self,
        model: Model,
        x: torch.Tensor,
        y: np.ndarray,
        feasible: np.ndarray,
        constrained: bool,
        seed: int,
    ) -> AcquisitionFunction:
        """qLogNEI (one objective) or qLogNEHVI (several); the last outcome is the constraint
        when ``constrained``."""
        import torch
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.acquisition.multi_objective.logei import (
            qLogNoisyExpectedHypervolumeImprovement,
        )
        from botorch.acquisition.multi_objective.objective import (
            IdentityMCMultiOutputObjective,
        )
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.sampling import SobolQMCNormalSampler

        m = y.shape[1]
        sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=seed)
        constraints: Any = [lambda z: z[..., m]] if constrained else None
        if m == 1:
            objective = GenericMCObjective(lambda z, x=None: z[..., 0]) if constrained else None
            return qLogNoisyExpectedImprovement(
                model, x, sampler=sampler, objective=objective, constraints=constraints
            )
        return qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=_ref_point(y[feasible] if feasible.any() else y),
            X_baseline=x,
            sampler=sampler,
            objective=IdentityMCMultiOutputObjective(outcomes=list(range(m))),
            constraints=constraints,
            prune_baseline=True,
        )


def _ref_point(y: np.ndarray) -> list[float]:
    """Per objective (maximised): the worst value minus 10% of the range."""
    lo, hi = y.min(axis=0), y.max(axis=0)
    span = np.where(hi > lo, hi - lo, np.maximum(np.abs(lo), 1.0))
    return [float(v) for v in lo - 0.1 * span]


def _key(params: Params) -> tuple[str, ...]:
    return tuple(repr(v) for v in params.values())


def _add(pool: list[Params], seen: set[tuple[str, ...]], candidate: Params) -> None:
    key = _key(candidate)
    if key not in seen:
        seen.add(key)
        pool.append(candidate)


__all__ = ["BoTorchStrategy"]
