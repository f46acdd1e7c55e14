"""Preprocessing on real 7T STEAM data (4 coils x 16 transients) against an established tool's result, and a fit
with our simulated 7T STEAM TE 11 ms basis."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.spectroscopy.nifti_io import read_nifti_mrs, to_spectrum
from bids_ketamine.spectroscopy.sign_convention import decide
from bids_ketamine.spectroscopy.preprocess import (apply_shift_phase, align_transients, preprocess_svs, reject_outlier_transients,
                                                   wsvd_coil_weights, combine_coils)

pytestmark = pytest.mark.realdata

#: Published healthy-brain ratios to total creatine at 7T (e.g. Tkac et al., Magn Reson Med 2009;62:868-879;
#: Marjanska et al., NMR Biomed 2012;25:332-339): NAA/tCr about 1.3-1.6, Glu/tCr 1.0-1.3, mI/tCr 0.6-1.0.
#: The windows are wide enough for regional and individual variation.
PUBLISHED = {"NAA": (1.0, 2.0), "Glu": (0.8, 1.6), "mI": (0.45, 1.3)}


@pytest.fixture(scope="module")
def steam(shared_data):
    root = shared_data / "steam7t_mrs"
    mrs = root / "sub-01" / "mrs"
    return {
        "svs": read_nifti_mrs(mrs / "sub-01_acq-steam_svs.nii.gz"),
        "water": read_nifti_mrs(mrs / "sub-01_acq-steam_mrsref.nii.gz"),
        "ecc": read_nifti_mrs(mrs / "sub-01_acq-ecc_mrsref.nii.gz"),
        "reference": read_nifti_mrs(root / "derivatives" / "reference" / "sub-01" / "mrs"
                                    / "sub-01_acq-steam_desc-preproc_svs.nii.gz"),
    }


@pytest.fixture(scope="module")
def preprocessed(steam):
    d = steam["svs"]
    return preprocess_svs(d.fid, dwell_time=d.dwell_time, spectrometer_frequency=d.spectrometer_frequency,
                          water=steam["water"].fid, ecc=steam["ecc"].fid)


def _aligned_magnitude_correlation(fid_a, ppm_a, fid_b, ppm_b, lo=0.2, hi=4.2):
    grid = np.linspace(lo, hi, 3000)
    mb = np.interp(grid, ppm_b, np.abs(to_spectrum(fid_b)))
    best = -1.0
    for shift in np.linspace(-0.1, 0.1, 401):  # align the ppm axes (the tools reference frequency differently)
        ma = np.interp(grid, ppm_a + shift, np.abs(to_spectrum(fid_a)))
        best = max(best, float(np.corrcoef(ma, mb)[0, 1]))
    return best


def test_data_are_stored_conjugated_and_detected(steam, preprocessed):
    d = steam["svs"]
    sign = decide(d.fid[0], d.dwell_time, d.spectrometer_frequency)
    assert sign.conjugate and sign.mirror_height > 1.5 * sign.direct_height
    assert preprocessed.conjugated and preprocessed.sign.conjugate  # decided once, in preprocessing


def test_preprocessing_matches_reference_spectrum(steam, preprocessed):
    d, ref = steam["svs"], steam["reference"]
    ref_fid = np.conj(ref.fid[0, 0])  # the reference is stored with the same (conjugate) sign as the raw data
    corr = _aligned_magnitude_correlation(preprocessed.average, d.ppm_axis(), ref_fid, ref.ppm_axis())
    assert corr >= 0.99, corr


def test_preprocessing_beats_naive_average(steam, preprocessed):
    """Coil weighting and alignment must matter: a plain coil sum of unaligned transients matches worse."""
    d, ref = steam["svs"], steam["reference"]
    naive = np.conj(d.fid.sum(axis=0).mean(axis=0))
    ref_fid = np.conj(ref.fid[0, 0])
    ours = _aligned_magnitude_correlation(preprocessed.average, d.ppm_axis(), ref_fid, ref.ppm_axis())
    plain = _aligned_magnitude_correlation(naive, d.ppm_axis(), ref_fid, ref.ppm_axis())
    assert ours > plain


def test_fit_with_simulated_7t_steam_basis(steam, preprocessed):
    from bids_ketamine.spectroscopy.fit import fit_spectrum
    from bids_ketamine.spectroscopy.simulate import simulate_basis

    d = steam["svs"]
    basis = simulate_basis(spectrometer_frequency=d.spectrometer_frequency, echo_time=0.011, sequence="STEAM",
                           mixing_time=0.0, dwell_time=d.dwell_time, n_points=d.n_points)
    res = fit_spectrum(preprocessed.average, d.dwell_time, d.spectrometer_frequency, basis)
    assert res.success
    tcr = res.concentration("tCr")
    for name, (lo, hi) in PUBLISHED.items():
        assert lo <= res.concentration(name) / tcr <= hi, (name, res.concentration(name) / tcr)
    assert res.crlb_percent("NAA") < 5.0


def test_alignment_recovers_planted_shifts_and_phases():
    rng = np.random.default_rng(4)
    n, dwell, sf = 1024, 2.5e-4, 123.2
    t = np.arange(n) * dwell
    clean = sum(a * np.exp(2j * np.pi * (p - 4.65) * sf * t - t / 0.08) for a, p in ((3, 2.01), (2, 3.03), (1, 3.2)))
    shifts = rng.uniform(-6, 6, 12)
    phases = rng.uniform(-1, 1, 12)
    shifts[0] = phases[0] = 0
    x = apply_shift_phase(np.tile(clean, (12, 1)), t, shifts, phases)
    x += 0.02 * (rng.standard_normal(x.shape) + 1j * rng.standard_normal(x.shape))
    _, al = align_transients(x, dwell_time=dwell, spectrometer_frequency=sf)
    # corrections undo the planted distortions up to one common offset
    total_shift = shifts + al.shift_hz
    total_phase = np.angle(np.exp(1j * (phases + al.phase_rad - (phases[0] + al.phase_rad[0]))))
    assert np.ptp(total_shift) < 0.1
    assert np.max(np.abs(total_phase)) < 0.05


def test_outlier_transient_is_rejected():
    rng = np.random.default_rng(5)
    n, dwell, sf = 1024, 2.5e-4, 123.2
    t = np.arange(n) * dwell
    clean = 3 * np.exp(2j * np.pi * (2.01 - 4.65) * sf * t - t / 0.08)
    x = np.tile(clean, (16, 1)) + 0.05 * (rng.standard_normal((16, n)) + 1j * rng.standard_normal((16, n)))
    x[7] += 2 * np.exp(2j * np.pi * (1.3 - 4.65) * sf * t - t / 0.02)  # a lipid artefact in one transient
    keep = reject_outlier_transients(x, dwell_time=dwell, spectrometer_frequency=sf)
    assert not keep[7] and keep.sum() >= 14


def test_wsvd_weights_favour_the_quiet_coil():
    rng = np.random.default_rng(6)
    n = 2048
    t = np.arange(n) * 2.5e-4
    sig = np.exp(-t / 0.1)
    sens = np.array([1.0 * np.exp(1j * 0.3), 1.0 * np.exp(-1j * 2.0)])
    noise = np.array([0.01, 0.2])
    coils = sens[:, None] * sig + noise[:, None] * (rng.standard_normal((2, n)) + 1j * rng.standard_normal((2, n)))
    w = wsvd_coil_weights(coils)
    assert abs(w[0]) > 10 * abs(w[1])
    combined = combine_coils(coils, w)
    assert abs(np.angle(combined[0])) < 0.05  # coil phases removed: the combination starts real and positive
