"""Training-free metrics on NAS-Bench-201: agreement with NASLib, and scores for every cell class.

Usage::

    python bench/zc_nb201.py --check [--data cifar10,cifar100] [--metrics a,b] [--limit N]
        [--max-minutes M] [--report-only]
    python bench/zc_nb201.py --score [--shards A:B] [--workers 1]

``--check``: for every architecture of NASLib's zero-cost file (``bench/data/
zc_nb201_naslib.csv.gz``, about 725 per data set) build the NAS-Bench-201 network (10 classes
for cifar10, 100 for cifar100; torch's initialisation from seed 0), score it with our metrics
on :func:`reference_batch` (16 MNIST digits at 32×32, seed 0; NASLib used CIFAR batches, so
only rankings are compared) and write ``bench/results/training_free_check.md``: per metric the
Spearman correlation between our scores and NASLib's (``jacob_cov`` against ``jacov``,
``naswot`` against ``nwot``), of each with ``val_accuracy``, n (architectures where both are
finite) and our seconds per architecture. Target: the data-free metrics (synflow, params,
flops) reach Spearman ≥ 0.95 with NASLib's. Resumable: one JSON per (data set, block of 50
architectures, code version, metric set) in ``bench/results/training_free_check/``; ``--limit``
stops after the blocks holding the first N architectures.

``--score``: all metrics of one representative (lowest row) per cell class of
:func:`nas.supernets.nb201.cell_classes` (cut-off cells skipped), 10-class head, batch 16, as
``bench/data/zc_nb201/shard-XXX.csv.gz`` of 250 representatives each (columns ``index``,
``arch_str``, the metrics, ``seconds`` of all metrics together) and
``bench/data/zc_nb201/meta.json`` (code version, batch, seed, metrics, and per shard the torch
version, CPU and time). A shard whose file exists with the current :data:`VERSION` in
``meta.json`` is skipped; shards are written atomically.
``--shards A:B`` does shards A to B-1; ``--workers`` processes, one torch thread each. The
cells of a class share the function, not always the size: ``params``, ``flops`` and ``naswot``
are the representative's (see :func:`~nas.supernets.nb201.cell_classes`).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
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

from nas.supernets.nb201 import ZERO_COST_METRICS

#: bump whenever the metric code or the networks change: stored results are then recomputed
VERSION = 1
NAME = "training_free_check"
FOLDER = RESULTS / NAME
NASLIB_CSV = ROOT / "bench" / "data" / "zc_nb201_naslib.csv.gz"
SCORES = ROOT / "bench" / "data" / "zc_nb201"
#: the metrics scored, in column order (the package's list, which the shipped file follows)
METRICS = ZERO_COST_METRICS
DATA_FREE = ("synflow", "params", "flops")
#: our metric -> NASLib's column
NASLIB_NAME = {"naswot": "nwot", "jacob_cov": "jacov"}
EDGES = ("e01", "e02", "e12", "e03", "e13", "e23")
CLASSES = {"cifar10": 10, "cifar100": 100}
BATCH, SEED, BLOCK, SHARD = 16, 0, 50, 250


# -- scoring -------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _batch() -> tuple[Any, Any]:
    from nas.predictors.zero_cost import reference_batch

    return reference_batch(BATCH, 32, SEED)


def score_arch(
    arch: dict[str, str] | str, classes: int, metrics: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """Scores and seconds per metric of one architecture (network initialised from SEED)."""
    import torch

    from nas.predictors.zero_cost import score
    from nas.supernets.nb201_net import nb201_network

    x, y = _batch()
    torch.manual_seed(SEED)
    net = nb201_network(arch, num_classes=classes)
    values, seconds = {}, {}
    for m in metrics:
        t0 = time.perf_counter()
        values[m] = score(m, net, x, y)
        seconds[m] = time.perf_counter() - t0
    return values, seconds


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


# -- --check -------------------------------------------------------------------------------------
def naslib_rows(dataset: str) -> list[dict[str, Any]]:
    """NASLib's architectures of ``dataset`` with val_accuracy and their scores, in file order."""
    with gzip.open(NASLIB_CSV, "rt", newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["dataset"] == dataset]


def check_block(dataset: str, block: int, metrics: Sequence[str]) -> dict[str, Any]:
    rows = naslib_rows(dataset)[block * BLOCK : (block + 1) * BLOCK]
    out = []
    for r in rows:
        values, seconds = score_arch({e: r[e] for e in EDGES}, CLASSES[dataset], metrics)
        finite = {m: v if math.isfinite(v) else None for m, v in values.items()}  # NaN: null
        out.append({"arch": r["naslib_arch"], "ours": finite, "seconds": seconds})
    return {
        "dataset": dataset,
        "block": block,
        "version": VERSION,
        "metrics": list(metrics),
        "rows": out,
        "date": now_iso(),
        "git_commit": git_commit(),
        "machine": machine(),
        "torch": _torch_version(),
    }


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, float | int) and math.isfinite(v)


def _spearman(a: Sequence[float], b: Sequence[float]) -> tuple[float, int]:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _finite(x) and _finite(y)]
    if len(pairs) < 3:
        return math.nan, len(pairs)
    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return float(rho), len(pairs)


def _fmt(v: float) -> str:
    return "–" if not math.isfinite(v) else f"{v:+.3f}"


def report() -> None:
    records = [r for r in read_results(FOLDER) if r.get("version") == VERSION]
    text = (
        "# Training-free metrics on NAS-Bench-201 against NASLib\n\n"
        f"Written {now_iso()} by `python bench/zc_nb201.py --check` from {len(records)} result "
        f"files (code version {VERSION}).\n\n"
        f"- Machine: {'; '.join(sorted({describe_machine(r['machine']) for r in records}))}; "
        "one torch thread\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in records})) or '–'}\n"
        f"- Ours: NAS-Bench-201 networks (C=16, N=5) with torch's initialisation from seed {SEED}"
        f", scored on `reference_batch({BATCH})` (MNIST digits, 32×32, 3 channels, seed {SEED}"
        ", their labels). NASLib: its published scores (CIFAR batches, its own initialisation"
        "), `bench/data/zc_nb201_naslib.csv.gz`.\n"
        "- ρ: Spearman rank correlation over the architectures where both values are finite "
        "(n); s/arch: our seconds per architecture for that metric.\n\n"
    )
    targets = []
    for dataset in CLASSES:
        recs = [r for r in records if r["dataset"] == dataset]
        if not recs:
            continue
        naslib = {r["naslib_arch"]: r for r in naslib_rows(dataset)}
        merged: dict[str, dict[str, Any]] = {}
        for r in recs:  # files of other metric sets add their metrics to the same rows
            for row in r["rows"]:
                m = merged.setdefault(row["arch"], {"arch": row["arch"], "ours": {}, "seconds": {}})
                m["ours"] |= row["ours"]
                m["seconds"] |= row["seconds"]
        ours = list(merged.values())
        text += f"## {dataset} ({len(ours)} of {len(naslib)} architectures)\n\n"
        table = []
        for m in METRICS:
            have = [row for row in ours if m in row["ours"]]
            if not have:
                continue
            col = NASLIB_NAME.get(m, m)
            mine = [row["ours"][m] for row in have]
            theirs = [float(naslib[row["arch"]][col]) for row in have]
            acc = [float(naslib[row["arch"]]["val_accuracy"]) for row in have]
            rho, n = _spearman(mine, theirs)
            rho_acc, _ = _spearman(mine, acc)
            rho_theirs, _ = _spearman(theirs, acc)
            secs = sum(row["seconds"][m] for row in have) / len(have)
            nan = sum(not _finite(v) for v in mine)
            table.append(
                [
                    m,
                    col,
                    f"{n}" + (f" ({nan} NaN)" if nan else ""),
                    _fmt(rho),
                    _fmt(rho_acc),
                    _fmt(rho_theirs),
                    f"{secs:.3f}",
                ]
            )
            if m in DATA_FREE:
                ok = math.isfinite(rho) and rho >= 0.95
                targets.append(
                    [f"{dataset} {m}: ρ with NASLib ≥ 0.95", _fmt(rho), "PASS" if ok else "MISS"]
                )
        header = ["metric", "NASLib", "n", "ρ ours–NASLib", "ρ ours–val acc"]
        text += md_table([*header, "ρ NASLib–val acc", "s/arch"], table) + "\n"
    if targets:
        text += "## Targets\n\n" + md_table(["target", "achieved", "result"], targets)
    write_text_atomic(RESULTS / f"{NAME}.md", text)


def run_check(
    datasets: Sequence[str], metrics: Sequence[str], limit: int | None, dl: Deadline
) -> None:
    tag = "all" if list(metrics) == list(METRICS) else "-".join(metrics)
    for dataset in datasets:
        n = len(naslib_rows(dataset)) if limit is None else limit
        for block in range(math.ceil(n / BLOCK)):
            path = FOLDER / f"{dataset}-{block:03d}-v{VERSION}-{tag}.json"
            if path.exists() or dl.passed():
                continue
            print(f"[{now_iso()}] {dataset} block {block} ...", flush=True)
            write_json_atomic(path, check_block(dataset, block, metrics))
            report()
    report()


# -- --score -------------------------------------------------------------------------------------
def representatives() -> list[tuple[int, str]]:
    """(NAS-Bench-201 row, arch string) of the lowest row of every cell class."""
    from nas.supernets.nb201 import class_representatives, load_table

    table = load_table()
    return [(int(i), table.arch[int(i)]) for i in class_representatives()]


def score_shard(shard: int) -> tuple[int, str, float]:
    """The CSV text of one shard, with its wall time."""
    t0 = time.perf_counter()
    reps = representatives()[shard * SHARD : (shard + 1) * SHARD]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "arch_str", *METRICS, "seconds"])
    for index, arch in reps:
        values, seconds = score_arch(arch, 10, METRICS)
        total = sum(seconds.values())
        writer.writerow([index, arch, *(repr(values[m]) for m in METRICS), f"{total:.3f}"])
    return shard, buf.getvalue(), time.perf_counter() - t0


def _write_gz_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(text.encode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_meta() -> dict[str, Any]:
    try:
        meta = json.loads((SCORES / "meta.json").read_text())
    except (OSError, ValueError):
        return {"shards": {}}
    return meta if meta.get("version") == VERSION else {"shards": {}}


def run_score(shards: range, workers: int) -> None:
    meta = _read_meta()
    todo = [
        s
        for s in shards
        if not ((SCORES / f"shard-{s:03d}.csv.gz").exists() and f"{s:03d}" in meta["shards"])
    ]
    meta |= {
        "version": VERSION,
        "batch": BATCH,
        "seed": SEED,
        "classes": 10,
        "data": f"reference_batch({BATCH}, 32, {SEED}): MNIST-5k digits",
        "metrics": list(METRICS),
        "shard_size": SHARD,
        "representatives": len(representatives()),
    }
    print(f"[{now_iso()}] {len(todo)} shards to score: {todo}", flush=True)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, workers), initializer=_init_worker) as pool:
        for shard, text, wall in pool.imap_unordered(score_shard, todo):
            _write_gz_atomic(SCORES / f"shard-{shard:03d}.csv.gz", text)
            rows = text.count("\n") - 1
            meta["shards"][f"{shard:03d}"] = {
                "rows": rows,
                "seconds": round(wall, 1),
                "seconds_per_arch": round(wall / max(rows, 1), 3),
                "torch": _torch_version(),
                "cpu": describe_machine(machine()),
                "git_commit": git_commit(),
                "date": now_iso(),
            }
            write_json_atomic(SCORES / "meta.json", meta)
            print(f"[{now_iso()}] shard {shard}: {rows} rows, {wall / rows:.2f} s/arch", flush=True)


def _shard_range(text: str) -> range:
    total = math.ceil(len(representatives()) / SHARD)
    if not text:
        return range(total)
    a, _, b = text.partition(":")
    return range(int(a or 0), min(total, int(b) if b else total))


#: the merged scores in the package: what ``nas search --supernet nb201 --strategy robot`` uses
SHIPPED = ROOT / "supernets" / "data" / "nb201_zero_cost.csv.gz"


def ship() -> int:
    """Merge every shard into :data:`SHIPPED` (index + metrics, 7 significant digits).

    Refuses while shards are missing, so the package never holds a partial table.
    """
    from nas.supernets.nb201 import class_representatives

    want = len(class_representatives())
    rows: list[dict[str, str]] = []
    for path in sorted(SCORES.glob("shard-*.csv.gz")):
        with gzip.open(path, "rt", newline="") as fh:
            rows.extend(csv.DictReader(fh))
    if len(rows) != want:
        print(f"--ship: {len(rows)} of {want} representatives scored; finish --score first")
        return 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", *ZERO_COST_METRICS])
    for r in sorted(rows, key=lambda r: int(r["index"])):
        w.writerow([r["index"], *(_sig(r[m]) for m in ZERO_COST_METRICS)])
    tmp = SHIPPED.with_name(f".{SHIPPED.name}.tmp")
    with gzip.open(tmp, "wt", compresslevel=9, newline="") as fh:
        fh.write(buf.getvalue())
    os.replace(tmp, SHIPPED)
    print(f"wrote {SHIPPED} ({len(rows)} classes, {SHIPPED.stat().st_size / 1e3:.0f} kB)")
    return 0


def _sig(text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return ""
    return "" if v != v else f"{v:.7g}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--score", action="store_true")
    mode.add_argument("--report-only", action="store_true")
    mode.add_argument("--ship", action="store_true", help="merge the shards into the package")
    ap.add_argument("--data", default="cifar10")
    ap.add_argument("--metrics", default=",".join(METRICS))
    ap.add_argument("--limit", type=int, default=None, help="first N architectures, in blocks")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--shards", default="", help="A:B, shards A to B-1 (--score)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    _init_worker()
    if args.report_only:
        report()
    elif args.ship:
        return ship()
    elif args.check:
        metrics = [m for m in METRICS if m in args.metrics.split(",")]
        run_check(args.data.split(","), metrics, args.limit, Deadline(args.max_minutes))
    else:
        run_score(_shard_range(args.shards), args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
