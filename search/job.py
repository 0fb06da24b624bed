"""A search job: configuration → task, strategy and study → run (one or many workers) → export.

This is what ``nas search`` calls; it is also the library entry point::

    from nas.search import SearchConfig, run_search
    result = run_search(SearchConfig(supernet="nb201", hw="raspi4", budget=50))
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from nas.search.errors import UserError
from nas.search.export import write_exports
from nas.search.objectives import (
    DEFAULT_OBJECTIVES,
    Constraint,
    Objective,
    parse_constraint,
    parse_objectives,
)
from nas.search.runner import (
    BudgetGuard,
    StopControl,
    TaskObjective,
    optimize,
    reap_dead,
)
from nas.search.strategies import STRATEGIES, Strategy, create_strategy
from nas.search.study import (
    MEMORY,
    WORKER_ATTR,
    SearchConfig,
    evaluated,
    make_storage,
    open_study,
    provenance,
)
from nas.search.task import SupportsTrainingFree, Task, TrainingFree

log = logging.getLogger("nas")

#: set by ``nas run --dry-run``: :func:`run_search` appends its prepared job here and raises
#: :class:`PlanReady` instead of running
PLAN: ContextVar[list[Prepared] | None] = ContextVar("nas_plan", default=None)


class PlanReady(Exception):
    """Raised by :func:`run_search` in plan mode (see :data:`PLAN`) once the job is prepared."""


#: called with (evaluated, budget, study) after each trial (one worker) or each poll (many)
ProgressFn = Callable[[int, int, optuna.Study], None]


@dataclass
class SearchResult:
    """What a finished (or stopped) run leaves: the study and why it ended."""

    study: optuna.Study
    config: SearchConfig
    objectives: tuple[Objective, ...]
    sources: dict[str, str]
    evaluated: int
    reason: str | None
    files: dict[str, Path]
    seconds: float

    @property
    def complete(self) -> bool:
        """True when the study has used its whole budget."""
        return self.evaluated >= self.config.budget


@dataclass
class Prepared:
    """A configuration resolved into the objects a run needs."""

    config: SearchConfig
    task: Task
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]
    #: the task's training-free knowledge, once a strategy has asked for it
    training_free: TrainingFree | None = None


def prepare(config: SearchConfig) -> Prepared:
    """Validate ``config`` and build its task; resolves the default strategy.

    Raises:
        UserError: unknown supernet, strategy, metric or hardware; bad numbers.
    """
    _check_numbers(config)
    try:
        constraints = tuple(parse_constraint(c) for c in config.constraints)
        task = _create_task(config)
        names = config.objectives or tuple(getattr(task, "default_objectives", DEFAULT_OBJECTIVES))
        objectives = parse_objectives(list(names))
    except ValueError as e:
        raise UserError(str(e)) from None
    except TypeError:
        if not config.measure:
            raise
        raise UserError(f"{config.supernet} does not support --measure") from None
    available = dict(task.sources())
    unavailable: dict[str, str] = dict(getattr(task, "unavailable", {}))
    for metric in [o.metric for o in objectives] + [c.metric for c in constraints]:
        if metric not in available:
            why = f" ({unavailable[metric]})" if metric in unavailable else ""
            raise UserError(
                f"{config.task or config.supernet} does not measure {metric!r}{why}; it measures: "
                + ", ".join(available)
            )
    require = getattr(task, "require", None)
    if require is not None:  # lets a task skip (or prepare) costly metrics the search needs
        require({o.metric for o in objectives} | {c.metric for c in constraints})
    strategy = config.strategy or str(getattr(task, "default_strategy", "tpe"))
    config = replace(config, strategy=strategy, objectives=tuple(names))
    prepared = Prepared(config, task, objectives, constraints)
    make_strategy(prepared, 0)  # validate options now
    return prepared


def _create_task(config: SearchConfig) -> Task:
    """The supernet task, or the registered task ``config.task`` with its options."""
    from nas.supernets import create_supernet

    if config.task is not None:
        from nas.search.task import get_task

        try:
            factory = get_task(config.task)
        except ValueError as e:
            raise UserError(str(e)) from None
        try:
            return factory(
                hw=config.hw,
                data=config.data,
                batch_size=config.batch_size,
                device=config.device,
                seed=config.seed,
                **dict(config.task_options),
            )
        except TypeError as e:
            m = re.search(r"unexpected keyword argument '(\w+)'", str(e))
            if m is None:
                raise
            raise UserError(f"{config.task} takes no option {m.group(1)!r}") from None
    return create_supernet(
        config.supernet,
        hw=config.hw,
        data=config.data,
        batch_size=config.batch_size,
        weights=config.weights,
        accuracy=config.accuracy,
        device=config.device,
        **({"measure": True, "workers": config.workers} if config.measure else {}),
    )


def _check_numbers(config: SearchConfig) -> None:
    if config.budget < 1:
        raise UserError("--budget must be at least 1")
    if config.workers < 1:
        raise UserError("--workers must be at least 1")
    if config.max_failures < 1:
        raise UserError("--max-failures must be at least 1")
    if config.timeout is not None and config.timeout <= 0:
        raise UserError("--timeout must be positive (e.g. 90s, 10m, 8h)")
    if config.workers > 1 and config.storage == MEMORY:
        raise UserError("--workers > 1 needs a shared storage, not :memory:")


def make_strategy(p: Prepared, worker: int) -> Strategy:
    """The configured strategy; worker k > 0 gets its own seed so workers do not collide."""
    seed = p.config.seed if worker == 0 else p.config.seed + 7919 * worker
    try:
        cls = STRATEGIES.get(str(p.config.strategy))
    except ValueError as e:
        raise UserError(str(e)) from None
    options = {**_task_knowledge(p, cls), **dict(p.config.strategy_options)}
    try:
        return create_strategy(
            str(p.config.strategy),
            p.task.space(),
            p.objectives,
            seed=seed,
            constrained=bool(p.constraints),
            **options,
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"strategy {p.config.strategy!r}: {e}") from None


def _task_knowledge(p: Prepared, cls: type[Strategy]) -> dict[str, Any]:
    """Options a strategy class asks the job for: the run's budget, and the task's candidate pool
    and training-free metrics (``task.training_free(config.seed)``, the same for every worker;
    fetched once per process and kept on ``p``).

    Raises:
        UserError: the strategy needs training-free metrics and the task has none.
    """
    out: dict[str, Any] = {}
    if cls.uses_budget:
        out["budget"] = p.config.budget
    if cls.needs_task:
        out["task"] = p.task
    if cls.needs_training_free:
        if p.training_free is None:
            if not isinstance(p.task, SupportsTrainingFree):
                raise UserError(
                    f"strategy {p.config.strategy} needs training-free metrics, which task "
                    f"{p.task.name} does not provide"
                )
            p.training_free = p.task.training_free(p.config.seed)
        tf = p.training_free
        out.update(pool=tf.pool, metrics=tf.metrics, metric_names=tf.names)
    return out


def run_search(
    config: SearchConfig,
    *,
    progress: ProgressFn | None = None,
    handle_signals: bool = True,
    export: bool = True,
    prepared: Prepared | None = None,
) -> SearchResult:
    """Run (or resume) the search ``config`` describes, up to its budget.

    Args:
        progress: called as trials finish, for a progress bar or log lines.
        handle_signals: install the two-stage SIGINT/SIGTERM handler (main thread only).
        export: write the CSV/JSON exports into ``config.out_dir`` at the end.
        prepared: ``prepare(config)`` when the caller has it already (saves building the task
            twice).
    """
    start = time.monotonic()
    p = prepared if prepared is not None else prepare(config)
    plan = PLAN.get()
    if plan is not None:
        plan.append(p)
        raise PlanReady(p.config.study_name)
    storage = make_storage(p.config.storage_url, heartbeat=p.config.heartbeat)
    prov = provenance(p.config, p.task.describe(), dict(p.task.sources()))
    study = open_study(p.config, storage, [o.direction for o in p.objectives], prov)
    reason: str | None = None
    reap_dead(study)
    _warm_start(p, study)
    if evaluated(study) < p.config.budget:
        if p.config.workers == 1:
            reason = _run_here(p, study, progress, handle_signals)
        else:
            reason = _run_workers(p, study, progress)
    files = write_exports(study, p.objectives, p.config.out_dir) if export else {}
    return SearchResult(
        study=study,
        config=p.config,
        objectives=p.objectives,
        sources=dict(p.task.sources()),
        evaluated=evaluated(study),
        reason=reason,
        files=files,
        seconds=time.monotonic() - start,
    )


def _warm_start(p: Prepared, study: optuna.Study) -> None:
    """Queue the task's starting candidates (``task.initial_candidates()``, optional) once, in a
    study with no trials yet; they count against the budget like any other."""
    initial = getattr(p.task, "initial_candidates", None)
    if initial is None or study.get_trials(deepcopy=False):
        return
    for params in list(initial())[: p.config.budget]:
        study.enqueue_trial(dict(params), skip_if_exists=True)


def _run_here(
    p: Prepared, study: optuna.Study, progress: ProgressFn | None, handle_signals: bool
) -> str | None:
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = []
    if progress is not None:
        callbacks.append(lambda s, t: progress(evaluated(s), p.config.budget, s))
    stop, objective = work(
        p, study, 0, p.config.timeout, handle_signals=handle_signals, callbacks=callbacks
    )
    if stop.failures >= p.config.max_failures and objective.last_error:
        return f"{stop.reason}; last error: {objective.last_error}"
    return stop.reason


# -- several local worker processes -----------------------------------------------------------
def work(
    p: Prepared,
    study: optuna.Study,
    worker: int,
    timeout: float | None,
    *,
    handle_signals: bool = True,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> tuple[StopControl, TaskObjective]:
    """Evaluate trials of ``study`` in this process until the budget is met or a limit hits."""
    study.sampler = make_strategy(p, worker)
    guard = BudgetGuard(p.config.budget)
    stop = StopControl(budget=p.config.budget, max_failures=p.config.max_failures, guard=guard)
    objective = TaskObjective(p.task, p.objectives, p.constraints, guard)
    if handle_signals:
        stop.install()
    try:
        optimize(study, objective, stop, timeout=timeout, callbacks=[log_trial, *callbacks])
    finally:
        if handle_signals:
            stop.uninstall()
    return stop, objective


def log_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """One log line per finished trial (the study's log file keeps them all)."""
    values = ""
    if trial.values is not None:
        values = " values " + ", ".join(f"{v:.6g}" for v in trial.values)
    log.info(
        "trial %d %s%s (worker %s)",
        trial.number,
        trial.state.name,
        values,
        trial.user_attrs.get(WORKER_ATTR, "?"),
    )


def _worker_main(config_json: dict[str, Any], worker: int, deadline: float | None) -> None:
    """Entry point of a worker process: join the study and run until the budget is met."""
    os.setpgrp()  # the parent forwards signals; a terminal Ctrl-C reaches the parent only
    config = SearchConfig.from_json(config_json)
    p = prepare(replace(config, workers=1))
    storage = make_storage(p.config.storage_url, heartbeat=p.config.heartbeat)
    study = optuna.load_study(study_name=p.config.study_name, storage=storage)
    timeout = None if deadline is None else max(deadline - time.time(), 0.001)
    stop, objective = work(p, study, worker, timeout)
    if stop.reason and stop.failures >= p.config.max_failures:
        log.error("worker %d: %s; last error: %s", worker, stop.reason, objective.last_error)
        raise SystemExit(3)


def _run_workers(p: Prepared, study: optuna.Study, progress: ProgressFn | None) -> str | None:
    ctx = mp.get_context("spawn")
    deadline = None if p.config.timeout is None else time.time() + p.config.timeout
    procs = [
        ctx.Process(target=_worker_main, args=(p.config.to_json(), k, deadline), daemon=False)
        for k in range(p.config.workers)
    ]
    for proc in procs:
        proc.start()
    signals = {"n": 0}

    def forward(signum: int, frame: Any) -> None:
        signals["n"] += 1
        sig = signal.SIGTERM if signals["n"] == 1 else signal.SIGINT
        for proc in procs:
            if proc.pid and proc.is_alive():
                os.kill(proc.pid, sig)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _watch(procs, study, p.config.budget, progress)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    codes = [proc.exitcode for proc in procs]
    if signals["n"]:
        return "stopped by signal after finishing the trials in flight"
    if any(c not in (0, None) for c in codes):
        return f"{sum(c != 0 for c in codes)} of {len(codes)} workers failed (exit codes {codes})"
    if deadline is not None and time.time() >= deadline and evaluated(study) < p.config.budget:
        return f"timeout of {p.config.timeout:g} s reached"
    return None


def _watch(
    procs: Sequence[Any], study: optuna.Study, budget: int, progress: ProgressFn | None
) -> None:
    last = -1
    while any(proc.is_alive() for proc in procs):
        time.sleep(0.5)
        if progress is not None:
            n = evaluated(study)
            if n != last:
                progress(n, budget, study)
                last = n
    for proc in procs:
        proc.join()
    if progress is not None:
        progress(evaluated(study), budget, study)
