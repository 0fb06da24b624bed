"""The strategy conformance suite, run for every registered strategy."""

from __future__ import annotations

from typing import Any

import pytest

from nas.search import testing as conformance
from nas.search.objectives import parse_objectives
from nas.search.strategies import STRATEGIES as REGISTRY
from nas.search.strategies import Strategy, create_strategy, list_strategies

# strategies that belong to one task (N2N's policies) are tested with their task
STRATEGIES = [s for s in list_strategies() if not REGISTRY.get(s).needs_task]


def _factory(name: str) -> conformance.StrategyFactory:
    """Builds strategy ``name``, with the suite's construction options for it (e.g. robot's
    candidate pool and stand-in training-free metrics)."""
    options = conformance.STRATEGY_OPTIONS.get(name)

    def make(space: Any, objectives: Any, seed: int | None = None, **kw: Any) -> Strategy:
        extra = options(space) if options is not None else {}
        return create_strategy(name, space, objectives, seed=seed, **extra, **kw)

    return make


@pytest.mark.parametrize("name", STRATEGIES)
def test_proposals_inside_space(name: str) -> None:
    conformance.check_in_space(_factory(name))


@pytest.mark.parametrize("name", STRATEGIES)
def test_same_seed_same_proposals(name: str) -> None:
    conformance.check_same_seed(_factory(name))


@pytest.mark.parametrize("name", STRATEGIES)
def test_failed_trials_tolerated(name: str) -> None:
    conformance.check_failures_tolerated(_factory(name))


@pytest.mark.parametrize("name", STRATEGIES)
def test_multi_objective_and_constraints(name: str) -> None:
    conformance.check_multi_objective(_factory(name))


@pytest.mark.parametrize("name", [s for s in STRATEGIES if s != "random"])
def test_beats_random(name: str) -> None:
    conformance.check_beats_random(_factory(name))


def test_stuck_strategy_fails_the_quality_check() -> None:
    """The check can fail: a strategy that never moves is caught."""
    with pytest.raises(AssertionError, match="not two standard errors"):
        conformance.check_beats_random(
            lambda space, objs, seed=None, **kw: conformance.StuckStrategy(space, objs, seed=seed)
        )


def test_unknown_strategy_lists_known() -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'nope'; known: .*random"):
        create_strategy("nope", conformance.cat_space(), parse_objectives("reward"))
