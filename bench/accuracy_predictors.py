"""Accuracy predictors on NAS-Bench-201: how well a surrogate fitted on k cells ranks the rest.

Usage::

    python bench/accuracy_predictors.py [--seeds 5] [--report-only]

For each data set (CIFAR-10, CIFAR-100) and seed (0..4) the 15,625 cells are shuffled once; an
:class:`nas.predictors.accuracy.AccuracyModel` of each kind (ridge, svr, gp, gbm, and ``auto``:
chosen by 5-fold cross-validated Spearman) is fitted on the first k (k in 10, 50, 100, 500) of
their one-hot encodings and test accuracies, and tested on all the others: Spearman, Kendall τ,
MAPE, ±10 %, and the top-1 of the cell it ranks first among the others (what a search that
trusted it would get). The same ``AccuracyModel`` serves ``--accuracy predicted``; ``linas``
fits the same surrogate kinds each round.

Resumable: one JSON file per (data set, kind, k, seed) in ``bench/results/accuracy_predictors/``;
``bench/results/accuracy_predictors.md`` is rebuilt from all files present.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np
from _common import (
    RESULTS,
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

from nas.predictors.accuracy import AccuracyModel
from nas.predictors.quality import quality
from nas.search.space import Space
from nas.supernets.nb201 import DATASETS, load_table

NAME = "accuracy_predictors"
KS = (10, 50, 100, 500)
KINDS = ("ridge", "svr", "gp", "gbm", "auto")


def run_one(dataset: str, kind: str, k: int, seed: int, space: Space) -> dict[str, object]:
    table = load_table()
    y = table.accuracy[dataset]
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:k], order[k:]
    params = [table.params(int(i)) for i in train]
    t0 = time.perf_counter()
    model = AccuracyModel.fit(space, params, y[train], kind=kind, seed=seed)
    fit_s = time.perf_counter() - t0
    pred = model.predict([table.params(int(i)) for i in test])
    q = quality(y[test], pred)
    return {
        "dataset": dataset,
        "kind": kind,
        "chosen": model.kind,
        "k": k,
        "seed": seed,
        **q,
        "picked_top1": float(y[test][int(np.argmax(pred))]),
        "best_top1": float(y[test].max()),
        "fit_seconds": fit_s,
        "commit": git_commit(),
        "machine": machine(),
        "finished": now_iso(),
    }


def report(folder: str) -> str:
    results = list(read_results(RESULTS / folder))
    by: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in results:
        by[(r["dataset"], r["kind"], r["k"])].append(r)
    lines = [
        "# Accuracy predictors on NAS-Bench-201",
        "",
        "Fitted on k random cells (one-hot encoding of the six edges), tested on all the other "
        "cells; 200-epoch test accuracy as the target. Mean ± std over seeds. `picked` is the "
        "true top-1 of the cell the predictor ranks first among the test cells (the best "
        "cell of the table scores 94.37 on CIFAR-10 and 73.51 on CIFAR-100).",
        "",
    ]
    seeds = sorted({r["seed"] for r in results})
    n = len(seeds) or None
    if results:
        lines.append(
            f"Machine: {describe_machine(results[0]['machine'])}; seeds {len(seeds)}; "
            f"commit {results[0]['commit'][:12]}."
        )
    for dataset in DATASETS:
        rows = []
        for kind in KINDS:
            for k in KS:
                rs = by.get((dataset, kind, k), [])
                if not rs:
                    continue
                chosen = sorted({r["chosen"] for r in rs})
                rows.append(
                    [
                        kind if kind != "auto" else f"auto ({', '.join(chosen)})",
                        str(k),
                        fmt_mean_std([r["spearman"] for r in rs], 3, n),
                        fmt_mean_std([r["kendall"] for r in rs], 3, n),
                        fmt_mean_std([r["mape"] for r in rs], 2, n),
                        fmt_mean_std([r["within10"] for r in rs], 1, n),
                        fmt_mean_std([r["picked_top1"] for r in rs], 2, n),
                    ]
                )
        lines += ["", f"## {dataset}", ""]
        header = ["predictor", "k", "Spearman", "Kendall", "MAPE %", "±10 %", "picked"]
        lines.append(md_table(header, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    from nas.supernets.nb201 import NB201Task

    space = NB201Task().space()
    folder = RESULTS / NAME
    if not args.report_only:
        for dataset in DATASETS:
            for kind in KINDS:
                for k in KS:
                    for seed in range(args.seeds):
                        path = folder / f"{dataset}-{kind}-k{k}-s{seed}.json"
                        if path.exists():
                            continue
                        write_json_atomic(path, run_one(dataset, kind, k, seed, space))
                print(f"{dataset} {kind} done", flush=True)
    write_text_atomic(RESULTS / f"{NAME}.md", report(NAME))
    print((RESULTS / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
