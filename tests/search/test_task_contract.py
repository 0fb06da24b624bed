"""The task contract (nas.search.testing.check_task) on a real task, and a task it must reject."""

from __future__ import annotations

from typing import Any

import pytest
from optuna.distributions import CategoricalDistribution

from nas.search.testing import check_task
from nas.supernets.nb201 import EDGES, NB201Task


def test_nb201_keeps_the_task_contract() -> None:
    check_task(NB201Task(hw="raspi4"), invalid={e: "no_such_op" for e in EDGES})


class _Noisy:
    """Measures a different value every call: not deterministic, so the check must fail."""

    name = "noisy"

    def __init__(self) -> None:
        self._space = {"x": CategoricalDistribution([1, 2, 3])}
        self.calls = 0

    def space(self) -> Any:
        return self._space

    def evaluate(self, params: Any) -> dict[str, float]:
        self.calls += 1
        return {"top1": float(self.calls)}

    def sources(self) -> dict[str, str]:
        return {"top1": "measured"}

    def describe(self) -> dict[str, Any]:
        return {}


def test_the_contract_can_fail() -> None:
    with pytest.raises(AssertionError, match="measured"):
        check_task(_Noisy())
    with pytest.raises(AssertionError, match="accepted"):
        check_task(_Noisy(), deterministic=False, invalid={"x": 7})
