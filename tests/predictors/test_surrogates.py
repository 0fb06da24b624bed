"""Accuracy surrogates: fitting, automatic selection, and the inputs they must refuse."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nas.predictors.surrogates import (
    KINDS,
    MIN_CV_POINTS,
    cross_val_spearman,
    fit_surrogate,
)


def _problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One-hot rows of 4 dimensions x 3 choices; a non-linear score with little noise."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(3, size=(n, 4))
    X = np.zeros((n, 12))
    X[np.repeat(np.arange(n), 4), (idx + 3 * np.arange(4)).ravel()] = 1.0
    y = np.sin(idx[:, 0] * 1.3) + (idx[:, 1] == idx[:, 2]) + 0.5 * idx[:, 3]
    return X, y + rng.normal(scale=0.05, size=n)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "mlp"])
def test_each_kind_fits_and_predicts(kind: str) -> None:
    X, y = _problem(40)
    s = fit_surrogate(X, y, kind, seed=0)
    pred = s.predict(X[:7])
    assert pred.shape == (7,) and np.isfinite(pred).all()
    assert s.kind == kind and math.isnan(s.cv_score)


def test_auto_picks_a_model_that_ranks_held_out_points() -> None:
    X, y = _problem(60)
    s = fit_surrogate(X, y, "auto", seed=0)
    assert s.kind in KINDS and s.cv_score > 0.7
    X_new, y_new = _problem(200, seed=1)
    rank = np.corrcoef(np.argsort(np.argsort(s.predict(X_new))), np.argsort(np.argsort(y_new)))
    assert rank[0, 1] > 0.7
    # a non-additive target: the chosen kind beats ridge on held-out folds
    assert s.cv_score >= cross_val_spearman(X, y, "ridge", seed=0)


def test_auto_falls_back_to_ridge_on_little_data() -> None:
    X, y = _problem(MIN_CV_POINTS - 1)
    s = fit_surrogate(X, y)
    assert s.kind == "ridge" and math.isnan(s.cv_score)


def test_same_seed_same_predictions() -> None:
    X, y = _problem(30)
    a = fit_surrogate(X, y, "gbm", seed=3).predict(X)
    b = fit_surrogate(X, y, "gbm", seed=3).predict(X)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("X", "y", "kind", "match"),
    [
        (np.zeros((5, 3)), np.zeros(4), "ridge", "5 rows but y has 4"),
        (np.zeros(5), np.zeros(5), "ridge", "2-D"),
        (np.zeros((1, 3)), np.zeros(1), "ridge", "at least 2"),
        (np.full((3, 2), np.nan), np.zeros(3), "ridge", "finite"),
        (np.zeros((3, 2)), np.zeros(3), "forest", "unknown surrogate kind 'forest'"),
    ],
)
def test_rejects_bad_input(X: np.ndarray, y: np.ndarray, kind: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_surrogate(X, y, kind)


def test_predict_rejects_rows_of_another_width() -> None:
    X, y = _problem(10)
    with pytest.raises(ValueError, match="12 features"):
        fit_surrogate(X, y, "ridge").predict(np.zeros((2, 5)))
