"""Search strategies, one module per family, registered by name.

Every strategy is an optuna sampler (:class:`Strategy`); ``create_strategy(name, space,
objectives, seed=...)`` builds one. Heavy libraries (BoTorch, pymoo, scikit-learn, torch) are
imported inside the strategies that use them, so importing this package stays fast.
"""

from __future__ import annotations

from nas.search.strategies import (  # noqa: F401
    aging,
    botorch,
    linas,
    nsga2,
    reinforce,
    robot,
    simple,
)
from nas.search.strategies._base import (
    CONSTRAINT_PREFIX,
    STRATEGIES,
    SURPLUS_ATTR,
    OptunaStrategy,
    Strategy,
    completed,
    create_strategy,
    is_feasible,
    list_strategies,
    register_strategy,
    violations_of,
)

__all__ = [
    "CONSTRAINT_PREFIX",
    "STRATEGIES",
    "SURPLUS_ATTR",
    "OptunaStrategy",
    "Strategy",
    "completed",
    "create_strategy",
    "is_feasible",
    "list_strategies",
    "register_strategy",
    "violations_of",
]
