"""LINAS: predictor-guided evolution (DyNAS-T's Lightweight Iterative NAS).

Each round fits one surrogate per objective (and per constraint) on *every* measured trial,
with candidates one-hot encoded (:func:`nas.search.space.onehot`); runs pymoo's NSGA-II for
thousands of evaluations of the *predicted* objectives, started from the measured elites; and
hands the best predicted candidates that were not measured yet — NSGA-II's rank-and-crowding
order, deduplicated — to the next ``batch_size`` trials. Until ``n_startup_trials`` trials are
measured, candidates are random.

**Exploration** (our addition to DyNAS-T): a share ``explore`` of each batch is one-dimension
mutations of the best measured candidates, not screened by the surrogate. On NAS-Bench-201 the
best cells need a skip connection on edge 0->3 that is *bad on average*, so every one-hot
surrogate ranks it low and pure LINAS settles in the all-convolution basin (regret 0.6-0.7 at
50 evaluations, worse than random); measuring a few unscreened neighbours finds it.

**State.** A round's batch is computed once, from the trials measured when the round starts,
and stored in a study system attribute (``nas:linas:round:<r>``, a JSON list of candidates);
each trial records its round (trial system attribute ``nas:linas:round``) and takes the next
unused slot of the latest round; when the batch is used up the next round starts. A resumed run
or a second worker therefore reads the same batch instead of refitting; the current batch is
also cached in memory. Two workers that start a round at the same moment may propose one
candidate twice, which is harmless. A failed trial uses up its slot; its candidate may come back
in a later round. Randomness is seeded from ``(seed, round)``, so the same seed gives the same
proposals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

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
from nas.search.space import Params, Space, contains, onehot, sample
from nas.search.strategies._base import Strategy, completed, register_strategy
from nas.search.strategies.nsga2 import (
    Key,
    Measured,
    from_pymoo,
    key_of,
    rank,
    seed_for,
    to_pymoo,
)

ROUND_ATTR = "nas:linas:round"
BATCH_ATTR = "nas:linas:round:"
#: mating attempts per inner generation to fill it with new offspring (pymoo's default is 100;
#: a converged population then spends most of its time rejecting duplicates)
_MATING_TRIES = 5


class Predictor(Protocol):
    """What a surrogate factory returns: a fitted model of one metric."""

    def predict(self, X: np.ndarray) -> np.ndarray: ...


#: ``factory(X, y, seed)`` fits a :class:`Predictor` on one-hot rows ``X`` and targets ``y``
SurrogateFactory = Callable[[np.ndarray, np.ndarray, int], Predictor]


def kind_factory(kind: str) -> SurrogateFactory:
    """A factory fitting :func:`nas.predictors.surrogates.fit_surrogate` of ``kind``."""
    from nas.predictors.surrogates import fit_surrogate

    def fit(X: np.ndarray, y: np.ndarray, seed: int) -> Predictor:
        return fit_surrogate(X, y, kind, seed=seed)

    return fit


@register_strategy("linas")
class LINASStrategy(Strategy):
    """LINAS: NSGA-II on surrogate predictions, measuring a batch of candidates each round.

    Args:
        n_startup_trials: random candidates before the first surrogate is fitted.
        batch_size: candidates measured per round (DyNAS-T measures a whole population; small
            batches refit more often, which pays off at budgets of 50-200 evaluations).
        surrogate: a kind of :func:`nas.predictors.surrogates.fit_surrogate`, or a factory
            ``(X, y, seed) -> model with predict``. The default, gradient boosting, found
            better candidates on NAS-Bench-201 than ``"auto"`` (which ranks kinds by
            cross-validated Spearman over *all* points, not the top ones) and costs no
            cross-validation.
        population_size: population of the inner NSGA-II.
        n_generations: generations of the inner NSGA-II (``population_size`` predictions
            each).
        mutation_rate: chance that a dimension of an inner offspring is redrawn; ``None`` for
            ``1 / len(space)``.
        explore: share of each batch that is unscreened one-dimension mutations of the
            ``n_elites`` best measured candidates (0 is DyNAS-T's LINAS).
        n_elites: how many of the best measured candidates exploration mutates.
    """

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        *,
        seed: int | None = None,
        constrained: bool = False,
        n_startup_trials: int = 10,
        batch_size: int = 5,
        surrogate: str | SurrogateFactory = "gbm",
        population_size: int = 50,
        n_generations: int = 40,
        mutation_rate: float | None = None,
        explore: float = 0.4,
        n_elites: int = 3,
    ) -> None:
        super().__init__(space, objectives, seed=seed, constrained=constrained)
        _check_at_least(n_startup_trials=(n_startup_trials, 2, 10), batch_size=(batch_size, 1, 5))
        _check_at_least(
            population_size=(population_size, 4, 50), n_generations=(n_generations, 1, 40)
        )
        if mutation_rate is not None and not 0.0 < mutation_rate <= 1.0:
            raise ValueError(f"mutation_rate must be in (0, 1] (got {mutation_rate}); or None")
        if not 0.0 <= explore <= 1.0:
            raise ValueError(f"explore must be a fraction in [0, 1] (got {explore}); try 0.4")
        _check_at_least(n_elites=(n_elites, 1, 3))
        if isinstance(surrogate, str):
            from nas.predictors.surrogates import KINDS

            if surrogate != "auto" and surrogate not in KINDS:
                raise ValueError(f"unknown surrogate {surrogate!r}; use 'auto' or one of {KINDS}")
            surrogate = kind_factory(surrogate)
        self.fit: SurrogateFactory = surrogate
        self.n_startup_trials = n_startup_trials
        self.batch_size = batch_size
        self.population_size = population_size
        self.n_generations = n_generations
        self.mutation_rate = mutation_rate or 1.0 / len(self.space)
        self.explore = explore
        self.n_elites = n_elites
        self._cache: dict[int, list[Params]] = {}

    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        trials = study.get_trials(deepcopy=False)
        measured = [t for t in completed(study) if set(t.params) >= set(self.space)]
        if len(measured) < self.n_startup_trials:
            return sample(self.space, self.rng(trial))
        rounds = [int(t.system_attrs[ROUND_ATTR]) for t in trials if ROUND_ATTR in t.system_attrs]
        r = max(rounds, default=0)
        k = sum(
            1 for t in trials if t.system_attrs.get(ROUND_ATTR) == r and t.number < trial.number
        )
        batch = self._load(study, r) if r > 0 else []
        if k >= len(batch):
            r, k = r + 1, 0
            batch = self._new_round(study, r, trials, measured)
        study._storage.set_trial_system_attr(trial._trial_id, ROUND_ATTR, r)
        return batch[k] if k < len(batch) else sample(self.space, self.rng(trial))

    def _load(self, study: Study, r: int) -> list[Params]:
        """Round ``r``'s batch, from memory or from the study."""
        if r not in self._cache:
            stored = study._storage.get_study_system_attrs(study._study_id).get(f"{BATCH_ATTR}{r}")
            batch = [dict(p) for p in stored or []]
            self._cache = {r: [p for p in batch if contains(self.space, p)]}
        return self._cache[r]

    def _new_round(
        self,
        study: Study,
        r: int,
        trials: Sequence[FrozenTrial],
        measured: Sequence[FrozenTrial],
    ) -> list[Params]:
        """Fit the surrogates, search them, and store the batch of round ``r``."""
        taken = {
            key_of(self.space, to_pymoo(self.space, t.params))
            for t in trials
            if t.state != TrialState.FAIL and set(t.params) >= set(self.space)
        }
        batch = self._search(Measured.of(self.space, measured, self.signs()), taken, r)
        study._storage.set_study_system_attr(study._study_id, f"{BATCH_ATTR}{r}", batch)
        self._cache = {r: batch}
        return batch

    def _predictors(self, measured: Measured, r: int) -> Callable[[np.ndarray], Any]:
        """Fit one model per objective and constraint on the measured candidates.

        Returns:
            ``predict(rows) -> (F, G)`` for ordinal rows, in pymoo's terms (``F`` minimised,
            ``G <= 0`` feasible; ``G`` is None without constraints).
        """
        X = onehot(self.space, [from_pymoo(self.space, x) for x in measured.X])
        targets = np.hstack([measured.F] if measured.G is None else [measured.F, measured.G])
        models = [
            self.fit(X, targets[:, j], seed_for(self.seed, r, j)) if np.ptp(targets[:, j]) else None
            for j in range(targets.shape[1])
        ]
        n_obj = measured.F.shape[1]

        def predict(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            Z = onehot(self.space, _rows_to_params(self.space, rows))
            out = np.column_stack(
                [
                    m.predict(Z) if m is not None else np.full(len(Z), targets[0, j])
                    for j, m in enumerate(models)
                ]
            )
            return out[:, :n_obj], (out[:, n_obj:] if measured.G is not None else None)

        return predict

    def _search(self, measured: Measured, taken: set[Key], r: int) -> list[Params]:
        """Run NSGA-II on the predictions; the next batch, model picks first."""
        from pymoo.core.population import Population

        predict = self._predictors(measured, r)
        pool: dict[Key, np.ndarray] = {}

        def evaluate(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            for row in rows:
                pool.setdefault(tuple(float(v) for v in row), row)
            return predict(rows)

        n_constr = 0 if measured.G is None else measured.G.shape[1]
        problem = _ordinal_problem(self.space, measured.F.shape[1], n_constr, evaluate)
        self._evolve(problem, measured, r)
        chosen: list[np.ndarray] = []
        fresh = np.array([row for k, row in pool.items() if k not in taken])
        n_model = self.batch_size - round(self.explore * self.batch_size)
        if len(fresh) and n_model:
            F, G = predict(fresh)
            pop = Population.new("X", fresh, "F", F, **({} if G is None else {"G": G}))
            chosen = [fresh[i] for i in rank(problem, pop, n_model, seed_for(self.seed, r, 1))]
        seen = set(taken) | {tuple(float(v) for v in row) for row in chosen}
        chosen += self._explore(problem, measured, self.batch_size - len(chosen), seen, r)
        return _rows_to_params(self.space, np.array(chosen))

    def _explore(
        self, problem: Any, measured: Measured, n: int, seen: set[Key], r: int
    ) -> list[np.ndarray]:
        """``n`` unseen candidates one dimension away from the ``n_elites`` best measured.

        They are not screened by the surrogate: measuring what it ranks low is how its blind
        spots (e.g. an interaction it has no data on) are found.
        """
        rows = measured.rows()
        elites = rows[rank(problem, measured.population(with_values=True), self.n_elites, 0)]
        rng = np.random.default_rng(seed_for(self.seed, r, 2))
        dists = list(self.space.values())
        out: list[np.ndarray] = []
        for _ in range(100 * n):
            if len(out) >= n:
                break
            x = elites[rng.integers(len(elites))].copy()
            j = int(rng.integers(len(x)))
            grid = _grid(dists[j])
            x[j] = (
                grid[rng.integers(len(grid))] if grid is not None else _uniform(dists[j], rng, 1)[0]
            )
            key = tuple(float(v) for v in x)
            if key not in seen:
                seen.add(key)
                out.append(x)
        return out

    def _evolve(self, problem: Any, measured: Measured, r: int) -> None:
        """pymoo's NSGA-II for ``n_generations``, started from measured elites and random."""
        from pymoo.algorithms.moo.nsga2 import NSGA2, binary_tournament
        from pymoo.core.duplicate import DefaultDuplicateElimination
        from pymoo.core.mating import Mating
        from pymoo.operators.crossover.ux import UX
        from pymoo.operators.selection.tournament import TournamentSelection
        from pymoo.optimize import minimize

        seed = seed_for(self.seed, r, 1 << 21)
        rng = np.random.default_rng(seed)
        n_elite = min(len(measured.X), self.population_size // 2)
        elite = rank(problem, measured.population(with_values=True), n_elite, seed)
        start = [measured.X[i] for i in elite] + [
            to_pymoo(self.space, sample(self.space, rng))
            for _ in range(self.population_size - n_elite)
        ]
        dedup = DefaultDuplicateElimination()
        algorithm = NSGA2(
            pop_size=self.population_size,
            sampling=np.array([list(map(float, x.values())) for x in start]),
            mating=Mating(
                TournamentSelection(func_comp=binary_tournament),
                UX(),
                _reset_mutation(self.space, self.mutation_rate),
                eliminate_duplicates=dedup,
                n_max_iterations=_MATING_TRIES,
            ),
            eliminate_duplicates=dedup,
        )
        minimize(problem, algorithm, ("n_gen", self.n_generations), seed=seed)


def _ordinal_problem(
    space: Space,
    n_obj: int,
    n_constr: int,
    evaluate: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
) -> Any:
    """The inner pymoo problem on ordinal rows (:func:`nas.search.space.ordinal`), vectorised."""
    from pymoo.core.problem import Problem

    bounds = [_bounds(d) for d in space.values()]

    class _Problem(Problem):
        def _evaluate(self, X: np.ndarray, out: dict[str, Any], *a: Any, **k: Any) -> None:
            F, G = evaluate(np.asarray(X, dtype=float))
            out["F"] = F
            if G is not None:
                out["G"] = G

    lows, highs = (np.array(b) for b in zip(*bounds, strict=True))
    return _Problem(n_var=len(space), n_obj=n_obj, n_ieq_constr=n_constr, xl=lows, xu=highs)


def _bounds(dist: BaseDistribution) -> tuple[float, float]:
    grid = _grid(dist)
    if grid is not None:
        return float(grid[0]), float(grid[-1])
    assert isinstance(dist, FloatDistribution)
    return dist.low, dist.high


def _grid(dist: BaseDistribution) -> np.ndarray | None:
    """The values an ordinal column can take, or None for a continuous float."""
    if isinstance(dist, CategoricalDistribution):
        return np.arange(len(dist.choices), dtype=float)
    if isinstance(dist, IntDistribution):
        return np.arange(dist.low, dist.high + 1, dist.step, dtype=float)
    assert isinstance(dist, FloatDistribution)
    if dist.step is None:
        return None
    return dist.low + dist.step * np.arange(round((dist.high - dist.low) / dist.step) + 1)


def _reset_mutation(space: Space, rate: float) -> Any:
    """Mutation that redraws each column with probability ``rate`` (categoricals unordered)."""
    from pymoo.core.mutation import Mutation

    dists = list(space.values())
    grids = [_grid(d) for d in dists]

    class _Reset(Mutation):
        def _do(self, problem: Any, X: np.ndarray, random_state: Any = None, **k: Any) -> Any:
            X = np.array(X, dtype=float)
            for j, (grid, dist) in enumerate(zip(grids, dists, strict=True)):
                hit = np.flatnonzero(random_state.random(len(X)) < rate)
                if grid is not None:
                    X[hit, j] = grid[random_state.integers(len(grid), size=len(hit))]
                else:
                    X[hit, j] = _uniform(dist, random_state, len(hit))
            return X

    return _Reset()


def _uniform(dist: BaseDistribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` draws of a continuous float dimension (log-uniform when it is log-scaled)."""
    assert isinstance(dist, FloatDistribution)
    if dist.log:
        return np.exp(rng.uniform(math.log(dist.low), math.log(dist.high), size=n))
    return rng.uniform(dist.low, dist.high, size=n)


def _rows_to_params(space: Space, rows: np.ndarray) -> list[Params]:
    """Ordinal rows whose values are already valid, as Params (fast; no rounding)."""
    out: list[Params] = []
    for row in rows:
        p: Params = {}
        for x, (name, dist) in zip(row, space.items(), strict=True):
            if isinstance(dist, CategoricalDistribution):
                choice: Any = dist.choices[int(x)]
                p[name] = choice
            else:
                p[name] = int(x) if isinstance(dist, IntDistribution) else float(x)
        out.append(p)
    return out


def _check_at_least(**checks: tuple[int, int, int]) -> None:
    """``name=(value, minimum, suggestion)``: raise ValueError for a value below minimum."""
    for name, (value, low, hint) in checks.items():
        if value < low:
            raise ValueError(f"{name} must be at least {low} (got {value}); try {hint}")
