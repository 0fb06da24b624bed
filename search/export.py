"""Export a study: every counted trial and the Pareto set, as CSV and JSON, with provenance.

Files are written to a temporary name and renamed, so a reader never sees half a result.
Surplus trials (started after the budget was met) are left out; infeasible trials are kept and
marked, and never on the front.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search.objectives import Objective, pareto_mask
from nas.search.strategies._base import SURPLUS_ATTR, is_feasible, violations_of
from nas.search.study import (
    ERROR_ATTR,
    PROVENANCE_ATTR,
    PRUNED_ATTR,
    REJECTED_ATTR,
    WORKER_ATTR,
)

_INTERNAL = {SURPLUS_ATTR, REJECTED_ATTR, PRUNED_ATTR, WORKER_ATTR, ERROR_ATTR}


def _clean(v: Any) -> Any:
    """JSON-safe value: NaN and infinities become None."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def trial_rows(study: optuna.Study, objectives: Sequence[Objective]) -> list[dict[str, Any]]:
    """One row per trial except surplus and still-waiting ones, in trial-number order.

    Columns: ``trial``, ``state``, the params, every metric the task measured, ``feasible``,
    ``pareto`` (on the feasible front), and ``note`` (rejection or error message).
    """
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if not t.user_attrs.get(SURPLUS_ATTR) and t.state != TrialState.WAITING
    ]
    trials.sort(key=lambda t: t.number)
    front = set(pareto_numbers(trials, objectives))
    rows = []
    for t in trials:
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        row.update(t.params)
        row.update({k: v for k, v in t.user_attrs.items() if k not in _INTERNAL})
        row["feasible"] = is_feasible(t) if t.state == TrialState.COMPLETE else None
        row["pareto"] = t.number in front
        row["note"] = (
            t.user_attrs.get(REJECTED_ATTR)
            or t.user_attrs.get(PRUNED_ATTR)
            or t.user_attrs.get(ERROR_ATTR)
            or ""
        )
        rows.append({k: _clean(v) for k, v in row.items()})
    return rows


def pareto_numbers(trials: Sequence[FrozenTrial], objectives: Sequence[Objective]) -> list[int]:
    """Trial numbers of the feasible, COMPLETE, non-dominated trials."""
    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE and t.values is not None and is_feasible(t)
    ]
    if not done:
        return []
    values = np.array([t.values for t in done], dtype=float)
    mask = pareto_mask(values, objectives)
    return sorted(t.number for t, m in zip(done, mask, strict=True) if m)


def pareto_trials(study: optuna.Study, objectives: Sequence[Objective]) -> list[FrozenTrial]:
    """The Pareto set as trials, sorted by the first objective (best first)."""
    trials = study.get_trials(deepcopy=False)
    keep = set(pareto_numbers(trials, objectives))
    front = [t for t in trials if t.number in keep]
    sign = -1.0 if objectives[0].direction == "maximize" else 1.0
    return sorted(front, key=lambda t: sign * float(t.values[0]))


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with the union of the rows' keys as header, in first-seen order."""
    header: list[str] = []
    for r in rows:
        header.extend(k for k in r if k not in header)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in header})
    return buf.getvalue()


def study_report(study: optuna.Study, objectives: Sequence[Objective]) -> dict[str, Any]:
    """The JSON document of a study: provenance, counts, the Pareto set and all trials."""
    rows = trial_rows(study, objectives)
    return {
        "study": study.study_name,
        "objectives": [str(o) for o in objectives],
        "provenance": study.user_attrs.get(PROVENANCE_ATTR, {}),
        "evaluated": sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows),
        "failed": sum(r["state"] == "FAIL" for r in rows),
        "pareto": [r for r in rows if r["pareto"]],
        "trials": rows,
    }


def write_exports(
    study: optuna.Study, objectives: Sequence[Objective], out_dir: Path
) -> dict[str, Path]:
    """Write trials.csv/json, pareto.csv/json and provenance.json into ``out_dir``."""
    report = study_report(study, objectives)
    files = {
        "trials.csv": to_csv(report["trials"]),
        "pareto.csv": to_csv(report["pareto"]),
        "trials.json": json.dumps(report, indent=2, default=str),
        "pareto.json": json.dumps(
            {k: report[k] for k in ("study", "objectives", "provenance", "pareto")},
            indent=2,
            default=str,
        ),
        "provenance.json": json.dumps(report["provenance"], indent=2, default=str),
    }
    written = {}
    for name, text in files.items():
        atomic_write(out_dir / name, text)
        written[name] = out_dir / name
    return written


__all__ = [
    "atomic_write",
    "pareto_numbers",
    "pareto_trials",
    "study_report",
    "to_csv",
    "trial_rows",
    "violations_of",
    "write_exports",
]
