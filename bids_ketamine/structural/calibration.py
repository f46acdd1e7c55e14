"""Calibrated probability of the positive outcome from a linear SVM's decision score, without leakage.

An SVM score is not a probability. The calibration map is Platt's sigmoid ``P(y = 1 | s) = 1 / (1 + exp(-(a s + b)))``
(Platt 1999), fitted on *out-of-fold* scores: the pooled outer-test scores of the nested cross-validation, each
produced by models that never saw that subject. Why Platt and not isotonic regression: two parameters are stable at
the cohort sizes of imaging studies (24-100 subjects), the map is monotone and smooth (a patient's probability never
jumps between steps), and its uncertainty is easy to carry (a bootstrap of (a, b) pairs). Platt's smoothed targets
``(n+ + 1) / (n+ + 2)`` and ``1 / (n- + 2)`` keep the map from saturating at 0 or 1 in small or separable samples.

Two uses, never mixed up:
- the map that ships with the frozen model is fitted on all out-of-fold scores of the discovery cohort;
- the calibration the model card reports (curve, Brier score, expected calibration error) is computed on
  cross-fitted probabilities: each subject's probability comes from a map fitted on the *other* folds' out-of-fold
  scores, so no subject is scored by a map that saw its own outcome (``cross_fitted_probabilities``).

Written here rather than taken from scikit-learn's ``CalibratedClassifierCV`` because the scores already come out of
the nested CV (refitting the classifier per calibration fold would re-run it) and because the bootstrap interval
needs the map's parameters; the tests check the fit against scikit-learn's own sigmoid calibration and the metrics
against ``sklearn.metrics`` / ``sklearn.calibration``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn.model_selection import StratifiedKFold


@dataclass(frozen=True)
class PlattMap:
    """``P(y = 1 | score) = expit(slope * score + intercept)``."""

    slope: float
    intercept: float

    def __call__(self, scores) -> np.ndarray:
        return expit(self.slope * np.asarray(scores, dtype=np.float64) + self.intercept)


def fit_platt(scores, labels, *, smoothed_targets: bool = True) -> PlattMap:
    """Platt's sigmoid fitted by maximum likelihood (cross-entropy against the targets, BFGS from the prior).

    ``smoothed_targets``: Platt's targets (n+ + 1)/(n+ + 2) and 1/(n- + 2) instead of 1 and 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("calibration needs both outcome classes")
    t = np.where(y, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)) if smoothed_targets else y.astype(float)
    scale = float(np.std(s)) or 1.0  # optimise on standardised scores: well conditioned whatever the units

    def loss(theta):
        z = theta[0] * s / scale + theta[1]
        value = -(t * log_expit(z) + (1 - t) * log_expit(-z)).sum()
        residual = expit(z) - t
        return value, np.array([residual @ (s / scale), residual.sum()])

    start = np.array([0.0, np.log((n_pos + 1) / (n_neg + 1))])
    result = minimize(loss, start, jac=True, method="BFGS", options={"gtol": 1e-10, "maxiter": 1000})
    return PlattMap(slope=float(result.x[0] / scale), intercept=float(result.x[1]))


def calibration_folds(labels, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test indices of stratified folds for cross-fitting (fewer folds when the smaller class is small)."""
    y = np.asarray(labels).astype(int)
    k = int(max(2, min(n_folds, np.bincount(y, minlength=2).min())))
    splitter = StratifiedKFold(k, shuffle=True, random_state=int(np.random.SeedSequence([seed, 31337])
                                                                  .generate_state(1)[0]))
    return [test for _, test in splitter.split(np.zeros(y.size), y)]


def cross_fitted_probabilities(scores, labels, folds: list[np.ndarray]) -> np.ndarray:
    """Each subject's probability from a Platt map fitted on the out-of-fold scores of the *other* folds."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    out = np.full(s.size, np.nan)
    for test in folds:
        train = np.setdiff1d(np.arange(s.size), test)
        out[test] = fit_platt(s[train], y[train])(s[test])
    return out


def bootstrap_platt(scores, labels, *, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Slopes and intercepts of Platt maps refitted on bootstrap resamples (within class) of (score, label)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    rng = np.random.default_rng([seed, 4242])
    slopes, intercepts = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        rows = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        fitted = fit_platt(s[rows], y[rows])
        slopes[b], intercepts[b] = fitted.slope, fitted.intercept
    return slopes, intercepts


def probability_interval(scores, slopes: np.ndarray, intercepts: np.ndarray, ci: float = 0.95) \
        -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the calibrated probability at each score over the bootstrap maps."""
    s = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    probs = expit(np.outer(slopes, s) + np.asarray(intercepts)[:, None])
    lo, hi = np.quantile(probs, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    return lo, hi


def brier_score(probabilities, labels) -> float:
    """Mean squared difference between probability and outcome (0 perfect; 0.25 for a constant 0.5)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.mean((p - np.asarray(labels, dtype=np.float64)) ** 2))


def calibration_curve_table(probabilities, labels, n_bins: int = 10) -> pd.DataFrame:
    """Equal-width probability bins: count, mean predicted probability and observed fraction positive (non-empty
    bins only)."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges[1:-1], p, side="right"), 0, n_bins - 1)
    rows = []
    for k in range(n_bins):
        members = which == k
        if members.any():
            rows.append({"bin_low": edges[k], "bin_high": edges[k + 1], "n": int(members.sum()),
                         "mean_predicted": float(p[members].mean()), "fraction_positive": float(y[members].mean())})
    return pd.DataFrame(rows, columns=["bin_low", "bin_high", "n", "mean_predicted", "fraction_positive"])


def expected_calibration_error(probabilities, labels, n_bins: int = 10) -> float:
    """Sum over equal-width bins of (bin share) x |mean predicted - fraction positive|."""
    table = calibration_curve_table(probabilities, labels, n_bins)
    weights = table["n"] / table["n"].sum()
    return float((weights * (table["mean_predicted"] - table["fraction_positive"]).abs()).sum())


@dataclass(frozen=True)
class Calibration:
    """What the frozen model carries: the map, its bootstrap replicates, and the honest (cross-fitted) check."""

    map: PlattMap
    boot_slopes: np.ndarray
    boot_intercepts: np.ndarray
    cross_fitted: np.ndarray  # (n,) cross-fitted probability per calibration subject
    curve: pd.DataFrame
    brier: float
    ece: float
    n_bins: int

    def probability(self, scores) -> np.ndarray:
        return self.map(scores)

    def interval(self, scores, ci: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap interval of the probability at ``scores`` (NaN without bootstrap replicates)."""
        if self.boot_slopes.size == 0:
            nan = np.full(np.atleast_1d(scores).shape, np.nan)
            return nan, nan.copy()
        return probability_interval(scores, self.boot_slopes, self.boot_intercepts, ci)


def calibrate_out_of_fold(scores, labels, *, seed: int, n_boot: int = 1000, n_folds: int = 5,
                          n_bins: int = 10) -> Calibration:
    """Fit the shipped map on out-of-fold ``scores`` and measure calibration on cross-fitted probabilities."""
    y = np.asarray(labels).astype(int)
    cross = cross_fitted_probabilities(scores, y, calibration_folds(y, n_folds, seed))
    slopes, intercepts = bootstrap_platt(scores, y, n_boot=n_boot, seed=seed) if n_boot else (np.zeros(0),) * 2
    return Calibration(map=fit_platt(scores, y), boot_slopes=slopes, boot_intercepts=intercepts,
                       cross_fitted=cross, curve=calibration_curve_table(cross, y, n_bins),
                       brier=brier_score(cross, y), ece=expected_calibration_error(cross, y, n_bins),
                       n_bins=n_bins)
