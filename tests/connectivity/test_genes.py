"""Gene correlation with spatial nulls: exact p formula, FDR, gene tables, surrogates per hemisphere and cached,
the AHBA copy never downloaded, and the calibration of the spatial null against a naive shuffle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import genes as gn
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
    per_hemi = gn.SurrogateSettings(per_hemisphere=True)
    surr = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi)
    assert surr.shape == (30, 40)
    # resample=True: every surrogate hemisphere is a rearrangement of that hemisphere's own values
    np.testing.assert_allclose(np.sort(surr[:, :20], axis=1), np.broadcast_to(np.sort(values[:20]), (30, 20)))
    np.testing.assert_allclose(np.sort(surr[:, 20:], axis=1), np.broadcast_to(np.sort(values[20:]), (30, 20)))
    whole = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis)  # default: whole brain
    np.testing.assert_allclose(np.sort(whole, axis=1), np.broadcast_to(np.sort(values), (30, 40)))
    assert (whole[:, :20].min(axis=1) < 5).any()         # values do cross hemispheres
    again = gn.generate_surrogates(values, dist, n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi)
    np.testing.assert_array_equal(surr, again)
    kwargs = dict(n_surrogates=30, seed=4, hemispheres=hemis, settings=per_hemi, cache_dir=tmp_path)
    np.testing.assert_array_equal(gn.cached_surrogates(values, dist, **kwargs), surr)
    assert len(list(tmp_path.glob("surrogates_*.npy"))) == 1
    monkeypatch.setattr(gn, "generate_surrogates", lambda *a, **k: pytest.fail("cache not reused"))
    np.testing.assert_array_equal(gn.cached_surrogates(values, dist, **kwargs), surr)
    groups = gn.hemisphere_groups(["L", "B", "R"] * 5, True, 15)  # a bilateral parcel: one group
    assert len(groups) == 1 and list(groups[0]) == list(range(15))


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
    """Unrelated smooth maps on two 30-parcel hemispheres: the (default, whole-brain) surrogate test has p < 0.05 in
    <= 7 % of pairs, the naive shuffle clearly more often. Small for CI (100 pairs x 99 nulls, nominal rate 4 %);
    benchmarks/bench_connectivity_group.py runs the atlas-sized version with more pairs and both surrogate modes."""
    xyz, hemis = _hemisphere_points(30, seed=7)
    res = gn.null_calibration(xyz, hemispheres=hemis, n_pairs=100, n_null=99, length_mm=30.0, seed=3)
    table = res.table.set_index("method")
    assert list(table.index) == ["surrogates_whole_brain", "naive_parcel_shuffle"]
    spatial = table.loc["surrogates_whole_brain", "false_positive_rate"]
    naive = table.loc["naive_parcel_shuffle", "false_positive_rate"]
    assert spatial <= 0.07, res.table
    assert naive >= 2.5 * max(spatial, 0.04), res.table
    assert len(res.pairs) == 100 and (res.pairs.filter(like="p_") >= 0.01).all().all()


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
