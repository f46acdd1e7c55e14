"""A fit that cannot be trusted says so (issue 17, items 4-6 and 11): QC reasons, warning, report mark, group count;
a component fitted at zero; the sign decision against strong residual water; voi- kept apart."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.design import StudyDesign
from bids_ketamine.inputs import MrsAcquisition, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.reports.assemble import qc_failure_lines
from bids_ketamine.spectroscopy import group, participant
from bids_ketamine.spectroscopy.basis import BasisSet
from bids_ketamine.spectroscopy.fit import fit_spectrum
from bids_ketamine.spectroscopy.fit_params import FitParams
from bids_ketamine.spectroscopy.params import SpectroscopyParams
from bids_ketamine.spectroscopy.sign_convention import decide
from bids_ketamine.synthetic.mrs import write_synthetic_fmrs_cohort

DWELL, CF, N = 2.5e-4, 123.2, 1024


def _singlets(names_ppm, lw=2.0):
    t = np.arange(N) * DWELL
    fids = [3 * np.exp(2j * np.pi * (ppm - 4.65) * CF * t - np.pi * lw * t) for _, ppm in names_ppm]
    return BasisSet(tuple(n for n, _ in names_ppm), np.array(fids), DWELL, CF)


def _data(basis, amps, shift_hz=0.0, extra_lw=3.0, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    t = basis.time_axis()
    fid = sum(a * f for a, f in zip(amps, basis.fids)) * np.exp((2j * np.pi * shift_hz - np.pi * extra_lw) * t)
    return fid + noise * (rng.standard_normal(N) + 1j * rng.standard_normal(N))


def test_fit_at_a_bound_fails_qc_with_the_reason():
    basis = _singlets([("NAA", 2.01), ("Cr", 3.03), ("GPC", 3.21)])
    good = fit_spectrum(_data(basis, [8, 5, 1]), DWELL, CF, basis, FitParams(baseline="none", macromolecules="none"))
    assert good.qc_pass and good.qc_reasons == ()
    # the spectrum sits 17 Hz off, beyond the 15 Hz the shift may take
    bad = fit_spectrum(_data(basis, [8, 5, 1], shift_hz=17.0), DWELL, CF, basis,
                       FitParams(baseline="none", macromolecules="none"))
    assert not bad.qc_pass
    assert any("frequency shift" in r and "bound" in r for r in bad.qc_reasons), bad.qc_reasons
    rows = participant.fit_table(bad, block=0, start=np.nan, time_min=np.nan, n=1, params=SpectroscopyParams())
    assert not rows["qc_pass"].any() and not rows["spectrum_qc_pass"].any()
    assert rows["qc_reason"].str.contains("frequency shift").all()
    # the report marks it, the group level counts it
    header = list(rows.columns)
    lines = qc_failure_lines(header, [[str(v) for v in r] for r in rows.itertuples(index=False)])
    assert lines and lines[0].startswith("QC FAILED: 1 spectra failed QC") and "frequency shift" in lines[0]
    counts = group.failed_spectra(rows.assign(participant_id="01", session_id=np.nan))
    assert counts[["n_spectra", "n_failed"]].values.tolist() == [[1, 1]]


def test_component_fitted_at_zero_is_zero_with_crlb_na():
    basis = _singlets([("NAA", 2.01), ("Cr", 3.03), ("Lac", 1.31)])
    res = fit_spectrum(_data(basis, [8, 5, -0.3]), DWELL, CF, basis,  # a negative Lac: the fit must stop at 0
                       FitParams(baseline="none", macromolecules="none", ratio_priors="none"))
    if res.concentration("Lac") > 0:  # noise may give it a little; then its CRLB is finite and large
        assert np.isfinite(res.crlb("Lac"))
        pytest.skip("noise gave Lac a nonzero amplitude in this draw")
    assert res.concentration("Lac") == 0.0
    assert np.isnan(res.crlb("Lac")) and np.isnan(res.crlb_percent("Lac"))
    table = res.table().set_index("metabolite")
    assert table.loc["Lac", "concentration"] == 0.0 and np.isnan(table.loc["Lac", "crlb_percent"])
    rows = participant.fit_table(res, block=0, start=np.nan, time_min=np.nan, n=1,
                                 params=SpectroscopyParams()).set_index("metabolite")
    assert rows.loc["Lac", "qc_reason"] == "fitted at zero (CRLB n/a)" and not rows.loc["Lac", "qc_pass"]
    assert rows.loc["NAA", "qc_pass"]


@pytest.mark.parametrize("water_times_naa", [1.0, 10.0, 100.0])
def test_sign_decision_is_not_fooled_by_residual_water(water_times_naa):
    """Brain singlets plus residual water (1-100 x NAA, off 4.65 ppm): the decision follows the singlets."""
    basis = _singlets([("NAA", 2.01), ("Cr", 3.03), ("GPC", 3.21)])
    clean = _data(basis, [8, 5, 1.5], noise=0.02)
    t = basis.time_axis()
    line = np.exp((2j * np.pi * (4.75 - 4.65) * CF - np.pi * 10.0) * t)
    naa = np.abs(np.fft.fft(clean)).max()
    fid = clean + water_times_naa * naa / np.abs(np.fft.fft(line)).max() * line
    assert not decide(fid, DWELL, CF).conjugate
    sign = decide(np.conj(fid), DWELL, CF)
    assert sign.conjugate and sign.as_metadata()["Evidence"]["SingletHeightMirror"] > 0


def test_participant_warns_once_per_failed_spectrum_and_writes_the_reason(tmp_path, caplog):
    root = tmp_path / "bids"
    write_synthetic_fmrs_cohort(root, {"q1": "F"}, {"placebo": "placebo"}, seed=4, n_transients=12, n_coils=2,
                                n_points=512)
    folder = root / "sub-q1" / "ses-placebo" / "mrs"
    stem = "sub-q1_ses-placebo_task-infusion"
    acq = MrsAcquisition(svs=folder / f"{stem}_svs.nii.gz", references={"water": folder / f"{stem}_mrsref.nii.gz"},
                         session="placebo", task="infusion", pretreatment="placebo")
    # a Lorentzian bound below the data's line width: every fit must sit at it
    params = SpectroscopyParams(figures=False, fit=FitParams(max_lorentzian_hz=0.2, max_gaussian_hz=0.2))
    writer = DerivativesWriter(tmp_path / "out")
    with caplog.at_level(logging.WARNING, logger="bids_ketamine"), writer.staged("q1", "spectroscopy") as staged:
        outputs = participant.run_participant(ParticipantInputs(subject="q1", mrs=(acq,)), params=params,
                                              design=StudyDesign(), writer=staged, work_dir=tmp_path, seed=0)
    failed = [r.getMessage() for r in caplog.records if "failed QC" in r.getMessage()]
    assert len(failed) == 1 and f"{stem}_svs.nii.gz" in failed[0] and "at its bound" in failed[0]
    table = pd.read_csv(next(p for p in outputs if str(p).endswith("_mrsfit.tsv")), sep="\t")
    assert not table["spectrum_qc_pass"].any() and table["qc_reason"].str.contains("bound").all()


def test_two_voxels_of_one_session_keep_their_voi_and_their_reference():
    from bids_ketamine.discovery import mrs_inputs

    class F:
        def __init__(self, path, **ent):
            self.path, self.entities = path, ent

    svs = [F("/d/sub-1_voi-acc_svs.nii.gz", volume="acc"), F("/d/sub-1_voi-pcc_svs.nii.gz", volume="pcc")]
    refs = [F("/d/sub-1_voi-acc_mrsref.nii.gz", volume="acc"), F("/d/sub-1_voi-pcc_mrsref.nii.gz", volume="pcc")]
    acqs = mrs_inputs(svs, refs, [], None, {}, {})
    assert [a.voi for a in acqs] == ["acc", "pcc"]
    assert [a.references["water"].name for a in acqs] == ["sub-1_voi-acc_mrsref.nii.gz", "sub-1_voi-pcc_mrsref.nii.gz"]
    from bids_ketamine.io.derivatives import ENTITY_ORDER

    assert ENTITY_ORDER.index("acq") < ENTITY_ORDER.index("voi") < ENTITY_ORDER.index("run")
