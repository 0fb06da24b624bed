"""The plugin interface: a task turns a candidate into measurements.

The core never builds a network itself. A task (sub-network extraction from a supernet, a
table-backed benchmark space, a compression method) owns its space and evaluates candidates.
Strategies never import tasks, and tasks never import strategies.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nas.search.registry import Registry
from nas.search.space import Measurement, Params, Space

if TYPE_CHECKING:
    import numpy as np

#: where a metric came from; printed and stored with every result
SOURCES = ("measured", "predicted", "proxy", "table", "roofline", "counted")


class Rejected(Exception):
    """Raised by :meth:`Task.evaluate` for a candidate the plugin refuses.

    The trial is evaluated and counts against the budget (PRUNED, ``nas:rejected``); it is never
    retried.
    """


class Pruned(Rejected):
    """Raised by :meth:`Task.evaluate` when a pruner stopped a hopeless evaluation part-way.

    Counted like a rejection (PRUNED, ``nas:pruned``): evaluated, never retried.
    """


@runtime_checkable
class Task(Protocol):
    """What the runner needs from a plugin."""

    name: str

    def space(self) -> Space:
        """The search space; the same object on every call."""
        ...

    def evaluate(self, params: Params) -> Measurement:
        """Measure one candidate: every metric it can produce (names from METRICS)."""
        ...

    def sources(self) -> Mapping[str, str]:
        """The source of each metric :meth:`evaluate` returns: one of :data:`SOURCES`, optionally
        followed by `:detail` (e.g. ``proxy:naswot``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able description of the task's configuration, stored with the study."""
        ...


@dataclass(frozen=True)
class TrainingFree:
    """A task's training-free knowledge, for strategies that search with it (RoBoT).

    Attributes:
        pool: the candidates the strategy may propose (e.g. every architecture of a table).
        metrics: ``metrics(candidates) -> array (len(candidates), len(names))`` of training-free
            scores (higher = predicted better, as each metric defines it; NaN where a metric
            failed). May be costly: strategies call it once, on first use.
        names: the metrics' names, one per column.
    """

    pool: Sequence[Params]
    metrics: Callable[[Sequence[Params]], np.ndarray]
    names: tuple[str, ...]


@runtime_checkable
class SupportsTrainingFree(Protocol):
    """A task that can give its candidate pool and training-free metrics (optional)."""

    def training_free(self, seed: int) -> TrainingFree:
        """The pool and metrics; ``seed`` seeds whatever the metrics draw (weights, batches)."""
        ...


TaskFactory = Callable[..., Task]
TASKS: Registry[TaskFactory] = Registry("task")


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register a task factory (a class or function returning a :class:`Task`)."""
    return TASKS.register(name)


def load_builtin_tasks() -> None:
    """Register the tasks shipped with nas: the compression methods (and their strategies) and
    the synthetic benchmark task."""
    import nas.compress.methods
    import nas.search.synthetic  # noqa: F401


def get_task(name: str) -> TaskFactory:
    """The factory registered as ``name`` (built-in methods loaded first)."""
    load_builtin_tasks()
    return TASKS.get(name)


def create_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name``."""
    return get_task(name)(**options)


def list_tasks() -> list[str]:
    """Names of every registered task."""
    load_builtin_tasks()
    return TASKS.names()
