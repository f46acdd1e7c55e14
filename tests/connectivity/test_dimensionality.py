"""Participation ratio: known spectra, planted dimensionality, subsampling and the across-drug comparison."""

from __future__ import annotations

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


def test_subsample_size_and_determinism():
    x = _maps_with_dimension(30, 80, 5, seed=1)
    a = dim.subsample_participation_ratios(x, size=20, n_subsamples=40, rng=np.random.default_rng(3))
    b = dim.subsample_participation_ratios(x, size=20, n_subsamples=40, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert (a <= 5 + 1e-9).all() and a.mean() > 3.5
    with pytest.raises(ValueError, match="subsample size 31"):
        dim.subsample_participation_ratios(x, size=31, n_subsamples=2, rng=np.random.default_rng(0))


def test_comparison_ranks_drugs_and_bonferroni_is_exact():
    maps = {"ketamine": _maps_with_dimension(40, 200, 12, seed=2),
            "lsd": _maps_with_dimension(24, 200, 4, seed=3),
            "psilocybin": _maps_with_dimension(23, 200, 5, seed=4)}
    res = dim.compare_dimensionality(maps, subsample_size=22, n_subsamples=200, seed=0)
    per = res.per_drug.set_index("drug")
    assert per.loc["ketamine", "pr_mean"] > per.loc["psilocybin", "pr_mean"] > per.loc["lsd", "pr_mean"]
    assert res.subsample_size == 22 and (per["n_subsamples"] == 200).all()
    f = stats.f_oneway(*(res.subsamples.query("drug == @d")["participation_ratio"] for d in sorted(maps)))
    assert res.anova.loc[0, "f"] == pytest.approx(f.statistic) and res.anova.loc[0, "p"] < 1e-10
    pw = res.pairwise
    assert len(pw) == 3
    np.testing.assert_allclose(pw["p_bonferroni"], np.minimum(1.0, pw["p"] * 3))
    row = pw.query("drug_a == 'ketamine' and drug_b == 'lsd'").iloc[0]
    assert row["mean_difference"] > 0 and row["fraction_a_greater"] > 0.95


def test_default_subsample_is_smallest_group_and_seed_per_drug():
    maps = {"a": _maps_with_dimension(15, 50, 3, 5), "b": _maps_with_dimension(12, 50, 3, 6)}
    res = dim.compare_dimensionality(maps, n_subsamples=20, seed=1)
    assert res.subsample_size == 12
    assert res.per_drug.set_index("drug").loc["b", "pr_sd"] == pytest.approx(0, abs=1e-9)  # whole group each time
    only_a = dim.compare_dimensionality({"0": maps["b"], "a": maps["a"]}, n_subsamples=20, seed=1,
                                        subsample_size=12)
    same = res.subsamples.query("drug == 'a'")["participation_ratio"].to_numpy()
    np.testing.assert_array_equal(same, only_a.subsamples.query("drug == 'a'")["participation_ratio"].to_numpy())
    with pytest.raises(ValueError, match="exceeds the subjects of b"):
        dim.compare_dimensionality(maps, subsample_size=13, n_subsamples=5)
