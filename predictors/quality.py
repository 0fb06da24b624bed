"""How good a latency predictor is: rank correlations and relative errors on measured points."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["quality"]


def quality(measured: npt.ArrayLike, predicted: npt.ArrayLike) -> dict[str, float]:
    """Quality of ``predicted`` against ``measured`` (same units, same order).

    Returns:
        ``spearman`` and ``kendall`` (scipy's rank correlations, tau-b; NaN when either side is
        constant), ``mape`` (mean absolute percentage error, %), ``within10`` (% of
        predictions within ±10 % of the measured value: nn-Meter's accuracy) and ``n`` (an int).

    Raises:
        ValueError: different lengths, fewer than 2 points, non-finite values, or a measured
            value that is not positive (relative errors need one).
    """
    from scipy.stats import kendalltau, spearmanr

    y = np.asarray(measured, dtype=float).reshape(-1)
    p = np.asarray(predicted, dtype=float).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"{len(y)} measured values but {len(p)} predictions; give one each")
    if len(y) < 2:
        raise ValueError("quality needs at least 2 points")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("measured and predicted values must be finite")
    if (y <= 0).any():
        raise ValueError("measured latencies must be positive for relative errors")
    rel = np.abs(p - y) / y
    constant = np.ptp(y) == 0 or np.ptp(p) == 0
    return {
        "spearman": math.nan if constant else float(spearmanr(y, p)[0]),
        "kendall": math.nan if constant else float(kendalltau(y, p)[0]),
        "mape": float(100.0 * rel.mean()),
        "within10": float(100.0 * (rel <= 0.1 + 1e-12).mean()),
        "n": len(y),
    }
