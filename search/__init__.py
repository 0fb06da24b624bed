"""The search core: spaces, objectives, strategies (optuna samplers), studies and the runner.

Public surface::

    from nas.search import SearchConfig, run_search, create_strategy, list_strategies
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.search.errors import ConfigMismatch, UserError
    from nas.search.job import SearchResult, run_search
    from nas.search.objectives import (
        METRICS,
        Constraint,
        Objective,
        hypervolume,
        pareto_mask,
        parse_constraint,
        parse_objectives,
    )
    from nas.search.space import Measurement, Params, Space
    from nas.search.strategies import Strategy, create_strategy, list_strategies, register_strategy
    from nas.search.study import SearchConfig, make_storage
    from nas.search.task import (
        Rejected,
        Task,
        TrainingFree,
        create_task,
        list_tasks,
        register_task,
    )

# Imported on first use, so that ``nas.search.errors`` and ``nas.search.registry`` (needed by
# supernets and predictors, which must import with torch alone) do not pull in optuna.
_LAZY: dict[str, str] = {
    "ConfigMismatch": "errors",
    "UserError": "errors",
    "SearchResult": "job",
    "run_search": "job",
    "METRICS": "objectives",
    "Constraint": "objectives",
    "Objective": "objectives",
    "hypervolume": "objectives",
    "pareto_mask": "objectives",
    "parse_constraint": "objectives",
    "parse_objectives": "objectives",
    "Measurement": "space",
    "Params": "space",
    "Space": "space",
    "Strategy": "strategies",
    "create_strategy": "strategies",
    "list_strategies": "strategies",
    "register_strategy": "strategies",
    "SearchConfig": "study",
    "make_storage": "study",
    "Rejected": "task",
    "Task": "task",
    "TrainingFree": "task",
    "create_task": "task",
    "list_tasks": "task",
    "register_task": "task",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"nas.search.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nas.search' has no attribute {name!r}")


__all__ = [
    "METRICS",
    "ConfigMismatch",
    "Constraint",
    "Measurement",
    "Objective",
    "Params",
    "Rejected",
    "SearchConfig",
    "SearchResult",
    "Space",
    "Strategy",
    "Task",
    "TrainingFree",
    "UserError",
    "create_strategy",
    "create_task",
    "hypervolume",
    "list_strategies",
    "list_tasks",
    "make_storage",
    "pareto_mask",
    "parse_constraint",
    "parse_objectives",
    "register_strategy",
    "register_task",
    "run_search",
]
