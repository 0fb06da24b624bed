"""N2N on the benchmark teachers: the two-stage policy search against flat-space strategies, a
transferred policy, and the student's architecture trained from scratch.

Usage::

    python bench/n2n.py [--only NAME,...] [--budget 120] [--max-minutes M] [--report-only]

Each configuration is one ``nas compress --method n2n`` run on MNIST-5k (its own SQLite study
under ``build/bench/n2n/<name>/``: rerunning resumes it trial by trial, the policies are rebuilt
from the stored trials) and writes ``bench/results/n2n/<name>.json``. Per child: distillation for
one epoch on 1,000 training images (the student regresses the teacher's logits), reward
``C (2 - C) A`` on the validation split; the best child is then distilled for 20 epochs
(soft targets + labels) and measured on the test split. One seed (0).

- ``n2n-<teacher>``: the n2n strategy, half the budget per stage, 4 rollouts per update;
- ``tpe-resnet20`` / ``nsga2-resnet20``: the same flat space and budget with optuna's TPE and
  pymoo's NSGA-II;
- ``n2n-resnet32`` and ``n2n-resnet32-transfer``: resnet32 from fresh policies and from the
  policies learned on resnet20 (updates until the best reward reaches the fresh run's final);
- ``scratch-resnet20``: the selected resnet20 student's architecture trained from random weights
  for as many epochs as the search and the final distillation used.

Target: >= 10x fewer parameters at <= 1 point of test top-1 lost (the paper: about 10x on
ResNet-34 / CIFAR-10).
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
    teacher_weights,
    write_json_atomic,
    write_text_atomic,
)

NAME = "n2n"
NAS = [sys.executable, "-m", "nas.cli.main"]
WORK = ROOT / "build" / "bench" / NAME
FINAL_EPOCHS = 20
DISTILL_IMAGES = 1000


@dataclass(frozen=True)
class Config:
    name: str
    teacher: str
    strategy: str = "n2n"
    transfer_from: str | None = None  # the configuration whose policy starts this one


CONFIGS = (
    Config("n2n-resnet20", "resnet20-mnist"),
    Config("tpe-resnet20", "resnet20-mnist", "tpe"),
    Config("nsga2-resnet20", "resnet20-mnist", "nsga2"),
    Config("n2n-resnet32", "resnet32-mnist"),
    Config("n2n-resnet32-transfer", "resnet32-mnist", transfer_from="n2n-resnet20"),
    Config("n2n-vgg11", "vgg11-w0.5-mnist"),
)


def compress(c: Config, budget: int) -> dict[str, Any]:
    out = WORK / c.name
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*NAS, "compress", str(teacher_weights(c.teacher)), "--method", "n2n"]
    cmd += ["--data", "mnist", "--budget", str(budget), "--strategy", c.strategy, "--json"]
    cmd += ["--storage", f"sqlite:///{out / 'study.db'}", "--out", str(out)]
    cmd += ["--finetune-epochs", str(FINAL_EPOCHS), "--set", f"distill_images={DISTILL_IMAGES}"]
    if c.strategy == "n2n":
        cmd += ["--option", "rollouts=4"]
    if c.transfer_from:
        cmd += ["--policy", str(WORK / c.transfer_from / "policy.safetensors")]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    trials = json.loads((out / "trials.json").read_text())["trials"]
    rewards = [t.get("reward") for t in sorted(trials, key=lambda t: t["trial"])]
    o, s = report["original"], report["selected"] or {}
    return {
        "evaluated": report["evaluated"],
        "rewards": rewards,
        "invalid": sum(1 for r in rewards if r == -1.0),
        "original": {k: o.get(k) for k in ("params_m", "val_top1", "test_top1")},
        "selected": {
            k: s.get(k) for k in ("trial", "params", "params_m", "macs_m", "val_top1", "test_top1")
        },
        "search_reward": (s.get("search_metrics") or {}).get("reward"),
        "wall_seconds": round(time.monotonic() - t0, 1),
    }


def scratch(budget: int) -> dict[str, Any]:
    """The n2n-resnet20 student's architecture, trained from random weights for as many epochs
    (in training images seen) as the search and the final distillation used."""
    import torch

    from nas.compress import build, load_model
    from nas.compress.datasets import batches, load_data
    from nas.compress.evaluate import top1
    from nas.compress.lottery import IMPSettings, train_masked

    src = WORK / "n2n-resnet20" / "model.safetensors"
    if not src.is_file():
        raise RuntimeError("run n2n-resnet20 first")
    trained = load_model(src)
    torch.manual_seed(0)
    net = build(trained.spec, trained.preprocessing)
    train_images = len(load_data("mnist", "train"))
    epochs = round(budget * DISTILL_IMAGES / train_images) + FINAL_EPOCHS
    t0 = time.monotonic()
    for _ in train_masked(net, "mnist", IMPSettings(epochs=epochs, rounds=1), {}, seed=0):
        pass
    test = load_data("mnist", "test")
    return {
        "epochs": epochs,
        "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
        "test_top1": top1(net.eval(), batches(test, net.preprocessing, 250)),
        "wall_seconds": round(time.monotonic() - t0, 1),
    }


def report(where: Path, md: Path, budget: int) -> None:
    rs = {r["config"]: r for r in read_results(where)}
    machines = sorted({describe_machine(r["machine"]) for r in rs.values()}) or [
        describe_machine(machine())
    ]
    text = (
        "# N2N: network-to-network compression by policy gradient\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(rs)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in rs.values()})) or '–'}\n"
        f"- MNIST-5k, one seed (0); {budget} children per search; each child distilled one epoch "
        f"on {DISTILL_IMAGES} images; the best distilled {FINAL_EPOCHS} epochs; test top-1 on "
        "the 1,000-image test split.\n"
        "- Target: >= 10x fewer parameters at <= 1 point of test top-1 lost.\n\n"
    )
    rows = []
    for name in [c.name for c in CONFIGS]:
        r = rs.get(name)
        if r is None:
            continue
        o, s = r["original"], r["selected"]
        ratio = o["params_m"] / s["params_m"] if s.get("params_m") else None
        drop = (o["test_top1"] - s["test_top1"]) if s.get("test_top1") is not None else None
        ok = ratio is not None and drop is not None and ratio >= 10 and drop <= 1
        curve = _curve(r["rewards"])
        rows.append(
            [
                name,
                f"{r['evaluated']}",
                f"{r['invalid']}",
                f"{o['params_m']:.4f} → {s['params_m']:.4f}" if s.get("params_m") else "–",
                f"{ratio:.1f}x" if ratio else "–",
                f"{o['test_top1']:.2f} → {s['test_top1']:.2f}" if drop is not None else "–",
                f"{r['search_reward']:.3f}" if r.get("search_reward") is not None else "–",
                curve,
                "PASS" if ok else "MISS",
                f"{r['wall_seconds'] / 60:.1f}",
            ]
        )
    text += md_table(
        [
            "config",
            "children",
            "invalid",
            "params (M)",
            "compression",
            "test top1",
            "best reward",
            "mean reward per 20 children",
            "result",
            "min",
        ],
        rows,
    )
    sc = rs.get("scratch-resnet20")
    if sc:
        text += (
            f"\nThe n2n-resnet20 student's architecture trained from scratch for {sc['epochs']} "
            f"epochs: test top-1 {sc['test_top1']:.2f} ({sc['params_m']:.4f} M parameters).\n"
        )
    fresh, moved = rs.get("n2n-resnet32"), rs.get("n2n-resnet32-transfer")
    if fresh and moved:
        goal = max(r for r in fresh["rewards"] if r is not None)
        reach = next(
            (i + 1 for i, v in enumerate(_running_best(moved["rewards"])) if v >= goal), None
        )
        text += (
            f"\nPolicy transfer resnet20 → resnet32: the fresh search's best reward {goal:.3f}; "
            f"the transferred search reaches it after {reach or 'more than ' + str(budget)} "
            "children.\n"
        )
    write_text_atomic(md, text)


def _running_best(rewards: Sequence[float | None]) -> list[float]:
    best, out = -1.0, []
    for r in rewards:
        best = max(best, r if r is not None else -1.0)
        out.append(best)
    return out


def _curve(rewards: Sequence[float | None]) -> str:
    vals = [r if r is not None else -1.0 for r in rewards]
    chunks = [vals[i : i + 20] for i in range(0, len(vals), 20)]
    return " ".join(f"{sum(c) / len(c):.2f}" for c in chunks if c)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="")
    ap.add_argument("--budget", type=int, default=120)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    where, md = RESULTS / NAME, RESULTS / f"{NAME}.md"
    deadline, failed = Deadline(args.max_minutes), 0
    names = [c.name for c in CONFIGS] + ["scratch-resnet20"]
    for name in [] if args.report_only else names:
        path = where / f"{name}.json"
        if (wanted and name not in wanted) or path.exists() or deadline.passed():
            continue
        print(f"[{now_iso()}] {name} ...", flush=True)
        try:
            if name == "scratch-resnet20":
                row = scratch(args.budget)
            else:
                row = compress(next(c for c in CONFIGS if c.name == name), args.budget)
            row |= {"config": name, "budget": args.budget, "date": now_iso()}
            row |= {"git_commit": git_commit(), "machine": machine()}
            write_json_atomic(path, row)
        except Exception:
            traceback.print_exc()
            failed += 1
        report(where, md, args.budget)
    report(where, md, args.budget)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
