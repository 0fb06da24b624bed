"""``nas predictor fit``: measure sub-networks, fit an accuracy predictor, report its quality."""

from __future__ import annotations

import json
import math
from pathlib import Path

from nas.cli.output import err, out
from nas.search.errors import UserError


def fit_predictor(
    supernet: str,
    weights: str,
    data: str,
    samples: int,
    seed: int,
    out_path: Path,
    device: str,
    as_json: bool,
) -> None:
    """Fit the accuracy predictor of ``supernet`` with ``weights`` on ``data`` and save it."""
    from nas.supernets import FAMILIES
    from nas.supernets.subnet_task import SubnetTask

    if supernet not in FAMILIES:
        raise UserError(
            f"accuracy predictors are fitted on elastic supernets; known: {', '.join(FAMILIES)}"
        )
    if samples < 5:
        raise UserError("--samples must be at least 5 (quality is measured by 5-fold CV)")
    task = SubnetTask(supernet, weights=weights, data=data, accuracy="measured", device=device)
    model = task.fit_accuracy(samples, seed, cache=False)
    model.save(out_path)
    report = {
        "file": str(out_path),
        "kind": model.kind,
        "samples": len(model.y),
        "top1_range": [float(model.y.min()), float(model.y.max())],
        "out_of_fold": {k: v for k, v in model.holdout.items() if math.isfinite(v)},
    }
    if as_json:
        out.print_json(json.dumps(report))
        return
    err.print(f"accuracy predictor: {model.describe()}", markup=False, highlight=False)
    q = model.holdout
    if q:
        err.print(
            f"  out-of-fold on {int(q['n'])}: Spearman {q['spearman']:.3f}, Kendall "
            f"{q['kendall']:.3f}, MAPE {q['mape']:.2f}%, within ±10% {q['within10']:.1f}%",
            markup=False,
            highlight=False,
        )
    err.print(
        f"  measured top-1 {model.y.min():.2f}–{model.y.max():.2f}% ; wrote {out_path}",
        markup=False,
        highlight=False,
    )
