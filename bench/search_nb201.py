"""Search-core benchmark on NAS-Bench-201: quality of every strategy, and the core's cost.

Usage::

    python bench/search_nb201.py [--strategies random,tpe,direct-tpe] [--seeds 10]
        [--parts a,b,c,d,cost] [--max-minutes M] [--results DIR] [--budget-scale F]
        [--report-only]

Parts (from the issue):

* ``a``: ``top1`` on CIFAR-10 alone; regret (table maximum minus best found) after 20, 50, 100
  and 200 evaluations.
* ``b``: ``top1`` and ``latency_ms`` on raspi4, pixel3 and 1080ti_1; hypervolume of the found
  front over that of the whole table after 50, 100 and 200 evaluations.
* ``c``: (a), (b) and (d) for optuna's TPE, GP and NSGA-II samplers used directly (no ``nas``
  code in between): the rows ``direct-tpe``, ``direct-gp``, ``direct-nsga2``. They run on the
  settings of the a/b/d parts given (all three when none is).
* ``d``: (a) on CIFAR-100.
* ``cost``: ms per trial of 1,000 ``random`` trials through ``run_search`` on a fresh SQLite
  file against optuna used directly on the same kind of storage (3 repetitions, order
  alternating, medians).

Resumable: one JSON file per (setting, strategy, seed) and per cost repetition in
``bench/results/search_nb201/``; a configuration whose file exists is skipped. After every
configuration ``bench/results/search_nb201.md`` is rebuilt from all the files present. Work runs
in order of importance: (a) first, seed-major (every strategy gets seed 0 before any gets seed 1),
then cost, then (b), then (d). ``--max-minutes`` stops starting new configurations after that
long. Exit status 1 when a configuration crashed (the others still run), 0 otherwise (a MISS is
not a failure).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import math
import re
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from _common import (
    RESULTS,
    ROOT,
    Deadline,
    describe_machine,
    fmt_mean_std,
    git_commit,
    machine,
    md_table,
    mean_std,
    now_iso,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

NAME = "search_nb201"
TABLE_CSV = ROOT / "supernets" / "data" / "nb201.csv.gz"
EDGES = ("e01", "e02", "e12", "e03", "e13", "e23")
DEVICES = ("raspi4", "pixel3", "1080ti_1")
#: evaluations per run; the slow model-based samplers stop earlier (their 200 column shows "–")
FULL_BUDGET = 200
EVAL_CAP: dict[str, int] = {"gp": 100, "botorch": 100, "direct-gp": 100}
DIRECT: dict[str, str] = {
    "direct-tpe": "optuna TPE (direct)",
    "direct-gp": "optuna GP (direct)",
    "direct-nsga2": "optuna NSGA-II (direct)",
}
MODEL_BASED = ("tpe", "gp", "botorch", "linas", "reinforce", "nsga2")
COST_TRIALS = 1000
COST_REPS = 3
#: the issue's reference HV ratios of optuna TPE at 100 evaluations
TPE_REFERENCE = {"raspi4": 0.990, "pixel3": 0.985, "1080ti_1": 0.957}
PARTS = ("a", "b", "c", "d", "cost")


@dataclass(frozen=True)
class Setting:
    """One search problem: dataset, device and objectives, with its report checkpoints."""

    name: str
    data: str
    hw: str
    objectives: tuple[str, ...]
    checkpoints: tuple[int, ...]


SETTINGS: dict[str, Setting] = {
    "a": Setting("a", "cifar10", "1080ti_1", ("top1",), (20, 50, 100, 200)),
    **{
        f"b-{d}": Setting(f"b-{d}", "cifar10", d, ("top1", "latency_ms"), (50, 100, 200))
        for d in DEVICES
    },
    "d": Setting("d", "cifar100", "1080ti_1", ("top1",), (20, 50, 100, 200)),
}


# -- the table, read without nas ----------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """NAS-Bench-201 as a dict from the six edge ops to metrics, plus whole-table arrays."""

    ops: tuple[str, ...]  # op names in the table's id order
    rows: dict[tuple[str, ...], dict[str, float]]  # ops per edge -> {cifar10, cifar100, lat_*}
    columns: dict[str, np.ndarray]  # metric -> value of every architecture


@lru_cache(maxsize=1)
def load_table() -> Table:
    """Read ``nb201.csv.gz`` with gzip + csv (the op names come from each ``arch_str``)."""
    with gzip.open(TABLE_CSV, "rt", newline="") as fh:
        raw = list(csv.DictReader(fh))
    names: dict[int, str] = {}
    rows: dict[tuple[str, ...], dict[str, float]] = {}
    for r in raw:
        ops = tuple(re.findall(r"([A-Za-z0-9_]+)~\d", r["arch_str"]))
        for e, op in zip(EDGES, ops, strict=True):
            names[int(r[f"op_{e}"])] = op
        metrics = {"cifar10": float(r["cifar10_test_acc"])}
        metrics["cifar100"] = float(r["cifar100_test_acc"])
        metrics.update({f"lat_{d}": float(r[f"lat_{d}"]) for d in DEVICES})
        rows[ops] = metrics
    columns = {k: np.array([m[k] for m in rows.values()]) for k in next(iter(rows.values()))}
    return Table(tuple(names[i] for i in sorted(names)), rows, columns)


def lookup(table: Table, setting: Setting, ops: tuple[str, ...]) -> tuple[float, float]:
    """(top1, latency_ms) of one architecture in ``setting``."""
    row = table.rows[ops]
    return row[setting.data], row[f"lat_{setting.hw}"]


# -- one quality run ----------------------------------------------------------------------------
def budget_of(strategy: str, scale: float) -> int:
    """Evaluations for ``strategy`` (its cap), times the debug ``--budget-scale``."""
    return max(1, math.ceil(EVAL_CAP.get(strategy, FULL_BUDGET) * scale))


def run_nas(strategy: str, setting: Setting, seed: int, budget: int) -> dict[str, Any]:
    """One ``run_search`` on in-memory storage; the metrics of its COMPLETE trials in order."""
    from nas.search.job import run_search
    from nas.search.study import SearchConfig

    config = SearchConfig(
        supernet="nb201",
        hw=setting.hw,
        data=setting.data,
        objectives=setting.objectives,
        strategy=strategy,
        seed=seed,
        budget=budget,
        storage=":memory:",
        study=f"bench-{setting.name}-{strategy}-{seed}",
    )
    start = time.perf_counter()
    result = run_search(config, export=False, handle_signals=False)
    wall = time.perf_counter() - start
    trials = sorted(
        result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.number,
    )
    if len(trials) < budget:
        raise RuntimeError(f"{len(trials)} of {budget} trials completed: {result.reason}")
    return {
        "top1": [float(t.user_attrs.get("top1", t.values[0])) for t in trials],
        "latency_ms": [float(t.user_attrs["latency_ms"]) for t in trials],
        "wall_s": wall,
    }


def direct_sampler(strategy: str, seed: int) -> optuna.samplers.BaseSampler:
    """optuna's own sampler with its defaults, as a user would write it."""
    if strategy == "direct-tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if strategy == "direct-gp":
        return optuna.samplers.GPSampler(seed=seed)
    if strategy == "direct-nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise ValueError(f"unknown direct sampler {strategy!r}; known: {', '.join(DIRECT)}")


def run_direct(strategy: str, setting: Setting, seed: int, budget: int) -> dict[str, Any]:
    """A plain ``optuna.create_study`` + ``study.optimize`` over the table; no nas code."""
    table = load_table()
    multi = len(setting.objectives) > 1
    study = optuna.create_study(
        sampler=direct_sampler(strategy, seed),
        directions=["maximize", "minimize"] if multi else ["maximize"],
    )

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        ops = tuple(str(trial.suggest_categorical(e, table.ops)) for e in EDGES)
        top1, latency = lookup(table, setting, ops)
        trial.set_user_attr("top1", top1)
        trial.set_user_attr("latency_ms", latency)
        return (top1, latency) if multi else top1

    start = time.perf_counter()
    study.optimize(objective, n_trials=budget)
    wall = time.perf_counter() - start
    trials = sorted(
        study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)), key=lambda t: t.number
    )
    return {
        "top1": [float(t.user_attrs["top1"]) for t in trials],
        "latency_ms": [float(t.user_attrs["latency_ms"]) for t in trials],
        "wall_s": wall,
    }


def quality_record(strategy: str, setting: Setting, seed: int, scale: float) -> dict[str, Any]:
    """Run one configuration and describe it (values, timing, provenance)."""
    budget = budget_of(strategy, scale)
    run = run_direct if strategy in DIRECT else run_nas
    out = run(strategy, setting, seed, budget)
    return {
        "bench": NAME,
        "kind": "quality",
        "setting": setting.name,
        "strategy": strategy,
        "seed": seed,
        "budget": budget,
        "data": setting.data,
        "hw": setting.hw,
        "objectives": list(setting.objectives),
        **out,
        "s_per_trial": out["wall_s"] / max(len(out["top1"]), 1),
        "git_commit": git_commit(),
        "machine": machine(),
        "optuna": optuna.__version__,
        "date": now_iso(),
    }


# -- the core's cost per trial ------------------------------------------------------------------
def cost_nas(folder: Path, seed: int, trials: int) -> float:
    """Seconds for ``trials`` random trials through ``run_search`` on a fresh SQLite file."""
    from nas.search.job import run_search
    from nas.search.study import SearchConfig

    config = SearchConfig(
        supernet="nb201",
        hw="raspi4",
        objectives=("top1", "latency_ms"),
        strategy="random",
        seed=seed,
        budget=trials,
        storage=f"sqlite:///{folder / f'nas-{seed}-{trials}.db'}",
        study="cost",
    )
    start = time.perf_counter()
    result = run_search(config, export=False, handle_signals=False)
    seconds = time.perf_counter() - start
    if result.evaluated != trials:
        raise RuntimeError(f"nas ran {result.evaluated} of {trials} trials: {result.reason}")
    return seconds


def cost_direct(folder: Path, seed: int, trials: int, *, wal: bool = False) -> float:
    """The same with optuna alone: RDBStorage (heartbeat 10 s) + RandomSampler + table lookup.

    ``wal=True`` first switches the fresh file to WAL mode with plain ``sqlite3`` (what nas's
    storage does), so the comparison isolates nas's code from its storage settings.
    """
    table = load_table()
    setting = SETTINGS["b-raspi4"]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        ops = tuple(str(trial.suggest_categorical(e, table.ops)) for e in EDGES)
        top1, latency = lookup(table, setting, ops)
        trial.set_user_attr("top1", top1)
        trial.set_user_attr("latency_ms", latency)
        return top1, latency

    path = folder / f"direct{'-wal' if wal else ''}-{seed}-{trials}.db"
    start = time.perf_counter()
    if wal:
        with sqlite3.connect(path) as con:
            con.execute("PRAGMA journal_mode=WAL")
    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", heartbeat_interval=10)
    study = optuna.create_study(
        storage=storage,
        study_name="cost",
        sampler=optuna.samplers.RandomSampler(seed=seed),
        directions=["maximize", "minimize"],
    )
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


#: the cost measurements: nas, optuna on a default SQLite file, optuna on a WAL-mode file
COST_RUNS: dict[str, Callable[[Path, int, int], float]] = {
    "nas": cost_nas,
    "direct": cost_direct,
    "direct_wal": lambda folder, seed, trials: cost_direct(folder, seed, trials, wal=True),
}


def cost_record(rep: int, scale: float, tmpdir: Path | None) -> dict[str, Any]:
    """One repetition of every cost measurement, in an order that reverses with ``rep``."""
    trials = max(1, math.ceil(COST_TRIALS * scale))
    order = list(COST_RUNS) if rep % 2 == 0 else list(reversed(COST_RUNS))
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="nas-bench-cost-", dir=tmpdir) as tmp:
        for which in COST_RUNS:  # warm up imports, caches and SQLAlchemy first
            COST_RUNS[which](Path(tmp), 10_000 + rep, 10)
        for which in order:
            seconds[which] = COST_RUNS[which](Path(tmp), rep, trials)
        folder = str(Path(tmp).parent)
    return {
        "bench": NAME,
        "kind": "cost",
        "rep": rep,
        "order": order,
        "trials": trials,
        **{f"{k}_s": v for k, v in seconds.items()},
        "sqlite_folder": folder,
        "git_commit": git_commit(),
        "machine": machine(),
        "optuna": optuna.__version__,
        "date": now_iso(),
    }


# -- what to run, in which order ----------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One configuration: a quality run or a cost repetition, and the file it writes."""

    kind: str  # "quality" or "cost"
    setting: str
    strategy: str
    seed: int

    def path(self, folder: Path) -> Path:
        if self.kind == "cost":
            return folder / f"cost--rep{self.seed}.json"
        return folder / f"{self.setting}--{self.strategy}--seed{self.seed:02d}.json"

    def __str__(self) -> str:
        if self.kind == "cost":
            return f"cost rep {self.seed}"
        return f"{self.setting} {self.strategy} seed {self.seed}"


def plan(parts: Sequence[str], strategies: Sequence[str], seeds: int) -> list[Job]:
    """(a) seed-major, then cost, then (b) seed-major over the three devices, then (d)."""
    nas = [s for s in strategies if s not in DIRECT]
    direct = [s for s in strategies if s in DIRECT] if "c" in parts else []
    quality = [s for s in ("a", "b", "d") if s in parts] or (["a", "b", "d"] if direct else [])
    rows = {p: ([*nas, *direct] if p in parts else direct) for p in ("a", "b", "d")}
    jobs: list[Job] = []
    for part in ("a", "cost", "b", "d"):
        if part == "cost":
            jobs += [Job("cost", "cost", "random", r) for r in range(COST_REPS) if "cost" in parts]
            continue
        if part not in quality:
            continue
        names = [n for n in SETTINGS if n.split("-")[0] == part]
        for seed in range(seeds):
            jobs += [Job("quality", n, s, seed) for n in names for s in rows[part]]
    return jobs


def run_job(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``job`` and return its record."""
    if job.kind == "cost":
        return cost_record(job.seed, args.budget_scale, args.cost_dir)
    return quality_record(job.strategy, SETTINGS[job.setting], job.seed, args.budget_scale)


def summary(rec: dict[str, Any]) -> str:
    """A log line's worth of a finished record."""
    if rec["kind"] == "cost":
        ms = {k: 1e3 * rec[f"{k}_s"] / rec["trials"] for k in COST_RUNS}
        return "ms/trial: " + ", ".join(f"{k} {v:.2f}" for k, v in ms.items())
    top = max(rec["top1"])
    return f"{len(rec['top1'])} trials, {rec['wall_s']:.1f} s, best top1 {top:.3f}"


# -- figures from the result files ----------------------------------------------------------------
#: (setting, strategy) -> checkpoint -> {seed: value}
Figures = dict[tuple[str, str], dict[int, dict[int, float]]]


@lru_cache(maxsize=8)
def hv_scale(device: str) -> tuple[tuple[float, float], tuple[float, float], float]:
    """Whole-table (lower, upper) of (top1, latency) on ``device``, and the table's hypervolume."""
    from nas.search.objectives import hypervolume, parse_objectives

    cols = load_table().columns
    values = np.column_stack([cols["cifar10"], cols[f"lat_{device}"]])
    lower = (float(values[:, 0].min()), float(values[:, 1].min()))
    upper = (float(values[:, 0].max()), float(values[:, 1].max()))
    objectives = parse_objectives("top1,latency_ms")
    return lower, upper, hypervolume(values, objectives, lower, upper)


def hv_ratio(top1: Sequence[float], latency: Sequence[float], device: str) -> float:
    """Hypervolume of these points over that of the whole table (normalised, ref = worst)."""
    from nas.search.objectives import hypervolume, parse_objectives

    lower, upper, full = hv_scale(device)
    values = np.column_stack([np.asarray(top1), np.asarray(latency)])
    return hypervolume(values, parse_objectives("top1,latency_ms"), lower, upper) / full


def figure(rec: dict[str, Any], n: int) -> float | None:
    """Regret (single objective) or HV ratio (two) after the first ``n`` trials; None if short."""
    top1, latency = rec["top1"], rec["latency_ms"]
    if len(top1) < n:
        return None
    if len(rec["objectives"]) == 1:
        return float(load_table().columns[rec["data"]].max() - max(top1[:n]))
    return hv_ratio(top1[:n], latency[:n], rec["hw"])


def collect(records: Sequence[dict[str, Any]]) -> Figures:
    """Every figure of every quality record, by (setting, strategy), checkpoint and seed."""
    out: Figures = {}
    for rec in records:
        if rec.get("kind") != "quality" or rec.get("setting") not in SETTINGS:
            continue
        cells = out.setdefault((rec["setting"], rec["strategy"]), {})
        for n in SETTINGS[rec["setting"]].checkpoints:
            value = figure(rec, n)
            if value is not None:
                cells.setdefault(n, {})[int(rec["seed"])] = value
    return out


def label(strategy: str) -> str:
    """Row label: the registry name for nas strategies, e.g. "optuna TPE (direct)" otherwise."""
    return DIRECT.get(strategy, strategy)


def row_order(strategies: set[str]) -> list[str]:
    """random first, then the other nas strategies by name, then the direct-optuna rows."""
    nas = sorted(s for s in strategies if s not in DIRECT and s != "random")
    direct = [s for s in DIRECT if s in strategies]
    return (["random"] if "random" in strategies else []) + nas + direct


def runs_of(records: Sequence[dict[str, Any]], setting: str, strategy: str) -> list[dict[str, Any]]:
    """The quality records of one row."""
    return [
        r
        for r in records
        if r.get("kind") == "quality" and (r["setting"], r["strategy"]) == (setting, strategy)
    ]


def seconds_per_trial(records: Sequence[dict[str, Any]], setting: str, strategy: str) -> str:
    """Median seconds per trial of this row's runs."""
    xs = [r["s_per_trial"] for r in runs_of(records, setting, strategy)]
    return f"{statistics.median(xs):.3f}" if xs else "–"


def quality_table(
    setting: str, figs: Figures, records: Sequence[dict[str, Any]], strategies: set[str]
) -> str:
    """One row per strategy: seeds, mean ± std at each checkpoint, median seconds per trial."""
    checkpoints = SETTINGS[setting].checkpoints
    what = "regret" if len(SETTINGS[setting].objectives) == 1 else "HV ratio"
    header = ["strategy", "seeds", *(f"{what} @{n}" for n in checkpoints), "s/trial"]
    rows = []
    for s in row_order(strategies):
        cells = figs.get((setting, s), {})
        seeds = sorted({int(r["seed"]) for r in runs_of(records, setting, s)})
        n = len(seeds)
        row = [label(s), f"{n} ({seeds[0]}–{seeds[-1]})" if n else "0"]
        row += [fmt_mean_std(list(cells.get(c, {}).values()), 3, n) for c in checkpoints]
        rows.append([*row, seconds_per_trial(records, setting, s)])
    return md_table(header, rows)


def cost_ms(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Milliseconds per trial of each cost measurement, one value per repetition."""
    out: dict[str, list[float]] = {k: [] for k in COST_RUNS}
    for r in sorted((r for r in records if r.get("kind") == "cost"), key=lambda r: r["rep"]):
        for k in COST_RUNS:
            if f"{k}_s" in r:
                out[k].append(1e3 * r[f"{k}_s"] / r["trials"])
    return out


def cost_table(records: Sequence[dict[str, Any]]) -> tuple[str, dict[str, float] | None]:
    """One row per repetition and a median row; the medians (None without records)."""
    reps = sorted((r for r in records if r.get("kind") == "cost"), key=lambda r: r["rep"])
    header = ["repetition", "order", "trials", "nas", "optuna", "optuna + WAL"]
    header += ["nas − optuna", "nas / optuna", "nas − (optuna + WAL)", "nas / (optuna + WAL)"]
    if not reps:
        return md_table(header, [["–"] * len(header)]), None

    def cells(ms: dict[str, float]) -> list[str]:
        out = [f"{ms[k]:.2f}" if k in ms else "–" for k in COST_RUNS]
        for ref in ("direct", "direct_wal"):
            ok = "nas" in ms and ref in ms
            out += (
                [f"{ms['nas'] - ms[ref]:+.2f}", f"{ms['nas'] / ms[ref]:.3f}"] if ok else ["–"] * 2
            )
        return out

    rows = []
    for r in reps:
        ms = {k: 1e3 * r[f"{k}_s"] / r["trials"] for k in COST_RUNS if f"{k}_s" in r}
        rows.append([str(r["rep"]), " → ".join(r["order"]), str(r["trials"]), *cells(ms)])
    med = {k: statistics.median(v) for k, v in cost_ms(records).items() if v}
    rows.append(["**median**", "", "", *cells(med)])
    return md_table(header, rows), med


# -- targets ------------------------------------------------------------------------------------
Target = tuple[str, str, str]  # target, achieved, PASS / MISS / PENDING


def mean_of(figs: Figures, setting: str, strategy: str, n: int) -> tuple[float, list[float]] | None:
    """Mean and values of one cell, or None when it is empty."""
    xs = list(figs.get((setting, strategy), {}).get(n, {}).values())
    return (mean_std(xs)[0], xs) if xs else None


def best_nas(
    figs: Figures, setting: str, n: int, lower_is_better: bool
) -> tuple[str, float, list[float]] | None:
    """The nas strategy with the best mean at checkpoint ``n`` of ``setting``."""
    found = []
    for (st, s), _cells in figs.items():
        cell = mean_of(figs, st, s, n) if st == setting and s not in DIRECT else None
        if cell is not None:
            found.append((s, cell[0], cell[1]))
    if not found:
        return None
    return (min if lower_is_better else max)(found, key=lambda x: x[1])


def target_regret(figs: Figures, n: int, bound: float) -> Target:
    """Best nas strategy's mean CIFAR-10 regret at ``n`` evaluations is at most ``bound``."""
    target = f"best nas strategy: mean regret @{n} ≤ {bound:.2f} (CIFAR-10)"
    best = best_nas(figs, "a", n, lower_is_better=True)
    if best is None:
        return target, "–", "PENDING"
    s, m, xs = best
    return target, f"{s}: {fmt_mean_std(xs, 3)}", "PASS" if m <= bound else "MISS"


def target_hv(figs: Figures, device: str) -> Target:
    """Best nas strategy's HV gap at 100 is at most half of direct TPE's, on ``device``."""
    target = f"{device}: best nas HV gap @100 ≤ ½ optuna TPE (direct) gap"
    best = best_nas(figs, f"b-{device}", 100, lower_is_better=False)
    tpe = mean_of(figs, f"b-{device}", "direct-tpe", 100)
    if best is None or tpe is None:
        return target, "–", "PENDING"
    gap, tpe_gap = 1.0 - best[1], 1.0 - tpe[0]
    achieved = (
        f"{best[0]}: gap {gap:.4f} (ratio {fmt_mean_std(best[2], 4)}); direct TPE gap "
        f"{tpe_gap:.4f} (n={len(tpe[1])}; issue's ref. ratio {TPE_REFERENCE[device]:.3f})"
    )
    return target, achieved, "PASS" if gap <= 0.5 * tpe_gap else "MISS"


def paired(
    figs: Figures, key: tuple[str, str], other: tuple[str, str], n: int
) -> tuple[list[float], list[float]]:
    """Values of two cells on the seeds both have, in seed order."""
    a, b = figs.get(key, {}).get(n, {}), figs.get(other, {}).get(n, {})
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def mean_hv_per_seed(figs: Figures, strategy: str, n: int) -> dict[int, float]:
    """Per seed, the HV ratio at ``n`` averaged over the three devices (seeds with all three)."""
    cells = [figs.get((f"b-{d}", strategy), {}).get(n, {}) for d in DEVICES]
    seeds = set.intersection(*(set(c) for c in cells))
    return {s: sum(c[s] for c in cells) / len(cells) for s in sorted(seeds)}


def targets_vs_random(figs: Figures, strategy: str) -> list[Target]:
    """``strategy`` beats random at 100 on CIFAR-10 regret and on mean HV ratio, same seeds."""
    out: list[Target] = []
    mine, rand = paired(figs, ("a", strategy), ("a", "random"), 100)
    target = f"{strategy} beats random: regret @100 (CIFAR-10)"
    if mine:
        achieved = f"{fmt_mean_std(mine, 3)} vs random {fmt_mean_std(rand, 3)}"
        out.append((target, achieved, "PASS" if mean_std(mine)[0] < mean_std(rand)[0] else "MISS"))
    else:
        out.append((target, "–", "PENDING"))
    a, b = mean_hv_per_seed(figs, strategy, 100), mean_hv_per_seed(figs, "random", 100)
    seeds = sorted(set(a) & set(b))
    mine, rand = [a[s] for s in seeds], [b[s] for s in seeds]
    target = f"{strategy} beats random: HV ratio @100 (mean of 3 devices)"
    if mine:
        achieved = f"{fmt_mean_std(mine, 4)} vs random {fmt_mean_std(rand, 4)}"
        out.append((target, achieved, "PASS" if mean_std(mine)[0] > mean_std(rand)[0] else "MISS"))
    else:
        out.append((target, "–", "PENDING"))
    return out


def target_cost(med: dict[str, float] | None, ref: str) -> Target:
    """nas adds at most 10 % or 3 ms per trial over optuna alone (medians of ms per trial)."""
    what = "optuna, default SQLite file" if ref == "direct" else "optuna, same WAL SQLite file"
    target = f"cost: nas adds ≤ 10 % or ≤ 3 ms per trial (vs {what})"
    if med is None or "nas" not in med or ref not in med:
        return target, "–", "PENDING"
    diff, ratio = med["nas"] - med[ref], med["nas"] / med[ref]
    achieved = f"{diff:+.2f} ms/trial, ratio {ratio:.3f} ({med['nas']:.2f} vs {med[ref]:.2f} ms)"
    return target, achieved, "PASS" if diff <= 3.0 or ratio <= 1.10 else "MISS"


def all_targets(figs: Figures, strategies: set[str], cost: dict[str, float] | None) -> list[Target]:
    """Every target row of the issue, in its order."""
    out = [target_regret(figs, 50, 0.10), target_regret(figs, 100, 0.03)]
    out += [target_hv(figs, d) for d in DEVICES]
    for s in MODEL_BASED:
        if s in strategies:
            out += targets_vs_random(figs, s)
    out += [target_cost(cost, "direct"), target_cost(cost, "direct_wal")]
    return out


# -- the report ---------------------------------------------------------------------------------
def header(records: Sequence[dict[str, Any]], folder: Path) -> str:
    """Title, provenance (machines, commits, seeds, dates) and how to read the tables."""
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    commits = sorted({str(r.get("git_commit")) for r in records}) or [git_commit()]
    seeds = sorted({int(r["seed"]) for r in records if r.get("kind") == "quality"})
    dates = sorted(str(r["date"]) for r in records)
    cols = load_table().columns
    caps = ", ".join(f"{k} {v}" for k, v in EVAL_CAP.items())
    return (
        "# Search core on NAS-Bench-201\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files in "
        f"`{folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}/`.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(commits)}\n"
        f"- Seeds: {', '.join(map(str, seeds)) or 'none yet'}\n"
        f"- Runs between {dates[0] if dates else '–'} and {dates[-1] if dates else '–'}\n"
        f"- Evaluations per run: {FULL_BUDGET}; capped at {caps} (their @200 shows –)\n"
        f"- Table: {len(cols['cifar10']):,} architectures; best test accuracy "
        f"CIFAR-10 {cols['cifar10'].max():.5f}, CIFAR-100 {cols['cifar100'].max():.5f}\n\n"
        "Cells: mean ± sample std over seeds; `(n=k)` where a cell has fewer seeds than its row. "
        "Regret in accuracy points (table best − best found in the first n evaluations). "
        "HV ratio: hypervolume of the first n evaluations over that of all 15,625 "
        "architectures, each objective normalised by its range over the table, reference "
        "point the worst of both. nas strategies run through `run_search` on in-memory "
        "storage; `(direct)` rows are optuna's sampler with its defaults and no nas code.\n\n"
    )


def report(folder: Path, md: Path, requested: Sequence[str]) -> list[Target]:
    """Rebuild ``md`` from every result file in ``folder``; return the target rows."""
    records = list(read_results(folder))
    figs = collect(records)
    strategies = {s for _, s in figs} | set(requested)
    text = header(records, folder)
    text += "## (a) CIFAR-10, top1 alone: regret\n\n" + quality_table(
        "a", figs, records, strategies
    )
    for d in DEVICES:
        full = hv_scale(d)[2]
        text += f"\n## (b) top1 + latency_ms on {d}: HV ratio (table HV {full:.4f})\n\n"
        text += quality_table(f"b-{d}", figs, records, strategies)
    text += "\n## (d) CIFAR-100, top1 alone: regret\n\n" + quality_table(
        "d", figs, records, strategies
    )
    table, med = cost_table(records)
    text += (
        f"\n## Cost per trial: {COST_TRIALS:,} random trials on a fresh SQLite file\n\n"
        "Milliseconds per trial: wall time of the whole run (storage and study creation "
        "included) / trials. nas: `run_search` with the `random` strategy (storage defaults: "
        "WAL mode, busy timeout, heartbeat 10 s). optuna: `RDBStorage(heartbeat_interval=10)`, "
        "`RandomSampler`, 6 `suggest_categorical` + table lookup + 2 user attrs, on a default "
        "(rollback-journal) SQLite file; optuna + WAL: the same on a file first switched to WAL "
        "mode, i.e. the storage nas uses, so that column isolates nas's own code.\n\n"
    ) + table
    targets = all_targets(figs, strategies, med)
    text += "\n## Targets\n\n" + md_table(
        ["target", "achieved", "result"], [list(t) for t in targets]
    )
    write_text_atomic(md, text)
    return targets


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", help="comma-separated; default: every registered + direct-*")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--parts", default=",".join(PARTS), help="subset of a,b,c,d,cost")
    p.add_argument("--max-minutes", type=float, help="start no configuration after this long")
    p.add_argument("--results", type=Path, default=RESULTS / NAME, help="result-file folder")
    p.add_argument("--budget-scale", type=float, default=1.0, help="debug: scale all budgets")
    p.add_argument("--cost-dir", type=Path, help="folder for the cost SQLite files (temp dir)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the Markdown")
    return p.parse_args(argv)


def resolve_strategies(spec: str | None) -> list[str]:
    """``--strategies`` checked against the registry and the direct rows (default: all)."""
    from nas.search.strategies import list_strategies

    known = [*list_strategies(), *DIRECT]
    if not spec:
        return known
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in known]
    if unknown:
        raise SystemExit(f"unknown strategies {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def run_all(jobs: Sequence[Job], args: argparse.Namespace, rebuild: Callable[[], object]) -> int:
    """Run the jobs whose file is missing, until ``--max-minutes``; the number that crashed."""
    deadline, crashed = Deadline(args.max_minutes), 0
    todo = [j for j in jobs if not j.path(args.results).exists()]
    log(f"{len(jobs)} configurations, {len(jobs) - len(todo)} done, {len(todo)} to run")
    for i, job in enumerate(todo):
        if deadline.passed():
            log(f"--max-minutes reached; {len(todo) - i} configurations left for a later run")
            break
        try:
            rec = run_job(job, args)
        except Exception:
            crashed += 1
            log(f"{job}: CRASHED\n{traceback.format_exc()}")
            continue
        write_json_atomic(job.path(args.results), rec)
        log(f"[{i + 1}/{len(todo)}] {job}: {summary(rec)}")
        rebuild()
    return crashed


def log(msg: str) -> None:
    """A timestamped line on stdout."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run what is missing, rebuild the report, print the targets; 1 if a configuration crashed."""
    args = parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(parts) - set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; known: {PARTS}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.getLogger("nas").setLevel(logging.WARNING)
    strategies = resolve_strategies(args.strategies)
    md = args.results.with_suffix(".md")
    crashed = 0
    try:
        if not args.report_only:
            jobs = plan(parts, strategies, args.seeds)
            crashed = run_all(jobs, args, lambda: report(args.results, md, strategies))
    finally:
        targets = report(args.results, md, strategies)
    for target, achieved, status in targets:
        log(f"{status:7s} {target}: {achieved}")
    log(f"wrote {md}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
