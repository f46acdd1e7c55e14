"""NIfTI-MRS reader: every unusable input is one clear BadDataError (exit 65) naming the file and the fix."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.errors import EXIT_BAD_DATA, BadDataError
from bids_ketamine.spectroscopy.nifti_io import (NIFTI_MRS_ECODE, check_reference_matches, make_nifti_mrs,
                                                 read_nifti_mrs)

DWELL = 2.5e-4
SF = 123.2


def _fid(n=512, n_coils=2, n_dyn=3, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n) * DWELL
    line = np.exp(2j * np.pi * (-200.0) * t - t / 0.05)
    data = line[:, None, None] * np.ones((1, n_coils, n_dyn))
    return data + 0.01 * (rng.standard_normal(data.shape) + 1j * rng.standard_normal(data.shape))


def _write(path, fid, ext, dwell=DWELL, sidecar=None):
    img = nib.Nifti2Image(np.asarray(fid, np.complex64).reshape((1, 1, 1) + fid.shape), np.eye(4))
    img.header["pixdim"][4] = dwell
    img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_MRS_ECODE, json.dumps(ext).encode()))
    img.to_filename(str(path))
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


GOOD_EXT = {"SpectrometerFrequency": [SF], "ResonantNucleus": ["1H"], "dim_5": "DIM_COIL", "dim_6": "DIM_DYN",
            "EchoTime": 0.03, "RepetitionTime": 2.0}


def _assert_one_line_bad_data(exc_info, path, words):
    err = exc_info.value
    assert err.exit_code == EXIT_BAD_DATA
    msg = str(err)
    assert "\n" not in msg
    assert str(path) in msg
    assert "Fix:" in msg
    for w in words:
        assert w.lower() in msg.lower()


def test_good_file_is_read_with_coils_and_dynamics_in_front(tmp_path):
    fid = _fid()
    path = _write(tmp_path / "sub-01_svs.nii.gz", fid, GOOD_EXT)
    data = read_nifti_mrs(path)
    assert data.fid.shape == (2, 3, 512)
    np.testing.assert_allclose(data.fid[1, 2], fid[:, 1, 2], rtol=1e-6, atol=1e-6)
    assert data.dwell_time == pytest.approx(DWELL)
    assert data.spectrometer_frequency == SF
    assert data.echo_time == 0.03 and data.repetition_time == 2.0
    # the peak at -200 Hz sits at 4.65 - 200/123.2 ppm
    spec = np.abs(np.fft.fftshift(np.fft.fft(data.fid[0, 0])))
    assert data.ppm_axis()[np.argmax(spec)] == pytest.approx(4.65 - 200 / SF, abs=0.07)  # one point = 0.063 ppm


def test_wrong_nucleus(tmp_path):
    path = _write(tmp_path / "p.nii.gz", _fid(), {**GOOD_EXT, "ResonantNucleus": ["31P"]})
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["31P", "1H"])


def test_missing_spectrometer_frequency(tmp_path):
    ext = {k: v for k, v in GOOD_EXT.items() if k != "SpectrometerFrequency"}
    path = _write(tmp_path / "p.nii.gz", _fid(), ext)
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["SpectrometerFrequency"])


def test_missing_spectral_width(tmp_path):
    path = _write(tmp_path / "p.nii.gz", _fid(), GOOD_EXT, dwell=0.0)
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["SpectralWidth"])


def test_spectral_width_from_sidecar_when_header_has_no_dwell(tmp_path):
    path = _write(tmp_path / "p.nii.gz", _fid(), GOOD_EXT, dwell=0.0, sidecar={"SpectralWidth": 4000.0})
    assert read_nifti_mrs(path).dwell_time == pytest.approx(2.5e-4)


def test_sidecar_spectral_width_contradicting_header(tmp_path):
    path = _write(tmp_path / "p.nii.gz", _fid(), GOOD_EXT, sidecar={"SpectralWidth": 2000.0})
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["SpectralWidth"])


def test_reference_dwell_time_differs(tmp_path):
    met = read_nifti_mrs(_write(tmp_path / "svs.nii.gz", _fid(), GOOD_EXT))
    ref_path = _write(tmp_path / "ref.nii.gz", _fid(), GOOD_EXT, dwell=2 * DWELL)
    with pytest.raises(BadDataError) as exc:
        check_reference_matches(met, read_nifti_mrs(ref_path))
    _assert_one_line_bad_data(exc, ref_path, ["dwell time"])


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_all_zero_or_nan_fid(tmp_path, fill):
    fid = _fid()
    fid[:] = 0.0 if fill == 0.0 else fid
    if np.isnan(fill):
        fid[5, 0, 0] = np.nan
    path = _write(tmp_path / "p.nii.gz", fid, GOOD_EXT)
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["zeros" if fill == 0.0 else "NaN"])


def test_truncated_file(tmp_path):
    good = _write(tmp_path / "good.nii.gz", _fid(n=2048), GOOD_EXT)
    raw = gzip.decompress(good.read_bytes())
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["truncated"])


def test_mrsi_is_refused(tmp_path):
    img = nib.Nifti2Image(np.ones((2, 2, 1, 256), np.complex64), np.eye(4))
    img.header["pixdim"][4] = DWELL
    img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_MRS_ECODE, json.dumps(GOOD_EXT).encode()))
    path = tmp_path / "mrsi.nii.gz"
    img.to_filename(str(path))
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["MRSI"])


def test_edited_data_is_refused(tmp_path):
    ext = {**GOOD_EXT, "dim_7": "DIM_EDIT"}
    fid = _fid()[..., None] * np.ones(2)
    path = _write(tmp_path / "mega.nii.gz", fid, ext)
    with pytest.raises(BadDataError) as exc:
        read_nifti_mrs(path)
    _assert_one_line_bad_data(exc, path, ["edited"])


def test_make_nifti_mrs_round_trip(tmp_path):
    fid = _fid()
    img = make_nifti_mrs(fid, dwell_time=DWELL, spectrometer_frequency=SF, dim_tags=("DIM_COIL", "DIM_DYN"))
    path = tmp_path / "rt.nii.gz"
    img.to_filename(str(path))
    data = read_nifti_mrs(path)
    np.testing.assert_allclose(data.fid[0, 1], fid[:, 0, 1], atol=1e-6)
