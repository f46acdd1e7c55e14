"""Nested CV and permutation test: fast path equals the plain loop, planted truth recovered, no leakage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from bids_ketamine.errors import BadDataError
from bids_ketamine.structural.metrics import balanced_accuracy, permutation_p, roc_auc
from bids_ketamine.structural.model import ModelSpec, PipelineFactory, PreprocessorFactory, make_pipeline, \
    model_frame
from bids_ketamine.structural.simulate_features import simulate_cohort
from bids_ketamine.structural.svm_solver import LinearSVM
from bids_ketamine.structural.validation import check_cohort, make_splits, nested_cv, nested_cv_straightforward


def _data(cohort, **spec):
    spec = ModelSpec(covariates=("age", "sex", "tiv"), **spec)
    return model_frame(cohort.features, cohort.sites, cohort.covariates), spec


def test_linear_svm_matches_liblinear():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((70, 25))
    y = (x[:, 0] + 0.8 * rng.standard_normal(70) > 0.3).astype(int)
    for c in (0.01, 0.1, 1.0):
        ours = LinearSVM(C=c, tol=1e-8, intercept_scaling=1.0).fit(x, y)
        ref = LinearSVC(C=c, loss="hinge", class_weight="balanced", tol=1e-10, max_iter=10 ** 6).fit(x, y)
        assert np.allclose(ours.decision_function(x), ref.decision_function(x), atol=1e-5)


def test_fast_nested_cv_equals_straightforward_loop_with_permutations():
    """Shared preprocessing + batched dual solver give what a full pipeline refitted per fold/C/label set gives."""
    cohort = simulate_cohort(48, 12, mahalanobis=1.5, n_sites=2, seed=3)
    data, spec = _data(cohort, tol=1e-9)
    splits = make_splits(cohort.labels, outer_folds=3, inner_folds=3, repeats=2, seed=4)
    grid = (0.01, 0.1, 1.0)
    fast = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=grid, splits=splits, n_permutations=12,
                     seed=4, tol=1e-9)
    for k in range(fast.label_sets.shape[1]):
        scores, chosen = nested_cv_straightforward(data, fast.label_sets[:, k], PipelineFactory(spec), c_grid=grid,
                                                   splits=splits)
        assert np.array_equal(chosen, fast.chosen_c[:, :, k])
        assert np.allclose(scores, fast.scores[:, :, k], atol=1e-7)


def test_results_do_not_depend_on_n_jobs():
    cohort = simulate_cohort(60, 20, mahalanobis=1.0, seed=5)
    data, spec = _data(cohort)
    splits = make_splits(cohort.labels, outer_folds=3, inner_folds=3, repeats=2, seed=6)
    one = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits,
                    n_permutations=20, seed=6, n_jobs=1)
    two = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits,
                    n_permutations=20, seed=6, n_jobs=2)
    assert np.array_equal(one.scores, two.scores)
    assert np.array_equal(one.chosen_c, two.chosen_c)


def test_planted_effect_recovered_near_bayes_auc():
    """n = 200, 88 regions, frontal (+) / cerebellar (-) shift of Mahalanobis distance 2.5 (Bayes AUC 0.961)."""
    cohort = simulate_cohort(200, 88, mahalanobis=2.5, n_sites=3, seed=2)
    data, spec = _data(cohort)
    splits = make_splits(cohort.labels, outer_folds=5, inner_folds=5, repeats=2, seed=7)
    result = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits)
    auc = roc_auc(cohort.labels, result.pooled[:, 0])[0]
    assert abs(auc - cohort.bayes_auc) <= 0.07, (auc, cohort.bayes_auc)


@pytest.mark.parametrize("harmonize, expect_chance", [(True, True), (False, False)])
def test_signal_only_through_site_offsets(harmonize, expect_chance):
    """Outcome depends on site only (responder rate 85 % vs 15 %); features carry site offsets and no outcome
    signal: with train-only ComBat the classifier is at chance, without it the site leaks into the prediction."""
    cohort = simulate_cohort(160, 40, mahalanobis=0.0, n_sites=2, site_offset_sd=1.5,
                             site_responder_rates=(0.85, 0.15), seed=8)
    data, spec = _data(cohort, harmonize=harmonize)
    splits = make_splits(cohort.labels, outer_folds=5, inner_folds=5, repeats=1, seed=9)
    result = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits)
    bac = balanced_accuracy(cohort.labels, result.pooled[:, 0])[0]
    if expect_chance:
        assert 0.4 <= bac <= 0.6, bac
    else:
        assert bac >= 0.7, bac


def test_null_permutation_p_rate():
    """100 null data sets (labels independent of features and site): p < 0.05 in 1-10 of them.

    Cheap version, stated: n = 40, 10 features, 2 sites, 3 x 3 nested CV, 1 repeat, 99 permutations of the whole
    nested CV, C grid (0.01, 1). The rate is that of the full test: the same code path, only smaller.
    """
    n_significant = 0
    for k in range(100):
        cohort = simulate_cohort(40, 10, mahalanobis=0.0, n_sites=2, seed=1000 + k)
        data, spec = _data(cohort)
        splits = make_splits(cohort.labels, outer_folds=3, inner_folds=3, repeats=1, seed=k)
        result = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 1.0), splits=splits,
                           n_permutations=99, seed=k)
        bac = balanced_accuracy(result.label_sets, result.pooled)
        n_significant += permutation_p(bac[0], bac[1:]) < 0.05
    print(f"null data sets with p < 0.05: {n_significant} of 100")
    assert 1 <= n_significant <= 10, n_significant


def test_one_class_and_too_few_subjects_are_refused():
    with pytest.raises(BadDataError, match="single class") as info:
        check_cohort(np.ones(30), 5, what="discovery cohort")
    assert info.value.exit_code == 65
    with pytest.raises(BadDataError, match="fewer than the 5 cross-validation folds") as info:
        check_cohort(np.r_[np.ones(3), np.zeros(10)], 5, what="discovery cohort")
    assert info.value.exit_code == 65


def test_pipeline_fit_is_label_free_before_the_svm():
    cohort = simulate_cohort(50, 10, mahalanobis=1.0, seed=10)
    data, spec = _data(cohort)
    a = make_pipeline(spec, 0.1).fit(data, cohort.labels)
    b = make_pipeline(spec, 0.1).fit(data, 1 - cohort.labels)
    za = a[:-1].transform(data)
    zb = b[:-1].transform(data)
    assert np.array_equal(za, zb)
    assert np.allclose(a.decision_function(data), -b.decision_function(data), atol=1e-2)


def test_progress_logs_start_and_end_only_and_never_changes_results(monkeypatch, bids_ketamine_log):
    """Off a terminal the permutation loop logs a start and an end line (no line per fold); scores are unchanged."""
    cohort = simulate_cohort(40, 10, mahalanobis=1.0, seed=8)
    data, spec = _data(cohort)
    splits = make_splits(cohort.labels, outer_folds=3, inner_folds=3, repeats=3, seed=8)

    def run():
        return nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.1, 1.0), splits=splits,
                         n_permutations=5, seed=8)

    monkeypatch.setenv("BIDS_KETAMINE_PROGRESS", "off")
    quiet = run()
    monkeypatch.setenv("BIDS_KETAMINE_PROGRESS", "log")
    with bids_ketamine_log() as records:
        logged = run()
    assert records[0] == "nested CV, 3 repeats x 5 permutations: started (9 outer folds)"
    assert records[-1].startswith("nested CV, 3 repeats x 5 permutations: done, 9 outer folds in ")
    assert len(records) <= 3  # at most one progress line per 30 s in between
    assert quiet.scores.tobytes() == logged.scores.tobytes()
    assert quiet.chosen_c.tobytes() == logged.chosen_c.tobytes()
