"""Accuracy (and other metric) surrogates: regressions on encoded architectures.

A surrogate is fitted on measured candidates (encoded as rows, e.g. with
:func:`nas.search.space.onehot`) and predicts a metric for candidates not yet measured. LINAS
fits one per objective each round. Every kind is a scikit-learn model on standardised targets::

    s = fit_surrogate(X, y)            # kind="auto": chosen by k-fold cross-validation
    s.predict(X_new), s.kind, s.cv_score

``auto`` compares the candidate kinds by the Spearman rank correlation of their out-of-fold
predictions (ranking is what a search needs) and keeps the best; with fewer than
:data:`MIN_CV_POINTS` points there is too little data to compare, and it is ridge. Nothing here
is written to disk.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

SurrogateKind = Literal["ridge", "svr", "gp", "gbm", "mlp", "ridge_cv"]

#: every kind :func:`fit_surrogate` knows (``ridge_cv``: ridge with its penalty chosen by
#: leave-one-out over a grid; used by the latency predictors)
KINDS: tuple[SurrogateKind, ...] = ("ridge", "svr", "gp", "gbm", "mlp", "ridge_cv")
#: the kinds ``auto`` compares (``mlp`` is slower and rarely wins on small data)
AUTO_KINDS: tuple[SurrogateKind, ...] = ("ridge", "svr", "gp", "gbm")
#: below this many points ``auto`` does not cross-validate and uses ridge
MIN_CV_POINTS = 8

__all__ = [
    "AUTO_KINDS",
    "KINDS",
    "MIN_CV_POINTS",
    "Surrogate",
    "SurrogateKind",
    "cross_val_spearman",
    "fit_surrogate",
    "make_estimator",
]


@dataclass(frozen=True)
class Surrogate:
    """A fitted regression model on encoded candidates.

    Attributes:
        kind: which model (one of :data:`KINDS`).
        model: the fitted scikit-learn estimator (trained on standardised targets).
        cv_score: Spearman correlation of out-of-fold predictions; NaN when not cross-validated.
        n_features: width of the rows the model was fitted on.
        y_mean: mean of the training targets.
        y_scale: standard deviation of the training targets (1 when they are constant).
    """

    kind: str
    model: Any
    cv_score: float
    n_features: int
    y_mean: float
    y_scale: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted targets, shape ``(len(X),)``, in the units of the training targets.

        Raises:
            ValueError: when the rows do not have the width the model was fitted on.
        """
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"expected rows of {self.n_features} features, got shape {X.shape}; encode "
                "candidates with the same space and encoding used for fitting"
            )
        if len(X) == 0:
            return np.zeros(0)
        z = np.asarray(self.model.predict(X), dtype=float).reshape(-1)
        return z * self.y_scale + self.y_mean


def make_estimator(kind: str, seed: int = 0) -> Any:
    """An unfitted scikit-learn regressor of ``kind`` with our default settings.

    Raises:
        ValueError: for a kind not in :data:`KINDS`.
    """
    if kind == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0)
    if kind == "ridge_cv":
        from sklearn.linear_model import RidgeCV

        return RidgeCV(alphas=np.logspace(-3, 3, 13))
    if kind == "svr":
        from sklearn.svm import SVR

        return SVR(kernel="rbf", C=3.0, epsilon=0.05, gamma="scale")
    if kind == "gp":
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

        kernel = ConstantKernel(1.0, (1e-2, 1e2)) * RBF(2.0, (1e-1, 1e2)) + WhiteKernel(
            0.1, (1e-5, 1.0)
        )
        return GaussianProcessRegressor(kernel=kernel, normalize_y=False, random_state=seed)
    if kind == "gbm":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(
            n_estimators=50, max_depth=3, learning_rate=0.15, subsample=0.8, random_state=seed
        )
    if kind == "mlp":
        from sklearn.neural_network import MLPRegressor

        return MLPRegressor(
            hidden_layer_sizes=(32,), solver="lbfgs", alpha=1e-2, max_iter=500, random_state=seed
        )
    raise ValueError(f"unknown surrogate kind {kind!r}; choose 'auto' or one of {list(KINDS)}")


def _fit(kind: str, X: np.ndarray, z: np.ndarray, seed: int) -> Any:
    """Fit ``kind`` on rows ``X`` and standardised targets ``z`` (convergence noise silenced)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    model = make_estimator(kind, seed)
    # one BLAS thread: these problems are tiny, and threads only contend (3x slower GP fits)
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, z)
    return model


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation; 0 when either side is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a), rankdata(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def cross_val_spearman(
    X: np.ndarray, y: np.ndarray, kind: str, *, seed: int = 0, n_folds: int = 5
) -> float:
    """Spearman correlation between ``y`` and the out-of-fold predictions of ``kind``.

    Folds are shuffled with ``seed``; every point is predicted once by a model that did not
    see it, and the correlation is taken over all points together.
    """
    from sklearn.model_selection import KFold

    X, y = _check_xy(X, y)
    n_folds = max(2, min(n_folds, len(y)))
    z = (y - y.mean()) / (y.std() or 1.0)
    pred = np.zeros(len(y))
    for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(X):
        pred[test] = _fit(kind, X[train], z[train], seed).predict(X[test])
    return _spearman(pred, y)


def _check_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array of encoded candidates, got shape {X.shape}")
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)} values; give one y per row")
    if len(y) < 2:
        raise ValueError("a surrogate needs at least 2 measured points")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("X and y must be finite; drop failed or NaN measurements first")
    return X, y


def fit_surrogate(
    X: np.ndarray,
    y: np.ndarray,
    kind: str = "auto",
    *,
    seed: int = 0,
    candidates: tuple[str, ...] = AUTO_KINDS,
    n_folds: int = 5,
) -> Surrogate:
    """Fit a surrogate of ``kind`` on rows ``X`` and targets ``y``.

    Args:
        X: encoded candidates, shape ``(n, d)``.
        y: measured values, shape ``(n,)``.
        kind: one of :data:`KINDS`, or ``"auto"`` to pick among ``candidates`` by k-fold
            cross-validation (ridge below :data:`MIN_CV_POINTS` points).
        seed: seed of the folds and of the models that are random.
        candidates: the kinds ``auto`` compares; ties go to the earlier one.
        n_folds: folds of the cross-validation.

    Raises:
        ValueError: on mismatched or non-finite inputs, fewer than 2 points, or an unknown kind.
    """
    X, y = _check_xy(X, y)
    for k in (kind,) if kind != "auto" else candidates:
        make_estimator(k)  # validates the name before any fitting
    if kind == "auto":
        kind, score = _select(X, y, candidates, seed, n_folds)
    else:
        score = math.nan
    mean, scale = float(y.mean()), float(y.std()) or 1.0
    model = _fit(kind, X, (y - mean) / scale, seed)
    return Surrogate(kind, model, score, X.shape[1], mean, scale)


def _select(
    X: np.ndarray, y: np.ndarray, candidates: tuple[str, ...], seed: int, n_folds: int
) -> tuple[str, float]:
    """The best of ``candidates`` by cross-validated Spearman (ridge on too little data)."""
    if not candidates:
        raise ValueError("candidates is empty; name at least one surrogate kind for 'auto'")
    if len(y) < MIN_CV_POINTS or np.ptp(y) == 0:
        return "ridge", math.nan
    scores = [cross_val_spearman(X, y, k, seed=seed, n_folds=n_folds) for k in candidates]
    best = int(np.argmax(scores))
    return candidates[best], scores[best]
