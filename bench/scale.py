"""Many workers on one study: throughput on SQLite and PostgreSQL, and kill-and-resume.

Usage::

    python bench/scale.py [--only NAME,...] [--postgres URL] [--max-minutes M] [--report-only]

Every run uses the ``synthetic`` task (a deterministic benchmark function whose evaluation
sleeps ``seconds``), started the way an overnight job is: ``nas run job.toml`` on the first
worker, ``nas worker --storage URL --study NAME`` on the others, each its own process.

- ``throughput-<storage>-w<N>``: N = 1, 2, 4 workers, 1.0 s evaluations, budget 60 (N = 1:
  30); evaluations per minute between the first trial's start and the last trial's end (the
  storage's own timestamps), and the wall time with process start-up.
- ``kill-<storage>``: budget 200, 0.5 s evaluations, 4 workers; three times, at random
  moments, a random worker that is running a trial is killed with SIGKILL and a new worker
  is started in its place. Counted: trials lost (budget slots never completed, or a killed
  trial whose candidate was never completed again) and duplicated (a slot completed twice, or
  more completions than the budget). Targets: 0 and 0.

The PostgreSQL runs need ``--postgres URL`` or ``NAS_TEST_POSTGRES_URL`` (skipped otherwise).
One result file per run in ``bench/results/scale/``; existing files are skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from _common import (
    RESULTS,
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
from optuna.trial import FrozenTrial, TrialState

NAME = "scale"
WORKERS = (1, 2, 4)
KILLS = 3


def _nas(*args: str) -> list[str]:
    return [sys.executable, "-m", "nas.cli.main", *args]


def _job(folder: Path, storage: str, study: str, budget: int, seconds: float) -> Path:
    path = folder / "job.toml"
    path.write_text(
        f'version = 1\ncommand = "search"\n[args]\ntask = "synthetic"\nhw = "cpu"\n'
        f'task_option = ["seconds={seconds}"]\nbudget = {budget}\nstorage = "{storage}"\n'
        f'study = "{study}"\nheartbeat = 2\n'
    )
    return path


def _wait_study(storage: str, study: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            optuna.load_study(study_name=study, storage=storage)
            return
        except KeyError:
            time.sleep(0.1)
    raise RuntimeError(f"study {study} was not created")


def _start(storage: str, study: str, job: Path, n: int, folder: Path) -> list[subprocess.Popen]:
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": folder}
    procs = [subprocess.Popen(_nas("run", str(job)), **quiet)]  # type: ignore[call-overload]
    _wait_study(storage, study)
    worker = _nas("worker", "--storage", storage, "--study", study)
    procs += [subprocess.Popen(worker, **quiet) for _ in range(n - 1)]  # type: ignore[call-overload]
    return procs


def _cleanup(storage: str, study: str) -> None:
    if storage.startswith("postgresql"):
        optuna.delete_study(study_name=study, storage=storage)


def throughput(storage: str, kind: str, workers: int) -> dict[str, Any]:
    budget, seconds = (30 if workers == 1 else 60), 1.0
    study = f"scale-{kind}-w{workers}-{uuid.uuid4().hex[:6]}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if kind == "sqlite":
            storage = f"sqlite:///{folder / 'scale.db'}"
        start = time.perf_counter()
        procs = _start(
            storage, study, _job(folder, storage, study, budget, seconds), workers, folder
        )
        codes = [p.wait(timeout=1800) for p in procs]
        wall = time.perf_counter() - start
        trials = optuna.load_study(study_name=study, storage=storage).trials
    _cleanup(storage, study)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    span = (last - first).total_seconds()
    # steady state: from the moment every worker had started its first trial
    starts = {}
    for t in sorted(done, key=lambda t: t.datetime_start):
        starts.setdefault(t.user_attrs.get("nas:worker"), t.datetime_start)
    all_in = max(starts.values())
    steady = [t for t in done if t.datetime_start >= all_in]
    steady_span = (last - all_in).total_seconds()
    return {
        "steady_evals_per_min": round(60 * len(steady) / steady_span, 2) if steady_span else None,
        "workers_seen": len(starts),
        "kind": "throughput",
        "storage": kind,
        "workers": workers,
        "budget": budget,
        "seconds_per_evaluation": seconds,
        "complete": len(done),
        "exit_codes": codes,
        "span_s": round(span, 2),
        "wall_s": round(wall, 2),
        "evals_per_min": round(60 * len(done) / span, 2),
        "ideal_evals_per_min": round(60 * workers / seconds, 2),
    }


def _running_of(storage: str, study: str, pids: dict[int, subprocess.Popen]) -> int | None:
    """The pid of a worker that is running a trial now (None: none is)."""
    s = optuna.load_study(study_name=study, storage=storage)
    owners = {t.user_attrs.get("nas:worker") for t in s.get_trials(states=(TrialState.RUNNING,))}
    host = socket.gethostname()
    busy = [pid for pid in pids if f"{host}:{pid}" in owners]
    return random.choice(busy) if busy else None


def _tally(trials: Sequence[FrozenTrial], budget: int) -> dict[str, int]:
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    lost = max(budget - len(complete), 0)
    duplicated = max(len(complete) - budget, 0)
    for f in failed:
        again = [t for t in complete if t.system_attrs.get("failed_trial") == f.number]
        lost += not again
        duplicated += max(len(again) - 1, 0)
    return {
        "complete": len(complete),
        "failed": len(failed),
        "lost": lost,
        "duplicated": duplicated,
    }


def kill_resume(storage: str, kind: str, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    budget, seconds, workers = 200, 0.5, 4
    study = f"scale-kill-{kind}-{uuid.uuid4().hex[:6]}"
    kills: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if kind == "sqlite":
            storage = f"sqlite:///{folder / 'scale.db'}"
        start = time.perf_counter()
        procs = _start(
            storage, study, _job(folder, storage, study, budget, seconds), workers, folder
        )
        pids = {p.pid: p for p in procs}
        for _ in range(KILLS):
            time.sleep(rng.uniform(2.0, 6.0))
            victim = None
            while victim is None and any(p.poll() is None for p in pids.values()):
                victim = _running_of(storage, study, pids)
                time.sleep(0.02)
            if victim is None:  # the job finished first
                break
            pids.pop(victim).send_signal(signal.SIGKILL)
            kills.append({"after_s": round(time.perf_counter() - start, 2), "pid": victim})
            worker = _nas("worker", "--storage", storage, "--study", study)
            p = subprocess.Popen(
                worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder
            )
            pids[p.pid] = p
        codes = [p.wait(timeout=1800) for p in pids.values()]
        wall = time.perf_counter() - start
        trials = optuna.load_study(study_name=study, storage=storage).trials
    _cleanup(storage, study)
    return {
        "kind": "kill",
        "storage": kind,
        "workers": workers,
        "budget": budget,
        "seconds_per_evaluation": seconds,
        "kills": kills,
        "exit_codes": codes,
        "wall_s": round(wall, 2),
        **_tally(trials, budget),
    }


def _configs(postgres: str | None) -> list[tuple[str, str, str, int]]:
    """(name, storage kind, url, workers); workers 0 marks the kill-and-resume run."""
    kinds = [("sqlite", "")] + ([("postgresql", postgres)] if postgres else [])
    out = []
    for kind, url in kinds:
        out += [(f"throughput-{kind}-w{n}", kind, url, n) for n in WORKERS]
        out.append((f"kill-{kind}", kind, url, 0))
    return out


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _pct(v: float | None, ideal: float) -> str:
    return "—" if v is None else f"{v / ideal:.0%}"


def report(where: Path, md: Path) -> None:
    rows = {r["config"]: r for r in read_results(where)}
    tp = [r for r in rows.values() if r["kind"] == "throughput"]
    kills = [r for r in rows.values() if r["kind"] == "kill"]
    any_row = next(iter(rows.values()), None)
    text = "# Many workers on one study\n\n"
    text += (
        "Task `synthetic` (each evaluation sleeps a fixed time, so the figures measure the "
        "runner and the storage, not the CPU); the first worker is `nas run job.toml`, the "
        "others `nas worker` processes on the same machine. Evaluations per minute between "
        "the first trial's start and the last trial's end (the later workers' start-up "
        "included), and in the steady state (from the moment every worker had started its "
        "first trial); wall time includes process start-up. One run per configuration; the "
        "load column is the machine's 1-minute load average when the run started (other "
        "work slows the per-trial Python overhead and process start-up, not the sleeps).\n\n"
    )
    text += md_table(
        [
            "storage",
            "workers",
            "s / evaluation",
            "budget",
            "evals / min",
            "ideal",
            "efficiency",
            "steady evals / min",
            "steady efficiency",
            "wall s",
            "load",
        ],
        [
            [
                r["storage"],
                str(r["workers"]),
                f"{r['seconds_per_evaluation']:g}",
                str(r["budget"]),
                f"{r['evals_per_min']:.1f}",
                f"{r['ideal_evals_per_min']:.0f}",
                f"{r['evals_per_min'] / r['ideal_evals_per_min']:.0%}",
                _num(r.get("steady_evals_per_min")),
                _pct(r.get("steady_evals_per_min"), r["ideal_evals_per_min"]),
                f"{r['wall_s']:.0f}",
                _num(r.get("load_1min_before")),
            ]
            for r in sorted(tp, key=lambda r: (r["storage"], r["workers"]))
        ],
    )
    text += "\n## Kill and resume (target: 0 lost, 0 duplicated)\n\n"
    text += md_table(
        [
            "storage",
            "budget",
            "SIGKILLs",
            "complete",
            "failed (killed)",
            "lost",
            "duplicated",
            "load",
            "result",
        ],
        [
            [
                r["storage"],
                str(r["budget"]),
                str(len(r["kills"])),
                str(r["complete"]),
                str(r["failed"]),
                str(r["lost"]),
                str(r["duplicated"]),
                _num(r.get("load_1min_before")),
                "PASS" if r["lost"] == 0 and r["duplicated"] == 0 else "MISS",
            ]
            for r in sorted(kills, key=lambda r: r["storage"])
        ],
    )
    if any_row:
        text += (
            f"\nMachine: {describe_machine(any_row['machine'])}; git {any_row['git_commit']}; "
            f"last run {max(r['date'] for r in rows.values())}.\n"
        )
    write_text_atomic(md, text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--postgres", default=os.environ.get("NAS_TEST_POSTGRES_URL"))
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    where, md = RESULTS / NAME, RESULTS / f"{NAME}.md"
    deadline, failed = Deadline(args.max_minutes), 0
    if not args.postgres:
        print("no PostgreSQL URL (--postgres or NAS_TEST_POSTGRES_URL): SQLite only", flush=True)
    for name, kind, url, workers in [] if args.report_only else _configs(args.postgres):
        path = where / f"{name}.json"
        if (wanted and name not in wanted) or path.exists() or deadline.passed():
            continue
        print(f"[{now_iso()}] {name} ...", flush=True)
        load_before = os.getloadavg()[0]
        try:
            row = throughput(url, kind, workers) if workers else kill_resume(url, kind)
            row |= {
                "load_1min_before": round(load_before, 2),
                "config": name,
                "date": now_iso(),
                "git_commit": git_commit(),
                "machine": machine(),
            }
            write_json_atomic(path, row)
        except Exception:
            traceback.print_exc()
            failed += 1
        report(where, md)
    report(where, md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
