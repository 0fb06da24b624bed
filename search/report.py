"""``nas report``: an HTML page with PNG plots, the CSV/JSON exports and the provenance.

Plots (matplotlib, Agg): the Pareto front of the first two objectives with every evaluated
candidate behind it and the chosen points labelled by trial number (the front, and a pick under
a constraint when given); hypervolume of the front against evaluations (several objectives) or
the best value so far (one); and each objective's history over the trials. Every file is
written through a temporary file and a rename, so a crash leaves no half-written report.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas.search.export import atomic_write, pareto_numbers, study_report, write_exports
from nas.search.objectives import Objective, hypervolume


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted((t for t in done if t.values is not None), key=lambda t: t.number)


def _figure(width: float = 6.0, height: float = 4.0) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def plot_front(
    trials: Sequence[FrozenTrial],
    objectives: Sequence[Objective],
    front: Sequence[int],
    picked: int | None,
    path: Path,
) -> None:
    """Every candidate (grey), the front (joined, labelled) and the pick (ringed)."""
    fig, ax = _figure()
    v = np.array([t.values[:2] for t in trials], dtype=float)
    ax.scatter(v[:, 0], v[:, 1], s=12, c="0.7", label="evaluated")
    on = [t for t in trials if t.number in set(front)]
    f = np.array([t.values[:2] for t in on], dtype=float).reshape(-1, 2)
    order = np.argsort(f[:, 0])
    ax.plot(f[order, 0], f[order, 1], "o-", c="tab:blue", ms=5, label="Pareto front")
    for t in on:
        ax.annotate(
            str(t.number), t.values[:2], textcoords="offset points", xytext=(4, 4), fontsize=7
        )
    if picked is not None:
        t = next(t for t in trials if t.number == picked)
        ax.scatter(
            [t.values[0]],
            [t.values[1]],
            s=120,
            facecolors="none",
            edgecolors="tab:red",
            label=f"pick (trial {picked})",
        )
    ax.set_xlabel(str(objectives[0]))
    ax.set_ylabel(str(objectives[1]))
    ax.legend(fontsize=8)
    _save(fig, path)


def hypervolume_curve(
    trials: Sequence[FrozenTrial], objectives: Sequence[Objective]
) -> list[float]:
    """Hypervolume of the front of the first k complete trials, for k = 1..n (each objective
    normalised by its range over all of them)."""
    v = np.array([t.values for t in trials], dtype=float)
    lo, hi = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
    return [hypervolume(v[: k + 1], objectives, lo, hi) for k in range(len(v))]


def plot_progress(
    trials: Sequence[FrozenTrial], objectives: Sequence[Objective], path: Path
) -> None:
    """Hypervolume against evaluations (several objectives), else the best value so far."""
    fig, ax = _figure()
    x = np.arange(1, len(trials) + 1)
    if len(objectives) > 1:
        ax.plot(x, hypervolume_curve(trials, objectives), c="tab:blue")
        ax.set_ylabel("hypervolume (normalised)")
    else:
        v = np.array([t.values[0] for t in trials], dtype=float)
        best = (
            np.maximum.accumulate(v)
            if objectives[0].direction == "maximize"
            else np.minimum.accumulate(v)
        )
        ax.plot(x, best, c="tab:blue")
        ax.set_ylabel(f"best {objectives[0].metric}")
    ax.set_xlabel("complete evaluations")
    _save(fig, path)


def plot_history(
    trials: Sequence[FrozenTrial], objectives: Sequence[Objective], path: Path
) -> None:
    """Each objective against the trial number, one panel per objective."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(objectives), 1, figsize=(6, 2.4 * len(objectives)), dpi=100, squeeze=False
    )
    n = [t.number for t in trials]
    for i, (o, ax) in enumerate(zip(objectives, axes[:, 0], strict=True)):
        ax.scatter(n, [t.values[i] for t in trials], s=8, c="tab:blue")
        ax.set_ylabel(o.metric)
    axes[-1, 0].set_xlabel("trial")
    _save(fig, path)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return "" if v is None else str(v)


def _page(
    report: dict[str, Any],
    objectives: Sequence[Objective],
    images: Sequence[str],
    picked: int | None,
) -> str:
    prov = report["provenance"]
    config = prov.get("config", {})
    front = report["pareto"]
    columns = ["number", *[o.metric for o in objectives]]
    columns += [k for k in (front[0] if front else {}) if k.startswith("param_")]
    facts = {
        "evaluated": report["evaluated"],
        "failed": report["failed"],
        "budget": config.get("budget"),
        "strategy": config.get("strategy"),
        "seed": prov.get("seed"),
        "objectives": ", ".join(report["objectives"]),
        "sources": ", ".join(f"{k}: {v}" for k, v in prov.get("sources", {}).items()),
        "pick": "none" if picked is None else f"trial {picked}",
    }
    prov_rows = [{"key": k, "value": v} for k, v in prov.items() if k != "config"]
    figs = "".join(f'<p><img src="{html.escape(i)}" alt="{html.escape(i)}"></p>' for i in images)
    title = html.escape(str(report["study"]))
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>nas report: {title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>"
        f"<h1>Study {title}</h1>"
        + _table([{"": k, "value": v} for k, v in facts.items()], ["", "value"])
        + f"<h2>Pareto set ({len(front)})</h2>"
        + _table(front, columns)
        + "<h2>Plots</h2>"
        + figs
        + "<h2>Files</h2><p><a href='trials.csv'>trials.csv</a> · <a href='trials.json'>"
        "trials.json</a> · <a href='pareto.csv'>pareto.csv</a> · <a href='pareto.json'>"
        "pareto.json</a> · <a href='provenance.json'>provenance.json</a></p>"
        + "<h2>Configuration</h2>"
        + _table([{"key": k, "value": v} for k, v in config.items()], ["key", "value"])
        + "<h2>Provenance</h2>"
        + _table(prov_rows, ["key", "value"])
        + "</body></html>"
    )


def write_report(
    study: optuna.Study,
    objectives: Sequence[Objective],
    out_dir: Path,
    picked: int | None = None,
) -> dict[str, Path]:
    """Write ``report.html``, the PNG plots and the CSV/JSON exports into ``out_dir``."""
    files = write_exports(study, objectives, out_dir)
    trials = _complete(study)
    images: list[str] = []
    if trials:
        if len(objectives) >= 2:
            front = pareto_numbers(study.get_trials(deepcopy=False), objectives)
            plot_front(trials, objectives, front, picked, out_dir / "pareto.png")
            images.append("pareto.png")
        name = "hypervolume.png" if len(objectives) > 1 else "best.png"
        plot_progress(trials, objectives, out_dir / name)
        plot_history(trials, objectives, out_dir / "history.png")
        images += [name, "history.png"]
    page = _page(study_report(study, objectives), objectives, images, picked)
    atomic_write(out_dir / "report.html", page)
    files.update({i: out_dir / i for i in images})
    files["report.html"] = out_dir / "report.html"
    return files
