"""Calibrated probabilities: Platt map on out-of-fold scores, honest (cross-fitted) calibration metrics, and the
whole group analysis recovering known true probabilities on synthetic data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from bids_ketamine.structural.calibration import (
    brier_score,
    calibration_curve_table,
    calibration_folds,
    cross_fitted_probabilities,
    expected_calibration_error,
    fit_platt,
)
from bids_ketamine.structural.group import analyse
from bids_ketamine.structural.params import StructuralParams


def _gaussian_study(n: int, seed: int, p: int = 10, distance: float = 2.0):
    """Two Gaussian classes N(+-delta/2, I), equal priors: the true P(y=1 | x) is expit(delta . x) exactly."""
    rng = np.random.default_rng(seed)
    delta = np.zeros(p)
    delta[:4] = distance / 2.0  # |delta| = distance
    y = rng.integers(0, 2, n)
    x = rng.standard_normal((n, p)) + np.outer(y - 0.5, delta)
    true_p = expit(x @ delta)
    features = pd.DataFrame(5000 + 400 * x, columns=[f"region{k}" for k in range(p)],
                            index=[f"s{seed}x{i:05d}" for i in range(n)])
    participants = pd.DataFrame({"participant_id": features.index, "site": "site1", "sex": "F", "age": 40.0,
                                 "arm": "ketamine", "cohort": "discovery", "outcome": y.astype(float),
                                 "tiv_mm3": 1.5e6})
    return features, participants, y, true_p


def test_platt_fit_matches_scikit_learn_sigmoid_calibration():
    from sklearn.calibration import _sigmoid_calibration

    rng = np.random.default_rng(0)
    scores = rng.normal(size=150)
    labels = (rng.random(150) < expit(1.7 * scores - 0.4)).astype(int)
    a, b = _sigmoid_calibration(scores, labels)  # scikit-learn: P = 1 / (1 + exp(a s + b)), Platt's targets
    fitted = fit_platt(scores, labels)
    assert fitted.slope == pytest.approx(-a, abs=1e-4) and fitted.intercept == pytest.approx(-b, abs=1e-4)


def test_brier_and_curve_match_scikit_learn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(1)
    probs = rng.random(300)
    labels = (rng.random(300) < probs ** 1.5).astype(int)
    assert brier_score(probs, labels) == pytest.approx(brier_score_loss(labels, probs), abs=1e-12)
    frac, mean = calibration_curve(labels, probs, n_bins=10, strategy="uniform")
    table = calibration_curve_table(probs, labels, 10)
    assert np.allclose(table["fraction_positive"], frac) and np.allclose(table["mean_predicted"], mean)
    gap = np.abs(frac - mean) @ (table["n"] / 300)
    assert expected_calibration_error(probs, labels) == pytest.approx(gap)


def test_cross_fitted_probability_never_sees_its_own_outcome():
    """Out-of-fold construction: flipping a subject's outcome changes the maps of the other folds, never the map
    that scores that subject, so its own cross-fitted probability does not move."""
    rng = np.random.default_rng(2)
    scores = rng.normal(size=60)
    labels = (scores + rng.normal(size=60) > 0).astype(int)
    folds = calibration_folds(labels, 5, seed=0)
    before = cross_fitted_probabilities(scores, labels, folds)
    for i in (0, 17, 42):
        flipped = labels.copy()
        flipped[i] = 1 - flipped[i]
        after = cross_fitted_probabilities(scores, flipped, folds)
        assert after[i] == before[i]
        same_fold = next(f for f in folds if i in f)
        others = np.setdiff1d(np.arange(60), same_fold)
        assert not np.allclose(after[others], before[others])  # the flip did reach the other folds' maps


def _splits(results, y):
    from bids_ketamine.structural.validation import make_splits

    return make_splits(y, outer_folds=results.folds[0], inner_folds=results.folds[1], repeats=3, seed=11)


@pytest.fixture(scope="module")
def calibrated_study():
    features, participants, y, _ = _gaussian_study(200, seed=5)
    params = StructuralParams(repeats=3, n_permutations=0, n_bootstrap=0, calibration_bootstrap=200,
                              harmonize=False, covariates=())
    return analyse(features, participants, params, seed=11), y


def test_shipped_map_is_fitted_on_out_of_fold_scores_not_training_scores(calibrated_study):
    results, y = calibrated_study
    disc = results.predictions.query("cohort == 'discovery'")
    oof = fit_platt(results.calibration_scores, y)
    assert results.calibration.map == oof
    # the calibration scores are out of fold: each equals the score of a model refitted without that subject's fold
    from bids_ketamine.structural.model import ModelSpec, make_pipeline

    spec = ModelSpec(harmonize=False)
    split = next(s for s in _splits(results, y) if s.repeat == 0)
    refit = make_pipeline(spec, results.final_c).fit(results.training_frame.iloc[split.train], y[split.train])
    held_out = refit.decision_function(results.training_frame.iloc[split.test])
    in_sample = results.final_model.decision_function(results.training_frame)
    assert np.corrcoef(held_out, results.calibration_scores[split.test])[0, 1] > 0.95
    assert abs(fit_platt(in_sample, y).slope - oof.slope) > 1e-3  # a map on training scores would differ
    # the reported discovery probabilities are the cross-fitted ones, not the shipped map's
    assert np.allclose(disc["probability"], results.calibration.cross_fitted)


def test_calibration_recovers_known_true_probabilities(calibrated_study):
    """n = 200 training subjects; on 20 000 new subjects of the same study the calibrated probability has ECE
    <= 0.05 and a Brier score within 0.02 of the Bayes-optimal one (the true probabilities)."""
    results, _ = calibrated_study
    features, participants, y_new, true_p = _gaussian_study(20000, seed=6)
    from bids_ketamine.structural.model import model_frame

    frame = model_frame(features.reset_index(drop=True), participants["site"].to_numpy())
    probability = results.calibration.probability(results.final_model.decision_function(frame))
    ece = expected_calibration_error(probability, y_new)
    bayes = brier_score(true_p, y_new)
    assert ece <= 0.05, ece
    assert brier_score(probability, y_new) - bayes <= 0.02, (brier_score(probability, y_new), bayes)
    assert np.mean(np.abs(probability - true_p)) < 0.08  # close to the truth subject by subject
    assert results.calibration.ece <= 0.1  # the honest in-study estimate (n = 200, noisier) agrees
