"""BoTorch Bayesian optimisation on a sampled candidate pool (qLogNEI / qLogNEHVI).

Each proposal rebuilds the model from the study: one Gaussian process per outcome (a batched
multi-output ``SingleTaskGP`` on the one-hot encoding, objectives as the normal scores of their
ranks, then standardised) fitted with ``fit_gpytorch_mll``, then
the acquisition — qLogNoisyExpectedImprovement for one objective, qLogNoisyExpectedHypervolume-
Improvement for several — scores a pool of candidates with ``optimize_acqf_discrete``. The pool
is random candidates plus one- and two-dimension mutations of the best measured candidates;
measured candidates are left out. The whole space is never enumerated (optuna-integration's
BoTorchSampler does, and took ~11 s a trial on NAS-Bench-201's six dimensions).

Constraints: when trials carry violations (``Trial.set_constraint``), their largest violation is
modelled as one more outcome and passed to the acquisition as a constraint (``<= 0`` feasible),
so infeasible trials still inform the objective models and candidates are weighted by their
probability of being feasible. The hypervolume reference point and the incumbents use feasible
trials only (all trials while none is feasible); a violation that is the same for every trial
is not modelled.

Measured on NAS-Bench-201 (CIFAR-10 test accuracy, 10 seeds): see ``BoTorchStrategy``'s notes
and the report that introduced this module; about 0.5-0.9 s of CPU a proposal at 100 trials.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial

from nas.search.objectives import Objective
from nas.search.space import Params, Space, onehot, sample
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
        n_mutations: most one-dimension and, as many again, two-dimension mutations per
            incumbent. In an all-categorical space with no more neighbours than this, every
            neighbour is scored (6 dimensions x 5 choices: all 24 one-dimension neighbours,
            100 of the 240 two-dimension ones); else random ones.
        mc_samples: quasi-Monte-Carlo samples of the acquisition; ``None``: 128 for one
            objective, 32 for several (qLogNEHVI's cost grows with samples x pool x Pareto
            boxes: 128 took ~4 s a proposal at 100 trials).
        fit_maxiter: L-BFGS iterations of the hyperparameter fit (the likelihood is flat in
            many lengthscales on one-hot inputs; botorch's default runs to hundreds).
        warp: model each objective's normal scores (the normal quantiles of its ranks) rather
            than its values, so a few outliers (NAS-Bench-201's 10% accuracies of broken cells)
            don't flatten the model around the best values. Monotone, so the best candidates
            and the Pareto front stay the same.
    """

    #: most trials in the acquisition's baseline (see :meth:`_choose`)
    MAX_BASELINE: ClassVar[int] = 30

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
        mc_samples: int | None = None,
        fit_maxiter: int = 50,
        warp: bool = True,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        for name, value, low in (
            ("n_startup_trials", n_startup_trials, 1),
            ("pool_size", pool_size, 1),
            ("n_incumbents", n_incumbents, 0),
            ("n_mutations", n_mutations, 0),
            ("mc_samples", 32 if mc_samples is None else mc_samples, 1),
            ("fit_maxiter", fit_maxiter, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.n_startup_trials = n_startup_trials
        self.pool_size = pool_size
        self.n_incumbents = n_incumbents
        self.n_mutations = n_mutations
        self.mc_samples = mc_samples or (128 if len(self.objectives) == 1 else 32)
        self.fit_maxiter = fit_maxiter
        self.warp = warp

    # -- proposal ---------------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        rng = self.rng(trial)
        params, values, feasible = self.history(study)
        if len(params) < self.n_startup_trials:
            return sample(self.space, rng)
        y = _normal_scores(values * self.signs()) if self.warp else values * self.signs()
        violation = self._violations(study)
        if violation is None and not np.ptp(y, axis=0).any():
            return sample(self.space, rng)  # every measurement equal: nothing to model yet
        ranking = self._ranking(y, feasible, violation)
        pool = self._pool(params, ranking[: self.n_incumbents], rng)
        if not pool:  # every candidate of a small space is measured already
            return sample(self.space, rng)
        outcomes = y if violation is None else np.column_stack([y, violation])
        ref = _ref_point(y[feasible] if feasible.any() else y)
        return pool[self._choose(params, outcomes, ranking, pool, ref, int(rng.integers(2**31)))]

    def _choose(
        self,
        params: list[Params],
        outcomes: np.ndarray,
        ranking: list[int],
        pool: list[Params],
        ref_point: list[float],
        seed: int,
    ) -> int:
        """Index of the pool candidate with the highest acquisition value.

        ``outcomes`` holds the maximised objectives and, when constrained, the violation. The
        acquisition's baseline (the incumbents whose noisy values it integrates over) is the
        best ``MAX_BASELINE`` trials of ``ranking``: with every trial as baseline, qLogNEHVI
        took ~8 s a proposal at 100 trials, mostly in joint posteriors over the baseline.
        torch's global seed and thread count are set for the call and restored after.
        """
        import torch
        from botorch.optim import optimize_acqf_discrete

        threads = torch.get_num_threads()
        # one thread: the matrices are small and a second thread only contends (the fit was
        # measured 2-4x slower with two threads on a busy two-core machine)
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                x = self._encode(params)
                model = self._fit(x, _tensor(outcomes))
                base = x[ranking[: self.MAX_BASELINE]]
                acqf = self._acquisition(model, base, ref_point, seed)
                choices = self._encode(pool)
                with torch.no_grad():
                    best, _ = optimize_acqf_discrete(acqf, q=1, choices=choices, unique=False)
        finally:
            torch.set_num_threads(threads)
        return int((choices == best).all(dim=-1).nonzero()[0, 0])

    # -- constraints ------------------------------------------------------------------------
    def _trials(self, study: Study) -> list[FrozenTrial]:
        """The trials behind :meth:`history`, in the same order."""
        return [t for t in completed(study) if set(t.params) >= set(self.space)]

    def _violations(self, study: Study) -> np.ndarray | None:
        """Each trial's largest constraint violation (``<= 0`` feasible), made finite; None
        when no trial carries a violation or all carry the same (nothing to model)."""
        stored = [violations_of(t) for t in self._trials(study)]
        if not any(stored):
            return None
        v = np.array([max(s.values(), default=0.0) for s in stored])
        finite = np.isfinite(v)
        worst = float(v[finite].max()) if finite.any() else 1.0
        v = np.where(finite, v, 2.0 * max(worst, 0.0) + 1.0)
        return v if np.ptp(v) > 0 else None

    # -- candidates -------------------------------------------------------------------------
    @staticmethod
    def _ranking(y: np.ndarray, feasible: np.ndarray, violation: np.ndarray | None) -> list[int]:
        """Trial indices, best first: feasible trials by Pareto front, then infeasible ones by
        violation; within a front, highest mean of the standardised objectives first."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        z = (y - y.mean(axis=0)) / np.where(y.std(axis=0) > 0, y.std(axis=0), 1.0)
        order: list[int] = []
        ok = np.flatnonzero(feasible)
        if len(ok):
            for front in NonDominatedSorting().do(-y[ok]):
                idx = ok[np.asarray(front, dtype=int)]
                order.extend(int(i) for i in idx[np.argsort(-z[idx].mean(axis=1), kind="stable")])
        bad = np.flatnonzero(~feasible)
        if violation is not None:
            bad = bad[np.argsort(violation[bad], kind="stable")]
        return order + [int(i) for i in bad]

    def _pool(
        self, params: list[Params], incumbents: list[int], rng: np.random.Generator
    ) -> list[Params]:
        """Random candidates and mutations of the incumbents, unmeasured and without repeats."""
        seen = {_key(p) for p in params}
        pool: list[Params] = []
        for i in incumbents:
            for n_dims in (1, 2):
                for candidate in self._mutants(params[i], n_dims, rng):
                    _add(pool, seen, candidate)
        for _ in range(self.pool_size):
            _add(pool, seen, sample(self.space, rng))
        return pool

    def _mutants(self, params: Params, n_dims: int, rng: np.random.Generator) -> list[Params]:
        """Every candidate ``n_dims`` categorical changes away, or ``n_mutations`` random
        mutants when there are more (or the space has numeric dimensions)."""
        dims = list(self.space.values())
        if all(isinstance(d, CategoricalDistribution) for d in dims):
            sizes = [len(d.choices) - 1 for d in dims if isinstance(d, CategoricalDistribution)]
            combos = list(itertools.combinations(range(len(dims)), n_dims))
            if sum(math.prod(sizes[j] for j in c) for c in combos) <= self.n_mutations:
                return [m for c in combos for m in self._changes(params, c)]
        return [self._mutate(params, n_dims, rng) for _ in range(self.n_mutations)]

    def _changes(self, params: Params, dims: tuple[int, ...]) -> list[Params]:
        """Every candidate that differs from ``params`` in exactly the categorical ``dims``."""
        names = [list(self.space)[j] for j in dims]
        dists = [self.space[n] for n in names]
        others = [
            [c for c in d.choices if c != params[n]]
            for n, d in zip(names, dists, strict=True)
            if isinstance(d, CategoricalDistribution)
        ]
        return [
            {**params, **dict(zip(names, values, strict=True))}  # type: ignore[arg-type]
            for values in itertools.product(*others)
        ]

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
    def _encode(self, candidates: Sequence[Params]) -> torch.Tensor:
        """One-hot rows (numbers scaled to [0, 1]) as a float64 tensor."""
        return _tensor(onehot(self.space, candidates))

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> Model:
        """A GP per outcome (batched), standardised outputs, fitted by maximum likelihood.

        The kernel is botorch's default: RBF with one lengthscale per one-hot column (ARD).
        botorch's ``MixedSingleTaskGP`` (a Hamming-distance kernel on choice indices) was
        measured worse on NAS-Bench-201 (regret 0.44 vs 0.02 after 50 evaluations, 2 seeds)
        and slower.
        """
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.optim.closures import get_loss_closure_with_grads
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(x, y, outcome_transform=Standardize(m=y.shape[-1]))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        # an explicit closure fits all outputs in one L-BFGS run; botorch's default for a
        # multi-output model (batched independent L-BFGS) was measured 2-4x slower here
        params = {k: p for k, p in mll.named_parameters() if p.requires_grad}
        fit_gpytorch_mll(
            mll,
            closure=get_loss_closure_with_grads(mll, params),
            optimizer_kwargs={"options": {"maxiter": self.fit_maxiter}},
            max_attempts=2,
        )
        return model

    def _acquisition(
        self, model: Model, baseline: torch.Tensor, ref_point: list[float], seed: int
    ) -> AcquisitionFunction:
        """qLogNEI (one objective) or qLogNEHVI (several); an outcome after the objectives is
        the constraint violation (``<= 0`` feasible)."""
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

        m = len(self.objectives)
        constrained = model.num_outputs > m
        sampler = SobolQMCNormalSampler(torch.Size([self.mc_samples]), seed=seed)
        constraints: Any = [lambda z: z[..., m]] if constrained else None
        if m == 1:
            objective = GenericMCObjective(_first_outcome) if constrained else None
            return qLogNoisyExpectedImprovement(
                model, baseline, sampler=sampler, objective=objective, constraints=constraints
            )
        return qLogNoisyExpectedHypervolumeImprovement(
            model,
            ref_point=ref_point,
            X_baseline=baseline,
            sampler=sampler,
            objective=IdentityMCMultiOutputObjective(outcomes=list(range(m))),
            constraints=constraints,
            prune_baseline=True,
        )


def _tensor(a: np.ndarray) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def _first_outcome(samples: torch.Tensor, X: torch.Tensor | None = None) -> torch.Tensor:
    """The objective of a single-objective model that also models a constraint."""
    return samples[..., 0]


def _normal_scores(y: np.ndarray) -> np.ndarray:
    """Each column replaced by the normal quantiles of its ranks (ties share their mean rank)."""
    from scipy.stats import norm, rankdata

    return np.asarray(norm.ppf((rankdata(y, axis=0) - 0.5) / len(y)), dtype=float)


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
