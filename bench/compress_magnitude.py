"""``nas compress --method magnitude`` on the benchmark teachers and the MTCNN nets.

Usage::

    python bench/compress_magnitude.py [--only NAME,...] [--seeds 1] [--max-minutes M]
                                       [--report-only]

Each configuration is one ``nas compress`` run (its own SQLite study and output folder under
``build/bench/compress_magnitude/``), with ``--int8``; its ``report.json`` is condensed into one
result file per configuration and seed in ``bench/results/compress_magnitude/`` (an existing file
is skipped: resumable). ``bench/results/compress_magnitude.md`` is rebuilt after each run.

Teachers come from ``bench/teachers.py`` (trained first if their weights are missing). The MTCNN
nets (facenet-pytorch's weights, shipped) have no task data: they are judged by output drift
(smallest model whose every head keeps cosine >= 0.99 on the 1,024 probes).

Targets (what we aim at, judged per row): with data, the shipped model (after fine-tuning, where
the row fine-tunes) keeps test top-1 within 1 point of the original's (the selection used the
validation split) with at most half the original's non-zero parameters; by drift, at most 80 %
of the non-zero parameters.
Exit status 1 when a run crashed, 0 otherwise (a MISS is not a failure).
"""

from __future__ import annotations

import argparse
import json
import shutil
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

NAME = "compress_magnitude"
NAS = [sys.executable, "-m", "nas.cli.main"]
WORK = ROOT / "build" / "bench" / NAME
WEIGHTS = ROOT / "compress" / "data" / "weights"


@dataclass(frozen=True)
class Config:
    """One compression run: a checkpoint, how it is judged, and the selection settings."""

    name: str
    teacher: str | None  # a bench/teachers.py teacher name, or None for a shipped checkpoint
    checkpoint: str | None = None  # shipped checkpoint (with arch)
    arch: str | None = None
    data: str | None = None
    budget: int = 40
    max_drop: float = 1.0
    finetune_epochs: int = 0
    params_target: float = 0.5  # selected non-zero params / original's, at most
    judge_drop: float = 1.0  # test top-1 points the shipped model may lose (target)


CONFIGS = (
    Config("resnet20-mnist", "resnet20-mnist", data="mnist"),
    # select within 4 points, then distil: does fine-tuning bring a smaller model back within 1?
    Config(
        "resnet20-mnist-drop4-ft", "resnet20-mnist", data="mnist", max_drop=4.0, finetune_epochs=5
    ),
    Config("resnet32-mnist", "resnet32-mnist", data="mnist"),
    Config("vgg11-w0.5-mnist", "vgg11-w0.5-mnist", data="mnist"),
    Config("mobilenetv2-w0.5-mnist", "mobilenetv2-w0.5-mnist", data="mnist"),
    Config("mtcnn-onet-drift", None, "onet.pt", "mtcnn_onet", params_target=0.8),
    Config(
        "mtcnn-onet-drift-ft", None, "onet.pt", "mtcnn_onet", finetune_epochs=3, params_target=0.8
    ),
    Config("mtcnn-rnet-drift", None, "rnet.pt", "mtcnn_rnet", params_target=0.8),
)


def checkpoint(c: Config) -> Path:
    if c.teacher is None:
        assert c.checkpoint is not None
        return WEIGHTS / c.checkpoint
    return teacher_weights(c.teacher)


def run(c: Config, seed: int) -> dict[str, Any]:
    out = WORK / f"{c.name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ckpt = checkpoint(c)
    cmd = [*NAS, "compress", str(ckpt), "--budget", str(c.budget), "--seed", str(seed)]
    cmd += ["--storage", f"sqlite:///{out / 'study.db'}", "--out", str(out), "--int8", "--json"]
    cmd += ["--arch", c.arch] if c.arch else []
    cmd += ["--data", c.data, "--max-drop", str(c.max_drop)] if c.data else []
    cmd += ["--finetune-epochs", str(c.finetune_epochs)] if c.finetune_epochs else []
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    o, s = report["original"], report["selected"]
    row: dict[str, Any] = {
        "config": c.name,
        "seed": seed,
        "checkpoint": str(ckpt.relative_to(ROOT)),
        "data": c.data,
        "budget": c.budget,
        "evaluated": report["evaluated"],
        "strategy": report["strategy"],
        "selection": report["selection"]["rule"],
        "finetune_epochs": c.finetune_epochs,
        "max_drop": c.max_drop,
        "judge_drop": c.judge_drop,
        "params_target": c.params_target,
        "original": _condense(o),
        "selected": None
        if s is None
        else {"trial": s["trial"], "params": s["params"]} | _condense(s),
        "int8": None if s is None or not s.get("int8") else _condense(s["int8"]),
        "front_size": len(report["front"]),
        "wall_seconds": round(wall, 1),
        "date": now_iso(),
        "git_commit": git_commit(),
        "machine": machine(),
    }
    return row


KEEP = (
    "params_m",
    "nnz_params_m",
    "macs_m",
    "nnz_macs_m",
    "sparsity",
    "val_top1",
    "test_top1",
    "cosine",
    "latency_ms",
    "onnx_latency_ms",
    "bytes",
)


def _condense(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in KEEP if k in d and d[k] is not None}


def verdict(r: dict[str, Any]) -> str:
    s, o = r["selected"], r["original"]
    if s is None:
        return "MISS (nothing selected)"
    small = s["nnz_params_m"] <= r["params_target"] * o["nnz_params_m"]
    if r["data"]:
        # the selection drop bar, on the test split
        drop = o["test_top1"] - s["test_top1"]
        return "PASS" if small and drop <= r.get("judge_drop", r["max_drop"]) else "MISS"
    return "PASS" if small else "MISS"


def _f(v: Any, fmt: str) -> str:
    return fmt.format(v) if isinstance(v, int | float) else "–"


def _arrow(o: dict[str, Any], s: dict[str, Any], key: str, fmt: str) -> str:
    return f"{_f(o.get(key), fmt)} → {_f(s.get(key), fmt)}"


def report(where: Path, md: Path) -> None:
    records = sorted(read_results(where), key=lambda r: (r["config"], r["seed"]))
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    text = (
        "# `nas compress --method magnitude`\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in records})) or '–'}\n"
        "- Every run: default strategy (TPE), objectives top1 (or output cosine) and non-zero "
        "parameters, `--int8`; one seed per row unless stated.\n"
        "- Quality: test top-1 (%) of the MNIST-5k test split (1,000 images; the selection used "
        "the 500-image validation split), or the smallest per-head output cosine similarity "
        "to the original on 512 noise + 512 digit-crop probes.\n"
        "- Latency: median of 30 runs after 10 warm-ups, batch 1, all cores of this CPU; torch "
        "eager and onnxruntime (FP32 and the INT8 QDQ model).\n"
        "- Target: the shipped model within 1 point of the original's test top-1 and <= 50 % of "
        "its non-zero parameters (by drift: cosine >= 0.99 and <= 80 %). Rows named `-ft` "
        "distil the selected model from the original; `drop4` selects within 4 points first.\n\n"
    )
    rows = []
    for r in records:
        o, s, q = r["original"], r["selected"] or {}, r["int8"] or {}
        quality = "test_top1" if r["data"] else "cosine"
        qf = "{:.2f}" if r["data"] else "{:.4f}"
        rows.append(
            [
                r["config"],
                str(r["seed"]),
                f"{r['evaluated']}/{r['budget']}",
                json.dumps(s.get("params")) if s else "–",
                _f(o.get(quality), qf),
                _f(s.get(quality), qf),
                _f(q.get(quality), qf),
                f"{_f(o['nnz_params_m'], '{:.4f}')} → {_f(s.get('nnz_params_m'), '{:.4f}')}",
                f"{_f(o['macs_m'], '{:.2f}')} → {_f(s.get('macs_m'), '{:.2f}')}",
                f"{_f(o.get('nnz_macs_m'), '{:.2f}')} → {_f(s.get('nnz_macs_m'), '{:.2f}')}",
                f"{_f(o.get('latency_ms'), '{:.3f}')} → {_f(s.get('latency_ms'), '{:.3f}')}",
                _arrow(o, s, "onnx_latency_ms", "{:.3f}")
                + f" / {_f(q.get('latency_ms'), '{:.3f}')}",
                verdict(r),
                f"{r['wall_seconds'] / 60:.1f}",
            ]
        )
    text += md_table(
        [
            "config",
            "seed",
            "evals",
            "selected",
            "orig. quality",
            "selected",
            "INT8",
            "nnz params (M)",
            "MACs (M)",
            "nnz MACs (M)",
            "torch ms",
            "ORT ms (FP32 / INT8)",
            "result",
            "min",
        ],
        rows,
    )
    if not records:
        text += "\nNo configuration run yet.\n"
    write_text_atomic(md, text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated configuration names")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--max-minutes", type=float, default=None, help="start no run after")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {c.name for c in CONFIGS}
    if unknown:
        ap.error(f"unknown configuration {sorted(unknown)[0]}; known: {[c.name for c in CONFIGS]}")
    where, md = RESULTS / NAME, RESULTS / f"{NAME}.md"
    deadline, failed = Deadline(args.max_minutes), 0
    jobs = [(c, s) for c in CONFIGS if not wanted or c.name in wanted for s in range(args.seeds)]
    for c, seed in [] if args.report_only else jobs:
        path = where / f"{c.name}-seed{seed}.json"
        if path.exists() or deadline.passed():
            continue
        print(f"[{now_iso()}] {c.name} seed {seed} ...", flush=True)
        try:
            write_json_atomic(path, run(c, seed))
        except Exception:  # one crashed run must not stop the rest
            traceback.print_exc()
            failed += 1
        report(where, md)
    report(where, md)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
