"""``nas search``: run the search, then print the result and where it was written."""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna

from nas.cli.output import ProgressReporter, err, out, setup_logging, trials_table
from nas.search.errors import UserError
from nas.search.export import pareto_trials, study_report
from nas.search.job import SearchResult, run_search
from nas.search.objectives import Objective, parse_constraint
from nas.search.study import SearchConfig

log = logging.getLogger("nas")


def pick_trial(
    study: optuna.Study, objectives: tuple[Objective, ...], spec: str
) -> optuna.trial.FrozenTrial | None:
    """The best front member (by the first objective) that satisfies constraint ``spec``."""
    try:
        c = parse_constraint(spec)
    except ValueError as e:
        raise UserError(f"--pick: {e}") from None
    ok = [
        t
        for t in pareto_trials(study, objectives)
        if c.metric in t.user_attrs and c.violation(t.user_attrs) <= 0
    ]
    return ok[0] if ok else None


def run_search_command(config: SearchConfig, *, pick: str | None, as_json: bool) -> int:
    """Run ``config`` and report; returns the exit status."""
    from nas.search.job import prepare

    if pick is not None:
        _valid(pick)
    prepared = prepare(config)
    config = prepared.config
    setup_logging(config.out_dir / "search.log", quiet=as_json)
    for line in getattr(prepared.task, "notes", lambda: [])():
        log.info("%s", line)
    progress = ProgressReporter(list(prepared.objectives), enabled=not as_json)
    try:
        result = run_search(config, progress=progress, prepared=prepared)
    finally:
        progress.close()
    chosen = pick_trial(result.study, result.objectives, pick) if pick else None
    if as_json:
        out.print_json(json.dumps(_json(result, chosen, pick), default=str))
    else:
        _print(result, chosen, pick)
    if result.reason and "failed" in result.reason:
        return 3
    if result.reason and result.reason.startswith("interrupted"):
        return 130
    return 1 if pick and chosen is None else 0


def _valid(spec: str) -> bool:
    try:
        parse_constraint(spec)
    except ValueError as e:
        raise UserError(f"--pick: {e}") from None
    return True


def _json(
    r: SearchResult, chosen: optuna.trial.FrozenTrial | None, pick: str | None
) -> dict[str, Any]:
    report = study_report(r.study, r.objectives)
    return {
        "study": r.study.study_name,
        "evaluated": r.evaluated,
        "budget": r.config.budget,
        "complete": r.complete,
        "stopped": r.reason,
        "sources": r.sources,
        "seconds": round(r.seconds, 3),
        "pareto": report["pareto"],
        "pick": None if pick is None else {"constraint": pick, "trial": chosen and chosen.number},
        "files": {k: str(v) for k, v in r.files.items()},
        "provenance": report["provenance"],
    }


def _print(r: SearchResult, chosen: optuna.trial.FrozenTrial | None, pick: str | None) -> None:
    c = r.config
    state = "complete" if r.complete else "incomplete"
    err.print(
        f"study {r.study.study_name}: {r.evaluated} of {c.budget} evaluations ({state}), "
        f"strategy {c.strategy}, seed {c.seed}, {r.seconds:.1f} s",
        markup=False,
        highlight=False,
    )
    for metric, source in r.sources.items():
        err.print(f"  {metric}: {source}", markup=False, highlight=False)
    if r.reason:
        err.print(f"  stopped: {r.reason}", markup=False, highlight=False)
    front = pareto_trials(r.study, r.objectives)
    out.print(trials_table(f"Pareto set ({len(front)} candidates)", front, r.objectives, r.sources))
    if pick is not None:
        if chosen is None:
            err.print(f"no Pareto candidate satisfies {pick}", markup=False)
        else:
            out.print(trials_table(f"pick {pick}", [chosen], r.objectives, r.sources))
    if r.files:
        folder = next(iter(r.files.values())).parent
        err.print(f"wrote {', '.join(r.files)} to {folder}/", markup=False, highlight=False)
