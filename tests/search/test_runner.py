"""The runner: exact budgets, resume, failures, rejections, and wrapped optuna samplers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import optuna
import pytest
from optuna.trial import TrialState

from nas.search import Rejected, SearchConfig, UserError, run_search
from nas.search.space import suggest
from nas.search.study import counts_against_budget
from nas.supernets import SUPERNETS, register_supernet
from nas.supernets.nb201 import NB201Task, load_table


class FlakyNB201(NB201Task):
    """nb201 whose evaluation fails or rejects chosen trials (by call count)."""

    fail_calls: ClassVar[set[int]] = set()
    reject_calls: ClassVar[set[int]] = set()
    calls: ClassVar[int] = 0

    def evaluate(self, params: Any) -> dict[str, float]:
        FlakyNB201.calls += 1
        if FlakyNB201.calls in FlakyNB201.fail_calls:
            raise RuntimeError("boom")
        if FlakyNB201.calls in FlakyNB201.reject_calls:
            raise Rejected("too big")
        return super().evaluate(params)


@pytest.fixture
def flaky() -> Iterator[type[FlakyNB201]]:
    FlakyNB201.calls = 0
    FlakyNB201.fail_calls, FlakyNB201.reject_calls = set(), set()
    register_supernet("flaky-nb201")(lambda hw="gpu", data=None, **_: FlakyNB201(hw, data))
    yield FlakyNB201
    SUPERNETS.unregister("flaky-nb201")


def _config(**kw: Any) -> SearchConfig:
    base = {"supernet": "nb201", "hw": "raspi4", "strategy": "random", "budget": 12}
    base.update(kw)
    return SearchConfig(**base)


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_budget_is_exact_and_resume_continues() -> None:
    r = run_search(_config(budget=12), handle_signals=False)
    assert r.evaluated == 12 and r.complete and r.reason is None
    assert _states(r.study).count(TrialState.COMPLETE) == 12
    r2 = run_search(_config(budget=20), handle_signals=False)  # a larger budget continues
    assert r2.evaluated == 20 and len(r2.study.trials) == 20
    r3 = run_search(_config(budget=20), handle_signals=False)  # finished: nothing more runs
    assert len(r3.study.trials) == 20 and r3.files["pareto.csv"].exists()


def test_rerun_with_another_configuration_is_refused() -> None:
    run_search(_config(budget=3), handle_signals=False)
    with pytest.raises(UserError, match="was run with strategy='random', not 'tpe'"):
        run_search(_config(budget=3, strategy="tpe"), handle_signals=False)
    r = run_search(_config(budget=3, strategy="tpe", study="other"), handle_signals=False)
    assert r.evaluated == 3


def test_objective_direction_spelled_out_is_the_same_study() -> None:
    run_search(_config(budget=3), handle_signals=False)
    r = run_search(
        _config(
            budget=4, objectives=("top1:max", "latency_ms"), study="nb201-raspi4-top1,latency_ms"
        ),
        handle_signals=False,
    )
    assert r.evaluated == 4


def test_failed_trials_are_retried_slots_and_rejections_count(flaky: Any) -> None:
    flaky.fail_calls, flaky.reject_calls = {2, 5}, {3}
    r = run_search(_config(supernet="flaky-nb201", budget=8), handle_signals=False)
    states = _states(r.study)
    assert states.count(TrialState.FAIL) == 2
    assert states.count(TrialState.PRUNED) == 1  # the rejected one: evaluated, counted
    assert states.count(TrialState.COMPLETE) == 7
    assert sum(counts_against_budget(t) for t in r.study.trials) == 8
    rejected = next(t for t in r.study.trials if t.state == TrialState.PRUNED)
    assert rejected.user_attrs["nas:rejected"] == "too big"


def test_max_failures_stops_with_the_last_error(flaky: Any) -> None:
    flaky.fail_calls = set(range(1, 100))
    r = run_search(_config(supernet="flaky-nb201", max_failures=3), handle_signals=False)
    assert r.reason == "stopped after 3 failed evaluations; last error: RuntimeError: boom"
    assert r.evaluated == 0 and not r.complete


def test_constraints_mark_infeasible_and_keep_them_off_the_front() -> None:
    r = run_search(_config(budget=30, constraints=("latency_ms<=12",)), handle_signals=False)
    rows = __import__("json").loads(r.files["trials.json"].read_text())["trials"]
    infeasible = [row for row in rows if row["feasible"] is False]
    assert infeasible and all(row["latency_ms"] > 12 for row in infeasible)
    assert all(row["feasible"] for row in rows if row["pareto"])
    assert all(not row["pareto"] for row in infeasible)


def test_unknown_names_are_user_errors() -> None:
    for kw, msg in [
        ({"strategy": "nope"}, "unknown strategy 'nope'; known: .*random"),
        ({"supernet": "nope"}, "unknown supernet 'nope'; known: .*nb201"),
        ({"objectives": ("acc",)}, "unknown metric 'acc'"),
        ({"objectives": ("params_m",)}, "nb201 does not measure 'params_m'"),
        ({"data": "imagenet"}, "unknown dataset 'imagenet' for nb201; known: cifar10, cifar100"),
        ({"hw": "raspi5"}, "unknown hardware 'raspi5' for nb201; known: .*raspi4"),
        ({"hw": "1080ti_32"}, "measured at batch size 32"),
    ]:
        with pytest.raises(UserError, match=msg):
            run_search(_config(**kw), handle_signals=False)


def _direct(sampler: optuna.samplers.BaseSampler, n: int) -> list[dict[str, Any]]:
    """optuna used directly on the nb201 space, no nas code in between for the loop."""
    from nas.supernets.nb201 import EDGES, OPS

    table = load_table()
    study = optuna.create_study(sampler=sampler, direction="maximize")
    space = {e: optuna.distributions.CategoricalDistribution(OPS) for e in EDGES}
    study.optimize(
        lambda t: float(table.accuracy["cifar10"][table.row(suggest(t, space))]), n_trials=n
    )
    return [t.params for t in study.trials]


@pytest.mark.parametrize(
    ("name", "sampler", "n"),
    [
        ("tpe", lambda: optuna.samplers.TPESampler(seed=3, multivariate=True), 25),
        ("gp", lambda: optuna.samplers.GPSampler(seed=3), 14),
    ],
)
def test_wrapped_optuna_samplers_propose_exactly_the_same(name: str, sampler: Any, n: int) -> None:
    cfg = _config(strategy=name, seed=3, budget=n, objectives=("top1",), storage=":memory:")
    ours = [t.params for t in run_search(cfg, handle_signals=False, export=False).study.trials]
    assert ours == _direct(sampler(), n)


def test_in_memory_storage_cannot_be_shared_by_workers() -> None:
    with pytest.raises(UserError, match="shared storage"):
        run_search(replace(_config(), storage=":memory:", workers=2), handle_signals=False)
