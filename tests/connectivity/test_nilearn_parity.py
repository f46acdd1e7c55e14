"""Where nilearn does the same job, our steps agree with it: nuisance regression with a cosine high-pass fitted on
the frames that survive scrubbing (``nilearn.signal.clean(filter='cosine', sample_mask=...)``) and parcel means
(``NiftiLabelsMasker(strategy='mean')``), on our synthetic generator's BOLD and confounds."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.connectivity.denoise import full_design, nuisance_names, regress_out
from bids_ketamine.synthetic import bold as sb


def _confounds(seed: int, n: int):
    rng = np.random.default_rng(seed)
    spikes = sb.spike_frames(rng, n, False)
    motion = sb._motion(rng, n, spikes)
    csf, wm = sb._ar1(rng, n, 0.5, 5.0), sb._ar1(rng, n, 0.5, 5.0)
    gs = sb._ar1(rng, n, 0.7, 8.0)
    keep = np.ones(n, bool)
    keep[sb.expected_censored(spikes, n)] = False
    return sb._confounds_table(motion, csf, wm, gs), keep, rng


@pytest.mark.parametrize("n_frames,tr,gsr", [(150, 2.0, True), (237, 0.8, False), (237, 0.8, True)])
def test_nuisance_regression_matches_nilearn_signal_clean(n_frames, tr, gsr):
    from nilearn.signal import clean

    confounds, keep, rng = _confounds(n_frames, n_frames)
    # 2 N TR f_c is not an integer here: both keep the cosines of frequency below the cut-off (ours excludes a
    # regressor exactly at it, nilearn includes it)
    assert (2 * n_frames * tr * 0.008) % 1 != 0
    design, labels = full_design(confounds, nuisance_names(global_signal=gsr), repetition_time=tr,
                                 high_pass_hz=0.008)
    nuisance = design[:, [i for i, lab in enumerate(labels) if not lab.startswith("cosine")]]
    drift = np.cumsum(rng.standard_normal((n_frames, 1)), axis=0)
    series = (rng.standard_normal((n_frames, 12)) + nuisance[:, :3] @ rng.standard_normal((3, 12))
              + drift @ rng.standard_normal((1, 12)) + 100)
    ours = regress_out(series, design, keep)
    # our cosine basis is nilearn's DCT drift (its constant column aside)
    from nilearn.signal import create_cosine_drift

    drift_basis = create_cosine_drift(0.008, np.arange(n_frames) * tr)[:, :-1]
    np.testing.assert_allclose(design[:, len(nuisance[0]):], drift_basis, atol=1e-12)
    # nilearn drops its cosines when a confound correlates > 0.9 with one (a slow motion drift can): then give it
    # the cosines as confounds, as a user would
    corr = np.corrcoef(drift_basis.T, nuisance.T)[: drift_basis.shape[1], drift_basis.shape[1]:]
    if (corr > 0.9).any():
        theirs = clean(series, confounds=design, filter=False, t_r=tr, sample_mask=np.flatnonzero(keep),
                       detrend=False, standardize=False, standardize_confounds=True)
    else:
        theirs = clean(series, confounds=nuisance, filter="cosine", high_pass=0.008, t_r=tr,
                       sample_mask=np.flatnonzero(keep), detrend=False, standardize=False,
                       standardize_confounds=True)
    assert np.isnan(ours[~keep]).all()
    # nilearn regresses on centred confounds without an intercept, so it keeps each series' mean; ours removes it
    np.testing.assert_allclose(ours[keep], theirs - theirs.mean(axis=0), atol=1e-8 * np.abs(series).max())


def test_parcel_means_match_nilearn_labels_masker(tmp_path):
    import nibabel as nib
    from nilearn.maskers import NiftiLabelsMasker

    from bids_ketamine.connectivity.parcellate import parcel_timeseries_nifti

    rng = np.random.default_rng(4)
    shape, n_frames = (9, 10, 8), 30
    labels = rng.integers(0, 6, shape)                     # 5 parcels and background
    mask = rng.random(shape) > 0.15
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    data = (500 + rng.standard_normal((*shape, n_frames)) * 10).astype(np.float32)
    nib.Nifti1Image(data, affine).to_filename(tmp_path / "bold.nii.gz")
    series = parcel_timeseries_nifti(tmp_path / "bold.nii.gz", labels, mask, [1, 2, 3, 4, 5],
                                     ["a", "b", "c", "d", "e"], chunk_volumes=7)
    masker = NiftiLabelsMasker(nib.Nifti1Image(labels.astype(np.int16), affine),
                               mask_img=nib.Nifti1Image(mask.astype(np.uint8), affine), strategy="mean")
    theirs = masker.fit_transform(nib.Nifti1Image(data, affine))
    np.testing.assert_allclose(series.timeseries, theirs, rtol=1e-5)
    assert series.n_voxels.tolist() == [int(((labels == k) & mask).sum()) for k in range(1, 6)]
