"""Build the lookup tables that ship in the package: ``python -m nas.predictors.build_tables``.

Runs with torch alone (no optuna, scikit-learn or the CLI), so a bare GPU machine can build
them: ``bench/profile_gpu.sh`` makes the ``nas`` package importable from a source tree and calls
this. Each table is written as ``<supernet>-<card>-b<batch>.json.gz`` into ``--out`` (default:
the package's ``predictors/data/lut``), the card named as the roofline module names GPUs
(``h100``, ``a100``, ...), else from the device name.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from nas.predictors.hardware import measured_profile
from nas.predictors.lut import build_table
from nas.supernets.families import load_supernet

log = logging.getLogger("nas")


def card_name(device: str) -> str:
    """A short name of this machine's card (``h200``), or ``cpu``."""
    if not device.startswith("cuda"):
        return "cpu"
    from nas.predictors.roofline import match_gpu

    name = torch.cuda.get_device_name(torch.device(device))
    return match_gpu(name) or re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--supernets", default="resnet50,mobilenetv3")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "lut")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    card = card_name(args.device)
    summary = []
    for name in args.supernets.split(","):
        net = load_supernet(name)
        prof = measured_profile(card, device=args.device, batch_size=args.batch_size)
        t0 = time.monotonic()
        table = build_table(
            net,
            hardware=asdict(prof) | {"resolutions": list(net.resolutions)},
            device=args.device,
            batch_size=args.batch_size,
            warmup=args.warmup,
            runs=args.runs,
        )
        path = args.out / f"{name}-{card}-b{args.batch_size}.json.gz"
        table.save(path)
        rows = table.calibration
        errs = [
            abs(r["sum_ms"] + table.constant_ms - r["measured_ms"]) / r["measured_ms"] for r in rows
        ]
        summary.append(
            {
                "supernet": name,
                "file": str(path),
                "blocks": len(table.entries),
                "constant_ms": table.constant_ms,
                "seconds": round(time.monotonic() - t0, 1),
                "calibration_mape_pct": 100 * sum(errs) / max(1, len(errs)),
                "calibration_measured_ms": [r["measured_ms"] for r in rows],
                "gpu": prof.gpu_model,
                "torch": prof.torch_version,
            }
        )
        log.info("%s", json.dumps(summary[-1]))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
