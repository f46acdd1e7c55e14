"""Participation ratio: known spectra, planted dimensionality, the enumeration of subsamples, and the
subject-level permutation test (calibration under the null, power under a planted difference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bids_ketamine.connectivity import dimensionality as dim


@pytest.mark.parametrize("k", [1, 3, 12])
def test_equal_eigenvalues_give_k(k):
    assert dim.participation_ratio(np.r_[np.full(k, 2.5), np.zeros(5)]) == pytest.approx(k)


def test_known_spectrum_formula():
    lam = np.array([4.0, 2.0, 1.0, 1.0])
    assert dim.participation_ratio(lam) == pytest.approx(64.0 / 22.0)
    assert dim.participation_ratio(np.array([1.0, -1e-15])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        dim.participation_ratio(np.zeros(3))


def _maps_with_dimension(n_subjects: int, n_parcels: int, k: int, seed: int) -> np.ndarray:
    """Subjects' maps spanning exactly k orthogonal directions with equal variance (PR = k in the population)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((n_parcels, k)))
    return rng.standard_normal((n_subjects, k)) @ basis.T + rng.normal(0, 3, n_parcels)


def population(n: int, seed: int, *, decay: float = 0.85, n_parcels: int = 150) -> np.ndarray:
    """Maps of n subjects from one population: 40 fixed directions with SDs decay**k, a mean map and noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((n_parcels, 40)))
    mean = np.random.default_rng(98).normal(0, 1, n_parcels)
    return (rng.standard_normal((n, 40)) * decay ** np.arange(40)) @ basis.T + mean \
        + 0.05 * rng.standard_normal((n, n_parcels))


def test_covariance_eigenvalues_of_exact_k_dimensional_data():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((100, 4)))
    scores = rng.standard_normal((30, 4))
    scores -= scores.mean(axis=0)
    scores, _ = np.linalg.qr(scores)              # orthonormal, centred: equal variances exactly
    x = scores @ basis.T * 5 + 1.0
    lam = dim.covariance_eigenvalues(x)
    np.testing.assert_allclose(lam[:4], 25.0 / 29, rtol=1e-10)
    np.testing.assert_allclose(lam[4:], 0, atol=1e-10)
    assert dim.participation_ratio(lam) == pytest.approx(4.0)


def test_gram_shortcut_equals_eigenvalue_participation_ratio():
    x = population(20, seed=1)
    centred = x - x.mean(axis=0)
    gram = centred @ centred.T
    sets, _, _ = dim.subsample_sets(20, 9, 30, np.random.default_rng(0))
    expected = [dim.participation_ratio(dim.covariance_eigenvalues(x[s])) for s in sets]
    np.testing.assert_allclose(dim.gram_participation_ratios(gram, sets), expected, rtol=1e-10)


def test_subsamples_are_enumerated_when_few_exist():
    sets, distinct, enumerated = dim.subsample_sets(23, 22, 1000, np.random.default_rng(0))
    assert enumerated and distinct == 23 and sets.shape == (23, 22)
    assert len({tuple(s) for s in sets}) == 23            # each distinct subsample exactly once
    sets, distinct, enumerated = dim.subsample_sets(24, 22, 100, np.random.default_rng(0))
    assert not enumerated and distinct == math.comb(24, 22) == 276 and sets.shape == (100, 22)
    assert all(len(set(s)) == 22 for s in sets)
    with pytest.raises(ValueError, match="subsample size 31"):
        dim.subsample_sets(30, 31, 10, np.random.default_rng(0))


def test_subsample_size_and_determinism():
    x = _maps_with_dimension(30, 80, 5, seed=1)
    a = dim.subsample_participation_ratios(x, size=20, n_subsamples=40, rng=np.random.default_rng(3))
    b = dim.subsample_participation_ratios(x, size=20, n_subsamples=40, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (a <= 5 + 1e-9).all() and a.mean() > 3.5


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    expected = multipletests(p[:4], method="holm")[1]
    np.testing.assert_allclose(dim.holm(p)[:4], expected)
    assert np.isnan(dim.holm(p)[4])


def test_null_of_equal_dimensionality_rejects_at_the_nominal_rate():
    """Acceptance: 100 pairs of groups (24 and 23) drawn from one population: p < 0.05 in 1-10 of them."""
    p = np.array([dim.pr_difference_test(population(24, seed=2 * i), population(23, seed=2 * i + 1), size=22,
                                         n_permutations=199, n_subsamples=30, seed=i, jackknife=False)["p"]
                  for i in range(100)])
    n_reject = int((p < 0.05).sum())
    print(f"null pairs with p < 0.05: {n_reject} / 100")
    assert 1 <= n_reject <= 10
    assert stats.kstest(p, "uniform").pvalue > 0.001


def test_planted_difference_is_detected():
    """Power at the published size of effect: populations whose equal-n PR at m = 22 is about 12.4 and 8.7 (the
    published ketamine and LSD values), groups of 24 and 23: found in (almost) every one of 20 pairs."""
    p = np.array([dim.pr_difference_test(population(24, seed=500 + i, decay=0.975),
                                         population(23, seed=700 + i, decay=0.93), size=22, n_permutations=199,
                                         n_subsamples=30, seed=i, jackknife=False)["p"] for i in range(20)])
    power = float((p < 0.05).mean())
    print(f"power at equal-n PR 12.4 vs 8.7 (n 24 / 23): {power:.2f}")
    assert power >= 0.85


def test_jackknife_interval_covers_the_population_value():
    """The equal-n PR's jackknife interval covers the population value (mean PR of 22 fresh subjects)."""
    truth = np.mean([dim.participation_ratio(dim.covariance_eigenvalues(population(22, seed=10_000 + i)))
                     for i in range(300)])
    hits = []
    for i in range(30):
        res = dim.compare_dimensionality({"a": population(24, seed=30_000 + i)}, n_permutations=0,
                                         n_subsamples=30, test_subsamples=30, seed=i)
        row = res.per_drug.iloc[0]
        assert row["pr_ci_low"] < row["pr_mean"] < row["pr_ci_high"]
        hits.append(row["pr_ci_low"] <= truth <= row["pr_ci_high"])
    assert np.mean(hits) >= 0.8


def test_shared_subjects_are_swapped_as_pairs():
    """Identical maps of the same subjects under two drugs: every reassignment swaps a subject's two identical maps,
    so every permuted statistic equals the observed one and p = 1 (an unrestricted shuffle would mix subjects)."""
    x = population(10, seed=3)
    subjects = [f"s{i}" for i in range(10)]
    res = dim.pr_difference_test(x, x, size=8, n_permutations=50, n_subsamples=20, seed=0, subjects_a=subjects,
                                 subjects_b=subjects)
    assert res["shared"] == 10
    np.testing.assert_allclose(res["null"], res["difference"], atol=1e-12)
    assert res["p"] == 1.0


def test_comparison_tables_ranks_drugs_and_holm():
    maps = {"ketamine": _maps_with_dimension(40, 200, 12, seed=2),
            "lsd": _maps_with_dimension(24, 200, 4, seed=3),
            "psilocybin": _maps_with_dimension(23, 200, 5, seed=4)}
    res = dim.compare_dimensionality(maps, n_subsamples=100, n_permutations=99, test_subsamples=20, seed=0)
    per = res.per_drug.set_index("drug")
    assert res.subsample_size == 22                         # one below the smallest group
    assert per.loc["ketamine", "pr_mean"] > per.loc["psilocybin", "pr_mean"] > per.loc["lsd", "pr_mean"]
    assert per.loc["psilocybin", "n_distinct_subsamples"] == 23 and per.loc["psilocybin", "subsamples_enumerated"]
    assert per.loc["psilocybin", "n_subsamples"] == 23 and per.loc["ketamine", "n_subsamples"] == 100
    assert any("only 23 distinct subsamples" in n for n in res.notes)
    pw = res.pairwise.set_index(["drug_a", "drug_b"])
    np.testing.assert_allclose(pw["p_holm"], dim.holm(pw["p_permutation"].to_numpy()))
    assert pw.loc[("ketamine", "lsd"), "p_holm"] <= 0.05 and pw.loc[("ketamine", "lsd"), "ci_low"] > 0
    assert res.anova is None                                # the descriptive ANOVA only when asked for
    described = dim.compare_dimensionality(maps, n_subsamples=100, n_permutations=9, test_subsamples=5, seed=0,
                                           descriptive_anova=True)
    f = stats.f_oneway(*(described.subsamples.query("drug == @d")["participation_ratio"] for d in sorted(maps)))
    assert described.anova.loc[0, "f"] == pytest.approx(f.statistic)
    np.testing.assert_allclose(described.anova_pairwise["p_bonferroni"],
                               np.minimum(1.0, described.anova_pairwise["p"] * 3))


def test_seed_per_drug_and_size_checks():
    maps = {"a": _maps_with_dimension(15, 50, 3, 5), "b": _maps_with_dimension(12, 50, 3, 6)}
    res = dim.compare_dimensionality(maps, n_subsamples=20, n_permutations=19, seed=1)
    assert res.subsample_size == 11
    again = dim.compare_dimensionality({"0": maps["b"], "a": maps["a"]}, n_subsamples=20, n_permutations=19,
                                       seed=1, subsample_size=11)
    np.testing.assert_array_equal(res.subsamples.query("drug == 'a'")["participation_ratio"],
                                  again.subsamples.query("drug == 'a'")["participation_ratio"])
    whole = dim.compare_dimensionality(maps, subsample_size=12, n_subsamples=20, n_permutations=9, seed=1)
    assert any("equals its 12 subjects" in n for n in whole.notes)
    assert np.isnan(whole.per_drug.set_index("drug").loc["b", "pr_ci_low"])
    with pytest.raises(ValueError, match="exceeds the subjects of b"):
        dim.compare_dimensionality(maps, subsample_size=13, n_subsamples=5)
