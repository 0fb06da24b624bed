"""The runner: ``study.optimize`` with an exact budget, failure limits and clean stops.

Budgets count evaluations (COMPLETE trials plus trials a plugin rejected), across every run and
worker of a study. optuna's ``MaxTrialsCallback`` overshoots by the trials in flight, so each
trial checks, *after* the storage has numbered it, whether the slots already used plus the
earlier trials still running leave room for it; if not it waits for them, and once the budget is
met it is marked surplus (PRUNED, ``nas:surplus``) and left out of every count and export.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import optuna
from optuna.storages import fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Constraint, Objective
from nas.search.space import Params, suggest
from nas.search.strategies._base import SURPLUS_ATTR
from nas.search.study import (
    ERROR_ATTR,
    PRUNED_ATTR,
    REJECTED_ATTR,
    WORKER_ATTR,
    counts_against_budget,
    retry_trial,
)
from nas.search.task import Pruned, Rejected, Task

log = logging.getLogger("nas")


def worker_id() -> str:
    """``host:pid`` of this process, stored on each trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class BudgetGuard:
    """Admits a trial only while the budget has room for it (see module docstring).

    Every trial that counts or runs before trial ``n`` has a number below ``n``, so a trial
    numbered below the budget is admitted without reading the study; only near the end (or
    after failures) does the guard count.
    """

    budget: int
    poll: float = 0.25
    #: slots used when this process last counted (``None`` before the first count)
    last_used: int | None = None

    def admit(self, study: optuna.Study, trial: optuna.Trial) -> None:
        """Return when ``trial`` may be evaluated; raise ``TrialPruned`` when it is surplus."""
        if trial.number < self.budget:
            self.last_used = None
            return
        while True:
            trials = study.get_trials(deepcopy=False)
            used = sum(counts_against_budget(t) for t in trials)
            self.last_used = used
            if used >= self.budget:
                trial.set_user_attr(SURPLUS_ATTR, True)
                study.stop()
                raise optuna.TrialPruned("budget already met")
            earlier = [
                t for t in trials if t.state == TrialState.RUNNING and t.number < trial.number
            ]
            if used + len(earlier) < self.budget:
                return
            _fail_dead_local(study, earlier)
            if _heartbeat_on(study):
                fail_stale_trials(study)
            time.sleep(self.poll)

    def met_after(self, trial: FrozenTrial) -> bool:
        """Whether finishing ``trial`` certainly used the last slot, without a storage read.

        Known only when the guard counted at its admission (``last_used``); otherwise the
        caller counts.
        """
        if not counts_against_budget(trial):
            return False
        if self.last_used is not None:
            return self.last_used + 1 >= self.budget
        return False


def _heartbeat_on(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(study._storage))


def reap_dead(study: optuna.Study) -> None:
    """Fail (and re-enqueue) the running trials of dead processes on this host, at once.

    Trials of other hosts are left to the heartbeat, which fails them once stale.
    """
    _fail_dead_local(study, study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def _fail_dead_local(study: optuna.Study, running: Sequence[FrozenTrial]) -> None:
    """Mark FAIL the running trials of processes on this host that no longer exist."""
    host = socket.gethostname()
    storage = study._storage
    for t in running:
        owner = str(t.user_attrs.get(WORKER_ATTR, ""))
        h, _, pid = owner.rpartition(":")
        if h != host or not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            log.warning(
                "trial %d of dead worker %s marked FAIL; it will be retried", t.number, owner
            )
            retry_trial(study, storage.get_trial(t._trial_id))


@dataclass
class TaskObjective:
    """The objective optuna calls: admit, suggest, evaluate, store metrics, return values."""

    task: Task
    objectives: Sequence[Objective]
    constraints: Sequence[Constraint]
    guard: BudgetGuard
    last_error: str | None = None
    on_params: Callable[[optuna.Trial, Params], None] | None = None

    def __call__(self, trial: optuna.Trial) -> Sequence[float]:
        study = trial.study
        trial.set_user_attr(WORKER_ATTR, worker_id())
        self.guard.admit(study, trial)
        params = suggest(trial, self.task.space())
        if self.on_params is not None:
            self.on_params(trial, params)
        try:
            m = self.task.evaluate(params)
        except Rejected as e:
            attr = PRUNED_ATTR if isinstance(e, Pruned) else REJECTED_ATTR
            trial.set_user_attr(attr, str(e) or attr.split(":")[1])
            raise optuna.TrialPruned(str(e)) from None
        except Exception as e:
            self.last_error = f"{type(e).__name__}: {e}"
            trial.set_user_attr(ERROR_ATTR, self.last_error[:500])
            raise
        return self._record(trial, m)

    def _record(self, trial: optuna.Trial, m: dict[str, float]) -> Sequence[float]:
        for name, value in m.items():
            trial.set_user_attr(name, float(value))
        for c in self.constraints:
            trial.set_constraint(str(c), c.violation(m))
        missing = [o.metric for o in self.objectives if o.metric not in m]
        if missing:
            raise KeyError(f"{self.task.name} did not measure {', '.join(missing)}")
        values = [float(m[o.metric]) for o in self.objectives]
        bad = [o.metric for o, v in zip(self.objectives, values, strict=True) if math.isnan(v)]
        if bad:
            self.last_error = f"{', '.join(bad)} is NaN"
            trial.set_user_attr(ERROR_ATTR, self.last_error)
            raise ValueError(self.last_error)
        return values


@dataclass
class StopControl:
    """Callbacks that end ``study.optimize``: budget met, too many failures, a signal."""

    budget: int
    max_failures: int
    guard: BudgetGuard | None = None
    failures: int = 0
    reason: str | None = None
    signals: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.failures += 1
            if self.failures >= self.max_failures:
                self.reason = f"stopped after {self.failures} failed evaluations"
                study.stop()
        if self.signals:
            self.reason = self.reason or "stopped by signal after finishing the trials in flight"
            study.stop()
        elif trial.user_attrs.get(SURPLUS_ATTR) or self._met(study, trial):
            study.stop()

    def _met(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if trial.number + 1 < self.budget:  # fewer trials than the budget exist before it
            return False
        if self.guard is not None and self.guard.met_after(trial):
            return True
        return self._budget_met(study)

    def _budget_met(self, study: optuna.Study) -> bool:
        return (
            sum(counts_against_budget(t) for t in study.get_trials(deepcopy=False)) >= self.budget
        )

    def install(self) -> None:
        """First SIGINT/SIGTERM: finish trials in flight, then stop. Second: stop now."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.warning("stopping: finishing the trials in flight (press Ctrl-C again to stop now)")
            return
        self.reason = "interrupted; the running trials are FAIL and will be retried on resume"
        raise KeyboardInterrupt


def optimize(
    study: optuna.Study,
    objective: TaskObjective,
    stop: StopControl,
    *,
    timeout: float | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> None:
    """Run ``study.optimize`` until the budget is met, a limit is hit, or a signal arrives."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            study.optimize(
                objective,
                timeout=timeout,
                catch=(Exception,),
                callbacks=[stop, *callbacks],
                gc_after_trial=False,
                show_progress_bar=False,
            )
        except KeyboardInterrupt:
            stop.reason = stop.reason or "interrupted"
    if timeout is not None and stop.reason is None and not stop._budget_met(study):
        stop.reason = f"timeout of {timeout:g} s reached"
