"""Accuracy predictors: a surrogate of top-1 fitted on measured candidates of one space.

``--accuracy predicted`` scores candidates with an :class:`AccuracyModel` instead of measuring
each of them: a few sub-networks are measured (trained weights + data), a regression of the
families in :mod:`nas.predictors.surrogates` (ridge, SVR, GP, gradient boosting; chosen by
cross-validated Spearman) is fitted on their one-hot encoding, and every later candidate is
predicted. Its quality is always known: the out-of-fold predictions of the chosen kind give
Spearman, Kendall τ, MAPE and ±10 % (:func:`nas.predictors.quality.quality`)::

    model = AccuracyModel.fit(space, params, top1)    # measured candidates
    model.predict([candidate, ...])                   # top-1 (%)
    model.holdout                                     # {'spearman': ..., 'mape': ..., ...}
    model.save("acc.json"); load_accuracy_model("acc.json").check_space(space)

A file is one JSON document (format ``nas-accuracy-predictor``, a version) holding the space's
choices, the measured candidates and their accuracies; loading refits deterministically, as
:mod:`nas.predictors.learned` does, so nothing is pickled. Only categorical spaces (every
supernet and NAS-Bench-201) can be encoded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import CategoricalDistribution

from nas.predictors.quality import quality
from nas.predictors.surrogates import AUTO_KINDS, Surrogate, _fit, fit_surrogate
from nas.search.space import Params, Space, onehot

__all__ = ["FORMAT", "VERSION", "AccuracyModel", "load_accuracy_model"]

#: the ``format`` field of every accuracy predictor file
FORMAT = "nas-accuracy-predictor"
#: the file version this code writes and reads
VERSION = 1

Choices = dict[str, list[Any]]


@dataclass(frozen=True)
class AccuracyModel:
    """A fitted accuracy predictor for the candidates of one categorical space.

    Attributes:
        choices: the space, as the ordered choices of each dimension.
        params: the measured candidates.
        y: their measured accuracy (%).
        kind: the surrogate kind (chosen by cross-validation unless given).
        seed: seed of the folds and of the random models.
        holdout: quality of out-of-fold predictions of ``kind`` (empty below 5 points).
        surrogate: the model fitted on every measured candidate.
        meta: free JSON-able facts (supernet, weights digest, data, ...).
    """

    choices: Choices
    params: tuple[Params, ...]
    y: np.ndarray
    kind: str
    seed: int
    holdout: dict[str, float]
    surrogate: Surrogate
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        space: Space,
        params: Sequence[Params],
        y: Sequence[float] | np.ndarray,
        kind: str = "auto",
        *,
        seed: int = 0,
        meta: Mapping[str, Any] | None = None,
    ) -> AccuracyModel:
        """Fit on measured candidates ``params`` and their accuracies ``y``.

        Raises:
            ValueError: a non-categorical space, fewer than 2 or mismatched points, non-finite
                accuracies, a candidate outside the space, or an unknown kind.
        """
        choices = _choices(space)
        target = np.asarray(y, dtype=float).reshape(-1)
        if len(target) != len(params):
            raise ValueError(f"{len(params)} candidates but {len(target)} accuracies")
        X = _encode(choices, params)
        s = fit_surrogate(X, target, kind, seed=seed, candidates=AUTO_KINDS)
        holdout = _holdout(X, target, s.kind, seed)
        cleaned = tuple({k: p[k] for k in choices} for p in params)
        return cls(choices, cleaned, target, s.kind, seed, holdout, s, dict(meta or {}))

    def predict(self, params: Sequence[Params]) -> np.ndarray:
        """Predicted accuracy (%) of each candidate, shape ``(len(params),)``.

        Raises:
            ValueError: a candidate outside the model's space.
        """
        if not params:
            return np.zeros(0)
        return self.surrogate.predict(_encode(self.choices, params))

    def check_space(self, space: Space) -> None:
        """Raise ``ValueError`` naming the first dimension where ``space`` differs."""
        other = _choices(space)
        for name in sorted(set(other) | set(self.choices)):
            if other.get(name) != self.choices.get(name):
                raise ValueError(
                    f"the predictor was fitted on another space: dimension {name!r} has "
                    f"choices {self.choices.get(name)} there, {other.get(name)} here"
                )

    def describe(self) -> str:
        """One line: kind, number of measured candidates and out-of-fold quality."""
        q = self.holdout
        tail = (
            f"; out-of-fold Spearman {q['spearman']:.3f}, MAPE {q['mape']:.2f}%"
            if q and math.isfinite(q.get("spearman", math.nan))
            else ""
        )
        return f"{self.kind} fitted on {len(self.y)} measured candidates{tail}"

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (JSON, atomically); return ``path``."""
        import sklearn

        doc = {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "seed": self.seed,
            "choices": self.choices,
            "params": list(self.params),
            "y": [float(v) for v in self.y],
            "holdout": {k: _num(v) for k, v in self.holdout.items()},
            "meta": self.meta,
            "sklearn": sklearn.__version__,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        tmp.replace(path)
        return path


def load_accuracy_model(path: str | Path) -> AccuracyModel:
    """Read a model written by :meth:`AccuracyModel.save` (refitted, deterministically).

    Raises:
        ValueError: (one line naming the file) unreadable, another format or version, corrupt.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read an accuracy predictor ({e})") from None
    found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
    if found != FORMAT:
        raise ValueError(
            f"{path}: not an accuracy predictor file (format {found!r}, expected {FORMAT!r})"
        )
    if doc.get("version") != VERSION:
        raise ValueError(
            f"{path}: accuracy predictor file version {doc.get('version')!r}; "
            f"this nas reads version {VERSION}"
        )
    try:
        choices = {str(k): list(v) for k, v in dict(doc["choices"]).items()}
        params = [dict(p) for p in doc["params"]]
        y = np.asarray(doc["y"], dtype=float)
        kind, seed = str(doc["kind"]), int(doc["seed"])
        X = _encode(choices, params)
        s = fit_surrogate(X, y, kind, seed=seed)
        holdout = {str(k): math.nan if v is None else float(v) for k, v in doc["holdout"].items()}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: corrupt accuracy predictor ({e})") from None
    return AccuracyModel(choices, tuple(params), y, kind, seed, holdout, s, dict(doc["meta"]))


# -- helpers -------------------------------------------------------------------------------------
def _choices(space: Space) -> Choices:
    out: Choices = {}
    for name, dist in space.items():
        if not isinstance(dist, CategoricalDistribution):
            raise ValueError(
                f"accuracy predictors encode categorical spaces; {name!r} is {type(dist).__name__}"
            )
        out[name] = list(dist.choices)
    return out


def _encode(choices: Choices, params: Sequence[Params]) -> np.ndarray:
    space: Space = {k: CategoricalDistribution(v) for k, v in choices.items()}
    for p in params:
        for k, v in choices.items():
            if k not in p or p[k] not in v:
                raise ValueError(f"candidate {dict(p)} is outside the space at {k!r}")
    return onehot(space, params)


def _holdout(X: np.ndarray, y: np.ndarray, kind: str, seed: int) -> dict[str, float]:
    """Quality of 5-fold out-of-fold predictions of ``kind`` (empty below 5 points)."""
    from sklearn.model_selection import KFold

    if len(y) < 5 or np.ptp(y) == 0 or (y <= 0).any():
        return {}
    pred = np.zeros(len(y))
    for train, test in KFold(5, shuffle=True, random_state=seed).split(X):
        mean, scale = float(y[train].mean()), float(y[train].std()) or 1.0
        z = (y[train] - mean) / scale
        pred[test] = _fit(kind, X[train], z, seed).predict(X[test]) * scale + mean
    return {k: float(v) for k, v in quality(y, pred).items()}


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)
