"""Teacher benchmark: zoo models trained on real data with ``nas train`` on this CPU.

Usage::

    python bench/teachers.py [--only resnet20-mnist,...] [--seeds 1] [--max-minutes M]
                             [--report-only] [--smoke]

Each teacher is one ``nas train --arch A --data D --epochs E --seed S`` run (SGD + cosine,
random-shift augmentation); its test top-1 (the 1,000-image MNIST-5k test split, measured once
at the end) is judged against a target. Bar: resnet20 >= 97% on MNIST-5k.

Resumable: one JSON file per teacher and seed in ``bench/results/teachers/``; an existing file is
skipped. Models go to ``build/bench/teachers/`` (not committed). ``bench/results/teachers.md`` is
rebuilt after every teacher. ``--smoke`` runs every teacher for one epoch on 128 images and
writes into ``build/bench/teachers_smoke/`` instead (a check that the script works, no figures).
Exit status 1 when a teacher crashed, 0 otherwise (a MISS is not a failure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    ROOT,
    Deadline,
    describe_machine,
    git_commit,
    machine,
    md_table,
    now_iso,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

NAME = "teachers"
NAS = [sys.executable, "-m", "nas.cli.main"]


@dataclass(frozen=True)
class Teacher:
    """One teacher configuration and its target test top-1 (%)."""

    name: str
    arch: str
    data: str
    epochs: int
    target: float
    width: float | None = None

    def args(self) -> list[str]:
        width = ["--width", str(self.width)] if self.width is not None else []
        return ["--arch", self.arch, "--data", self.data, "--epochs", str(self.epochs), *width]


TEACHERS = (
    Teacher("resnet20-mnist", "resnet20", "mnist", 30, 97.0),
    Teacher("resnet32-mnist", "resnet32", "mnist", 30, 97.0),
    Teacher("vgg11-w0.5-mnist", "vgg11", "mnist", 30, 97.0, width=0.5),
    Teacher("mobilenetv2-w0.5-mnist", "mobilenetv2", "mnist", 30, 96.0, width=0.5),
    Teacher("resnet20-digits", "resnet20", "digits", 30, 95.0),
)


@dataclass(frozen=True)
class Paths:
    results: Path  # one JSON file per teacher and seed
    report: Path
    models: Path


def paths(smoke: bool) -> Paths:
    if smoke:
        base = ROOT / "build" / "bench" / f"{NAME}_smoke"
        return Paths(base / "results", base / f"{NAME}.md", base / "models")
    return Paths(RESULTS / NAME, RESULTS / f"{NAME}.md", ROOT / "build" / "bench" / NAME)


def train(t: Teacher, seed: int, where: Paths, smoke: bool) -> dict[str, Any]:
    """Run ``nas train`` for ``t``; the record of the run."""
    out = where.models / f"{t.name}-seed{seed}"
    extra = ["--epochs", "1", "--limit", "128"] if smoke else []
    cmd = [*NAS, "train", *t.args(), "--seed", str(seed), "--out", str(out), "--json", *extra]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    return {
        "teacher": t.name,
        "arch": t.arch,
        "arch_kwargs": doc["arch_kwargs"],
        "data": t.data,
        "epochs": doc["epochs"],
        "epochs_done": doc["epochs_done"],
        "seed": seed,
        "target_test_top1": t.target,
        "val_top1": doc["val_top1"],
        "test_top1": doc["test_top1"],
        "train_seconds": doc["seconds"],
        "wall_seconds": round(wall, 1),
        "weights": str(Path(doc["weights"]).resolve().relative_to(ROOT)),
        "smoke": smoke,
        "date": now_iso(),
        "git_commit": git_commit(),
        "machine": machine(),
    }


def report(where: Paths) -> None:
    records = sorted(read_results(where.results), key=lambda r: (r["teacher"], r["seed"]))
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    text = (
        "# Teachers: zoo models trained with `nas train`\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in records})) or '–'}\n\n"
        "Test top-1 (%) on the data's test split, measured once after training (MNIST-5k: "
        "1,000 images); validation top-1 on its validation split after the last epoch. SGD "
        "(Nesterov, lr 0.1, batch 128, weight decay 5e-4), cosine decay, random shifts.\n\n"
    )
    rows = [
        [
            r["teacher"],
            json.dumps(r["arch_kwargs"]),
            str(r["seed"]),
            f"{r['epochs_done']}/{r['epochs']}",
            f"{r['val_top1']:.2f}",
            f"{r['test_top1']:.2f}",
            f">= {r['target_test_top1']:.1f}",
            "PASS" if r["test_top1"] >= r["target_test_top1"] else "MISS",
            f"{r['wall_seconds'] / 60:.1f}",
        ]
        for r in records
    ]
    text += md_table(
        ["teacher", "arguments", "seed", "epochs", "val", "test", "target", "result", "min"],
        rows,
    )
    if not records:
        text += "\nNo teacher trained yet.\n"
    write_text_atomic(where.report, text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated teacher names")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no teacher after")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="1 epoch on 128 images, elsewhere")
    args = ap.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {t.name for t in TEACHERS}
    if unknown:
        ap.error(f"unknown teacher {sorted(unknown)[0]}; known: {[t.name for t in TEACHERS]}")
    where, deadline, failed = paths(args.smoke), Deadline(args.max_minutes), 0
    jobs = [(t, s) for t in TEACHERS if not wanted or t.name in wanted for s in range(args.seeds)]
    for t, seed in [] if args.report_only else jobs:
        path = where.results / f"{t.name}-seed{seed}.json"
        if path.exists() or deadline.passed():
            continue
        print(f"[{now_iso()}] {t.name} seed {seed} ...", flush=True)
        try:
            write_json_atomic(path, train(t, seed, where, args.smoke))
        except Exception:  # one crashed teacher must not stop the rest
            traceback.print_exc()
            failed += 1
        report(where)
    report(where)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
