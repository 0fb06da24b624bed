"""The search core: spaces, objectives, strategies (optuna samplers), studies and the runner.

Public surface::

    from nas.search import SearchConfig, run_search, create_strategy, list_strategies
"""

from __future__ import annotations

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
from nas.search.task import Rejected, Task, create_task, list_tasks, register_task

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
