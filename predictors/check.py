"""How good is a supernet latency predictor here: predict and measure random sub-networks.

``nas hw check`` and the latency benchmark both call :func:`check_latency`: it samples
sub-networks, predicts each one's latency and measures it under the same protocol as the table
(batch, threads, back end), then reports Spearman, Kendall τ, MAPE and the share within ±10%
(nn-Meter's headline figure), the measurement noise floor, and how much faster predicting is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from nas.compress.arch import build
from nas.predictors.latency import SubnetLatency
from nas.supernets.elastic import ElasticSupernet

Progress = Callable[[int, int], None]


def check_latency(
    net: ElasticSupernet,
    latency: SubnetLatency,
    measure: Mapping[str, Any],
    *,
    n: int = 50,
    seed: int = 0,
    noise_repeats: int = 10,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predict and measure ``n`` random sub-networks; quality, noise floor and speeds.

    Args:
        net: the supernet (shapes only; weights do not change latency).
        latency: the predictor under test.
        measure: :func:`nas.predictors.measure.measure_latency` arguments (device, batch, ...).
        n: sub-networks.
        seed: their seed.
        noise_repeats: repeated medians of one sub-network for the noise floor (0: skip).
        progress: called as ``progress(done, n)``.
    """
    import torch

    from nas.predictors.measure import measure_latency, noise_floor
    from nas.predictors.quality import quality

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    t_pred = t_meas = 0.0
    for i in range(n):
        p = net.sample(rng)
        r = int(p["r"])
        shape = (net.preprocessing.channels, r, r)
        t0 = time.perf_counter()
        torch.manual_seed(i)
        model = build(net.arch_spec(p)).eval()
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        pred = latency(net, p, model)
        # a table predicts from the params alone; the roofline needs the built model too
        t_pred += time.perf_counter() - t0 + (0.0 if latency.table is not None else t_build)
        t0 = time.perf_counter()
        meas = measure_latency(model, shape, **measure).median_ms
        t_meas += time.perf_counter() - t0 + t_build
        rows.append({"params": p, "predicted_ms": pred, "measured_ms": meas})
        if progress is not None:
            progress(i + 1, n)
    q = quality([r["measured_ms"] for r in rows], [r["predicted_ms"] for r in rows])
    out: dict[str, Any] = {
        "hardware": latency.hardware,
        "source": latency.source,
        "label": latency.label,
        "n": n,
        "seed": seed,
        "measure": dict(measure),
        "quality": q,
        "predictions_per_s": n / t_pred if t_pred > 0 else float("inf"),
        "measurements_per_s": n / t_meas if t_meas > 0 else float("inf"),
        "rows": rows,
    }
    out["speedup"] = out["predictions_per_s"] / out["measurements_per_s"]
    if noise_repeats >= 2 and rows:
        mid = sorted(rows, key=lambda r: r["measured_ms"])[len(rows) // 2]["params"]
        r = int(mid["r"])
        torch.manual_seed(0)
        model = build(net.arch_spec(mid)).eval()
        nf = noise_floor(
            model, (net.preprocessing.channels, r, r), repeats=noise_repeats, **measure
        )
        out["noise_floor"] = {
            "spread_pct": nf.spread_pct,
            "cv_pct": nf.cv_pct,
            "median_ms": nf.median_ms,
            "medians_ms": list(nf.medians_ms),
        }
    return out
