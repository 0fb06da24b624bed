"""RoBoT: Bayesian optimisation of a weighted ensemble of training-free metrics, then greedy.

He et al., "Robustifying and Boosting Training-Free Neural Architecture Search" (ICLR 2024).
The strategy receives a candidate pool and a function scoring candidates with ``M``
training-free metrics. The scores are computed once, and each metric is min-max normalised
to [0, 1] over the pool (NaN contributes 0, as in the authors' code). A weight vector
``w`` in [-1, 1]^M ranks the pool by ``scores @ w``; its value is the measured objective of its
top-ranked candidate.

* **BO phase** (``bo_steps`` weight vectors): the first ``n_startup`` weight vectors are
  random, then a BoTorch ``SingleTaskGP`` on the (weight, value) pairs so far and an
  ``UpperConfidenceBound`` acquisition, maximised over scrambled Sobol points of the weight
  cube and polished by ``optimize_acqf``, choose the next one. When the top candidate of the
  chosen weight was measured already, its known value is the weight's observation and the step
  costs no evaluation (the authors' code counts distinct queried architectures in the same
  way); the BO continues within the same proposal. When it is taken but has no value (running,
  failed or pruned), the next untaken candidate under that weight is proposed and its value
  becomes the weight's observation.
* **Greedy phase** (the rest of the budget): the weight whose observation is best (feasible
  first; the latest on ties, as in the authors' code) ranks the pool, and its untaken
  candidates are proposed in order.

The BO phase therefore uses at most ``bo_steps`` evaluations, fewer when the BO revisits
candidates, and the greedy phase gets the rest.

**State** lives in the study. Each trial the strategy proposes stores the weight that chose it
(trial system attribute ``nas:robot:w``), its phase (``nas:robot:phase``: ``random``, ``bo``
or ``greedy``) and the free BO steps taken while proposing it (``nas:robot:free``: a list of
``[weight, number of the trial that measured its top candidate]``). Observations are rebuilt
from these and the trials' values on every call; the pool's scores are cached. Candidates of
every earlier trial, failed ones included, are never proposed again. Randomness comes from
``(seed, trial number, step)``, so the same seed gives the same proposals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective
from nas.search.space import Params, Space, contains, sample
from nas.search.strategies._base import Strategy, is_feasible, register_strategy, violations_of

if TYPE_CHECKING:
    from botorch.models.model import Model

W_ATTR = "nas:robot:w"
PHASE_ATTR = "nas:robot:phase"
FREE_ATTR = "nas:robot:free"

#: ``metrics(candidates) -> (len(candidates), M)`` training-free scores, NaN allowed
MetricsFn = Callable[[Sequence[Params]], np.ndarray]


@dataclass(frozen=True)
class Step:
    """One BO step: a weight vector and the trial whose value is its observation."""

    w: tuple[float, ...]
    trial: int


@register_strategy("robot")
class RoBoTStrategy(Strategy):
    """RoBoT: BO over weights of training-free metrics, then greedy search under the best.

    Args:
        space: the task's search space.
        objectives: the one objective to optimise (its direction is respected).
        seed: seed of every random choice; ``None`` for a fresh one.
        constrained: whether trials carry constraint violations; infeasible candidates are
            observed as worse than every feasible one and never chosen as the best weight's
            source while a feasible one exists.
        pool: the candidates to choose from (each inside ``space``).
        metrics: scores ``pool`` with the training-free metrics, shape ``(len(pool), M)``.
        metric_names: a name per metric column (for messages); default ``m0, m1, ...``.
        budget: evaluations of the run, to size the BO phase; ``nas search`` passes it.
        bo_steps: weight vectors the BO phase evaluates, repeats included; ``None``: the
            budget, as in the authors' code (their BO runs T weight vectors and only new
            architectures cost queries; on NAS-Bench-201 with T = 20 the BO phase used 8-9
            queries on average, bench/results/training_free.md), or 20 without a budget.
        n_startup: random weight vectors before the GP is used (also used while the
            observations are all equal: nothing to model yet).
        beta: UCB's exploration weight (``mean + sqrt(beta) * std``); 2.576² as the
            ``bayes_opt`` package the authors used.
        n_raw: Sobol points of the weight cube at which the acquisition is evaluated.
        fit_maxiter: L-BFGS iterations of the GP's hyperparameter fit.
    """

    multi_objective: ClassVar[bool] = False
    needs_training_free: ClassVar[bool] = True
    uses_budget: ClassVar[bool] = True

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        pool: Sequence[Params] | None = None,
        metrics: MetricsFn | None = None,
        metric_names: Sequence[str] | None = None,
        budget: int | None = None,
        bo_steps: int | None = None,
        n_startup: int = 2,
        beta: float = 2.576**2,
        n_raw: int = 2048,
        fit_maxiter: int = 50,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        if pool is None or metrics is None:
            raise ValueError(
                "robot needs a candidate pool and training-free metrics: pass pool=[params, ...] "
                "and metrics=fn(candidates) -> array (n, M); `nas search` passes them for tasks "
                "that provide training_free()"
            )
        _check_int(budget=budget, low=1, none_ok=True)
        _check_int(bo_steps=bo_steps, low=1, none_ok=True)
        _check_int(n_startup=n_startup, low=1)
        _check_int(n_raw=n_raw, low=1)
        _check_int(fit_maxiter=fit_maxiter, low=1)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0 (got {beta}); try {2.576**2:.2f}")
        self.pool = _clean_pool(self.space, pool)
        self.metrics = metrics
        self.metric_names = None if metric_names is None else tuple(metric_names)
        self.budget = budget
        self.bo_steps = bo_steps if bo_steps is not None else (budget or 20)
        self.n_startup = n_startup
        self.beta = float(beta)
        self.n_raw = n_raw
        self.fit_maxiter = fit_maxiter
        self._index = {_key(self.space, p): i for i, p in enumerate(self.pool)}
        self._scores: np.ndarray | None = None

    # -- scores -----------------------------------------------------------------------------
    @property
    def scores(self) -> np.ndarray:
        """The pool's normalised metric scores, shape ``(len(pool), M)`` (computed once)."""
        if self._scores is None:
            raw = np.asarray(self.metrics(self.pool), dtype=float)
            if raw.ndim != 2 or raw.shape[0] != len(self.pool) or raw.shape[1] < 1:
                raise ValueError(
                    f"metrics returned shape {raw.shape}; expected ({len(self.pool)}, M >= 1)"
                )
            if self.metric_names is not None and len(self.metric_names) != raw.shape[1]:
                raise ValueError(
                    f"metrics returned {raw.shape[1]} columns for {len(self.metric_names)} "
                    f"names ({', '.join(self.metric_names)})"
                )
            self._scores = normalise(raw)
        return self._scores

    def ranking(self, w: Sequence[float]) -> np.ndarray:
        """Pool indices, best first, under weight vector ``w`` (ties: pool order)."""
        return np.argsort(-(self.scores @ np.asarray(w, dtype=float)), kind="stable")

    # -- proposal ---------------------------------------------------------------------------
    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number != trial.number]
        history = _History.of(self, trials)
        steps = history.steps
        free: list[list[Any]] = []
        k = 0
        while len(steps) < self.bo_steps:
            w, phase = self._next_weight(history, steps, trial, k)
            order = self.ranking(w)
            top = int(order[0])
            if top in history.value_of_index:  # measured: a free observation, no evaluation
                step = Step(tuple(w), history.trial_of_index[top])
                steps = [*steps, step]
                free.append([list(step.w), step.trial])
                k += 1
                continue
            return self._take(study, trial, history, order, w, phase, free)
        best = history.best_weight(steps)
        if best is None:  # nothing measured yet (e.g. every trial failed): any weight
            best = tuple(self._random_weight(trial, k))
        return self._take(study, trial, history, self.ranking(best), best, "greedy", free)

    def _next_weight(
        self, history: _History, steps: Sequence[Step], trial: FrozenTrial, k: int
    ) -> tuple[tuple[float, ...], str]:
        """The next BO weight: random during start-up, else the UCB maximiser."""
        x, y = history.observations(steps)
        if len(steps) < self.n_startup or len(y) < 2 or not np.ptp(y) > 0:
            return tuple(self._random_weight(trial, k)), "random"
        seed = int(self.rng(trial, k, 1).integers(2**31))
        return tuple(self._maximise_ucb(x, y, seed)), "bo"

    def _take(
        self,
        study: Study,
        trial: FrozenTrial,
        history: _History,
        order: np.ndarray,
        w: Sequence[float],
        phase: str,
        free: list[list[Any]],
    ) -> Params:
        """Store the step in the trial and return the first untaken candidate of ``order``."""
        storage = study._storage
        storage.set_trial_system_attr(trial._trial_id, W_ATTR, [float(v) for v in w])
        storage.set_trial_system_attr(trial._trial_id, PHASE_ATTR, phase)
        storage.set_trial_system_attr(trial._trial_id, FREE_ATTR, free)
        for i in order:
            if int(i) not in history.taken:
                return dict(self.pool[int(i)])
        return sample(self.space, self.rng(trial, 2))  # the whole pool is taken

    def _random_weight(self, trial: FrozenTrial, k: int) -> np.ndarray:
        return np.asarray(self.rng(trial, k, 0).uniform(-1.0, 1.0, size=self.scores.shape[1]))

    # -- Bayesian optimisation --------------------------------------------------------------
    def _maximise_ucb(self, x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
        """The weight vector in [-1, 1]^M maximising UCB of a GP fitted on ``(x, y)``.

        torch's global seed and thread count are set for the call and restored after.
        """
        import torch
        from botorch.acquisition import UpperConfidenceBound
        from botorch.optim import optimize_acqf

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = self._fit(_tensor((x + 1.0) / 2.0), _tensor(y[:, None]))
                acqf = UpperConfidenceBound(model, beta=self.beta)
                m = x.shape[1]
                raw = torch.quasirandom.SobolEngine(m, scramble=True, seed=seed).draw(self.n_raw)
                raw = raw.to(torch.float64).unsqueeze(1)  # (n_raw, 1, M) in the unit cube
                with torch.no_grad():
                    values = acqf(raw)
                start = raw[values.topk(min(2, len(raw))).indices]
                bounds = torch.stack([torch.zeros(m), torch.ones(m)]).to(torch.float64)
                best, value = optimize_acqf(
                    acqf, bounds, q=1, num_restarts=len(start), batch_initial_conditions=start
                )
                polished = value is not None and float(value) >= float(values.max())
                u = best[0] if polished else raw[values.argmax(), 0]
        finally:
            torch.set_num_threads(threads)
        return np.clip(2.0 * u.detach().numpy() - 1.0, -1.0, 1.0)

    def _fit(self, x: Any, y: Any) -> Model:
        """A GP on weights (scaled to the unit cube) and standardised values."""
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        model = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        fit_gpytorch_mll(
            mll, optimizer_kwargs={"options": {"maxiter": self.fit_maxiter}}, max_attempts=2
        )
        return model


@dataclass
class _History:
    """What the study says so far: taken candidates, measured values, BO steps."""

    taken: set[int]
    value_of_index: dict[int, float]  # pool index -> observation (maximised, penalised)
    trial_of_index: dict[int, int]  # pool index -> number of the trial that measured it
    value_of_trial: dict[int, float]
    feasible_trials: set[int]
    steps: list[Step]

    @classmethod
    def of(cls, strategy: RoBoTStrategy, trials: Sequence[FrozenTrial]) -> _History:
        """Rebuild from ``trials`` (in number order)."""
        trials = sorted(trials, key=lambda t: t.number)
        sign = float(strategy.signs()[0])
        index: dict[int, int] = {}
        for t in trials:
            if set(t.params) >= set(strategy.space):
                i = strategy._index.get(_key(strategy.space, t.params))
                if i is not None:
                    index[t.number] = i
        measured = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and t.values is not None
            and math.isfinite(t.values[0])
        ]
        values = _penalised(measured, sign)
        h = cls(
            set(index.values()), {}, {}, values, {t.number for t in measured if is_feasible(t)}, []
        )
        for t in measured:
            i = index.get(t.number)
            if i is not None and i not in h.value_of_index:
                h.value_of_index[i] = values[t.number]
                h.trial_of_index[i] = t.number
        for t in trials:
            h.steps.extend(_steps_of(t))
        return h

    def observations(self, steps: Sequence[Step]) -> tuple[np.ndarray, np.ndarray]:
        """``(weights, values)`` of the steps whose trial has a value."""
        known = [s for s in steps if s.trial in self.value_of_trial]
        x = np.array([s.w for s in known], dtype=float)
        return x, np.array([self.value_of_trial[s.trial] for s in known], dtype=float)

    def best_weight(self, steps: Sequence[Step]) -> tuple[float, ...] | None:
        """The weight whose observation is best (feasible first; the latest on ties)."""
        best: tuple[bool, float] | None = None
        out: tuple[float, ...] | None = None
        for s in steps:
            if s.trial not in self.value_of_trial:
                continue
            rank = (s.trial in self.feasible_trials, self.value_of_trial[s.trial])
            if best is None or rank >= best:
                best, out = rank, s.w
        return out


def _steps_of(t: FrozenTrial) -> list[Step]:
    """The BO steps trial ``t`` records: its free steps, then its own (not greedy) step."""
    out = [Step(tuple(float(v) for v in w), int(n)) for w, n in t.system_attrs.get(FREE_ATTR, [])]
    if W_ATTR in t.system_attrs and t.system_attrs.get(PHASE_ATTR) != "greedy":
        out.append(Step(tuple(float(v) for v in t.system_attrs[W_ATTR]), t.number))
    return out


def _penalised(measured: Sequence[FrozenTrial], sign: float) -> dict[int, float]:
    """Each trial's maximised value; infeasible ones below every measured value, by violation."""
    raw = {t.number: sign * float(t.values[0]) for t in measured}
    if not raw:
        return {}
    lo, hi = min(raw.values()), max(raw.values())
    span = hi - lo if hi > lo else 1.0
    out = {}
    for t in measured:
        if is_feasible(t):
            out[t.number] = raw[t.number]
        else:
            worst = max(violations_of(t).values(), default=0.0)
            out[t.number] = lo - 0.1 * span - 0.1 * span * math.tanh(max(worst, 0.0))
    return out


def normalise(raw: np.ndarray) -> np.ndarray:
    """Each column min-max scaled to [0, 1] over its finite values; NaN and inf become 0."""
    out = np.zeros_like(raw, dtype=float)
    for j in range(raw.shape[1]):
        col = raw[:, j]
        ok = np.isfinite(col)
        if not ok.any():
            continue
        lo, hi = col[ok].min(), col[ok].max()
        out[ok, j] = (col[ok] - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _clean_pool(space: Space, pool: Sequence[Params]) -> list[Params]:
    """The pool restricted to the space's dimensions, duplicates dropped; checked."""
    if len(pool) == 0:
        raise ValueError("the candidate pool is empty")
    out: list[Params] = []
    seen: set[tuple[str, ...]] = set()
    for p in pool:
        if not contains(space, p):
            raise ValueError(f"pool candidate {p} is outside the search space")
        key = _key(space, p)
        if key not in seen:
            seen.add(key)
            out.append({k: p[k] for k in space})
    return out


def _key(space: Space, params: Any) -> tuple[str, ...]:
    return tuple(repr(params[k]) for k in space)


def _tensor(a: np.ndarray) -> Any:
    import torch

    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def _check_int(*, low: int, none_ok: bool = False, **kw: int | None) -> None:
    for name, value in kw.items():
        if value is None and none_ok:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


__all__ = ["FREE_ATTR", "PHASE_ATTR", "W_ATTR", "RoBoTStrategy", "Step", "normalise"]
