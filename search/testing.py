"""Conformance suite every strategy passes (optuna's ``pytest_samplers`` is the model).

Use it from a test module by parametrising over the registry::

    from nas.search.testing import *  # noqa: F403  (the ``test_*`` functions)

    @pytest.fixture(params=list_strategies())
    def strategy_name(request): return request.param

The suite checks: proposals lie inside the space; the same seed gives the same proposals;
failed trials are tolerated; several objectives and constraints work; and, on a fixed
six-dimensional categorical problem, the mean best after a small budget is at least two
standard errors above random search's. A deliberately bad strategy (:class:`StuckStrategy`,
always the same candidate) must fail that last check, which proves the check can fail.

A strategy that needs construction options (robot needs a candidate pool and training-free
metrics) gets them from :data:`STRATEGY_OPTIONS`: for the fixed problem, its whole pool and
:func:`cat_metrics`, noisy stand-ins for zero-cost proxies.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective, parse_objectives
from nas.search.space import Params, Space, contains, enumerate_space, sample, suggest
from nas.search.strategies._base import Strategy, create_strategy

optuna.logging.set_verbosity(optuna.logging.WARNING)

#: choices per dimension of the fixed problem, and its number of dimensions
N_CHOICES = 5
N_DIMS = 6


def cat_space() -> Space:
    """The fixed 6-dimensional categorical space (5 named choices per dimension)."""
    ops = ["a", "b", "c", "d", "e"]
    return {f"x{i}": CategoricalDistribution(ops) for i in range(N_DIMS)}


def mixed_space() -> Space:
    """A small space with one categorical, one integer and one float dimension."""
    return {
        "op": CategoricalDistribution(["conv", "pool", "skip"]),
        "depth": IntDistribution(1, 4),
        "ratio": FloatDistribution(0.1, 1.0),
    }


def _make_problem() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1234)
    table = rng.normal(scale=0.3, size=(N_DIMS, N_CHOICES))
    target = rng.integers(N_CHOICES, size=N_DIMS)
    table[np.arange(N_DIMS), target] += 1.0  # one good choice per dimension, as in NB201
    pairs = np.random.default_rng(4321).normal(scale=0.1, size=(N_DIMS - 1, N_CHOICES, N_CHOICES))
    return table, pairs


_TABLE, _PAIRS = _make_problem()


def cat_score(params: Params) -> float:
    """Score of the fixed problem: additive terms plus weak chained pairwise interactions.

    Maximised; 15,625 candidates, one optimum (5.302); random search's best after 30
    evaluations averages about 3.0. Deterministic.
    """
    idx = ["abcde".index(str(params[f"x{i}"])) for i in range(N_DIMS)]
    s = sum(_TABLE[i, j] for i, j in enumerate(idx))
    s += sum(_PAIRS[i, idx[i], idx[i + 1]] for i in range(N_DIMS - 1))
    return float(s)


def cat_cost(params: Params) -> float:
    """A second, conflicting objective for the fixed problem (minimised)."""
    idx = ["abcde".index(str(params[f"x{i}"])) for i in range(N_DIMS)]
    return float(sum(idx) + 0.1 * idx[0])


#: noise of the stand-in metrics, one row per fixed-problem candidate (product order)
_NOISE = np.random.default_rng(99).normal(size=(N_CHOICES**N_DIMS, 2))


def cat_metrics(candidates: Sequence[Params]) -> np.ndarray:
    """Stand-ins for training-free metrics on the fixed problem, shape ``(n, 3)``.

    Like real zero-cost proxies they correlate with the objective without deciding it:
    ``noisy`` is :func:`cat_score` plus strong noise (standard deviation 1, as large as a good
    choice's gain), ``additive`` is its additive part alone (no pairwise terms), and ``noise``
    is pure noise.
    """
    idx = np.array([["abcde".index(str(p[f"x{d}"])) for d in range(N_DIMS)] for p in candidates])
    idx = idx.reshape(-1, N_DIMS)
    dims = np.arange(N_DIMS)
    additive = _TABLE[dims, idx].sum(axis=1)
    pairs = _PAIRS[dims[:-1], idx[:, :-1], idx[:, 1:]].sum(axis=1)
    noise = _NOISE[idx @ N_CHOICES ** np.arange(N_DIMS - 1, -1, -1)]
    return np.column_stack([additive + pairs + noise[:, 0], additive, noise[:, 1]])


def training_free_options(space: Space) -> dict[str, Any]:
    """Construction options for strategies that need a pool and training-free metrics (robot).

    For the fixed problem: its whole pool (15,625 candidates) and :func:`cat_metrics`. For any
    other space: 200 sampled candidates and two noise metrics.
    """
    if space == cat_space():
        pool = [dict(p) for p in enumerate_space(space)]
        return {
            "pool": pool,
            "metrics": cat_metrics,
            "metric_names": ("noisy", "additive", "noise"),
        }
    rng = np.random.default_rng(5)
    pool = [sample(space, rng) for _ in range(200)]

    def noise(candidates: Sequence[Params]) -> np.ndarray:
        return np.array(
            [[zlib.crc32(repr(sorted(p.items())).encode()) % 997, len(str(p))] for p in candidates],
            dtype=float,
        )

    return {"pool": pool, "metrics": noise, "metric_names": ("hash", "length")}


#: extra construction options per strategy name: ``options(space) -> kwargs``
STRATEGY_OPTIONS: dict[str, Callable[[Space], dict[str, Any]]] = {
    # cheaper GP settings than robot's defaults keep the suite fast; the contract is the same
    "robot": lambda space: {**training_free_options(space), "fit_maxiter": 20, "n_raw": 512},
}


def run(
    strategy: Strategy,
    fn: Callable[[Params], Sequence[float]],
    n_trials: int,
    *,
    fail_every: int = 0,
    constraint: Callable[[Params], float] | None = None,
) -> Study:
    """Run ``strategy`` for ``n_trials`` on an in-memory study through ``study.optimize``.

    Args:
        fail_every: when > 0, every ``fail_every``-th evaluation raises (a failed trial).
        constraint: stored with ``Trial.set_constraint`` as the trial's violation (``<= 0`` ok).
    """
    directions = [o.direction for o in strategy.objectives]
    study = optuna.create_study(sampler=strategy, directions=directions)

    def objective(trial: optuna.Trial) -> Sequence[float]:
        params = suggest(trial, strategy.space)
        if constraint is not None:
            trial.set_constraint("c0", float(constraint(params)))
        if fail_every and (trial.number + 1) % fail_every == 0:
            raise RuntimeError("deliberate failure")
        return tuple(fn(params))

    study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,))
    return study


def proposals(study: Study) -> list[Params]:
    """The params of every trial, in order."""
    return [dict(t.params) for t in sorted(study.trials, key=lambda t: t.number)]


def best_found(study: Study) -> float:
    """Best value of the first objective over COMPLETE trials."""
    vals = [t.values[0] for t in study.trials if t.state == TrialState.COMPLETE and t.values]
    return max(vals) if vals else -math.inf


def compare_to_random(
    make: Callable[[int], Strategy],
    *,
    seeds: Sequence[int] = (0, 1, 2),
    n_trials: int = 30,
) -> tuple[float, float, float]:
    """Mean best of ``make(seed)`` and of random search on the fixed problem.

    Returns:
        ``(mean_strategy, mean_random, standard_error)`` where the standard error is that of the
        difference of the two means.
    """
    objectives = parse_objectives("reward")
    ours, rand = [], []
    for s in seeds:
        ours.append(best_found(run(make(s), lambda p: [cat_score(p)], n_trials)))
        r = create_strategy("random", cat_space(), objectives, seed=s)
        rand.append(best_found(run(r, lambda p: [cat_score(p)], n_trials)))
    a, b = np.array(ours), np.array(rand)
    se = math.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if len(a) > 1 else 0.0
    return float(a.mean()), float(b.mean()), se


def beats_random(make: Callable[[int], Strategy], **kw: Any) -> bool:
    """True when the strategy's mean best is at least two standard errors above random's."""
    ours, rand, se = compare_to_random(make, **kw)
    return ours >= rand + 2.0 * se and ours > rand


class StuckStrategy(Strategy):
    """A deliberately bad strategy: always the first candidate. It must fail the quality check."""

    name = "stuck"

    def propose(self, study: Study, trial: FrozenTrial) -> Params:
        return {n: _first(d) for n, d in self.space.items()}


def _first(d: Any) -> Any:
    if isinstance(d, CategoricalDistribution):
        return d.choices[0]
    return d.low


# -- the suite: each takes a factory ``make(space, objectives, seed, constrained)`` -------------
StrategyFactory = Callable[..., Strategy]


def check_in_space(make: StrategyFactory, n_trials: int = 15) -> None:
    """Every proposal names exactly the space's dimensions with values inside them."""
    for space in (cat_space(), mixed_space()):
        objs = parse_objectives("reward")
        strat = make(space, objs, seed=0)
        study = run(strat, lambda p: [float(len(str(p)))], n_trials)
        for p in proposals(study):
            assert contains(space, p), f"proposal {p} is outside the space"


def check_same_seed(make: StrategyFactory, n_trials: int = 14) -> None:
    """Two runs with the same seed propose the same candidates; another seed differs."""
    objs = parse_objectives("reward")
    runs = [
        proposals(run(make(cat_space(), objs, seed=s), lambda p: [cat_score(p)], n_trials))
        for s in (7, 7, 8)
    ]
    assert runs[0] == runs[1], "the same seed gave different proposals"
    assert runs[0] != runs[2], "different seeds gave identical proposals"


def check_failures_tolerated(make: StrategyFactory, n_trials: int = 14) -> None:
    """A study where every third evaluation fails still completes the others."""
    objs = parse_objectives("reward")
    study = run(make(cat_space(), objs, seed=0), lambda p: [cat_score(p)], n_trials, fail_every=3)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == n_trials // 3
    assert states.count(TrialState.COMPLETE) == n_trials - n_trials // 3


def check_multi_objective(make: StrategyFactory, n_trials: int = 14) -> None:
    """Two objectives and a constraint: proposals stay valid and all trials complete.

    A single-objective strategy must refuse two objectives at construction; it then runs the
    first objective alone under the same constraint.
    """
    objs: tuple[Objective, ...] = parse_objectives("reward,latency_ms")
    fn: Callable[[Params], Sequence[float]] = lambda p: [cat_score(p), cat_cost(p)]  # noqa: E731
    try:
        strat = make(cat_space(), objs, seed=0, constrained=True)
    except ValueError as e:  # a single-objective strategy must say so at construction
        assert "one objective" in str(e)
        strat = make(cat_space(), objs[:1], seed=0, constrained=True)
        fn = lambda p: [cat_score(p)]  # noqa: E731
    study = run(strat, fn, n_trials, constraint=lambda p: cat_cost(p) - 20.0)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(contains(cat_space(), p) for p in proposals(study))


def check_beats_random(
    make: StrategyFactory, seeds: Sequence[int] = (0, 1, 2), n: int = 30
) -> None:
    """On the fixed problem the mean best is at least two standard errors above random's."""
    objs = parse_objectives("reward")
    ours, rand, se = compare_to_random(
        lambda s: make(cat_space(), objs, seed=s), seeds=seeds, n_trials=n
    )
    assert ours >= rand + 2.0 * se and ours > rand, (
        f"mean best {ours:.3f} is not two standard errors ({se:.3f}) above random's {rand:.3f}"
    )


# --- the task (plugin) contract ------------------------------------------------------------


def check_task(
    task: Any,
    *,
    candidates: int = 2,
    seed: int = 0,
    invalid: Params | None = None,
    deterministic: bool = True,
) -> None:
    """Assert the contract every task (plugin) keeps; raises ``AssertionError``.

    For any :class:`~nas.search.task.Task` (compression methods of a checkpoint have the richer
    :func:`nas.compress.testing.check_method`): the space is valid, the same object on every call,
    and JSON-serialisable; :meth:`describe` is JSON; random candidates are either refused with
    :class:`~nas.search.task.Rejected` or measured with finite values of known metric names, each
    with a declared source; with ``deterministic`` the same candidate measures the same twice; and
    ``invalid`` (a candidate outside the space, or one the task must refuse) raises ``ValueError``
    or ``Rejected``.
    """
    import json

    from optuna.distributions import distribution_to_json

    from nas.search.objectives import known_metric
    from nas.search.space import validate_space
    from nas.search.task import SOURCES, Rejected, Task

    assert isinstance(task, Task), f"{type(task).__name__} is not a Task"
    space = task.space()
    validate_space(space)
    assert task.space() is space, "space() must return the same object on every call"
    json.dumps({k: distribution_to_json(d) for k, d in space.items()})
    json.dumps(task.describe())
    sources = dict(task.sources())
    rng = np.random.default_rng(seed)
    measured = 0
    for _ in range(candidates * 25):
        params = sample(space, rng)
        json.dumps(params)
        try:
            got = task.evaluate(params)
        except Rejected:
            continue
        assert got, f"{params}: evaluate returned no metrics"
        for name, value in got.items():
            assert known_metric(name), f"{params}: unknown metric {name!r}"
            assert math.isfinite(float(value)), f"{params}: {name} = {value}"
            assert name in sources, f"{name} has no declared source"
            assert sources[name].split(":")[0] in SOURCES, f"{name}: bad source {sources[name]!r}"
        if deterministic:
            again = task.evaluate(params)
            assert again == got, f"{params}: measured {got}, then {again}"
        measured += 1
        if measured == candidates:
            break
    assert measured == candidates, f"{task.name} refused nearly every random candidate"
    if invalid is not None:
        try:
            task.evaluate(invalid)
        except (ValueError, Rejected):
            return
        raise AssertionError(f"{task.name} accepted {invalid}, which it must refuse")
