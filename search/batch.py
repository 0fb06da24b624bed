"""Batch jobs: plans (``nas run --dry-run``), joining a study as a worker, and job status.

A study created by ``nas run`` stores its job (command and args) next to its configuration and
the digests of its input files, so ``nas worker --storage URL --study NAME`` on any machine
joins it from the storage alone.
"""

from __future__ import annotations

import statistics
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from nas.search.errors import UserError
from nas.search.inputs import INPUTS_ATTR
from nas.search.inputs import check as check_inputs
from nas.search.job import Prepared, prepare, work
from nas.search.objectives import Objective, parse_objectives
from nas.search.runner import reap_dead, worker_id
from nas.search.space import sample, space_size
from nas.search.study import (
    CONFIG_ATTR,
    JOB_ATTR,
    WORKER_ATTR,
    counts_against_budget,
    evaluated,
    make_storage,
    sqlite_path,
    stored_config,
)
from nas.search.study import load as load_study
from nas.search.task import Rejected

#: a worker that finished a trial this recently (seconds) counts as active, for ETAs
ACTIVE_WINDOW = 600.0


@dataclass(frozen=True)
class Plan:
    """What a job would do: its space, budget, progress so far and an estimated duration.

    ``timed`` candidates were measured in full; ``rejected`` more were refused on the way (a
    plugin that rejects most random candidates, as EvoNorm does, is timed on the ones it keeps).
    """

    study: str
    task: str
    strategy: str
    space_size: float
    budget: int
    evaluated: int
    workers: int
    timed: int
    rejected: int
    seconds_per_evaluation: float
    seconds_per_rejection: float

    @property
    def eta_seconds(self) -> float:
        """Remaining evaluations × the time of a full one, shared by the workers (an upper
        estimate when some candidates will be rejected early)."""
        remaining = max(self.budget - self.evaluated, 0)
        per = self.seconds_per_evaluation if self.timed else self.seconds_per_rejection
        return remaining * per / max(self.workers, 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "task": self.task,
            "strategy": self.strategy,
            "space_size": self.space_size if np.isfinite(self.space_size) else None,
            "budget": self.budget,
            "evaluated": self.evaluated,
            "workers": self.workers,
            "timed_evaluations": self.timed,
            "rejected_while_timing": self.rejected,
            "seconds_per_evaluation": round(self.seconds_per_evaluation, 4),
            "seconds_per_rejection": round(self.seconds_per_rejection, 4),
            "eta_seconds": round(self.eta_seconds, 1),
        }


def _evaluated_so_far(p: Prepared) -> int:
    """Slots the study has used already (0 when it does not exist; creates no storage file)."""
    url = p.config.storage_url
    path = sqlite_path(url)
    if path is not None and not path.exists():
        return 0
    try:
        study = optuna.load_study(study_name=p.config.study_name, storage=make_storage(url))
    except KeyError:
        return 0
    return evaluated(study)


#: random candidates a plan draws at most, to find ``timed`` the task measures in full
MAX_DRAWS = 100


def _time_evaluations(p: Prepared, timed: int) -> tuple[list[float], list[float]]:
    """Seconds of full evaluations and of rejections, drawing random (seeded) candidates until
    ``timed`` were measured in full or :data:`MAX_DRAWS` were drawn."""
    rng = np.random.default_rng(p.config.seed)
    full: list[float] = []
    refused: list[float] = []
    while len(full) < timed and len(full) + len(refused) < max(timed, MAX_DRAWS):
        params = sample(p.task.space(), rng)
        start = time.perf_counter()
        try:
            p.task.evaluate(params)
        except Rejected:
            refused.append(time.perf_counter() - start)
            continue
        except Exception as e:
            raise UserError(f"a timed evaluation failed: {type(e).__name__}: {e}") from None
        full.append(time.perf_counter() - start)
    return full, refused


def make_plan(p: Prepared, timed: int = 3) -> Plan:
    """Time ``timed`` full evaluations of random candidates (seeded) and estimate the job.

    Raises:
        UserError: an evaluation failed (the job would fail the same way).
    """
    full, refused = _time_evaluations(p, timed)
    return Plan(
        study=p.config.study_name,
        task=p.config.task or p.config.supernet,
        strategy=str(p.config.strategy),
        space_size=space_size(p.task.space()),
        budget=p.config.budget,
        evaluated=_evaluated_so_far(p),
        workers=p.config.workers,
        timed=len(full),
        rejected=len(refused),
        seconds_per_evaluation=statistics.fmean(full) if full else 0.0,
        seconds_per_rejection=statistics.fmean(refused) if refused else 0.0,
    )


def join_study(
    storage_url: str,
    name: str,
    *,
    timeout: float | None = None,
    max_failures: int | None = None,
    handle_signals: bool = True,
) -> tuple[optuna.Study, str | None]:
    """Join study ``name`` as one more worker, from its stored configuration alone.

    Checks that every input file the study was started with is here with the same digest, then
    evaluates trials until the global budget is met, ``timeout`` passes, or a signal arrives.
    Returns the study and why the work stopped (``None``: the budget is met).

    Raises:
        UserError: no such study, not a nas study, an input missing or changed.
    """
    study = load_study(make_storage(storage_url), name)
    config = replace(stored_config(study), storage=storage_url, workers=1, timeout=timeout)
    if max_failures is not None:
        config = replace(config, max_failures=max_failures)
    check_inputs(study.user_attrs.get(INPUTS_ATTR, {}), name)
    p = prepare(config)
    storage = make_storage(storage_url, heartbeat=p.config.heartbeat)
    study = optuna.load_study(study_name=name, storage=storage)
    reap_dead(study)
    if evaluated(study) >= p.config.budget:
        return study, None
    worker = 1 + zlib.crc32(worker_id().encode()) % 100_003
    stop, objective = work(p, study, worker, timeout, handle_signals=handle_signals)
    if stop.failures >= p.config.max_failures and objective.last_error:
        return study, f"{stop.reason}; last error: {objective.last_error}"
    if stop.reason is None and evaluated(study) < p.config.budget:
        return study, "stopped before the budget was met"
    return study, stop.reason


# -- status ------------------------------------------------------------------------------------
def _duration(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _active_workers(trials: Sequence[FrozenTrial], now: datetime) -> int:
    """Workers running a trial now or that finished one within :data:`ACTIVE_WINDOW`."""
    active = set()
    for t in trials:
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker is None:
            continue
        if t.state == TrialState.RUNNING:
            active.add(worker)
        elif t.datetime_complete is not None:
            age = (now - t.datetime_complete).total_seconds()
            if age <= ACTIVE_WINDOW:
                active.add(worker)
    return len(active)


def _best(trials: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> dict[str, float]:
    """The best value of each objective over the COMPLETE trials."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    out: dict[str, float] = {}
    for i, o in enumerate(objectives):
        values = [float(t.values[i]) for t in done if len(t.values) > i]
        if values:
            out[o.metric] = max(values) if o.direction == "maximize" else min(values)
    return out


def study_status(study: optuna.Study, now: datetime | None = None) -> dict[str, Any]:
    """Progress, ETA, best values and failures of one nas study."""
    now = now or datetime.now()  # optuna stores naive local times
    config = stored_config(study)
    trials = study.get_trials(deepcopy=False)
    used = sum(counts_against_budget(t) for t in trials)
    durations = [d for t in trials if counts_against_budget(t) and (d := _duration(t))]
    workers = _active_workers(trials, now)
    remaining = max(config.budget - used, 0)
    eta = None
    if remaining == 0:
        eta = 0.0
    elif durations and workers:
        eta = remaining * statistics.median(durations) / workers
    job = study.user_attrs.get(JOB_ATTR) or {}
    return {
        "study": study.study_name,
        "command": job.get("command", "compress" if config.task else "search"),
        "task": config.task or config.supernet,
        "strategy": config.strategy,
        "evaluated": used,
        "budget": config.budget,
        "progress": round(used / config.budget, 4),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": sum(t.state == TrialState.FAIL for t in trials),
        "active_workers": workers,
        "eta_seconds": None if eta is None else round(eta, 1),
        "best": _best(trials, parse_objectives(list(config.objectives))),
    }


def status(storage: BaseStorage) -> list[dict[str, Any]]:
    """:func:`study_status` of every nas study in ``storage`` (others are skipped)."""
    rows = []
    for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if CONFIG_ATTR not in s.user_attrs:
            continue
        rows.append(study_status(optuna.load_study(study_name=s.study_name, storage=storage)))
    return rows
