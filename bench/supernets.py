"""Supernet benchmark: training on MNIST-5k, and the end-to-end resnet50 search on this machine.

Usage::

    python bench/supernets.py [--parts train,search,measured] [--seeds 1] [--report-only]

Parts:

* ``train``: ``nas supernet train mobilenetv3 --data mnist --seed S`` with its defaults. Bar:
  largest sub-network >= 97% and smallest >= 94% validation top-1, Spearman(top1, MACs) over 10
  random sub-networks >= 0.5, the whole command within 30 minutes (2 cores).
* ``search``: ``nas search --supernet resnet50 --hw gpu`` (what ``make search`` runs) on a fresh
  SQLite file: evaluations and their wall time (target: >= 100 in <= 5 minutes).
* ``measured``: a 50-evaluation ``mobilenetv3`` search with measured accuracy from the trained
  checkpoint of seed 0 (BN recalibration + validation top-1 per candidate).

Resumable: one JSON file per configuration in ``bench/results/supernets/``; an existing file is
skipped. Checkpoints go to ``build/bench/`` (not committed; a rerun resumes an interrupted
training from its last phase). ``bench/results/supernets.md`` is rebuilt after every
configuration. Exit status 1 when a configuration crashed, 0 otherwise (a MISS is not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    ROOT,
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

NAME = "supernets"
FOLDER = RESULTS / NAME
CKPT = ROOT / "build" / "bench" / NAME
# latency tables built by the searches below are cached here, not in the user's NAS_HOME
os.environ.setdefault("NAS_HOME", str(ROOT / "build" / "bench" / "nas_home"))
NAS = [sys.executable, "-m", "nas.cli.main"]
BAR = {"largest": 97.0, "smallest": 94.0, "spearman": 0.5, "minutes": 30.0}
SEARCH_BAR = {"evaluations": 100, "seconds": 300.0}
#: the trainer's default epochs per phase (the configuration this benchmark runs)
EPOCHS = (5, 3, 3, 5)


def _run(cmd: Sequence[str], cwd: Path | None = None) -> tuple[float, str]:
    """Run a ``nas`` command; its wall time and stdout. Raises on a non-zero exit."""
    t0 = time.monotonic()
    proc = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return wall, proc.stdout


def _record(kind: str, **fields: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "date": now_iso(),
        "git_commit": git_commit(),
        "machine": machine(),
    } | fields


def _tag() -> str:
    return "e" + "".join(map(str, EPOCHS))


def train(seed: int) -> dict[str, Any]:
    out = CKPT / f"mobilenetv3-mnist-seed{seed}-{_tag()}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    wall, _ = _run(
        [
            *NAS,
            "supernet",
            "train",
            "mobilenetv3",
            "--data",
            "mnist",
            "--seed",
            str(seed),
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.with_suffix(".json").read_text())
    return _record(
        "train", seed=seed, epochs=list(EPOCHS), wall_seconds=round(wall, 1), report=report
    )


def search(rep: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        wall, stdout = _run(
            [
                *NAS,
                "search",
                "--supernet",
                "resnet50",
                "--hw",
                "gpu",
                "--json",
                "--storage",
                f"sqlite:///{tmp}/nas.db",
                "--out",
                f"{tmp}/out",
            ],
            cwd=Path(tmp),
        )
    doc = json.loads(stdout)
    return _record(
        "search",
        rep=rep,
        wall_seconds=round(wall, 1),
        search_seconds=doc["seconds"],
        evaluated=doc["evaluated"],
        pareto=len(doc["pareto"]),
        sources=doc["sources"],
    )


def measured(rep: int) -> dict[str, Any]:
    ckpt = CKPT / f"mobilenetv3-mnist-seed0-{_tag()}.safetensors"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt} is missing: run the train part (seed 0) first")
    with tempfile.TemporaryDirectory() as tmp:
        wall, stdout = _run(
            [
                *NAS,
                "search",
                "--supernet",
                "mobilenetv3",
                "--hw",
                "cpu",
                "--json",
                "--weights",
                str(ckpt),
                "--data",
                "mnist",
                "--budget",
                "50",
                "--storage",
                f"sqlite:///{tmp}/nas.db",
                "--out",
                f"{tmp}/out",
            ],
            cwd=Path(tmp),
        )
    doc = json.loads(stdout)
    tops = [p["top1"] for p in doc["pareto"]]
    return _record(
        "measured",
        rep=rep,
        wall_seconds=round(wall, 1),
        search_seconds=doc["seconds"],
        evaluated=doc["evaluated"],
        pareto=len(doc["pareto"]),
        pareto_top1_range=[min(tops), max(tops)] if tops else None,
        sources=doc["sources"],
    )


def _pf(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report() -> None:
    records = list(read_results(FOLDER))
    every = sorted(
        (r for r in records if r["kind"] == "train"), key=lambda r: (r.get("epochs", []), r["seed"])
    )
    # targets judge the current default configuration; earlier ones stay in the table
    trains = [r for r in every if tuple(r.get("epochs", ())) == EPOCHS]
    searches = [r for r in records if r["kind"] == "search"]
    meas = [r for r in records if r["kind"] == "measured"]
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    text = (
        "# Supernets: training on MNIST-5k and the end-to-end resnet50 search\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files in "
        f"`bench/results/{NAME}/`.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in records})) or '–'}\n"
        f"- Training seeds: {', '.join(str(r['seed']) for r in trains) or 'none yet'}\n\n"
    )
    text += "## `nas supernet train mobilenetv3 --data mnist` (defaults)\n\n"
    text += (
        "Validation top-1 (%) on the 500-image validation split after BatchNorm recalibration "
        "on 1,000 training images; the smallest sub-network at the smallest training "
        "resolution, the largest at the largest. Wall: the whole command.\n\n"
    )
    rows = []
    for r in every:
        f = r["report"]["final"]
        phases = "; ".join(
            f"{p['phase']} {p['largest_val_top1']:.1f}/{p['smallest_val_top1']:.1f} "
            f"({p['steps']}/{p['planned_steps']} steps, {p['seconds']:.0f} s)"
            for p in r["report"]["phases"]
        )
        rows.append(
            [
                str(r["seed"]),
                ",".join(map(str, r.get("epochs", []))),
                f"{f['largest_val_top1']:.2f}",
                f"{f['smallest_val_top1']:.2f}",
                f"{f['spearman_top1_macs_10']:.3f}",
                f"{r['wall_seconds'] / 60:.1f}",
                phases,
            ]
        )
    text += md_table(
        [
            "seed",
            "epochs",
            "largest",
            "smallest",
            "Spearman(top1, MACs), 10 subnets",
            "wall min",
            "phases",
        ],
        rows,
    )
    if searches:
        text += "\n## `nas search --supernet resnet50 --hw gpu` (make search's command)\n\n"
        text += (
            "Fresh SQLite file per repetition; search s: `run_search` from task build to "
            "exports; wall s: the whole process including Python and torch start-up.\n\n"
        )
        text += md_table(
            ["rep", "evaluated", "search s", "wall s", "Pareto size", "sources"],
            [
                [
                    str(r["rep"]),
                    str(r["evaluated"]),
                    f"{r['search_seconds']:.1f}",
                    f"{r['wall_seconds']:.1f}",
                    str(r["pareto"]),
                    ", ".join(f"{k}: {v}" for k, v in r["sources"].items()),
                ]
                for r in searches
            ],
        )
    if meas:
        text += "\n## Measured accuracy: mobilenetv3 search from the seed-0 checkpoint\n\n"
        text += md_table(
            ["rep", "evaluated", "search s", "s / evaluation", "Pareto size", "Pareto top1"],
            [
                [
                    str(r["rep"]),
                    str(r["evaluated"]),
                    f"{r['search_seconds']:.1f}",
                    f"{r['search_seconds'] / max(1, r['evaluated']):.2f}",
                    str(r["pareto"]),
                    "–"
                    if not r["pareto_top1_range"]
                    else f"{r['pareto_top1_range'][0]:.1f}–{r['pareto_top1_range'][1]:.1f}",
                ]
                for r in meas
            ],
        )
    targets = []
    if trains:
        fin = [r["report"]["final"] for r in trains]
        big = [f["largest_val_top1"] for f in fin]
        small = [f["smallest_val_top1"] for f in fin]
        rho = [f["spearman_top1_macs_10"] for f in fin]
        mins = [r["wall_seconds"] / 60 for r in trains]
        n = len(trains)
        targets += [
            [f"largest >= {BAR['largest']}%", fmt_mean_std(big, 2), _pf(min(big) >= 97.0), n],
            [f"smallest >= {BAR['smallest']}%", fmt_mean_std(small, 2), _pf(min(small) >= 94), n],
            [f"Spearman >= {BAR['spearman']}", fmt_mean_std(rho, 3), _pf(min(rho) >= 0.5), n],
            [f"<= {BAR['minutes']:.0f} min", fmt_mean_std(mins, 1), _pf(max(mins) <= 30.0), n],
        ]
    if searches:
        secs = [r["search_seconds"] for r in searches]
        ok = all(r["evaluated"] >= 100 for r in searches) and max(secs) <= 300.0
        targets.append(
            [">= 100 evaluations in <= 300 s", fmt_mean_std(secs, 1), _pf(ok), len(searches)]
        )
    if targets:
        text += "\n## Targets\n\n" + md_table(
            ["target", "achieved (mean ± std)", "result", "runs"],
            [[str(c) for c in t] for t in targets],
        )
    write_text_atomic(RESULTS / f"{NAME}.md", text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="train,search,measured")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds")
    ap.add_argument("--reps", type=int, default=1, help="search repetitions")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    jobs: list[tuple[str, Any, int]] = []
    parts = args.parts.split(",")
    if "train" in parts:
        jobs += [(f"train-seed{s}-{_tag()}", train, s) for s in range(args.seeds)]
    if "search" in parts:
        jobs += [(f"search-rep{i}", search, i) for i in range(args.reps)]
    if "measured" in parts:
        jobs += [(f"measured-rep{i}", measured, i) for i in range(args.reps)]
    failed = 0
    for name, fn, arg in [] if args.report_only else jobs:
        path = FOLDER / f"{name}.json"
        if path.exists():
            continue
        print(f"[{now_iso()}] {name} ...", flush=True)
        try:
            write_json_atomic(path, fn(arg))
        except Exception:  # one crashed configuration must not stop the rest
            traceback.print_exc()
            failed += 1
        report()
    report()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
