"""GBC: agreement with the analytic value of a known parcel correlation matrix, and exact definitions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.connectivity.denoise import cosine_basis, regress_out
from bids_ketamine.connectivity.gbc import (analytic_gbc, check_parcel_signals, fisher_z, gbc_from_timeseries,
                                            global_brain_connectivity, pearson_matrix)
from bids_ketamine.connectivity.parcellate import parcel_timeseries_nifti


def _factor_correlation(rng, n_parcels: int, n_factors: int = 3) -> tuple[np.ndarray, np.ndarray]:
    loadings = rng.uniform(-0.2, 0.6, (n_parcels, n_factors))
    loadings *= 0.9 / np.maximum(np.linalg.norm(loadings, axis=1, keepdims=True), 0.9)
    r = loadings @ loadings.T
    np.fill_diagonal(r, 1.0)
    return r, loadings


def test_gbc_definition_on_a_hand_example():
    r = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.1], [-0.2, 0.1, 1.0]])
    z = fisher_z(r)
    assert np.isnan(np.diag(z)).all()
    expected = np.array([(np.arctanh(0.5) + np.arctanh(-0.2)) / 2, (np.arctanh(0.5) + np.arctanh(0.1)) / 2,
                         (np.arctanh(-0.2) + np.arctanh(0.1)) / 2])
    np.testing.assert_allclose(global_brain_connectivity(z), expected, rtol=1e-12)


def test_pearson_matches_numpy():
    x = np.random.default_rng(0).standard_normal((50, 6))
    np.testing.assert_allclose(pearson_matrix(x), np.corrcoef(x.T), atol=1e-12)


def test_gbc_equals_analytic_value_for_known_correlation():
    """Gaussian series drawn with a known correlation matrix: estimated GBC within 0.02 of the analytic GBC."""
    rng = np.random.default_rng(42)
    r, _ = _factor_correlation(rng, 40)
    x = rng.standard_normal((6000, 40)) @ np.linalg.cholesky(r).T
    _, gbc = gbc_from_timeseries(x)
    assert np.max(np.abs(gbc - analytic_gbc(r))) < 0.02


def test_gbc_through_nifti_parcellation_and_high_pass(tmp_path):
    """Voxels = parcel signal + voxel noise in a 4-D NIfTI: parcellate (streamed), high-pass, GBC vs analytic.

    The analytic value accounts for the voxel noise left in a parcel mean (variance noise^2 / voxels)."""
    rng = np.random.default_rng(7)
    n_parcels, n_frames, noise = 12, 3000, 0.5
    r, _ = _factor_correlation(rng, n_parcels)
    signals = rng.standard_normal((n_frames, n_parcels)) @ np.linalg.cholesky(r).T
    labels = np.zeros((8, 6, 5), dtype=np.int32)
    labels.reshape(-1)[:n_parcels * 16] = np.repeat(np.arange(1, n_parcels + 1), 16)  # 16 voxels per parcel
    mask = np.ones(labels.shape, bool)
    data = np.zeros((*labels.shape, n_frames), dtype=np.float32)
    inside = labels > 0
    data[inside] = (500 + 10 * signals[:, labels[inside] - 1].T
                    + 10 * noise * rng.standard_normal((int(inside.sum()), n_frames)))
    data[~inside] = 500 + rng.standard_normal((int((~inside).sum()), n_frames))
    path = tmp_path / "bold.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    names = [f"p{i}" for i in range(1, n_parcels + 1)]
    series = parcel_timeseries_nifti(path, labels, mask, list(range(1, n_parcels + 1)), names, chunk_volumes=37)
    np.testing.assert_allclose(series.timeseries, data[inside].reshape(n_parcels, 16, n_frames).mean(1).T,
                               rtol=1e-5)
    clean = regress_out(series.timeseries, cosine_basis(n_frames, 2.0, 0.008), np.ones(n_frames, bool))
    _, gbc = gbc_from_timeseries(clean)
    var = 1 + noise**2 / 16
    expected = analytic_gbc(np.where(np.eye(n_parcels, dtype=bool), 1.0, r / var))
    assert np.max(np.abs(gbc - expected)) < 0.02


@pytest.mark.parametrize("bad", ["constant", "nan"])
def test_constant_or_nan_parcel_is_named(bad):
    x = np.random.default_rng(1).standard_normal((30, 4))
    x[:, 2] = 3.0 if bad == "constant" else x[:, 2]
    if bad == "nan":
        x[5, 2] = np.nan
    with pytest.raises(ValueError, match="'c'"):
        check_parcel_signals(x, ["a", "b", "c", "d"])
