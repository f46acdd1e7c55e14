"""PCA of delta-GBC maps and its within-subject shuffle null: planted structure found, none found in noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import pca


def planted_delta(n_subjects: int, n_parcels: int, score_sd: list[float], *, noise_sd: float = 1.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Subjects x parcels = common mean + orthogonal subject scores x orthonormal maps + noise; returns (X, maps).

    Maps have unit SD across parcels; scores are exactly orthogonal and centred with the given SDs, so the
    population PCs are the planted maps in order.
    """
    rng = np.random.default_rng(seed)
    k = len(score_sd)
    maps, _ = np.linalg.qr(rng.standard_normal((n_parcels, k)))
    maps = maps.T * np.sqrt(n_parcels)
    scores = rng.standard_normal((n_subjects, k))
    scores -= scores.mean(axis=0)
    scores, _ = np.linalg.qr(scores)
    scores = scores * np.sqrt(n_subjects - 1) * np.asarray(score_sd)
    mean_map = rng.normal(0.5, 1.0, n_parcels)
    x = mean_map + scores @ maps + noise_sd * rng.standard_normal((n_subjects, n_parcels))
    return x, maps


@pytest.mark.parametrize("n_parcels, score_sd", [(88, [1.2, 0.9, 0.7]), (718, [0.8, 0.6, 0.45, 0.35])])
def test_planted_components_found_exactly(n_parcels, score_sd):
    x, maps = planted_delta(40, n_parcels, score_sd, seed=n_parcels)
    result = pca.delta_pca(x, n_shuffles=500, seed=1)
    assert result.n_significant == len(score_sd)
    for k, planted in enumerate(maps):
        r = np.corrcoef(planted, result.maps_z[k])[0, 1]
        assert abs(r) >= 0.9, (k, r)
    assert result.significance.significant[len(score_sd)] == False  # noqa: E712 (the next rank is noise)


@pytest.mark.parametrize("n_parcels, n_shuffles", [(88, 200), (718, 100)])
def test_no_significant_component_in_structure_free_data(n_parcels, n_shuffles):
    """50 data sets of noise (with subject-specific offsets and scales, which the null keeps): PC1 significant
    in at most 10 % (the rank-1 test's size is 5 %: benchmarks/bench_connectivity_group.py measured 9/200 at 88 and
    10/200 at 718 parcels with 500 shuffles). Fewer shuffles than 5000 keep the test fast; the rule is the same."""
    hits = 0
    for i in range(50):
        rng = np.random.default_rng(1000 + i)
        x = rng.normal(0, 1, (40, n_parcels)) * rng.uniform(0.5, 2.0, (40, 1)) + rng.normal(0, 1, (40, 1))
        hits += pca.delta_pca(x, n_shuffles=n_shuffles, seed=i).n_significant > 0
    assert hits <= 5, hits


def test_shuffle_null_is_pca_of_recentred_within_subject_shuffles():
    """The null procedure step by step: permute each subject's parcel values, re-centre every parcel across
    subjects (as the observed matrix is), PCA; the batched Gram shortcut must give exactly those ratios."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 31)) + rng.normal(0, 3, (1, 31))   # parcel means far from 0: centring matters
    null = pca.shuffle_null(x, n_shuffles=12, seed=4, batch_size=5)
    children = np.random.SeedSequence(4).spawn(3)
    expected = []
    for child, size in zip(children, (5, 5, 2)):
        batch = np.array(np.broadcast_to(x, (size, *x.shape)))
        np.random.default_rng(child).permuted(batch, axis=2, out=batch)
        for shuffled in batch:
            assert sorted(shuffled[0]) == sorted(x[0])               # a subject keeps its own values
            expected.append(pca.explained_variance_ratio(pca.pca_spectrum(shuffled)[0]))
    np.testing.assert_allclose(null, np.array(expected), atol=1e-12)
    assert pca.n_components(9, 31) == null.shape[1] == 8


def test_strong_subject_offsets_are_not_a_component():
    """A subject-wide shift is kept by within-subject shuffles, so it is not called a spatial component."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (40, 88)) + rng.normal(0, 5, (40, 1))
    result = pca.delta_pca(x, n_shuffles=300, seed=2)
    assert result.explained_variance_ratio[0] > 0.5  # the shift dominates the variance ...
    assert result.n_significant == 0                 # ... but the null has it too


def test_gram_eigenvalues_equal_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 50))
    eig, comps = pca.pca_spectrum(x)
    assert eig.size == 11 and comps.shape == (11, 50)
    via_gram = pca.gram_explained_variance(x[None], 11)[0]
    np.testing.assert_allclose(via_gram, pca.explained_variance_ratio(eig), atol=1e-12)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(eig, np.linalg.eigvalsh(np.cov(centred.T))[::-1][:11], rtol=1e-9)


def test_shuffle_keeps_each_subject_values_and_is_seeded():
    x = np.arange(3 * 7, dtype=float).reshape(3, 7)
    a = pca.shuffle_null(x, n_shuffles=30, seed=5, batch_size=7)
    b = pca.shuffle_null(x, n_shuffles=30, seed=5, batch_size=7)
    c = pca.shuffle_null(x, n_shuffles=30, seed=6, batch_size=7)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rng = np.random.default_rng(0)
    batch = np.array(np.broadcast_to(x, (4, 3, 7)))
    rng.permuted(batch, axis=2, out=batch)
    np.testing.assert_array_equal(np.sort(batch, axis=2), np.broadcast_to(x, (4, 3, 7)))


def test_null_identical_for_any_n_jobs():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 30))
    one = pca.shuffle_null(x, n_shuffles=120, seed=3, batch_size=25, n_jobs=1)
    two = pca.shuffle_null(x, n_shuffles=120, seed=3, batch_size=25, n_jobs=2)
    np.testing.assert_array_equal(one, two)


def test_rank_significance_rule_p_formula_and_consecutive_count():
    observed = np.array([0.30, 0.10, 0.20])
    null = np.array([[0.2, 0.2, 0.1], [0.25, 0.15, 0.1], [0.35, 0.05, 0.1], [0.1, 0.3, 0.1]])
    sig = pca.rank_significance(observed, null, percentile=50)
    np.testing.assert_allclose(sig.threshold, np.percentile(null, 50, axis=0))
    np.testing.assert_array_equal(sig.significant, [True, False, True])
    assert sig.n_significant == 1  # rank 3 exceeds its null but follows a non-significant rank
    np.testing.assert_allclose(sig.p_values, [(1 + 1) / 5, (1 + 3) / 5, (1 + 0) / 5])
    all_sig = pca.rank_significance(np.array([0.9, 0.8]), np.zeros((10, 2)))
    assert all_sig.n_significant == 2


def test_pc_maps_zscored_oriented_and_scores_are_pearson():
    x, _ = planted_delta(20, 60, [2.0], seed=9)
    result = pca.delta_pca(x, n_shuffles=50, seed=0)
    np.testing.assert_allclose(result.maps_z.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(result.maps_z.std(axis=1), 1, atol=1e-12)
    top = np.argmax(np.abs(result.components), axis=1)
    assert (result.components[np.arange(len(top)), top] > 0).all()
    for s in (0, 7):
        assert result.scores[s, 0] == pytest.approx(np.corrcoef(x[s], result.maps_z[0])[0, 1], abs=1e-12)
    np.testing.assert_allclose(result.mean_map, x.mean(axis=0))


def test_parcel_order_handled_by_name():
    x, _ = planted_delta(25, 40, [1.5, 1.0], seed=4)
    names = [f"p{i:02d}" for i in range(40)]
    frame = pd.DataFrame(x, columns=names, index=[f"s{i}" for i in range(25)])
    shuffled = frame[list(np.random.default_rng(0).permutation(names))]
    a = pca.delta_pca_frame(frame, n_shuffles=100, seed=8)
    b = pca.delta_pca_frame(shuffled, n_shuffles=100, seed=8)
    assert a.parcels == b.parcels == sorted(names)
    np.testing.assert_array_equal(a.explained_variance_ratio, b.explained_variance_ratio)
    np.testing.assert_array_equal(a.null, b.null)
    np.testing.assert_array_equal(a.maps_z, b.maps_z)
    assert a.n_significant == b.n_significant == 2
    with pytest.raises(ValueError, match="missing \\['p39'\\]"):
        pca.align_parcels(frame.drop(columns="p39"), names)
    with pytest.raises(ValueError, match="extra \\['zz'\\]"):
        pca.align_parcels(frame.assign(zz=1.0), names)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        pca.delta_pca(np.array([[1.0, np.nan], [2, 3], [4, 5]]))
    with pytest.raises(ValueError, match="at least 3 subjects"):
        pca.delta_pca(np.ones((2, 5)))


def test_demo_study_planting_model_found():
    """The demo study's connectivity model (bids_ketamine.synthetic.bold: 20 subjects, 2 smooth orthonormal
    components on the default atlas, weights N(0, 1) truncated at 2 and scaled 1, 0.8, component SD 0.035,
    noise SD 0.01), applied to the planted delta maps: exactly 2 significant PCs, |r| >= 0.9 with the planted maps."""
    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.synthetic import bold

    atlas = load_default_atlas()
    centroids = atlas.centroids_mm().loc[atlas.names].to_numpy()
    rng = np.random.default_rng(20240601)
    components = bold.smooth_components(centroids, 2, rng) * 0.035
    rows = []
    for _ in range(20):
        w = rng.standard_normal(2)
        while np.abs(w).max() > bold.WEIGHT_LIMIT:
            w = rng.standard_normal(2)
        rows.append((w * 0.8 ** np.arange(2)) @ components + 0.01 * rng.standard_normal(len(atlas.names)))
    frame = pd.DataFrame(rows, columns=atlas.names)
    result = pca.delta_pca_frame(frame, parcel_order=atlas.names, n_shuffles=1000, seed=5)
    assert result.n_significant == 2
    for k in range(2):
        assert abs(np.corrcoef(components[k], result.maps_z[k])[0, 1]) >= 0.9


def test_projection_scores_recover_the_planted_scores():
    """Projection scores (the published subject scores) of a noise-free planted matrix are the planted scores on the
    unit-norm loadings, up to each component's sign; they agree with sklearn's PCA transform."""
    from sklearn.decomposition import PCA

    x, maps = planted_delta(25, 60, [1.5, 1.0], noise_sd=0.0, seed=4)
    result = pca.delta_pca(x, n_shuffles=10, seed=0)
    reference = PCA(n_components=2).fit(x).transform(x)
    for k in range(2):
        sign = np.sign(np.dot(result.projections[:, k], reference[:, k]))
        np.testing.assert_allclose(sign * result.projections[:, k], reference[:, k], atol=1e-9)
    unit = maps / np.linalg.norm(maps, axis=1, keepdims=True)
    expected = (x - x.mean(axis=0)) @ unit.T
    np.testing.assert_allclose(np.abs(result.projections[:, :2]), np.abs(expected), atol=1e-9)
    # the correlation scores stay in [-1, 1]; the projections keep the scale (variance = eigenvalue)
    np.testing.assert_allclose(result.projections[:, :2].var(axis=0, ddof=1), result.eigenvalues[:2], rtol=1e-9)
