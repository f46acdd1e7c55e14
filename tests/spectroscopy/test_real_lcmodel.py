"""A measured brain spectrum through the CLI, against LCModel's own result on it (lcmodel_test_lcm).

The real 3T Philips PRESS spectrum (TE 30 ms) of ``../shared/data/lcmodel_test_lcm`` with LCModel's basis
``3t.basis``: our ratios to tCr must agree with LCModel's reference table (``derivatives/lcmodel``), which LCModel
6.3 made from the same data. The comparison runs at the app's defaults, whose ratio priors are LCModel's own
(``ratio_priors = "lcmodel"``); the dataset's ``participants.tsv`` has only ``participant_id`` and the app's
own simulated basis runs without any config file (issue 17, item 8).
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.cli.run import main

#: (our name, LCModel's name, relative tolerance) from the acceptance of issue 17.
AGREEMENT = [("tNAA", "NAA+NAAG", 0.10), ("tCho", "GPC+PCh", 0.10), ("Ins", "Ins", 0.10), ("Glu", "Glu", 0.10),
             ("Glx", "Glu+Gln", 0.10), ("GSH", "GSH", 0.25), ("Gln", "Gln", 0.25)]


def _copy_dataset(shared_data, tmp_path):
    src = shared_data / "lcmodel_test_lcm"
    bids = tmp_path / "bids"
    shutil.copytree(src, bids, ignore=shutil.ignore_patterns("derivatives", "code"))
    return src, bids


def _fit_table(out):
    tables = sorted(out.glob("sub-01/**/*_mrsfit.tsv"))
    assert len(tables) == 1, tables
    return pd.read_csv(tables[0], sep="\t").set_index("metabolite")


@pytest.fixture(scope="module")
def lcmodel_basis_run(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lcm")
    src, bids = _copy_dataset(shared_data, tmp)
    config = tmp / "config.toml"
    config.write_text('[spectroscopy.basis]\nsource = "lcmodel"\npath = "%s"\n' % (src / "code" / "basis" / "3t.basis"))
    out = tmp / "out"
    code = main([str(bids), str(out), "participant", "--analyses", "spectroscopy", "--skip-bids-validation",
                 "--config-file", str(config)])
    return code, out, src


@pytest.mark.realdata
def test_lcmodel_basis_agrees_with_lcmodel(lcmodel_basis_run):
    code, out, src = lcmodel_basis_run
    assert code == 0
    ours = _fit_table(out)
    ref = pd.read_csv(src / "derivatives" / "lcmodel" / "sub-01_lcmodel.tsv", sep="\t").set_index("metabolite")
    for name, theirs, tol in AGREEMENT:
        ratio = float(ours.loc[name, "ratio_tCr"])
        assert ratio == pytest.approx(float(ref.loc[theirs, "ratio_tCr"]), rel=tol), name
        assert np.isfinite(ours.loc[name, "crlb_percent"]) and ratio > 0, name
    assert bool(ours.loc["tNAA", "qc_pass"])
    # the macromolecule model is reported, never inside a metabolite sum
    assert {"MM09", "MM20", "Lip13a"} <= set(ours.index)
    sidecar = next(out.glob("sub-01/**/*_mrsfit.json")).read_text()
    assert '"Conjugated": true' in sidecar and "SingletHeightMirror" in sidecar and "ProtonUnitOfSource" in sidecar


@pytest.mark.realdata
def test_simulated_basis_without_a_config_agrees_with_lcmodel_within_15_percent(shared_data, tmp_path):
    """Issue 17, items 8 and the simulated-basis acceptance: participants.tsv with only participant_id and no config
    file; the app's own simulated basis for this acquisition (Philips PRESS, TE 30 ms, 3T; PRESS TE1 11 ms,
    homogeneous widths 1/(pi T2), LCModel's metabolite set, the fit's MM/lipid model) at the defaults (LCModel's
    ratio priors): ratios to tCr within 15 % of LCModel's table.
    Before those choices (TE1 = TE/2, no widths, the basis's own MM09-MM38, PE/Gly/Asc): tNAA +19, tCho -10,
    mI -14, Glu -16, Glx -21 %."""
    src, bids = _copy_dataset(shared_data, tmp_path)
    assert (bids / "participants.tsv").read_text().split("\n")[0].strip() == "participant_id"
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--analyses", "spectroscopy", "--skip-bids-validation"])
    assert code == 0
    ours = _fit_table(out)
    ref = pd.read_csv(src / "derivatives" / "lcmodel" / "sub-01_lcmodel.tsv", sep="\t").set_index("metabolite")
    for name, theirs in (("tNAA", "NAA+NAAG"), ("tCho", "GPC+PCh"), ("mI", "Ins"), ("Glu", "Glu"), ("Glx", "Glu+Gln")):
        ratio = float(ours.loc[name, "ratio_tCr"])
        assert ratio == pytest.approx(float(ref.loc[theirs, "ratio_tCr"]), rel=0.15), name
        assert np.isfinite(ours.loc[name, "crlb_percent"]) and ratio > 0, name
    assert bool(ours.loc["tNAA", "qc_pass"])
    assert not any(n.startswith("MM2") and n != "MM20" or n.startswith("MM3") for n in ours.index)  # one MM model
    assert {"PE", "Gly", "Asc"}.isdisjoint(ours.index)
    basis = __import__("json").loads(next(out.glob("sub-01/**/*_mrsfit.json")).read_text())["Basis"]
    assert basis["PressTE1"] == pytest.approx(0.011)
    assert basis["IntrinsicLinewidthHz"]["NAA"] == pytest.approx(1 / (np.pi * 0.247), rel=1e-3)
    # water scaling with a simulated basis: molal tNAA in the brain range (as in the comparison across basis
    # sources below: 5-25 mM; LCModel's own water scaling, with its own attenuation defaults: about 7 mM)
    assert 5.0 < float(ours.loc["tNAA", "molal_mM"]) < 25.0


@pytest.mark.realdata
def test_water_scaling_is_the_same_for_every_basis_source(shared_data, tmp_path):
    """The same real spectrum and water reference, with LCModel's .BASIS, the same basis as a folder of text FIDs
    in another scale (x 1000), and the simulated basis: molal tCr within 5 % (issue 17, item 6). The file scale
    and ppm reference are measured on the basis's creatine (calibrate_basis), so the file's own scale cannot
    enter (before: 1.39 and 2 460 mM)."""
    from bids_ketamine.inputs import MrsAcquisition
    from bids_ketamine.spectroscopy import participant as part
    from bids_ketamine.spectroscopy.basis_io import read_lcmodel_basis
    from bids_ketamine.spectroscopy.fit import fit_spectrum
    from bids_ketamine.spectroscopy.params import BasisParams, SpectroscopyParams
    from bids_ketamine.spectroscopy.quantify import DEFAULT_FRACTIONS, fit_water_reference, water_scaled

    src = shared_data / "lcmodel_test_lcm"
    acq = MrsAcquisition(svs=src / "sub-01" / "mrs" / "sub-01_svs.nii.gz",
                         references={"water": src / "sub-01" / "mrs" / "sub-01_mrsref.nii.gz"})
    raw = read_lcmodel_basis(src / "code" / "basis" / "3t.basis", conjugate=False)
    folder = tmp_path / "fids"
    folder.mkdir()
    for name, fid in zip(raw.names, raw.fids):
        np.savetxt(folder / f"{name}.txt", np.c_[fid.real, fid.imag] * 1000.0)
    molal = {}
    for source, path in (("lcmodel", src / "code" / "basis" / "3t.basis"), ("fid_folder", folder),
                         ("simulate", None)):
        params = SpectroscopyParams(basis=BasisParams(source=source, path=path), figures=False)
        data, pre, spectra = part.preprocess_acquisition(acq, params)
        basis = part.load_basis(params, data)
        res = fit_spectrum(spectra[0][3], data.dwell_time, data.spectrometer_frequency, basis, params.fit,
                           echo_time=data.echo_time)
        area = fit_water_reference(pre.water, data.dwell_time).area
        table = water_scaled(res, area, te=data.echo_time, tr=data.repetition_time, fractions=DEFAULT_FRACTIONS,
                             field_tesla=data.field_strength, params=params.quant).set_index("metabolite")
        molal[source] = table["molal_mM"]
    both = molal["fid_folder"].reindex(molal["lcmodel"].index)
    assert np.allclose(molal["lcmodel"].values, both.values, rtol=1e-4, atol=1e-3, equal_nan=True)
    # The scale of a user's basis is measured on its creatine (calibrate_basis), so creatine's molal value is the
    # one that tests the scale: within 5 %. NAA is a different spectrum in the two bases (spant gives NAA a
    # 0.5 Hz line, ours 1/(pi T2) = 1.3 Hz; tNAA/tCr is -6 % of LCModel's with 3t.basis, +6 % with ours), so
    # molal tNAA agrees within the 15 % of the ratio agreement (measured: 21.2 vs 18.6 mM).
    assert molal["simulate"]["tCr"] == pytest.approx(molal["lcmodel"]["tCr"], rel=0.05)
    assert molal["simulate"]["tNAA"] == pytest.approx(molal["lcmodel"]["tNAA"], rel=0.15)
    assert 5.0 < molal["lcmodel"]["tNAA"] < 25.0


@pytest.mark.realdata
def test_methods_say_what_was_done_to_a_static_spectrum(lcmodel_basis_run):
    """Issue 17, item 9: the methods of a single average without events.tsv name no blocks, no alignment of one
    transient, and the macromolecule/lipid model and water removal that the sidecar records (3t.basis has no MM)."""
    import html
    import re

    code, out, _ = lcmodel_basis_run
    assert code == 0
    text = html.unescape(re.sub(r"<[^>]+>", " ", (out / "sub-01.html").read_text()))
    methods = text[text.index("Single-voxel"):text.index("Parameters of this run")]
    assert "blocks of" not in methods and "aligned in frequency" not in methods
    assert "single averaged spectra" in methods
    assert "Gaussian components at LCModel's positions" in methods and "HLSVD" in methods
    assert "functional MRS" not in text
