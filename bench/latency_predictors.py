"""Learned latency predictors on the NAS-Bench-201 and FBNet latency tables.

Usage::

    python bench/latency_predictors.py [--seeds 5] [--tables nb201,fbnet] [--max-minutes M]
        [--results DIR] [--report-only]

For every table, device and seed (0..4) the architectures are shuffled once; a predictor is
trained on the first k (k in 10, 50, 100, 500) and tested on all the others. Predictors:

* ``baseline``: the reference, ridge (alpha 1, standardised targets) on the plain one-hot code;
* ``ridge`` (ridge with a leave-one-out penalty), ``gbm``, ``mlp``, ``gp``: :class:`LatencyModel`
  of that kind on :func:`nas.predictors.tables.encode`'s rows;
* ``auto``: :class:`LatencyModel` with the kind chosen by 5-fold cross-validated Spearman;
* ``transfer`` (k=10 only): :func:`fit_transfer` on the k rows of the device, with the other
  devices of the same table as sources. Each source is a ``ridge`` :class:`LatencyModel` fitted
  on 500 random architectures of its device (its own shuffle), as a known device would have.

Resumable: one JSON file per (table, device, predictor, k, seed) in
``bench/results/latency_predictors/``; a configuration whose file exists is skipped, and
``bench/results/latency_predictors.md`` is rebuilt from all files present. Exit status 1 when a
configuration crashed, 0 otherwise (a MISS is not a failure).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
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

from nas.predictors.learned import LatencyModel, fit_transfer
from nas.predictors.quality import quality
from nas.predictors.surrogates import fit_surrogate
from nas.predictors.tables import ONEHOT_WEIGHT, load_latency_table, n_summary

NAME = "latency_predictors"
TABLES = ("nb201", "fbnet")
KS = (10, 50, 100, 500)
PREDICTORS = ("baseline", "ridge", "gbm", "mlp", "gp", "auto")
KIND = {"ridge": "ridge_cv", "gbm": "gbm", "mlp": "mlp", "gp": "gp"}
TRANSFER_K = 10
SOURCE_K = 500
#: summary columns given to fit_transfer: nb201's 10 structural counts; fbnet's MACs (total and
#: per stage, 8) and block counts (9)
TRANSFER_SUMMARY = {"nb201": 10, "fbnet": 17}
#: devices of the within10 target (GPUs and CPUs)
WITHIN10_DEVICES = {
    "nb201": ("1080ti_1", "1080ti_32", "2080ti_1", "gold_6226"),
    "fbnet": ("1080ti_1", "gold_6226"),
}
METRICS = (("spearman", 3), ("kendall", 3), ("mape", 1), ("within10", 1))


@dataclass(frozen=True)
class Job:
    """One configuration and the file it writes."""

    table: str
    device: str
    predictor: str
    k: int
    seed: int

    def path(self, folder: Path) -> Path:
        return (
            folder
            / f"{self.table}--{self.device}--{self.predictor}--k{self.k}--seed{self.seed}.json"
        )

    def __str__(self) -> str:
        return f"{self.table}:{self.device} {self.predictor} k={self.k} seed {self.seed}"


def plan(tables: Sequence[str], seeds: int) -> list[Job]:
    """Seed-major: every cell gets seed 0 before any gets seed 1."""
    jobs: list[Job] = []
    for seed in range(seeds):
        for t in tables:
            for d in load_latency_table(t).devices:
                jobs.append(Job(t, d, "transfer", TRANSFER_K, seed))
                jobs += [Job(t, d, p, k, seed) for k in KS for p in PREDICTORS]
    return jobs


# -- one configuration ----------------------------------------------------------------------------
@cache
def split(table: str, seed: int) -> np.ndarray:
    """The seed's shuffle of the table's rows (train = the first k, test = the rest)."""
    return np.random.default_rng(seed).permutation(len(load_latency_table(table).ops))


@cache
def onehot(table: str) -> np.ndarray:
    """The plain one-hot code of every row (the baseline's features)."""
    return load_latency_table(table).features()[:, n_summary(table) :] / ONEHOT_WEIGHT


@cache
def source_predictions(table: str, device: str, seed: int) -> np.ndarray:
    """A known device's predictions on every row: ridge fitted on SOURCE_K random rows."""
    t = load_latency_table(table)
    rows = np.random.default_rng(10_000 + seed).permutation(len(t.ops))[:SOURCE_K]
    X = t.features()
    return LatencyModel.fit(X[rows], t.latency[device][rows], "ridge_cv", seed=seed).predict(X)


def fit_predict(job: Job) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit ``job``'s predictor on its k rows; predictions on the test rows and facts."""
    t = load_latency_table(job.table)
    order = split(job.table, job.seed)
    train, test = order[: job.k], order[job.k :]
    y = t.latency[job.device]
    if job.predictor == "baseline":
        X = onehot(job.table)
        s = fit_surrogate(X[train], y[train], "ridge", seed=job.seed)
        return np.maximum(s.predict(X[test]), 0.0), {"kind": "ridge (alpha 1), one-hot"}
    if job.predictor == "transfer":
        return transfer(job, train, test)
    X = t.features()
    kind = KIND.get(job.predictor, "auto")
    model = LatencyModel.fit(X[train], y[train], kind, seed=job.seed)
    cv = None if np.isnan(model.cv_score) else model.cv_score
    return model.predict(X[test]), {"kind": model.kind, "cv_score": cv}


def transfer(job: Job, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Few-shot: the job's k rows of the device, the table's other devices as sources."""
    t = load_latency_table(job.table)
    sources = [d for d in t.devices if d != job.device]
    S = np.column_stack([source_predictions(job.table, d, job.seed) for d in sources])
    summary = t.features()[:, : TRANSFER_SUMMARY[job.table]]
    y = t.latency[job.device]
    model = fit_transfer(summary[train], y[train], S[train], sources=sources)
    facts = {"kind": model.method, "weights": model.weights, "loo_error": model.loo_error}
    facts["sources"] = sources
    return model.predict(summary[test], S[test]), facts


def run_job(job: Job) -> dict[str, Any]:
    """Run one configuration and describe it."""
    start = time.perf_counter()
    pred, facts = fit_predict(job)
    seconds = time.perf_counter() - start
    order = split(job.table, job.seed)
    measured = load_latency_table(job.table).latency[job.device][order[job.k :]]
    return {
        "bench": NAME,
        "table": job.table,
        "device": job.device,
        "predictor": job.predictor,
        "k": job.k,
        "seed": job.seed,
        **facts,
        **quality(measured, pred),
        "seconds": seconds,
        "git_commit": git_commit(),
        "machine": machine(),
        "date": now_iso(),
    }


# -- the report ---------------------------------------------------------------------------------
Cells = dict[tuple[str, str, str, int], list[dict[str, Any]]]


def collect(records: Sequence[dict[str, Any]]) -> Cells:
    """Records grouped by (table, device, predictor, k), in seed order."""
    cells: Cells = {}
    for r in sorted(records, key=lambda r: int(r["seed"])):
        cells.setdefault((r["table"], r["device"], r["predictor"], int(r["k"])), []).append(r)
    return cells


def values(cells: Cells, key: tuple[str, str, str, int], metric: str) -> list[float]:
    """The metric over a cell's seeds (NaN dropped)."""
    xs = [float(r[metric]) for r in cells.get(key, []) if r.get(metric) is not None]
    return [x for x in xs if x == x]


def metric_table(cells: Cells, table: str, metric: str, digits: int, seeds: int) -> str:
    """Rows (device, predictor), columns k; the transfer row in the k=10 column."""
    rows = []
    for d in load_latency_table(table).devices:
        for p in (*PREDICTORS, "transfer"):
            ks = (TRANSFER_K,) if p == "transfer" else KS
            row = [d, p]
            for k in KS:
                xs = values(cells, (table, d, p, k), metric) if k in ks else []
                row.append(fmt_mean_std(xs, digits, seeds) if k in ks else "")
            rows.append(row)
    return md_table(["device", "predictor", *(f"k={k}" for k in KS)], rows)


def winners(cells: Cells, table: str) -> str:
    """Per device and k, the predictor (baseline excluded) with the best mean Spearman."""
    rows = []
    for d in load_latency_table(table).devices:
        row = [d]
        for k in KS:
            best = best_of(cells, table, d, k)
            row.append("–" if best is None else f"{best[0]} ({best[1]:.3f})")
        counts: dict[str, int] = {}
        for r in cells.get((table, d, "auto", 50), []):
            counts[str(r["kind"])] = counts.get(str(r["kind"]), 0) + 1
        row.append(", ".join(f"{k} ×{n}" for k, n in sorted(counts.items())) or "–")
        rows.append(row)
    header = ["device", *(f"k={k}" for k in KS), "auto's choice at k=50"]
    return md_table(header, rows)


def best_of(cells: Cells, table: str, device: str, k: int) -> tuple[str, float] | None:
    """The predictor other than the baseline with the highest mean Spearman at ``k``."""
    found = [
        (p, mean_std(xs)[0])
        for p in PREDICTORS[1:]
        if (xs := values(cells, (table, device, p, k), "spearman"))
    ]
    return max(found, key=lambda x: x[1]) if found else None


Target = tuple[str, str, str]


def target_at_least(
    cells: Cells, table: str, device: str, predictor: str, k: int, metric: str, bound: float
) -> Target:
    """``predictor``'s mean ``metric`` at ``k`` is at least ``bound``."""
    label = {"spearman": "Spearman", "within10": "within10 %"}[metric]
    target = f"{table}:{device}: {predictor} {label} ≥ {bound:g} at k={k}"
    xs = values(cells, (table, device, predictor, k), metric)
    if not xs:
        return target, "–", "PENDING"
    digits = 3 if metric == "spearman" else 1
    achieved = fmt_mean_std(xs, digits)
    if predictor == "auto" and metric == "spearman" and (best := best_of(cells, table, device, k)):
        achieved += f" (best: {best[0]} {best[1]:.3f})"
    return target, achieved, "PASS" if mean_std(xs)[0] >= bound else "MISS"


def target_vs_baseline(cells: Cells, table: str, device: str) -> Target:
    """auto's mean Spearman beats the baseline's at every k."""
    target = f"{table}:{device}: auto ahead of the baseline (Spearman) at every k"
    parts, ok, pending = [], True, False
    for k in KS:
        a = values(cells, (table, device, "auto", k), "spearman")
        b = values(cells, (table, device, "baseline", k), "spearman")
        if not a or not b:
            pending = True
            continue
        ma, mb = mean_std(a)[0], mean_std(b)[0]
        ok &= ma > mb
        parts.append(f"k={k}: {ma:.3f} vs {mb:.3f}")
    if pending and not parts:
        return target, "–", "PENDING"
    return target, "; ".join(parts), "PENDING" if pending else ("PASS" if ok else "MISS")


def all_targets(cells: Cells, tables: Sequence[str]) -> list[Target]:
    """Every target row, table by table."""
    out: list[Target] = []
    for t in tables:
        devices = load_latency_table(t).devices
        out += [target_at_least(cells, t, d, "auto", 50, "spearman", 0.97) for d in devices]
        out += [
            target_at_least(cells, t, d, "transfer", TRANSFER_K, "spearman", 0.9) for d in devices
        ]
        out += [
            target_at_least(cells, t, d, "auto", 100, "within10", 90.0) for d in WITHIN10_DEVICES[t]
        ]
        out += [target_vs_baseline(cells, t, d) for d in devices]
    return out


def header(records: Sequence[dict[str, Any]], folder: Path, seeds: int) -> str:
    """Title, provenance and how to read the tables."""
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    commits = sorted({str(r.get("git_commit")) for r in records}) or [git_commit()]
    found = sorted({int(r["seed"]) for r in records})
    dates = sorted(str(r["date"]) for r in records)
    total = sum(float(r.get("seconds", 0.0)) for r in records)
    where = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    return (
        "# Learned latency predictors on the NAS-Bench-201 and FBNet tables\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files in "
        f"`{where}/`.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(commits)}\n"
        f"- Seeds: {', '.join(map(str, found)) or 'none yet'} (of {seeds} planned)\n"
        f"- Runs between {dates[0] if dates else '–'} and {dates[-1] if dates else '–'}; "
        f"fit + predict time of all configurations {total / 60:.1f} min\n"
        "- Tables: nb201 (15,625 cells, 7 devices), fbnet (5,000 architectures, 4 devices); "
        "per seed one shuffle of the rows, train on the first k, test on **all** the others "
        "(no subsampling)\n\n"
        "Predictors: `baseline` ridge (alpha 1) on the plain one-hot code; `ridge` (penalty "
        "by leave-one-out), `gbm`, `mlp`, `gp`: `LatencyModel` of that kind on "
        "`nas.predictors.tables.encode` (summary features + scaled one-hot); `auto`: the kind "
        "chosen by 5-fold cross-validated Spearman among those four; `transfer` (k=10): "
        "`fit_transfer` (scale / mix / ridge averaged with weights 1 / leave-one-out MSE on "
        "the k rows) with the other devices of the table as sources, each a `ridge` "
        f"`LatencyModel` fitted on {SOURCE_K} random architectures of its device, and the "
        "summary features (nb201: 10 structural counts; fbnet: MACs in all and per stage, and "
        "block counts). Cells: mean ± "
        "sample std over seeds, `(n=k)` where a cell has fewer seeds than planned. MAPE and "
        "within10 (% of predictions within ±10 % of the measured value) are relative to the "
        "measured latency: on nb201's pixel3 and raspi4 columns, cut-off cells measure "
        "0.003–0.06 ms, which inflates MAPE there.\n\n"
    )


def report(folder: Path, md: Path, tables: Sequence[str], seeds: int) -> list[Target]:
    """Rebuild ``md`` from every result file in ``folder``; return the target rows."""
    records = [r for r in read_results(folder) if r.get("bench") == NAME]
    cells = collect(records)
    text = header(records, folder, seeds)
    targets = all_targets(cells, tables)
    text += "## Targets\n\n" + md_table(
        ["target", "achieved", "result"], [list(t) for t in targets]
    )
    for t in tables:
        text += f"\n## {t}: winner per device (highest mean Spearman, baseline excluded)\n\n"
        text += winners(cells, t)
        for metric, digits in METRICS:
            unit = " (%)" if metric in ("mape", "within10") else ""
            text += f"\n## {t}: {metric}{unit}\n\n" + metric_table(cells, t, metric, digits, seeds)
        text += f"\n## {t}: transfer, main method (k={TRANSFER_K})\n\n"
        text += transfer_choices(cells, t)
    write_text_atomic(md, text)
    return targets


def transfer_choices(cells: Cells, table: str) -> str:
    """How often each transfer method had the largest weight, per device."""
    rows = []
    for d in load_latency_table(table).devices:
        counts: dict[str, int] = {}
        for r in cells.get((table, d, "transfer", TRANSFER_K), []):
            counts[str(r["kind"])] = counts.get(str(r["kind"]), 0) + 1
        rows.append([d, ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items())) or "–"])
    return md_table(["device", "method with the largest weight (seeds)"], rows)


# -- command line -------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--tables", default=",".join(TABLES), help="subset of nb201,fbnet")
    p.add_argument("--max-minutes", type=float, help="start no configuration after this long")
    p.add_argument("--results", type=Path, default=RESULTS / NAME, help="result-file folder")
    p.add_argument("--report-only", action="store_true", help="only rebuild the Markdown")
    return p.parse_args(argv)


def run_all(jobs: Sequence[Job], args: argparse.Namespace, rebuild: Callable[[], object]) -> int:
    """Run the jobs whose file is missing, until ``--max-minutes``; the number that crashed."""
    deadline, crashed = Deadline(args.max_minutes), 0
    todo = [j for j in jobs if not j.path(args.results).exists()]
    log(f"{len(jobs)} configurations, {len(jobs) - len(todo)} done, {len(todo)} to run")
    last = time.monotonic()
    for i, job in enumerate(todo):
        if deadline.passed():
            log(f"--max-minutes reached; {len(todo) - i} configurations left for a later run")
            break
        try:
            rec = run_job(job)
        except Exception:
            crashed += 1
            log(f"{job}: CRASHED\n{traceback.format_exc()}")
            continue
        write_json_atomic(job.path(args.results), rec)
        log(f"[{i + 1}/{len(todo)}] {job}: Spearman {rec['spearman']:.3f} ({rec['seconds']:.1f} s)")
        if time.monotonic() - last > 30:  # the report takes a moment: rebuild it now and then
            rebuild()
            last = time.monotonic()
    return crashed


def log(msg: str) -> None:
    """A timestamped line on stdout."""
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run what is missing, rebuild the report, print the targets; 1 if a configuration crashed."""
    args = parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    if set(tables) - set(TABLES):
        raise SystemExit(f"--tables: unknown {sorted(set(tables) - set(TABLES))}; known: {TABLES}")
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    md = args.results.with_suffix(".md")
    crashed = 0
    try:
        if not args.report_only:
            jobs = plan(tables, args.seeds)
            crashed = run_all(jobs, args, lambda: report(args.results, md, tables, args.seeds))
    finally:
        targets = report(args.results, md, tables, args.seeds)
    for target, achieved, status in targets:
        log(f"{status:7s} {target}: {achieved}")
    log(f"wrote {md}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
