"""Learned latency predictors: regressions on encoded architectures, and few-shot transfer.

:class:`LatencyModel` fits one device's latency (ms) on encoded rows (see
:func:`nas.predictors.tables.encode`) with a scikit-learn model from
:mod:`nas.predictors.surrogates`; ``kind="auto"`` picks among :data:`AUTO_KINDS` by the
cross-validated Spearman correlation::

    model = LatencyModel.fit(X, y_ms)          # kind chosen by 5-fold CV
    model.predict(X_new)                       # ms, shape (n,)

:func:`fit_transfer` predicts a new device from a few measured rows, using predictions of known
devices (the *sources*) as features, in the spirit of HELP: scaling the best single column, a
non-negative mix of the sources, and ridge on the sources plus summary features, averaged with
weights 1 / (leave-one-out MSE on the few rows). On the benchmark tables the average was steadier
than keeping the single best by the same error (FBNet 1080ti_1, k=10: Spearman 0.87 ± 0.04
against 0.79 ± 0.14).

Files (:meth:`LatencyModel.save`, :func:`load_predictor`) are JSON plus an ``.npz`` of arrays,
never pickles. A scikit-learn estimator cannot be stored without pickle, so a file holds the
training rows, targets, kind and seed, and loading refits the model. The fit is deterministic
(fixed seeds, one BLAS thread), so a loaded model predicts what the saved one did with the
same scikit-learn version; with another version predictions can differ slightly, and the file
records the version it was written with.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.predictors.surrogates import Surrogate, fit_surrogate

__all__ = [
    "AUTO_KINDS",
    "FORMAT",
    "TRANSFER_METHODS",
    "VERSION",
    "LatencyModel",
    "TransferModel",
    "fit_transfer",
    "load_predictor",
]

#: the ``format`` field of every predictor file
FORMAT = "nas-latency-predictor"
#: the file version this code writes and reads
VERSION = 1
#: the kinds ``auto`` compares (``ridge_cv``: ridge with a leave-one-out chosen penalty)
AUTO_KINDS: tuple[str, ...] = ("ridge_cv", "gbm", "mlp", "gp")
#: few-shot methods :func:`fit_transfer` compares
TRANSFER_METHODS: tuple[str, ...] = ("scale", "mix", "ridge")

Meta = dict[str, str | int | float]


@dataclass(frozen=True)
class LatencyModel:
    """A fitted latency predictor for one device.

    Attributes:
        kind: the scikit-learn model (a :data:`nas.predictors.surrogates.KINDS` name).
        seed: seed of the folds and the random models.
        log_target: fitted on ``log(ms)`` instead of ms.
        cv_score: cross-validated Spearman of the chosen kind (NaN when not compared).
        X: the training rows, ``(n, d)``.
        y: the training latencies in ms, ``(n,)``.
        surrogate: the fitted model.
        meta: free JSON-able facts (space, device, batch size, ...).
    """

    kind: str
    seed: int
    log_target: bool
    cv_score: float
    X: np.ndarray
    y: np.ndarray
    surrogate: Surrogate
    meta: Meta = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        y: np.ndarray,
        kind: str = "auto",
        *,
        seed: int = 0,
        log_target: bool = False,
        candidates: Sequence[str] = AUTO_KINDS,
        n_folds: int = 5,
        meta: Mapping[str, str | int | float] | None = None,
    ) -> LatencyModel:
        """Fit on rows ``X`` and latencies ``y`` (ms); ``kind="auto"`` compares ``candidates``.

        ``log_target`` is off by default: on NB201's pixel3 and raspi4 columns, cut-off cells
        measure near 0 ms, and their logs dominated the fit (k=50 Spearman 0.90 → 0.72).

        Raises:
            ValueError: mismatched or non-finite inputs, fewer than 2 rows, an unknown kind,
                or non-positive latencies with ``log_target``.
        """
        X = np.asarray(X, dtype=float)
        y = np.asarray(y, dtype=float).reshape(-1)
        if log_target and not (y > 0).all():
            raise ValueError("log_target needs positive latencies; drop zero or failed rows")
        target = np.log(y) if log_target else y
        s = fit_surrogate(X, target, kind, seed=seed, candidates=tuple(candidates), n_folds=n_folds)
        return cls(s.kind, seed, log_target, s.cv_score, X, y, s, dict(meta or {}))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted latency in ms, shape ``(len(X),)``, never below 0.

        Raises:
            ValueError: rows of another width than the training rows.
        """
        z = self.surrogate.predict(X)
        return np.exp(z) if self.log_target else np.maximum(z, 0.0)

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and its arrays (same name, ``.npz``); return ``path``."""
        arrays = {"X": self.X, "y": self.y}
        fields = {"kind": self.kind, "seed": self.seed, "log_target": self.log_target}
        return _write(
            Path(path), "learned", {**fields, "cv_score": _num(self.cv_score)}, self.meta, arrays
        )

    @classmethod
    def _from_file(cls, head: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> LatencyModel:
        X, y = arrays["X"], arrays["y"]
        log_target = bool(head["log_target"])
        target = np.log(y) if log_target else y
        s = fit_surrogate(X, target, str(head["kind"]), seed=int(head["seed"]))
        cv = head.get("cv_score")
        return cls(
            s.kind,
            int(head["seed"]),
            log_target,
            math.nan if cv is None else float(cv),
            X,
            y,
            s,
            dict(head.get("meta", {})),
        )


@dataclass(frozen=True)
class TransferModel:
    """A few-shot predictor of a new device from known devices' predictions.

    Attributes:
        sources: names of the source columns.
        X: summary features of the measured rows, ``(k, f)`` (may have 0 columns).
        S: source predictions (ms) on the measured rows, ``(k, m)``.
        y: measured latency (ms) on the target device, ``(k,)``.
        loo_error: leave-one-out RMSE (ms) of each method combined.
        meta: free JSON-able facts.
    """

    sources: tuple[str, ...]
    X: np.ndarray
    S: np.ndarray
    y: np.ndarray
    loo_error: dict[str, float]
    meta: Meta = field(default_factory=dict)

    def predict(self, X: np.ndarray, source_predictions: np.ndarray) -> np.ndarray:
        """Predicted latency (ms) of rows with summary ``X`` and source predictions.

        Raises:
            ValueError: when the widths differ from the fitted ones or the row counts differ.
        """
        X, S = _check_transfer(X, source_predictions, self.X.shape[1], self.S.shape[1])
        pred = sum(w * _METHODS[m](self.X, self.S, self.y)(X, S) for m, w in self.weights.items())
        return np.maximum(np.asarray(pred, dtype=float), 0.0)

    @property
    def weights(self) -> dict[str, float]:
        """Weight of each method: 1 / LOO MSE, normalised (only the exact ones if any is 0)."""
        exact = [m for m, e in self.loo_error.items() if e <= 1e-12]
        raw = {m: 1.0 for m in exact} or {m: e**-2 for m, e in self.loo_error.items()}
        total = sum(raw.values())
        return {m: w / total for m, w in raw.items()}

    @property
    def method(self) -> str:
        """The method with the largest weight."""
        weights = self.weights
        return max(weights, key=lambda m: weights[m])

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (JSON) and ``.npz`` arrays beside it, like :meth:`LatencyModel.save`."""
        head = {"sources": list(self.sources), "loo_error": self.loo_error}
        return _write(
            Path(path), "transfer", head, self.meta, {"X": self.X, "S": self.S, "y": self.y}
        )


def fit_transfer(
    target_X: np.ndarray,
    target_y: np.ndarray,
    source_predictions: np.ndarray,
    *,
    sources: Sequence[str] | None = None,
    methods: Sequence[str] = TRANSFER_METHODS,
    meta: Mapping[str, str | int | float] | None = None,
) -> TransferModel:
    """Fit a new device from ``k`` measured rows and predictions of known devices on them.

    Methods, whose predictions are averaged with weights 1 / leave-one-out MSE on the ``k``
    rows (see :attr:`TransferModel.weights`): ``scale`` — a linear fit on the single column
    (source or summary feature) that fits best; ``mix`` — a non-negative mix of the sources plus
    an intercept; ``ridge`` — ridge on the standardised sources and summary features, penalty
    by leave-one-out.

    Args:
        target_X: a few summary features per row, ``(k, f)``, e.g. op or block counts (the
            first 10 columns of the nb201 encoding, the first 17 of fbnet's); ``f`` may be 0.
        target_y: measured latency (ms) on the new device, ``(k,)``.
        source_predictions: known devices' predicted latency (ms) on the same rows, ``(k, m)``.
        sources: names of the ``m`` source columns (default ``s0, s1, ...``).
        methods: the methods to combine (one of them alone: just that method).
        meta: free JSON-able facts stored with the model.

    Raises:
        ValueError: fewer than 3 rows, mismatched shapes, non-finite values or unknown methods.
    """
    S = np.asarray(source_predictions, dtype=float)
    X, S = _check_transfer(target_X, S, None, S.shape[1] if S.ndim == 2 else None)
    y = np.asarray(target_y, dtype=float).reshape(-1)
    if len(y) != len(S) or len(y) < 3 or not np.isfinite(y).all():
        raise ValueError(
            f"need at least 3 finite measurements, one per row; got {len(y)} for {len(S)} rows"
        )
    unknown = [m for m in methods if m not in _METHODS]
    if unknown or not methods:
        raise ValueError(
            f"unknown transfer methods {unknown}; choose from {list(TRANSFER_METHODS)}"
        )
    names = tuple(sources) if sources is not None else tuple(f"s{i}" for i in range(S.shape[1]))
    if len(names) != S.shape[1]:
        raise ValueError(f"{len(names)} source names for {S.shape[1]} source columns")
    errors = {m: _loo_rmse(m, X, S, y) for m in dict.fromkeys(methods)}
    return TransferModel(names, X, S, y, errors, dict(meta or {}))


def _check_transfer(
    X: np.ndarray, S: np.ndarray, n_x: int | None, n_s: int | None
) -> tuple[np.ndarray, np.ndarray]:
    S = np.asarray(S, dtype=float)
    X = np.asarray(X, dtype=float)
    if (X.ndim == 2 and X.shape[1] == 0) or X.size == 0:
        X = np.zeros((len(S), 0))
    if S.ndim != 2 or X.ndim != 2 or len(X) != len(S):
        raise ValueError(f"rows disagree: summary {X.shape}, source predictions {S.shape}")
    if (n_x is not None and X.shape[1] != n_x) or (n_s is not None and S.shape[1] != n_s):
        raise ValueError(
            f"expected {n_x} summary and {n_s} source columns, got {X.shape[1]} and {S.shape[1]}"
        )
    if not (np.isfinite(X).all() and np.isfinite(S).all()):
        raise ValueError("summary features and source predictions must be finite")
    return X, S


Predictor = Any  # Callable[[np.ndarray, np.ndarray], np.ndarray]


def _scale(X: np.ndarray, S: np.ndarray, y: np.ndarray) -> Predictor:
    """Linear fit on the one column (source or summary) with the least squared residual."""
    Z = np.hstack([S, X])
    best, coef = 0, (float(y.mean()), 0.0)
    best_sse = math.inf
    for j in range(Z.shape[1]):
        z = Z[:, j]
        if np.ptp(z) == 0:
            continue
        b = float(np.cov(z, y, bias=True)[0, 1] / z.var())
        a = float(y.mean() - b * z.mean())
        sse = float(((a + b * z - y) ** 2).sum())
        if sse < best_sse:
            best, coef, best_sse = j, (a, b), sse
    return lambda Xn, Sn: coef[0] + coef[1] * np.hstack([Sn, Xn])[:, best]


def _mix(X: np.ndarray, S: np.ndarray, y: np.ndarray) -> Predictor:
    """Non-negative weights on the sources, free intercept (``scipy.optimize.nnls``)."""
    from scipy.optimize import nnls

    ones = np.ones((len(S), 1))
    w, _ = nnls(np.hstack([S, ones, -ones]), y)
    return lambda Xn, Sn: Sn @ w[:-2] + w[-2] - w[-1]


def _ridge(X: np.ndarray, S: np.ndarray, y: np.ndarray) -> Predictor:
    """Ridge on standardised sources and summary features, penalty by leave-one-out."""
    from sklearn.linear_model import RidgeCV

    Z = np.hstack([S, X])
    mu, sd = Z.mean(axis=0), Z.std(axis=0)
    sd[sd == 0] = 1.0
    model = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit((Z - mu) / sd, y)
    return lambda Xn, Sn: model.predict((np.hstack([Sn, Xn]) - mu) / sd)


_METHODS = {"scale": _scale, "mix": _mix, "ridge": _ridge}


def _loo_rmse(method: str, X: np.ndarray, S: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out root mean squared error (ms) of ``method`` on the measured rows."""
    err = np.zeros(len(y))
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        pred = _METHODS[method](X[keep], S[keep], y[keep])(X[i : i + 1], S[i : i + 1])
        err[i] = float(pred[0]) - y[i]
    return float(np.sqrt((err**2).mean()))


# -- files ----------------------------------------------------------------------------------------
def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _write(
    path: Path, kind: str, head: dict[str, Any], meta: Meta, arrays: dict[str, np.ndarray]
) -> Path:
    """JSON at ``path``, arrays in ``path.with_suffix('.npz')``; each written atomically."""
    import sklearn

    npz = path.with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.name}.tmp.npz")
    savez: Any = np.savez  # numpy's stub types **kwds badly
    savez(tmp, **arrays)
    tmp.replace(npz)
    doc = {"format": FORMAT, "version": VERSION, "type": kind, **head, "meta": dict(meta)}
    doc |= {"arrays": npz.name, "sklearn": sklearn.__version__}
    tmp_json = path.with_name(f".{path.name}.tmp")
    tmp_json.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp_json.replace(path)
    return path


def load_predictor(path: str | Path) -> LatencyModel | TransferModel:
    """Read a predictor written by :meth:`LatencyModel.save` or :meth:`TransferModel.save`.

    Raises:
        ValueError: (one line naming the file) not JSON, another format or version, or its
            arrays missing or unreadable.
    """
    path = Path(path)
    try:
        head = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read a latency predictor ({e})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        found = head.get("format") if isinstance(head, dict) else type(head).__name__
        raise ValueError(
            f"{path}: not a latency predictor file (format {found!r}, expected {FORMAT!r})"
        )
    if head.get("version") != VERSION:
        raise ValueError(
            f"{path}: latency predictor file version {head.get('version')!r}; "
            f"this nas reads version {VERSION}"
        )
    npz = path.with_name(str(head.get("arrays", "")))
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read its arrays {npz.name} ({e})") from None
    try:
        if head.get("type") == "transfer":
            return _transfer_from_file(head, arrays)
        if head.get("type") == "learned":
            return LatencyModel._from_file(head, arrays)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: corrupt latency predictor ({e})") from None
    raise ValueError(
        f"{path}: unknown predictor type {head.get('type')!r}; expected learned or transfer"
    )


def _transfer_from_file(head: dict[str, Any], arrays: Mapping[str, np.ndarray]) -> TransferModel:
    errors = {str(k): float(v) for k, v in dict(head["loo_error"]).items()}
    unknown = [m for m in errors if m not in _METHODS]
    if unknown or not errors:
        raise ValueError(f"unknown transfer methods {unknown}")
    X, S = _check_transfer(arrays["X"], arrays["S"], None, None)
    sources = tuple(str(s) for s in head["sources"])
    return TransferModel(sources, X, S, arrays["y"], errors, dict(head.get("meta", {})))
