"""The training-free ensemble: several zero-cost metrics combined into one accuracy proxy.

Each metric is normalised to [0, 1] by the minimum and maximum it takes over a *reference* set
of candidates of the same space (RoBoT normalises over its pool the same way), and the
ensemble score is the weighted sum ``Σ w_m · norm_m(score_m) / Σ |w_m|``. The weights are those
RoBoT learned on NAS-Bench-201 with our own metrics (``bench/training_free.py`` writes them to
``predictors/data/ensemble.json``), or equal weights — rank averaging, in effect — when no learned
weights are shipped. Either way the result is a ranking signal, not a percentage, and every
output says so. A metric that is undefined for a candidate (NaN) counts as its reference
minimum.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np

__all__ = ["DEFAULT_METRICS", "FORMAT", "Ensemble", "Reference", "load_ensemble"]

#: the ``format`` field of an ensemble weights file
FORMAT = "nas-zero-cost-ensemble"
VERSION = 1
#: the ensemble's metrics: the cheap ones (a forward, one backward, or counting) so that a
#: 100-candidate search of ResNet50 sub-networks stays within minutes on a CPU; jacob_cov,
#: grad_norm, fisher and grasp cost 2-20x more there
DEFAULT_METRICS: tuple[str, ...] = ("naswot", "synflow", "snip", "flops", "params")


@dataclass(frozen=True)
class Reference:
    """Per-metric minimum and maximum over the reference candidates."""

    low: np.ndarray
    high: np.ndarray

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Scores ``(..., M)`` mapped so the reference spans [0, 1]; NaN becomes 0."""
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        z = (np.asarray(scores, dtype=float) - self.low) / span
        return np.nan_to_num(z, nan=0.0, posinf=1.0, neginf=0.0)


@dataclass(frozen=True)
class Ensemble:
    """A weighted sum of normalised zero-cost metrics.

    Attributes:
        metrics: metric names (see :func:`nas.predictors.zero_cost.list_proxies`).
        weights: one weight per metric, in [-1, 1] (a negative weight ranks a metric reversed).
        source: where the weights come from, e.g. ``robot:nb201-cifar10`` or ``equal``.
    """

    metrics: tuple[str, ...]
    weights: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.metrics) != len(self.weights) or not self.metrics:
            raise ValueError("an ensemble needs one weight per metric, and at least one metric")
        if not any(w != 0 for w in self.weights):
            raise ValueError("an ensemble needs at least one non-zero weight")

    def reference(self, scores: np.ndarray) -> Reference:
        """The normalisation of reference scores ``(n, M)`` (columns in ``metrics`` order).

        Raises:
            ValueError: a wrongly shaped array, or a metric without any finite reference score.
        """
        s = np.asarray(scores, dtype=float)
        if s.ndim != 2 or s.shape[1] != len(self.metrics) or len(s) == 0:
            raise ValueError(f"reference scores must be (n, {len(self.metrics)}), got {s.shape}")
        finite = np.isfinite(s)
        dead = [m for m, ok in zip(self.metrics, finite.any(0), strict=True) if not ok]
        if dead:
            raise ValueError(f"metric(s) {', '.join(dead)} are undefined on every reference")
        low = np.nanmin(np.where(finite, s, np.nan), axis=0)
        high = np.nanmax(np.where(finite, s, np.nan), axis=0)
        return Reference(low, high)

    def combine(self, scores: Mapping[str, float] | np.ndarray, reference: Reference) -> float:
        """The ensemble score of one candidate's metric scores (a mapping or a row)."""
        row = (
            np.array([scores.get(m, math.nan) for m in self.metrics], dtype=float)
            if isinstance(scores, Mapping)
            else np.asarray(scores, dtype=float)
        )
        w = np.asarray(self.weights)
        return float(reference.normalise(row) @ w / np.abs(w).sum())

    def describe(self) -> str:
        """One line: the metrics with their weights and where the weights come from."""
        parts = ", ".join(f"{m} {w:+.2f}" for m, w in zip(self.metrics, self.weights, strict=True))
        how = "equal weights (rank averaging)" if self.source == "equal" else self.source
        return f"ensemble of {parts}; weights: {how}"

    def to_json(self) -> dict[str, object]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "metrics": list(self.metrics),
            "weights": list(self.weights),
            "source": self.source,
        }


def equal_ensemble(metrics: Sequence[str] = DEFAULT_METRICS) -> Ensemble:
    """Every metric with weight 1."""
    return Ensemble(tuple(metrics), tuple(1.0 for _ in metrics), "equal")


def load_ensemble(path: str | Path | None = None) -> Ensemble:
    """The ensemble in ``path``, else the shipped learned one, else :func:`equal_ensemble`.

    Raises:
        ValueError: ``path`` (or the shipped file) is not a valid ensemble file of this version.
    """
    if path is None:
        shipped = Path(str(files("nas.predictors.data").joinpath("ensemble.json")))
        if not shipped.is_file():
            return equal_ensemble()
        path = shipped
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read an ensemble ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} file of version {VERSION}")
    try:
        return Ensemble(
            tuple(str(m) for m in doc["metrics"]),
            tuple(float(w) for w in doc["weights"]),
            str(doc["source"]),
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt ensemble file ({e})") from None
