"""Lookup tables of resnet50 and mobilenetv3 on this CPU against measurement.

Usage::

    python bench/latency_cpu.py [--supernets mobilenetv3,resnet50] [--n 50] [--ship]

For each supernet: build this CPU's per-block table (every distinct block timed once: median of
30 runs after 10 warm-ups, batch 1, all cores; the constant fitted on 10 whole sub-networks),
then measure 50 other random sub-networks whole under the same protocol and compare: Spearman,
Kendall τ, MAPE, share within ±10%, the noise floor (spread of 10 repeated medians of one
sub-network), and predictions per second against measurements per second. Target: ±10%
accuracy ≥ 95% at ≥ 100× the speed of measuring (against the noise floor when it exceeds 5%).

Resumable: one JSON per supernet in ``bench/results/latency_cpu/``; tables are cached in
``build/bench/nas_home`` (``$NAS_HOME``). ``--ship`` copies the tables into
``predictors/data/lut/`` so that ``--hw cpu`` on a machine of the same CPU, threads and torch
version starts without building. Rebuilds ``bench/results/latency_cpu.md`` at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from _common import (
    RESULTS,
    ROOT,
    describe_machine,
    git_commit,
    machine,
    md_table,
    now_iso,
    read_results,
    write_json_atomic,
    write_text_atomic,
)

NAME = "latency_cpu"
FOLDER = RESULTS / NAME
os.environ.setdefault("NAS_HOME", str(ROOT / "build" / "bench" / "nas_home"))


def run(supernet: str, n: int, ship: bool) -> dict[str, Any]:
    from nas.predictors.check import check_latency
    from nas.predictors.hardware import measured_profile
    from nas.predictors.latency import measure_kwargs, resolve_latency, table_path
    from nas.supernets import load_supernet

    net = load_supernet(supernet)
    profile = measured_profile("cpu", device="cpu")
    cached = table_path(net, profile).is_file()
    t0 = time.monotonic()
    lat = resolve_latency(net, "cpu")
    build_s = time.monotonic() - t0
    assert lat.table is not None
    if ship:
        dest = ROOT / "predictors" / "data" / "lut" / table_path(net, profile).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(table_path(net, profile), dest)
    res = check_latency(net, lat, measure_kwargs(profile), n=n, seed=1)
    res.pop("rows")
    return res | {
        "supernet": supernet,
        "blocks": len(lat.table.entries),
        "constant_ms": lat.table.constant_ms,
        "table_seconds": None if cached else round(build_s, 1),
        "date": now_iso(),
        "git_commit": git_commit(),
        "machine": machine(),
    }


def report() -> None:
    records = sorted(read_results(FOLDER), key=lambda r: r["supernet"])
    rows, targets = [], []
    for r in records:
        q, nf = r["quality"], r.get("noise_floor", {})
        rows.append(
            [
                r["supernet"],
                str(r["blocks"]),
                "–" if r["table_seconds"] is None else f"{r['table_seconds'] / 60:.1f}",
                f"{r['constant_ms']:+.3f}",
                str(r["n"]),
                f"{q['spearman']:.3f}",
                f"{q['kendall']:.3f}",
                f"{q['mape']:.1f}",
                f"{q['within10']:.0f}",
                f"{nf.get('spread_pct', float('nan')):.1f} / {nf.get('cv_pct', float('nan')):.1f}",
                f"{r['predictions_per_s']:.0f}",
                f"{r['measurements_per_s']:.2f}",
                f"{r['speedup']:.0f}×",
            ]
        )
        floor = nf.get("spread_pct", 0.0)
        ok = q["within10"] >= 95.0 and r["speedup"] >= 100
        note = f" (noise floor {floor:.1f}% > 5%)" if floor > 5 else ""
        targets.append(
            [
                f"{r['supernet']}: ±10% ≥ 95% at ≥ 100× measuring",
                f"{q['within10']:.0f}% at {r['speedup']:.0f}×{note}",
                "PASS" if ok else "MISS",
            ]
        )
    machines = sorted({describe_machine(r["machine"]) for r in records}) or [
        describe_machine(machine())
    ]
    text = (
        "# Latency lookup tables on this CPU against measurement\n\n"
        f"Written {now_iso()} by `python bench/{NAME}.py` from {len(records)} result files.\n\n"
        f"- Machine: {'; '.join(machines)}\n"
        f"- git commit: {', '.join(sorted({str(r['git_commit']) for r in records})) or '–'}\n"
        "- Protocol: torch eager, batch 1, all cores, median of 30 runs after 10 warm-ups, per "
        "block and per whole sub-network; 50 random sub-networks (seed 1) not used to fit the "
        "constant (seed 0).\n"
        "- Noise floor: (max − min) / median and CV of 10 repeated medians of one mid-latency "
        "sub-network.\n\n"
    )
    text += md_table(
        [
            "supernet",
            "blocks",
            "table build min",
            "constant ms",
            "n",
            "Spearman",
            "Kendall τ",
            "MAPE %",
            "±10 %",
            "noise floor spread / CV %",
            "predictions/s",
            "measurements/s",
            "speed-up",
        ],
        rows,
    )
    if targets:
        text += "\n## Targets\n\n" + md_table(["target", "achieved", "result"], targets)
    write_text_atomic(RESULTS / f"{NAME}.md", text)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--supernets", default="mobilenetv3,resnet50")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--ship", action="store_true")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    for name in [] if args.report_only else args.supernets.split(","):
        path = FOLDER / f"{name}.json"
        if path.exists():
            continue
        print(f"[{now_iso()}] {name} ...", flush=True)
        write_json_atomic(path, run(name, args.n, args.ship))
        report()
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
