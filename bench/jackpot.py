"""Lottery jackpots on the benchmark teachers: mask search on frozen weights against magnitude
pruning and iterative magnitude pruning (IMP, which trains weights).

Usage::

    python bench/jackpot.py [--only KIND,...] [--teachers resnet20-mnist,...] [--seeds 3]
                            [--max-minutes M] [--report-only]

Jobs, in the order they run (each one result file in ``bench/results/jackpot/``; an existing
file is skipped, so the benchmark resumes):

- ``magnitude``: global magnitude pruning of the teacher at 80 / 90 / 95 %, no training, with
  the teacher's BatchNorm statistics and with them re-estimated on the training images (the
  stronger baseline; deterministic: one seed);
- ``search``: the jackpot search (magnitude start, cosine short restriction, global layer rates,
  SGD lr 0.1 on the scores) for 1, 5 and 30 epochs at 80 / 90 / 95 %, BatchNorm affine
  parameters frozen and trained (running statistics re-estimated in both), seeds 0..N-1;
- ``init``: 90 %, BatchNorm frozen, 30 epochs, magnitude vs random start, validation top-1 after
  every epoch (epochs to the same accuracy);
- ``imp``: IMP with rewinding to epoch 1 from a seeded initialisation, 14 rounds of 5 epochs,
  20 % per round; rounds 8 / 11 / 14 give 83 / 91 / 96 % sparsity;
- ``drift``: the MTCNN O-Net by output drift, jackpot (5 epochs) vs magnitude at 50 / 70 / 90 %.

Accuracy is top-1 on the MNIST-5k test split (1,000 images); searches and IMP see only the
3,500 training images. Targets: at 90 % with BatchNorm frozen, within 1 point of the dense
teacher after 5 search epochs; at 90 % and 95 %, at least 2 points above magnitude pruning
(means over the seeds).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    teacher_weights,
    write_json_atomic,
    write_text_atomic,
)

NAME = "jackpot"
TEACHERS = ("resnet20-mnist", "vgg11-w0.5-mnist")
SPARSITIES = (90, 95, 80)
EPOCHS = (5, 1, 30)
ONET = ROOT / "compress" / "data" / "weights" / "onet.pt"


@dataclass(frozen=True)
class Job:
    kind: str
    teacher: str
    sparsity: int = 0
    epochs: float = 0
    bn: str = "frozen"
    seed: int = 0
    init: str = "magnitude"

    @property
    def key(self) -> str:
        parts = [self.kind, self.teacher]
        if self.kind in ("magnitude", "search", "init"):
            parts.append(f"s{self.sparsity}")
        if self.kind in ("search", "init"):
            parts += [f"e{self.epochs:g}", f"bn-{self.bn}", f"init-{self.init}"]
        if self.kind == "drift":
            parts.append(f"s{self.sparsity}")
        return "-".join(parts) + f"-seed{self.seed}"


def jobs(teachers: Sequence[str], seeds: int) -> list[Job]:
    out: list[Job] = []
    for t in teachers:
        out += [Job("magnitude", t, s) for s in SPARSITIES]
        for epochs in EPOCHS:
            for bn in ("frozen", "trained"):
                for s in SPARSITIES:
                    out += [Job("search", t, s, epochs, bn, seed) for seed in range(seeds)]
        out.append(Job("imp", t))
        out += [Job("init", t, 90, 30, "frozen", 0, init) for init in ("magnitude", "random")]
    out += [Job("drift", "mtcnn_onet", s) for s in (50, 70, 90)]
    # cheap and target-critical runs first: magnitude, then 90 / 95 % at 5 epochs with
    # BatchNorm frozen, IMP, the 1-epoch runs, drift and the start comparison of the first teacher
    t0 = teachers[0]
    tiers: list[Callable[[Job], bool]] = [
        lambda j: j.kind == "magnitude" and j.teacher == t0,
        lambda j: (
            j.kind == "search"
            and j.teacher == t0
            and j.epochs == 5
            and j.bn == "frozen"
            and j.sparsity in (90, 95)
        ),
        lambda j: j.kind == "imp" and j.teacher == t0,
        lambda j: j.kind == "search" and j.teacher == t0 and j.epochs == 1,
        lambda j: j.kind == "drift",
        lambda j: j.kind == "search" and j.teacher == t0 and j.epochs == 5,
        lambda j: j.kind == "init" and j.teacher == t0,
        lambda j: j.teacher == t0,
        lambda j: True,
    ]
    ordered: list[Job] = []
    for tier in tiers:
        ordered += [j for j in out if tier(j) and j not in ordered]
    return ordered


def _test_eval(data: str = "mnist") -> Callable[[Any], dict[str, float]]:
    from nas.compress.datasets import batches, load_data
    from nas.compress.evaluate import top1

    def evaluate(net: Any) -> dict[str, float]:
        return {
            split + "_top1": top1(net, batches(load_data(data, split), net.preprocessing, 250))
            for split in ("val", "test")
        }

    return evaluate


def run(job: Job) -> dict[str, Any]:
    import torch

    from nas.compress import load_model
    from nas.compress.jackpot import SearchSettings, search_mask
    from nas.compress.masks import layer_rates
    from nas.compress.pruning import prune_unstructured

    torch.manual_seed(job.seed)
    t0 = time.monotonic()
    row: dict[str, Any] = {"job": job.key, **job.__dict__}
    if job.kind == "drift":
        return row | _drift(job, t0)
    teacher = load_model(teacher_weights(job.teacher))
    evaluate = _test_eval()
    row["teacher_test_top1"] = evaluate(teacher)["test_top1"]
    if job.kind == "magnitude":
        from nas.compress.datasets import batches, load_data
        from nas.compress.evaluate import recalibrate_bn

        pruned = prune_unstructured(teacher, job.sparsity / 100)
        row |= evaluate(pruned)
        train = load_data("mnist", "train")
        recalibrate_bn(pruned, batches(train, pruned.preprocessing, 250))
        row |= {f"{k}_recal": v for k, v in evaluate(pruned).items()}
    elif job.kind in ("search", "init"):
        rates = layer_rates(teacher, job.sparsity / 100, "global")
        settings = SearchSettings(
            epochs=job.epochs,
            train_bn=job.bn == "trained",
            init=job.init,  # type: ignore[arg-type]
            seed=job.seed,
        )
        per_epoch = _val_eval() if job.kind == "init" else None
        net, history = search_mask(teacher, rates, settings, data="mnist", evaluate=per_epoch)
        row |= evaluate(net)
        row["history"] = history
    elif job.kind == "imp":
        from nas.compress.lottery import IMPSettings, iterative_magnitude_pruning

        origin = teacher.origin
        arch, kwargs = origin["arch"], origin["arch_kwargs"]
        torch.manual_seed(job.seed)
        init = fresh_model(arch, kwargs, teacher.preprocessing)
        rounds = iterative_magnitude_pruning(
            init, "mnist", IMPSettings(seed=job.seed), evaluate=evaluate
        )
        row["rounds"] = rounds
    row["seconds"] = round(time.monotonic() - t0, 1)
    return row


def fresh_model(arch: str, kwargs: dict[str, Any], preprocessing: Any) -> Any:
    """A freshly initialised model of the teacher's architecture and preprocessing."""
    from nas.compress.loading import build_model

    net = build_model(arch, kwargs)
    net.preprocessing = preprocessing
    return net


def _val_eval() -> Callable[[Any], dict[str, float]]:
    from nas.compress.datasets import batches, load_data
    from nas.compress.evaluate import top1

    val = load_data("mnist", "val")
    return lambda net: {"val_top1": top1(net, batches(val, net.preprocessing, 250))}


def _drift(job: Job, t0: float) -> dict[str, Any]:
    from nas.compress.jackpot import SearchSettings, search_mask
    from nas.compress.masks import layer_rates
    from nas.compress.pruning import prune_unstructured
    from nas.search.task import create_task

    task = create_task("magnitude", checkpoint=str(ONET), arch="mtcnn_onet")
    net = task.original
    rates = layer_rates(net, job.sparsity / 100, "global")
    searched, history = search_mask(net, rates, SearchSettings(epochs=5), data=None)
    mag = prune_unstructured(net, job.sparsity / 100)
    return {
        "jackpot": task.quality(searched),
        "magnitude": task.quality(mag),
        "history": history,
        "seconds": round(time.monotonic() - t0, 1),
    }


def _stat(records: list[dict[str, Any]], key: str, n: int | None = None) -> str:
    xs = [r[key] for r in records if key in r]
    return fmt_mean_std(xs, 2, n) if xs else "–"


def report(where: Path, md: Path, seeds: int) -> None:
    rs = list(read_results(where))
    machines = sorted({describe_machine(r["machine"]) for r in rs}) or [describe_machine(machine())]
    text = (
        "# Lottery jackpots: mask search on frozen weights\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(rs)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in rs})) or '–'}\n"
        "- Test top-1 (%) on the MNIST-5k test split (1,000 images), mean ± std over the seeds "
        "present (n shown when short of the planned seeds).\n"
        "- Unstructured sparsity does not make dense runtimes faster: `nas compress` measures "
        "the same latency before and after (see compress_magnitude.md).\n\n"
    )
    for teacher in sorted({r["teacher"] for r in rs if r["kind"] != "drift"}):
        mine = [r for r in rs if r["teacher"] == teacher]
        dense = next((r["teacher_test_top1"] for r in mine if "teacher_test_top1" in r), None)
        text += f"## {teacher} (dense test top-1 {dense if dense is not None else '–'})\n\n"
        rows = []
        for s in sorted(SPARSITIES):
            mag = [r for r in mine if r["kind"] == "magnitude" and r["sparsity"] == s]
            row = [f"{s}%", _stat(mag, "test_top1"), _stat(mag, "test_top1_recal")]
            for bn in ("frozen", "trained"):
                for e in sorted(EPOCHS):
                    runs = [
                        r
                        for r in mine
                        if r["kind"] == "search"
                        and r["sparsity"] == s
                        and r["bn"] == bn
                        and r["epochs"] == e
                    ]
                    row.append(_stat(runs, "test_top1", seeds))
            rows.append(row)
        text += md_table(
            ["sparsity", "magnitude", "magnitude, BN re-estimated"]
            + [
                f"jackpot {e:g} ep, BN {bn}" for bn in ("frozen", "trained") for e in sorted(EPOCHS)
            ],
            rows,
        )
        text += "\n" + _verdicts(mine, dense) + _imp(mine) + _init(mine)
    drift = [r for r in rs if r["kind"] == "drift"]
    if drift:
        text += "## MTCNN O-Net by output drift (smallest per-head cosine on the probes)\n\n"
        text += md_table(
            ["sparsity", "magnitude", "jackpot 5 ep"],
            [
                [
                    f"{r['sparsity']}%",
                    f"{r['magnitude']['cosine']:.4f}",
                    f"{r['jackpot']['cosine']:.4f}",
                ]
                for r in sorted(drift, key=lambda r: r["sparsity"])
            ],
        )
    write_text_atomic(md, text)


def _verdicts(mine: list[dict[str, Any]], dense: float | None) -> str:
    def mean(kind: str, s: int, key: str = "test_top1", **kw: Any) -> float | None:
        xs = [
            r[key]
            for r in mine
            if r["kind"] == kind
            and r["sparsity"] == s
            and all(r.get(k) == v for k, v in kw.items())
        ]
        return mean_std(xs)[0] if xs else None

    lines = []
    j90 = mean("search", 90, epochs=5, bn="frozen")
    if j90 is not None and dense is not None:
        ok = j90 >= dense - 1.0
        lines.append(
            f"- 90 %, BN frozen, 5 epochs: {j90:.2f} vs dense {dense:.2f} "
            f"(target: within 1 point): {'PASS' if ok else 'MISS'}"
        )
    for s in (90, 95):
        j = mean("search", s, epochs=5, bn="frozen")
        m = mean("magnitude", s, key="test_top1_recal")
        if j is not None and m is not None:
            lines.append(
                f"- {s} %: jackpot (5 ep, BN frozen) {j:.2f} vs magnitude with BN re-estimated "
                f"{m:.2f} (target: +2 points): {'PASS' if j >= m + 2 else 'MISS'}"
            )
    return ("\n".join(lines) + "\n\n") if lines else ""


def _imp(mine: list[dict[str, Any]]) -> str:
    imp = [r for r in mine if r["kind"] == "imp"]
    if not imp:
        return ""
    rounds = imp[0]["rounds"]
    rows = [
        [
            str(x["round"]),
            f"{100 * x['sparsity']:.1f}%",
            f"{x['test_top1']:.2f}",
            str(x["epochs_trained"]),
            f"{x['seconds'] / 60:.1f}",
        ]
        for x in rounds
        if x["round"] in (0, 8, 11, 14)
    ]
    return (
        "IMP with rewinding (trains weights; seed 0):\n\n"
        + md_table(["round", "sparsity", "test top1", "epochs trained", "minutes"], rows)
        + "\n"
    )


def _init(mine: list[dict[str, Any]]) -> str:
    runs = {r["init"]: r for r in mine if r["kind"] == "init"}
    if len(runs) < 2:
        return ""
    curves = {k: [h["val_top1"] for h in r["history"]] for k, r in runs.items()}
    goal = curves["random"][-1]
    reach = next((i + 1 for i, v in enumerate(curves["magnitude"]) if v >= goal), None)
    return (
        f"Magnitude vs random start (90 %, BN frozen, 30 epochs): final validation top-1 "
        f"{curves['magnitude'][-1]:.2f} vs {goal:.2f}; the magnitude start reaches the random "
        f"start's final {goal:.2f} after {reach if reach else '>30'} epochs "
        f"(first epoch: {curves['magnitude'][0]:.2f} vs {curves['random'][0]:.2f}).\n\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="", help="kinds: magnitude,search,init,imp,drift")
    ap.add_argument("--teachers", default=",".join(TEACHERS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no job after")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--reverse", action="store_true", help="last job first (a second process meets the first)"
    )
    args = ap.parse_args(argv)
    kinds = {k for k in args.only.split(",") if k}
    teachers = [t for t in args.teachers.split(",") if t]
    where, md = RESULTS / NAME, RESULTS / f"{NAME}.md"
    deadline, failed = Deadline(args.max_minutes), 0
    todo = [j for j in jobs(teachers, args.seeds) if not kinds or j.kind in kinds]
    todo = todo[::-1] if args.reverse else todo
    for job in [] if args.report_only else todo:
        path = where / f"{job.key}.json"
        if path.exists() or deadline.passed():
            continue
        print(f"[{now_iso()}] {job.key} ...", flush=True)
        try:
            row = run(job)
            row |= {"date": now_iso(), "git_commit": git_commit(), "machine": machine()}
            write_json_atomic(path, row)
        except Exception:  # one crashed job must not stop the rest
            traceback.print_exc()
            failed += 1
        report(where, md, args.seeds)
    report(where, md, args.seeds)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
