"""Scrubbing: exactly the planted spikes and their neighbours are censored; the intensity change is as defined."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.connectivity.parcellate import parcel_timeseries_nifti
from bids_ketamine.connectivity.scrubbing import (censor_frames, framewise_displacement, intensity_change_ratio,
                                                  normalised_intensity_change, session_censored_fraction)


def test_censors_exactly_flagged_frames_and_one_neighbour():
    rng = np.random.default_rng(3)
    n = 100
    fd = rng.uniform(0.0, 0.3, n)
    fd[0] = np.nan  # fMRIPrep writes n/a for the first frame
    ratio = rng.uniform(0.8, 1.4, n)
    fd[[20, 70]] = [0.51, 2.0]
    ratio[[45, 99]] = [1.61, 3.0]
    ratio[60] = 1.6  # exactly at the threshold: not flagged (strictly greater)
    fd[30] = 0.5
    c = censor_frames(fd, ratio, fd_threshold=0.5, dvars_ratio=1.6, neighbours=1)
    expected = sorted({19, 20, 21, 69, 70, 71, 44, 45, 46, 98, 99})
    assert np.flatnonzero(~c.keep).tolist() == expected
    assert np.flatnonzero(c.flagged_fd).tolist() == [20, 70]
    assert np.flatnonzero(c.flagged_dvars).tolist() == [45, 99]
    two = censor_frames(fd, ratio, neighbours=2)
    assert set(np.flatnonzero(~two.keep)) == {18, 19, 20, 21, 22, 68, 69, 70, 71, 72, 43, 44, 45, 46, 47, 97, 98, 99}


def test_framewise_displacement_power_definition():
    motion = np.zeros((3, 6))
    motion[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    fd = framewise_displacement(motion)
    np.testing.assert_allclose(fd, [0.0, 0.1 + 0.2 + 50 * 0.001 + 50 * 0.002, 0.1 + 0.2 + 50 * 0.003])


def test_intensity_change_definition_and_streaming(tmp_path):
    rng = np.random.default_rng(5)
    data = 800 + 5 * rng.standard_normal((6, 5, 4, 40)).astype(np.float32)
    mask = np.zeros((6, 5, 4), bool)
    mask[1:5, 1:4, :3] = True
    vox = data[mask].astype(float)
    by_hand = np.zeros(40)
    by_hand[1:] = np.sqrt(((vox[:, 1:] - vox[:, :-1]) ** 2).mean(axis=0)) / vox.mean()
    np.testing.assert_allclose(normalised_intensity_change(vox), by_hand, rtol=1e-12)
    path = tmp_path / "bold.nii.gz"
    nib.Nifti1Image(data, np.eye(4)).to_filename(path)
    labels = np.zeros(mask.shape, np.int32)
    labels[mask] = 1
    for chunk in (1, 7, 64):
        series = parcel_timeseries_nifti(path, labels, mask, [1], ["all"], chunk_volumes=chunk)
        np.testing.assert_allclose(series.intensity_change, by_hand, rtol=1e-5)
    ratio = intensity_change_ratio(by_hand)
    assert ratio[0] == 0 and np.isclose(np.median(ratio[1:]), 1.0)


def test_session_fraction_over_runs():
    a = censor_frames(np.r_[0, 1.0, np.zeros(8)], np.zeros(10))   # 3 of 10 censored
    b = censor_frames(np.zeros(10), np.zeros(10))                   # 0 of 10
    assert session_censored_fraction([a, b]) == pytest.approx(0.15)
