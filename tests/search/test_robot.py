"""RoBoT: the BO phase learns the right metric weights; state lives in the study; the job
passes the task's training-free knowledge."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from nas.search import SearchConfig, TrainingFree, UserError, run_search
from nas.search import testing as conformance
from nas.search.objectives import parse_objectives
from nas.search.space import Params, Space, enumerate_space, suggest
from nas.search.strategies import create_strategy, violations_of
from nas.search.strategies.robot import FREE_ATTR, PHASE_ATTR, W_ATTR, RoBoTStrategy
from nas.supernets import SUPERNETS, register_supernet

SPACE = conformance.cat_space()
#: a 1,500-candidate pool of the fixed problem that contains its optimum
POOL = [p for i, p in enumerate(enumerate_space(SPACE)) if i % 11 == 0]
OPTIMUM = max(POOL, key=conformance.cat_score)
if OPTIMUM not in POOL:  # pragma: no cover - guards the test's own set-up
    raise AssertionError


def perfect_and_noise(candidates: Sequence[Params]) -> np.ndarray:
    """One perfect metric (the objective itself) between two noise metrics."""
    noise = np.random.default_rng(3).normal(size=(len(POOL), 2))
    at = {tuple(p.values()): i for i, p in enumerate(POOL)}
    rows = [at[tuple(p.values())] for p in candidates]
    score = [conformance.cat_score(p) for p in candidates]
    return np.column_stack([noise[rows, 0], score, noise[rows, 1]])


def _robot(seed: int, direction: str = "maximize", **kw: Any) -> RoBoTStrategy:
    """robot on :data:`POOL`, with cheaper GP settings than the defaults (test time)."""
    objectives = parse_objectives(f"reward:{direction[:3]}")
    options = {"fit_maxiter": 20, "n_raw": 512, **kw}
    strat = create_strategy(
        "robot", SPACE, objectives, seed=seed, pool=POOL, metrics=perfect_and_noise, **options
    )
    assert isinstance(strat, RoBoTStrategy)
    return strat


def test_bo_phase_finds_the_perfect_metric() -> None:
    """With one perfect metric among noise, the optimum is found within T = 20 for most seeds,
    and every trial records the weight that chose it."""
    found = 0
    for seed in range(4):
        strat = _robot(seed, budget=20)
        study = conformance.run(strat, lambda p: [conformance.cat_score(p)], 20)
        trials = sorted(study.trials, key=lambda t: t.number)
        found += any(t.params == OPTIMUM for t in trials)
        phases = [t.system_attrs[PHASE_ATTR] for t in trials]
        assert phases[:2] == ["random", "random"] and phases[-1] == "greedy"
        for t in trials:  # each trial is the best candidate under its weight not taken before
            earlier = [u.params for u in trials if u.number < t.number]
            first = next(
                strat.pool[int(i)]
                for i in strat.ranking(t.system_attrs[W_ATTR])
                if strat.pool[int(i)] not in earlier
            )
            assert first == t.params
    assert found >= 3, f"the optimum was found for {found} of 4 seeds"


def test_direction_is_respected() -> None:
    """Minimising the negated objective finds the same optimum."""
    strat = _robot(0, direction="minimize", budget=20)
    study = conformance.run(strat, lambda p: [-conformance.cat_score(p)], 20)
    assert any(t.params == OPTIMUM for t in study.trials)
    assert strat.bo_steps == 20  # the default: the budget (as in the authors' code)


def test_state_is_rebuilt_from_the_study() -> None:
    """A fresh strategy continuing a study proposes what one uninterrupted instance would."""
    fn = lambda p: [conformance.cat_score(p)]  # noqa: E731
    whole = conformance.proposals(conformance.run(_robot(5, bo_steps=5), fn, 8))
    study = conformance.run(_robot(5, bo_steps=5), fn, 4)
    study.sampler = _robot(5, bo_steps=5)
    study.optimize(lambda t: conformance.cat_score(suggest(t, SPACE)), n_trials=4)
    assert conformance.proposals(study) == whole


def test_infeasible_candidates_are_not_the_best_weight() -> None:
    """Under a constraint that excludes the best candidates, greedy steps follow a weight whose
    candidate was feasible."""
    strat = _robot(1, bo_steps=6, constrained=True)
    study = conformance.run(
        strat,
        lambda p: [conformance.cat_score(p)],
        10,
        constraint=lambda p: conformance.cat_score(p) - 3.5,
    )
    trials = sorted(study.trials, key=lambda t: t.number)
    source = {}  # BO weight -> the trial whose value was its observation
    for t in trials:
        source.update({tuple(w): n for w, n in t.system_attrs[FREE_ATTR]})
        if t.system_attrs[PHASE_ATTR] != "greedy":
            source[tuple(t.system_attrs[W_ATTR])] = t.number
    greedy = [t for t in trials if t.system_attrs[PHASE_ATTR] == "greedy"]
    assert greedy and any(max(violations_of(t).values()) > 0 for t in trials)
    for t in greedy:
        chosen = trials[source[tuple(t.system_attrs[W_ATTR])]]
        assert max(violations_of(chosen).values()) <= 0


def test_needs_pool_and_metrics() -> None:
    with pytest.raises(ValueError, match="robot needs a candidate pool"):
        create_strategy("robot", SPACE, parse_objectives("reward"))
    with pytest.raises(ValueError, match="outside the search space"):
        create_strategy("robot", SPACE, parse_objectives("reward"), pool=[{"x0": "z"}], metrics=len)
    with pytest.raises(ValueError, match="one objective"):
        _robot(0, budget=5).__class__(
            SPACE, parse_objectives("reward,latency_ms"), pool=POOL, metrics=perfect_and_noise
        )


# -- the job ------------------------------------------------------------------------------------
class PlainToyTask:
    """The fixed problem as a task, without training-free metrics."""

    name = "plain-toy"
    default_strategy = "robot"
    default_objectives = ("top1",)

    def space(self) -> Space:
        return SPACE

    def evaluate(self, params: Params) -> dict[str, float]:
        return {"top1": 50.0 + 5.0 * conformance.cat_score(params)}

    def sources(self) -> Mapping[str, str]:
        return {"top1": "table"}

    def describe(self) -> dict[str, Any]:
        return {"supernet": self.name}


class ToyTask(PlainToyTask):
    """The same task with a candidate pool and training-free metrics."""

    name = "robot-toy"

    def training_free(self, seed: int) -> TrainingFree:
        return TrainingFree(POOL, perfect_and_noise, ("noise0", "perfect", "noise1"))


@pytest.fixture
def toy_tasks() -> Iterator[None]:
    register_supernet("robot-toy")(lambda **_: ToyTask())
    register_supernet("plain-toy")(lambda **_: PlainToyTask())
    yield
    SUPERNETS.unregister("robot-toy")
    SUPERNETS.unregister("plain-toy")


@pytest.mark.usefixtures("toy_tasks")
def test_job_runs_robot_with_the_tasks_training_free_metrics() -> None:
    config = SearchConfig(
        supernet="robot-toy",
        hw="cpu",
        budget=8,
        storage=":memory:",
        strategy_options={"bo_steps": 3, "fit_maxiter": 20},
    )
    result = run_search(config, handle_signals=False, export=False)
    assert result.config.strategy == "robot" and result.evaluated == 8
    strat = result.study.sampler
    assert isinstance(strat, RoBoTStrategy) and strat.budget == 8 and strat.bo_steps == 3
    assert strat.metric_names == ("noise0", "perfect", "noise1")
    trials = result.study.get_trials(deepcopy=False)
    assert all(len(t.system_attrs[W_ATTR]) == 3 for t in trials)
    assert [t.system_attrs[PHASE_ATTR] for t in trials][-5:] == ["greedy"] * 5


@pytest.mark.usefixtures("toy_tasks")
def test_job_refuses_robot_without_training_free_metrics() -> None:
    config = SearchConfig(supernet="plain-toy", hw="cpu", budget=4, storage=":memory:")
    with pytest.raises(UserError, match="strategy robot needs training-free metrics, which task"):
        run_search(config, handle_signals=False, export=False)
