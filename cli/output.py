"""Terminal output: progress (a rich bar on a terminal, plain lines otherwise) and tables."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nas.search.export import pareto_trials
from nas.search.objectives import Objective

log = logging.getLogger("nas")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
if not out.is_terminal:
    out = Console(soft_wrap=True, width=200)


def setup_logging(log_file: Path | None = None, quiet: bool = False) -> None:
    """Plain ``nas`` log lines on stderr, and all of them in ``log_file`` when given."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logger = logging.getLogger("nas")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(fh)
    logger.propagate = False


def best_text(study: optuna.Study, objectives: Sequence[Objective]) -> str:
    """``best top1 94.1`` for one objective, ``front 7`` for several."""
    try:
        if len(objectives) == 1:
            t = study.best_trial
            return f"best {objectives[0].metric} {t.values[0]:.4g}"
        return f"front {len(pareto_trials(study, objectives))}"
    except ValueError:
        return "no result yet"


class ProgressReporter:
    """Progress with ETA: a rich bar on a terminal, a log line every 10 s otherwise."""

    def __init__(self, objectives: Sequence[Objective], enabled: bool = True) -> None:
        self.objectives = objectives
        self.enabled = enabled
        self.tty = err.is_terminal
        self._bar: Progress | None = None
        self._task: Any = None
        self._last_log = 0.0
        self._start = time.monotonic()

    def __call__(self, done: int, budget: int, study: optuna.Study) -> None:
        if not self.enabled:
            return
        text = best_text(study, self.objectives)
        if self.tty:
            if self._bar is None:
                self._bar = Progress(
                    TextColumn("[bold]search"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    TextColumn("{task.description}"),
                    console=err,
                    transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task(text, total=budget)
            self._bar.update(self._task, completed=done, description=text)
        elif time.monotonic() - self._last_log >= 10 or done >= budget:
            self._last_log = time.monotonic()
            log.info("evaluated %d/%d  %s  (%.0f s)", done, budget, text, self._elapsed())

    def _elapsed(self) -> float:
        return time.monotonic() - self._start

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def trials_table(
    title: str,
    trials: Sequence[optuna.trial.FrozenTrial],
    objectives: Sequence[Objective],
    sources: Mapping[str, str],
) -> Table:
    """A rich table of trials: number, objectives (with their source), then params."""
    table = Table(title=title, title_justify="left")
    table.add_column("trial", justify="right")
    metrics = [o.metric for o in objectives]
    for m in metrics:
        table.add_column(f"{m} ({sources.get(m, '?')})", justify="right")
    # per-metric proxy scores (zc_*) stay in the CSV/JSON: too many columns for a terminal
    extra = sorted(
        {
            k
            for t in trials
            for k in t.user_attrs
            if k in sources and k not in metrics and not k.startswith("zc_")
        }
    )
    for m in extra:
        table.add_column(f"{m} ({sources.get(m)})", justify="right")
    names = list(trials[0].params) if trials else []
    wide = len(names) > WIDE_SPACE
    shown = [n for n in names if n == "r"] if wide else names
    for n in shown:
        table.add_column(n)
    if wide:
        table.add_column("candidate (choice index per dimension; values in the CSV/JSON)")
    for t in trials:
        row = [str(t.number)] + [_fmt(t.user_attrs.get(m)) for m in metrics + extra]
        row += [_fmt(t.params.get(n)) for n in shown]
        if wide:
            row.append(compact_candidate(t))
        table.add_row(*row)
    return table


#: spaces with more dimensions than this are shown as one compact column
WIDE_SPACE = 10


def compact_candidate(t: optuna.trial.FrozenTrial) -> str:
    """``d:22221 e:201120120012012012 w:222220``: each dimension's choice index, grouped by
    name prefix (``r`` is shown in its own column)."""
    groups: dict[str, str] = {}
    for name, value in t.params.items():
        if name == "r":
            continue
        dist = t.distributions.get(name)
        choices = getattr(dist, "choices", None)
        idx = str(list(choices).index(value)) if choices and value in choices else _fmt(value)
        key = name.rstrip("0123456789") or name
        groups[key] = groups.get(key, "") + (idx if len(idx) == 1 else f"({idx})")
    return " ".join(f"{k}:{v}" for k, v in groups.items())
