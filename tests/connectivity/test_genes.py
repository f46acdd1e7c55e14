"""Gene correlation with spatial nulls: exact p formula, FDR, gene tables, surrogates per hemisphere and cached,
the AHBA copy never downloaded, and the calibration of the spatial null against a naive shuffle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import genes as gn
from bids_ketamine.connectivity import spatial_nulls as sn
from bids_ketamine.errors import BadDataError, MissingInputError


def _hemisphere_points(n_per_hemi: int = 30, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    left = rng.uniform([-70, -100, -40], [-10, 60, 70], (n_per_hemi, 3))
    right = rng.uniform([10, -100, -40], [70, 60, 70], (n_per_hemi, 3))
    return np.vstack([left, right]), ["L"] * n_per_hemi + ["R"] * n_per_hemi


def test_p_value_formula_exact():
    null = np.array([0.6, -0.5, 0.1, 0.2, -0.49])
    assert gn.null_p_value(0.5, null) == pytest.approx((1 + 2) / 6)
    assert gn.null_p_value(-0.5, null) == pytest.approx((1 + 2) / 6)  # two-sided: |r|
    assert gn.null_p_value(0.9, null) == pytest.approx(1 / 6)
    assert gn.null_p_value(0.0, null) == pytest.approx(1.0)
    two = gn.null_p_value(np.array([0.5, 0.15]), np.column_stack([null, null]))
    np.testing.assert_allclose(two, [3 / 6, 5 / 6])


def test_fdr_matches_benjamini_hochberg():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.001, 0.04, 0.03, 0.2, 0.5, 0.011, np.nan])
    q = gn.fdr_bh(p)
    expected = multipletests(p[:-1], method="fdr_bh")[1]
    np.testing.assert_allclose(q[:-1], expected)
    assert np.isnan(q[-1])


def test_gene_table_reading(tmp_path: Path):
    good = tmp_path / "genes.tsv"
    good.write_text("parcel\tSST\tPVALB\nA\t1.0\t2\nB\tn/a\t3\n")
    table = gn.read_gene_table(good)
    assert list(table.columns) == ["SST", "PVALB"] and list(table.index) == ["A", "B"]
    assert np.isnan(table.loc["B", "SST"])
    (tmp_path / "nokey.tsv").write_text("region\tSST\nA\t1\n")
    with pytest.raises(BadDataError, match="no 'parcel'"):
        gn.read_gene_table(tmp_path / "nokey.tsv")
    (tmp_path / "text.tsv").write_text("name\tSST\nA\thigh\n")
    with pytest.raises(BadDataError, match="non-numeric"):
        gn.read_gene_table(tmp_path / "text.tsv")
    with pytest.raises(MissingInputError):
        gn.read_gene_table(tmp_path / "absent.tsv")


def test_missing_ahba_copy_is_a_clear_error_never_a_download(tmp_path: Path, monkeypatch):
    import abagen.datasets.fetchers as fetchers

    monkeypatch.setattr(fetchers, "_fetch_files", lambda *a, **k: pytest.fail("tried to download"))
    donor = tmp_path / "microarray" / "normalized_microarray_donor9861"
    donor.mkdir(parents=True)
    for name in gn.AHBA_FILES:
        (donor / name).write_text("x")
    with pytest.raises(MissingInputError, match="normalized_microarray_donor10021") as err:
        gn.expression_from_abagen(tmp_path, None, pd.DataFrame({"index": [1], "name": ["a"], "hemisphere": ["L"],
                                                                "structure": ["cortex"]}))
    assert err.value.exit_code == 66


def test_surrogates_per_hemisphere_seeded_and_cached(tmp_path: Path, monkeypatch):
    xyz, hemis = _hemisphere_points(20)
    values = gn.smooth_random_maps(xyz, 1, length_mm=30, rng=np.random.default_rng(1))[0]
    values[:20] += 10.0                                # left hemisphere much higher
    dist = gn.distance_matrix(xyz)
    per_hemi = gn.SurrogateSettings(method="brainsmash", per_hemisphere=True)
    surr = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi)
    assert surr.shape == (30, 40)
    # resample=True: every surrogate hemisphere is a rearrangement of that hemisphere's own values
    np.testing.assert_allclose(np.sort(surr[:, :20], axis=1), np.broadcast_to(np.sort(values[:20]), (30, 20)))
    np.testing.assert_allclose(np.sort(surr[:, 20:], axis=1), np.broadcast_to(np.sort(values[20:]), (30, 20)))
    whole = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis,
                                   settings=gn.SurrogateSettings(method="brainsmash"))
    np.testing.assert_allclose(np.sort(whole, axis=1), np.broadcast_to(np.sort(values), (30, 40)))
    assert (whole[:, :20].min(axis=1) < 5).any()         # values do cross hemispheres
    again = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi)
    np.testing.assert_array_equal(surr, again)
    # Moran per hemisphere: each hemisphere keeps its own mean and sum of squares
    moran = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis,
                                   settings=gn.SurrogateSettings(per_hemisphere=True))
    for half in (slice(0, 20), slice(20, 40)):
        np.testing.assert_allclose(moran[:, half].mean(axis=1), values[half].mean())
        np.testing.assert_allclose(np.linalg.norm(moran[:, half], axis=1), np.linalg.norm(values[half]))
    with pytest.raises(ValueError, match="unknown surrogate method"):
        gn.generate_surrogates(values, dist, n_surrogates=3, seed=1, settings=gn.SurrogateSettings(method="wavelet"))
    kwargs = dict(n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi, cache_dir=tmp_path)
    np.testing.assert_array_equal(gn.cached_surrogates(values, dist, **kwargs), surr)
    assert len(list(tmp_path.glob("surrogates_*.npy"))) == 1
    monkeypatch.setattr(gn, "generate_surrogates", lambda *a, **k: pytest.fail("cache not reused"))
    np.testing.assert_array_equal(gn.cached_surrogates(values, dist, **kwargs), surr)
    groups = gn.hemisphere_groups(["L", "B", "R"] * 5, True, 15)  # a bilateral parcel: one group
    assert len(groups) == 1 and list(groups[0]) == list(range(15))


def test_moran_basis_and_surrogates_keep_mean_norm_and_moran_spectrum():
    xyz, _ = _hemisphere_points(25, seed=4)
    dist = gn.distance_matrix(xyz)
    basis = sn.moran_eigenvectors(dist)
    assert basis.shape == (50, 49)
    np.testing.assert_allclose(basis.T @ basis, np.eye(49), atol=1e-10)    # orthonormal ...
    np.testing.assert_allclose(basis.sum(axis=0), 0, atol=1e-10)           # ... and orthogonal to the constant
    weights = np.where(dist > 0, 1 / np.where(dist > 0, dist, 1), 0)
    moran_i = [(v @ weights @ v) / (v @ v) for v in basis.T]               # Moran's I (up to n / sum(W))
    assert np.all(np.diff(moran_i) <= 1e-10)                               # smoothest first
    values = gn.smooth_random_maps(xyz, 1, length_mm=30, rng=np.random.default_rng(2))[0] + 3.0
    surr = sn.moran_surrogates(values, dist, n_surrogates=200, seed=9, batch_size=64)
    np.testing.assert_allclose(surr.mean(axis=1), values.mean())
    np.testing.assert_allclose(np.linalg.norm(surr - 3.0 - (values.mean() - 3.0), axis=1),
                               np.linalg.norm(values - values.mean()))
    np.testing.assert_allclose(((surr - values.mean()) @ basis) ** 2,
                               np.broadcast_to(((values - values.mean()) @ basis) ** 2, (200, 49)), atol=1e-9)
    np.testing.assert_array_equal(surr, sn.moran_surrogates(values, dist, n_surrogates=200, seed=9, batch_size=64))
    assert not np.allclose(surr[0], surr[1])
    with pytest.raises(ValueError, match="same centroid"):
        sn.moran_eigenvectors(gn.distance_matrix(np.vstack([xyz, xyz[:1]])))


def test_moran_test_has_exact_level_when_the_basis_diagonalises_the_covariance():
    """Planted truth: maps that are independent Gaussian coefficients on the Moran basis (steeply decaying
    variances, i.e. very smooth maps) make sign flips an exact randomisation test, so unrelated pairs must reject
    at the nominal rate (99 flips: (1 + k) / 100 < 0.05 for k <= 3, 4 %) -- while a naive shuffle does not."""
    xyz, _ = _hemisphere_points(30, seed=5)
    dist = gn.distance_matrix(xyz)
    basis = sn.moran_eigenvectors(dist)
    sd = 1.0 / (1.0 + np.arange(basis.shape[1])) ** 1.5
    rng = np.random.default_rng(0)
    maps = (rng.standard_normal((1200, basis.shape[1])) * sd) @ basis.T
    p_moran, p_naive = [], []
    for i in range(600):
        x, y = maps[2 * i], maps[2 * i + 1]
        r = gn.row_correlations(x[None], y)[0]
        p_moran.append(gn.null_p_value(r, gn.row_correlations(
            sn.moran_surrogates(x, dist, n_surrogates=99, seed=i), y)))
        p_naive.append(gn.null_p_value(r, gn.row_correlations(
            gn.shuffled_maps(x, 99, np.random.default_rng(i)), y)))
    rate = float(np.mean(np.asarray(p_moran) < 0.05))
    assert 0.02 <= rate <= 0.065, rate            # binomial 99 % range around 4 % for 600 pairs
    assert np.mean(np.asarray(p_naive) < 0.05) > 0.2


def test_gene_correlations_table():
    xyz, hemis = _hemisphere_points(25, seed=2)
    names = [f"p{i}" for i in range(50)]
    rng = np.random.default_rng(5)
    brain = pd.Series(gn.smooth_random_maps(xyz, 1, length_mm=25, rng=rng)[0], index=names)
    expr = pd.DataFrame({"SAME": brain.to_numpy() * 2 + 1, "NOISE": rng.standard_normal(50),
                         "GAPPY": brain.to_numpy()}, index=names)
    expr.loc["p3", "GAPPY"] = np.nan
    surr = gn.generate_surrogates(brain.to_numpy(), gn.distance_matrix(xyz), n_surrogates=99, seed=1,
                                  hemispheres=hemis)
    table = gn.gene_correlations(brain, expr.iloc[::-1], surr, n_naive=99, seed=2).set_index("gene")
    assert table.loc["SAME", "r"] == pytest.approx(1.0)
    assert table.loc["SAME", "p_spatial"] == pytest.approx(1 / 100)
    assert table.loc["GAPPY", "n_parcels"] == 49 and table.loc["GAPPY", "r"] == pytest.approx(1.0)
    r_null = gn.row_correlations(surr, expr.loc[names, "NOISE"].to_numpy())
    assert table.loc["NOISE", "p_spatial"] == pytest.approx(gn.null_p_value(table.loc["NOISE", "r"], r_null))
    np.testing.assert_allclose(table["q_spatial"], gn.fdr_bh(table["p_spatial"].to_numpy()))
    with pytest.raises(ValueError, match="lacks parcels"):
        gn.gene_correlations(brain, expr.drop(index="p7"), surr)


def test_null_calibration_spatial_test_calibrated_naive_not():
    """Unrelated smooth maps on the default atlas's 68 cortical parcels (the gene parcels; Gaussian fields of 30 and
    45 mm and an exponential field): the default (Moran, whole-brain) surrogate test has p < 0.05 in <= 7 % of 300
    pairs (99 nulls, nominal 4 %), the naive shuffle far more often. benchmarks/bench_connectivity_group.py runs
    more pairs, a finer parcellation, per-hemisphere surrogates and brainsmash."""
    from bids_ketamine.atlas import load_default_atlas

    atlas = load_default_atlas()
    labels = atlas.labels.set_index("name")
    cortex = labels.index[labels["structure"] == "cortex"]
    xyz = atlas.centroids_mm().loc[cortex].to_numpy()
    hemis = labels.loc[cortex, "hemisphere"].tolist()
    for covariance, length in (("gaussian", 30.0), ("gaussian", 45.0), ("exponential", 40.0)):
        res = gn.null_calibration(xyz, hemispheres=hemis, n_pairs=300, n_null=99, length_mm=length, seed=3,
                                  covariance=covariance)
        table = res.table.set_index("method")
        assert list(table.index) == ["moran_whole_brain", "naive_parcel_shuffle"]
        spatial = table.loc["moran_whole_brain", "false_positive_rate"]
        naive = table.loc["naive_parcel_shuffle", "false_positive_rate"]
        assert spatial <= 0.07, (covariance, length, res.table)
        assert naive >= 3 * max(spatial, 0.04), res.table
        assert len(res.pairs) == 300 and (res.pairs.filter(like="p_") >= 0.01).all().all()


def test_null_calibration_methods_modes_and_cache(tmp_path: Path, monkeypatch):
    xyz, hemis = _hemisphere_points(15, seed=7)
    kwargs = dict(hemispheres=hemis, n_pairs=4, n_null=19, length_mm=30.0, seed=3, both_hemisphere_modes=True,
                  other_methods=["brainsmash"])
    res = gn.cached_null_calibration(xyz, cache_dir=tmp_path, **kwargs)
    assert list(res.table["method"]) == ["moran_whole_brain", "moran_per_hemisphere", "surrogates_whole_brain",
                                         "surrogates_per_hemisphere", "naive_parcel_shuffle"]
    assert list(res.table["configured"]) == [True, False, False, False, False]
    row = res.table.iloc[-1]
    assert row["n_false_positive"] == int((res.pairs["p_naive_parcel_shuffle"] < 0.05).sum())
    assert row["false_positive_rate"] == row["n_false_positive"] / 4 and row["ci_low"] <= row["ci_high"]
    assert len(list(tmp_path.glob("nullcalibration_*.json"))) == 1
    monkeypatch.setattr(gn, "null_calibration", lambda *a, **k: pytest.fail("cache not reused"))
    again = gn.cached_null_calibration(xyz, cache_dir=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(again.table, res.table)
    pd.testing.assert_frame_equal(again.pairs, res.pairs)


def test_calibration_and_gene_figures_draw(tmp_path: Path):
    from bids_ketamine.connectivity.null_figures import calibration_figure, gene_null_figure

    xyz, hemis = _hemisphere_points(15, seed=7)
    res = gn.null_calibration(xyz, hemispheres=hemis, n_pairs=6, n_null=19, seed=1, both_hemisphere_modes=True)
    fig = calibration_figure(res.table, res.pairs)
    assert len(fig.axes) == 2 and len(fig.axes[0].patches) == 3       # one bar per method
    fig.savefig(tmp_path / "cal.svg")
    table = pd.DataFrame({"gene": ["A"], "r": [0.5], "p_spatial": [0.2], "p_naive": [0.01]})
    fig = gene_null_figure(table, {"A": np.linspace(-0.6, 0.6, 50)}, {"A": np.linspace(-0.2, 0.2, 50)}, title="t")
    assert fig.axes[0].lines[0].get_xdata()[0] == pytest.approx(0.5)  # the observed r is marked
    fig.savefig(tmp_path / "gene.svg")


def test_complete_ahba_layout_accepted(tmp_path: Path):
    for donor in gn.AHBA_DONORS:
        folder = tmp_path / "microarray" / f"normalized_microarray_donor{donor}"
        folder.mkdir(parents=True)
        for name in gn.AHBA_FILES:
            (folder / name).write_text("x")
    assert gn.check_ahba_copy(tmp_path) == tmp_path / "microarray"
    assert gn.check_ahba_copy(tmp_path / "microarray") == tmp_path / "microarray"
    (tmp_path / "microarray" / "normalized_microarray_donor15697" / "Probes.csv").unlink()
    with pytest.raises(MissingInputError, match="donor15697/Probes.csv"):
        gn.check_ahba_copy(tmp_path)


#: p values of 20 pairs of smooth maps on the default atlas's 68 cortical parcels (``_smooth_pairs`` below), from
#: BrainSpace 0.3.0's MoranRandomization (procedure "singleton", inverse-distance weights, tol 1e-6, 10,000
#: surrogates, random_state = pair index; numpy 2.4.6), run once outside this project: an independent implementation.
BRAINSPACE_P = [0.6001, 0.0409, 0.8154, 0.6076, 0.9044, 0.9897, 0.9766, 0.1741, 0.3829, 0.1849, 0.668, 0.2187,
                0.4091, 0.1421, 0.8117, 0.1645, 0.6, 0.1982, 0.8951, 0.2863]


def _smooth_pairs():
    from bids_ketamine.atlas import load_default_atlas

    atlas = load_default_atlas()
    names = atlas.labels.query("structure == 'cortex'")["name"].tolist()
    xyz = atlas.centroids_mm().loc[names].to_numpy()
    d2 = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    chol = np.linalg.cholesky(np.exp(-d2 / (2 * 30.0 ** 2)) + 1e-6 * np.eye(len(names)))
    maps = (chol @ np.random.default_rng(3).standard_normal((len(names), 40))).T
    return gn.distance_matrix(xyz), maps


def test_moran_p_values_agree_with_brainspace():
    """Same method, independent code: p values within Monte-Carlo error of BrainSpace's (SD of a p <= 0.005)."""
    distance, maps = _smooth_pairs()
    ours = []
    for k in range(len(BRAINSPACE_P)):
        x, y = maps[2 * k], maps[2 * k + 1]
        null = sn.moran_surrogates(x, distance, n_surrogates=10_000, seed=k)
        r_null = gn.row_correlations(null, y)
        ours.append(float(gn.null_p_value(np.corrcoef(x, y)[0, 1], r_null)))
    assert np.max(np.abs(np.array(ours) - BRAINSPACE_P)) <= 0.03
