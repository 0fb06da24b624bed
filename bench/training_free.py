"""RoBoT on NAS-Bench-201: training-free metrics ensembled by Bayesian optimisation.

Usage::

    python bench/training_free.py [--parts a,b] [--data cifar10,cifar100] [--seeds 10]
        [--max-minutes M] [--results DIR] [--report-only]

* ``a``: NASLib's pool (724 CIFAR-10 / 725 CIFAR-100 architectures of
  ``bench/data/zc_nb201_naslib.csv.gz``) with NASLib's own scores of nine metrics (flops,
  params, synflow, snip, grasp, fisher, grad_norm, jacov, nwot).
* ``b``: every NAS-Bench-201 cell that is not cut off, with our own metrics from
  ``bench/data/zc_nb201/shard-*.csv.gz`` (one representative per class of isomorphic cells,
  :func:`nas.supernets.nb201.cell_classes`; every member of a class gets its scores, which
  were computed with the 10-class head and are reused for CIFAR-100). Skipped, with a line in
  the report, while the shards are missing.
* ``c``: as ``b``, restricted to the cheap metrics of ``nas search``'s default proxy
  (:data:`nas.predictors.ensemble.DEFAULT_METRICS`). ``--ship`` then writes the mean of the best
  weights robot found on CIFAR-10 over the seeds (each scaled to max |w| = 1) to
  ``predictors/data/ensemble.json``: the weights of that proxy.

Per data set and part: ``robot`` runs through ``run_search`` (in-memory storage, budget
:data:`BUDGET`) on a task that looks the queried architecture's 200-epoch test accuracy up in
the vendored table (``nas.supernets.nb201.load_table``) and gives the pool and scores as its
``training_free`` knowledge; next to it each metric alone (the best of its top
:data:`BUDGET`), random search over the pool (:data:`BUDGET` distinct queries per seed) and
the pool's optimum. Resumable: one JSON per (part, data set, seed) run and one per (part, data
set) for the baselines in ``bench/results/training_free/``; the report
``bench/results/training_free.md`` is rebuilt after each. Exit status 1 when a configuration
crashed, 0 otherwise (a MISS is not a failure).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import logging
import sys
import time
import traceback
import warnings
from collections.abc import Sequence
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
    now_iso,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

NAME = "training_free"
NASLIB_CSV = ROOT / "bench" / "data" / "zc_nb201_naslib.csv.gz"
SHARDS = ROOT / "bench" / "data" / "zc_nb201"
#: NASLib's metrics used in part (a), in the columns' order
NASLIB_METRICS: tuple[str, ...] = ("flops", "params", "synflow", "snip", "grasp", "fisher")
NASLIB_METRICS += ("grad_norm", "jacov", "nwot")
DATASETS = ("cifar10", "cifar100")
PARTS = ("a", "b", "c")
BUDGET = 20
#: target of part (a) on CIFAR-10: seeds (of 10) in which robot finds the pool's best
TARGET_HITS = 8
#: target of part (b) on CIFAR-10: mean best test accuracy (RoBoT reports 94.36; optimum 94.37)
TARGET_MEAN_B = 94.30
PART_TITLE = {
    "a": "(a) NASLib's pool and scores",
    "b": "(b) the whole space, our metrics",
    "c": "(c) the whole space, the default proxy's cheap metrics",
}
ENSEMBLE_JSON = ROOT / "predictors" / "data" / "ensemble.json"


@dataclass(frozen=True)
class Pool:
    """A search problem: candidates, their metric scores and test accuracies."""

    params: list[dict[str, str]]
    scores: np.ndarray  # (n, M), NaN where a metric failed
    names: tuple[str, ...]
    accuracy: np.ndarray  # (n,) test accuracy, percent
    note: str = ""


# -- the pools ----------------------------------------------------------------------------------
@lru_cache(maxsize=4)
def naslib_pool(dataset: str) -> Pool:
    """Part (a): NASLib's architectures of ``dataset`` with its scores."""
    from nas.supernets.nb201 import EDGES, load_table

    with gzip.open(NASLIB_CSV, "rt", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["dataset"] == dataset]
    table = load_table()
    params = [{e: r[e] for e in EDGES} for r in rows]
    scores = np.array([[float(r[m]) for m in NASLIB_METRICS] for r in rows])
    acc = np.array([table.accuracy[dataset][table.row(p)] for p in params])
    return Pool(params, scores, NASLIB_METRICS, acc)


@lru_cache(maxsize=4)
def shard_pool(dataset: str) -> Pool | str:
    """Part (b): every cell that is not cut off, with its class representative's scores; or
    why that is not possible yet."""
    from nas.supernets import nb201

    files = sorted(SHARDS.glob("shard-*.csv.gz"))
    if not files:
        return f"no shards in {SHARDS.relative_to(ROOT)}/ yet"
    classes = nb201.cell_classes()
    rows: list[dict[str, str]] = []
    for path in files:
        with gzip.open(path, "rt", newline="") as fh:
            rows.extend(csv.DictReader(fh))
    names = tuple(c for c in rows[0] if c not in ("index", "arch_str", "seconds"))
    by_class = {int(classes[int(r["index"])]): [_float(r[m]) for m in names] for r in rows}
    table = nb201.load_table()
    members = [i for i in range(len(classes)) if classes[i] >= 0 and int(classes[i]) in by_class]
    n_classes = int(classes.max()) + 1
    params = [{k: str(v) for k, v in table.params(i).items()} for i in members]
    return Pool(
        params,
        np.array([by_class[int(classes[i])] for i in members]),
        names,
        np.asarray(table.accuracy[dataset])[members],
        note=f"{len(by_class):,} of {n_classes:,} classes scored; pool {len(members):,} cells "
        f"(of {int((classes >= 0).sum()):,} not cut off); scores from the 10-class head"
        + (", reused for CIFAR-100" if dataset == "cifar100" else ""),
    )


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def pool_of(part: str, dataset: str) -> Pool | str:
    """The pool of ``part`` on ``dataset``, or the reason it is skipped."""
    if part == "a":
        return naslib_pool(dataset)
    pool = shard_pool(dataset)
    if part == "b" or isinstance(pool, str):
        return pool
    from nas.predictors.ensemble import DEFAULT_METRICS

    cols = [pool.names.index(m) for m in DEFAULT_METRICS]
    return Pool(pool.params, pool.scores[:, cols], DEFAULT_METRICS, pool.accuracy, pool.note)


# -- robot through the real runner --------------------------------------------------------------
def register_task(part: str, dataset: str, pool: Pool) -> str:
    """Register (once) a supernet whose task is NB201 with ``pool`` as training-free knowledge."""
    from nas.search.task import TrainingFree
    from nas.supernets import SUPERNETS, register_supernet
    from nas.supernets.nb201 import EDGES, NB201Task

    name = f"bench-tf-{part}-{dataset}"
    if name in SUPERNETS.names():
        return name
    row_of = {tuple(p[e] for e in EDGES): i for i, p in enumerate(pool.params)}

    def metrics(candidates: Sequence[Any]) -> np.ndarray:
        return pool.scores[[row_of[tuple(str(c[e]) for e in EDGES)] for c in candidates]]

    class PoolTask(NB201Task):
        def training_free(self, seed: int) -> TrainingFree:
            return TrainingFree([dict(p) for p in pool.params], metrics, pool.names)

    register_supernet(name)(lambda hw="gpu", data=None, **_: PoolTask(hw=hw, data=data))
    return name


def robot_record(part: str, dataset: str, seed: int) -> dict[str, Any]:
    """One robot run of :data:`BUDGET` evaluations through ``run_search``."""
    from nas.search.job import run_search
    from nas.search.strategies.robot import PHASE_ATTR, W_ATTR
    from nas.search.study import SearchConfig

    pool = pool_of(part, dataset)
    assert isinstance(pool, Pool)
    config = SearchConfig(
        supernet=register_task(part, dataset, pool),
        hw="gpu",
        data=dataset,
        objectives=("top1",),
        strategy="robot",
        seed=seed,
        budget=BUDGET,
        storage=":memory:",
        study=f"bench-{part}-{dataset}-{seed}",
    )
    start = time.perf_counter()
    result = run_search(config, export=False, handle_signals=False)
    wall = time.perf_counter() - start
    trials = sorted(
        result.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda t: t.number,
    )
    if len(trials) < BUDGET:
        raise RuntimeError(f"{len(trials)} of {BUDGET} trials completed: {result.reason}")
    top1 = [float(t.values[0]) for t in trials]
    best_trial = max(trials, key=lambda t: float(t.values[0]))
    return {
        "best_w": [float(w) for w in best_trial.system_attrs.get(W_ATTR, [])],
        "metric_names": list(pool.names),
        **_provenance("robot", part, dataset),
        "seed": seed,
        "top1": top1,
        "best": max(top1),
        "hit": max(top1) >= float(pool.accuracy.max()),
        "bo_queries": sum(t.system_attrs.get(PHASE_ATTR) != "greedy" for t in trials),
        "wall_s": wall,
    }


# -- baselines ----------------------------------------------------------------------------------
def baseline_record(part: str, dataset: str, seeds: int) -> dict[str, Any]:
    """Each metric alone, random search over the pool, and the pool's optimum."""
    pool = pool_of(part, dataset)
    assert isinstance(pool, Pool)
    best = float(pool.accuracy.max())
    single, rank = {}, {}
    for j, name in enumerate(pool.names):
        col = np.where(np.isfinite(pool.scores[:, j]), pool.scores[:, j], -np.inf)
        order = np.argsort(-col, kind="stable")
        single[name] = float(pool.accuracy[order[:BUDGET]].max())
        rank[name] = int(np.flatnonzero(pool.accuracy[order] >= best)[0]) + 1
    random = []
    for seed in range(seeds):
        picks = np.random.default_rng(seed).choice(len(pool.params), BUDGET, replace=False)
        random.append(float(pool.accuracy[picks].max()))
    from nas.supernets.nb201 import load_table

    return {
        **_provenance("baselines", part, dataset),
        "pool_size": len(pool.params),
        "pool_best": best,
        "table_best": float(np.max(load_table().accuracy[dataset])),
        "metrics": list(pool.names),
        "single": single,
        "rank": rank,
        "random": random,
        "note": pool.note,
    }


def _provenance(kind: str, part: str, dataset: str) -> dict[str, Any]:
    return {
        "bench": NAME,
        "kind": kind,
        "part": part,
        "data": dataset,
        "budget": BUDGET,
        "git_commit": git_commit(),
        "machine": machine(),
        "date": now_iso(),
    }


# -- the report ---------------------------------------------------------------------------------
def section(part: str, dataset: str, records: Sequence[dict[str, Any]], seeds: int) -> str:
    """The table of one (part, data set)."""
    title = f"## {PART_TITLE[part]}: {dataset}\n\n"
    reason = pool_of(part, dataset)
    base = [r for r in records if r["kind"] == "baselines" and _at(r, part, dataset)]
    runs = sorted(
        (r for r in records if r["kind"] == "robot" and _at(r, part, dataset)),
        key=lambda r: int(r["seed"]),
    )
    if isinstance(reason, str) or not base:
        why = reason if isinstance(reason, str) else "not run yet"
        return title + f"Skipped: {why}.\n\n"
    b = base[-1]
    hits = sum(bool(r["hit"]) for r in runs)
    first = [
        float(next(i + 1 for i, v in enumerate(r["top1"]) if v >= b["pool_best"]))
        for r in runs
        if r["hit"]
    ]
    target, status = "–", "–"
    if part == "a" and dataset == "cifar10":
        target = f">= {TARGET_HITS}/10"
        if runs:
            ok = hits >= TARGET_HITS
            status = "pending" if len(runs) < 10 else "PASS" if ok else "MISS"
    elif part == "b" and dataset == "cifar10":
        target = f"mean >= {TARGET_MEAN_B:.2f}"
        if runs:
            ok = float(np.mean([r["best"] for r in runs])) >= TARGET_MEAN_B
            status = "pending" if len(runs) < 10 else "PASS" if ok else "MISS"
    rows = [
        [
            f"robot ({len(b['metrics'])} metrics)",
            fmt_mean_std([r["best"] for r in runs], 3, seeds),
            f"{hits}/{len(runs)}",
            fmt_mean_std(first, 1, len(runs)),
            target,
            status,
        ],
        [
            "random over the pool",
            fmt_mean_std(b["random"], 3, seeds),
            f"{sum(v >= b['pool_best'] for v in b['random'])}/{len(b['random'])}",
            "–",
            "–",
            "–",
        ],
    ]
    for name, value in b["single"].items():
        found = "yes" if value >= b["pool_best"] else "no"
        rank = str(b["rank"][name])
        rows.append([f"{name} alone (top {BUDGET})", f"{value:.3f}", found, rank, "–", "–"])
    rows.append(["pool optimum", f"{b['pool_best']:.3f}", "–", "–", "–", "–"])
    t0 = fmt_mean_std([float(r["bo_queries"]) for r in runs], 1, seeds)
    wall = fmt_mean_std([float(r["wall_s"]) for r in runs], 1, seeds)
    text = title + (f"{b['note']}.\n\n" if b.get("note") else "")
    text += (
        f"Pool: {b['pool_size']:,} architectures, best test accuracy {b['pool_best']:.3f} "
        f"(the whole table's best: {b['table_best']:.3f}). robot's BO phase used {t0} of the "
        f"{BUDGET} queries; {wall} s a run.\n\n"
    )
    return text + md_table(
        [
            "method",
            f"best test acc. in {BUDGET} queries",
            "found the pool's best",
            "queries to it",
            "target",
            "result",
        ],
        rows,
    )


def _at(r: dict[str, Any], part: str, dataset: str) -> bool:
    return r.get("part") == part and r.get("data") == dataset


def report(
    folder: Path, md: Path, parts: Sequence[str], datasets: Sequence[str], seeds: int
) -> str:
    """Rebuild ``md`` from the result files; return its text."""
    records = list(read_results(folder))
    machines = sorted({describe_machine(r["machine"]) for r in records if "machine" in r})
    commits = sorted({str(r.get("git_commit")) for r in records}) or [git_commit()]
    text = (
        "# RoBoT: training-free metrics ensembled by Bayesian optimisation (NAS-Bench-201)\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files.\n\n"
        f"- Machine: {'; '.join(machines) or describe_machine(machine())}\n"
        f"- git commit: {', '.join(commits)}\n"
        f"- Seeds: 0–{seeds - 1} for robot and random search; budget {BUDGET} queries\n"
        "- Oracle: the 200-epoch test accuracy of the queried architecture in the vendored "
        "NAS-Bench-201 table; robot maximises it directly (no validation split).\n"
        "- robot: `nas.search.strategies.robot` with its defaults (BO over metric weights in "
        "[-1, 1]^M for `budget` weight vectors, a weight whose top candidate is already "
        "measured costs no query; then greedy under the best weight), run through "
        "`run_search` on in-memory storage.\n"
        "- Metric alone: the best test accuracy among its top "
        f"{BUDGET} architectures (ties in pool order). Cells: mean ± sample std over seeds.\n"
        "- Queries to it: for robot, the query at which the pool's best was found (seeds that "
        "found it); for a metric alone, the pool best's rank under that metric.\n\n"
    )
    for part in parts:
        for dataset in datasets:
            text += section(part, dataset, records, seeds)
            text += "\n"
    write_text_atomic(md, text)
    return text


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help="subset of a,b")
    p.add_argument("--data", default=",".join(DATASETS), help="subset of cifar10,cifar100")
    p.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--max-minutes", type=float, help="start no configuration after this long")
    p.add_argument("--results", type=Path, default=RESULTS / NAME, help="result-file folder")
    p.add_argument("--report-only", action="store_true", help="only rebuild the Markdown")
    p.add_argument("--ship", action="store_true", help="write the (c) weights to the package")
    return p.parse_args(argv)


def jobs_of(parts: Sequence[str], datasets: Sequence[str], seeds: int) -> list[tuple[Any, ...]]:
    """``(kind, part, dataset, seed)`` of every configuration whose pool exists."""
    jobs: list[tuple[Any, ...]] = []
    for part in parts:
        for dataset in datasets:
            if isinstance(pool_of(part, dataset), str):
                continue
            jobs.append(("baselines", part, dataset, -1))
            jobs += [("robot", part, dataset, s) for s in range(seeds)]
    return jobs


def path_of(folder: Path, job: tuple[Any, ...]) -> Path:
    kind, part, dataset, seed = job
    tail = "baselines" if kind == "baselines" else f"robot--seed{seed:02d}"
    return folder / f"{part}--{dataset}--{tail}.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run what is missing, rebuild the report; 1 if a configuration crashed."""
    import torch

    torch.set_num_threads(1)
    args = parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    datasets = [d for d in args.data.split(",") if d]
    if set(parts) - set(PARTS) or set(datasets) - set(DATASETS):
        raise SystemExit(f"--parts is a subset of {PARTS}, --data of {DATASETS}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore")
    logging.getLogger("nas").setLevel(logging.WARNING)
    md = args.results.with_suffix(".md")
    crashed, deadline = 0, Deadline(args.max_minutes)
    todo = [] if args.report_only else jobs_of(parts, datasets, args.seeds)
    todo = [j for j in todo if not path_of(args.results, j).exists()]
    for job in todo:
        if deadline.passed():
            log(f"--max-minutes reached; {len(todo)} configurations left for a later run")
            break
        kind, part, dataset, seed = job
        try:
            if kind == "baselines":
                rec = baseline_record(part, dataset, args.seeds)
            else:
                rec = robot_record(part, dataset, seed)
        except Exception:
            crashed += 1
            log(f"{job}: CRASHED\n{traceback.format_exc()}")
            continue
        write_json_atomic(path_of(args.results, job), rec)
        log(f"{kind} {part} {dataset} seed {seed}: best {rec.get('best', rec.get('pool_best'))}")
        report(args.results, md, parts, datasets, args.seeds)
    print(report(args.results, md, parts, datasets, args.seeds))
    log(f"wrote {md}")
    if args.ship:
        ship_weights(args.results, args.seeds)
    return 1 if crashed else 0


def ship_weights(folder: Path, seeds: int) -> None:
    """Write the default proxy's weights: robot's best w on part (c), CIFAR-10, averaged."""
    import json

    from nas.predictors.ensemble import DEFAULT_METRICS, Ensemble

    runs = [
        r
        for r in read_results(folder)
        if r.get("kind") == "robot" and _at(r, "c", "cifar10") and r.get("best_w")
    ]
    if len(runs) < seeds:
        raise SystemExit(f"--ship: {len(runs)} of {seeds} part (c) CIFAR-10 runs; run them first")
    ws = np.array([r["best_w"] for r in runs], dtype=float)
    ws /= np.maximum(np.abs(ws).max(axis=1, keepdims=True), 1e-12)
    mean = ws.mean(axis=0)
    mean /= np.abs(mean).max()
    ens = Ensemble(
        DEFAULT_METRICS,
        tuple(round(float(w), 4) for w in mean),
        f"robot:nb201-cifar10 (mean best weights of {len(runs)} seeds, {BUDGET} queries each)",
    )
    write_text_atomic(ENSEMBLE_JSON, json.dumps(ens.to_json(), indent=1) + "\n")
    log(f"wrote {ENSEMBLE_JSON}: {ens.describe()}")


def log(msg: str) -> None:
    """A timestamped line on stdout."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
