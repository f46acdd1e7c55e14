"""T1w segmentation -> voxel tissue fractions -> water scaling, on a synthetic subject with a planted voxel.

The synthetic anatomy plants the voxel in the pregenual ACC and states its tissue fractions computed on the template
through the planted deformation; the water reference is made with those fractions. Discovery must find the
T1w-space probsegs, the participant level must measure the same fractions in the voxel, recover the planted
concentrations, and differ from the default-fraction result by exactly what the Gasparovic / Near formula says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pandas as pd
import pytest

from bids_ketamine.design import StudyDesign
from bids_ketamine.discovery import build_layout, collect_inputs
from bids_ketamine.inputs import AnatInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.spectroscopy import participant
from bids_ketamine.spectroscopy.params import SpectroscopyParams
from bids_ketamine.spectroscopy.quantify import DEFAULT_FRACTIONS, RELAXATION_3T, QuantParams, attenuation
from bids_ketamine.synthetic import anat, mrs

LABEL = "m001"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("tissue") / "bids"
    fmriprep = root / "derivatives" / "fmriprep"
    for folder, kind in ((root, "raw"), (fmriprep, "derivative")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset_description.json").write_text(json.dumps({
            "Name": "tissue test", "BIDSVersion": "1.10.0", "DatasetType": kind,
            "GeneratedBy": [{"Name": "bids_ketamine.synthetic"}]}))
    info = anat.write_synthetic_anat(root, fmriprep, LABEL, gm_effect=0.0, site_offset=0.0, seed=4,
                                     mrs_voxel_mni=anat.MRS_VOXEL_MNI)
    truth = mrs.write_synthetic_fmrs_cohort(root, {LABEL: "F"}, {"placebo": "placebo"}, seed=6, n_transients=32,
                                            n_coils=2, voxels={LABEL: info["mrs_voxel"]})
    layout = build_layout(root, {"fmriprep": fmriprep})
    sessions = pd.DataFrame(columns=["participant_id", "session_id", "condition", "pretreatment"])
    inputs = collect_inputs(layout, [LABEL], derivatives={"fmriprep": fmriprep}, sessions=None, task=None,
                            filters={}, sessions_table=sessions, phenotypes={})[LABEL]
    return inputs, info["mrs_voxel"]["fractions"], truth


def _run(inputs, out):
    writer = DerivativesWriter(out)
    params = SpectroscopyParams(figures=False, blocks=False)
    with writer.staged(inputs.subject, "spectroscopy") as staged:
        paths = participant.run_participant(inputs, params=params, design=StudyDesign(), writer=staged,
                                            work_dir=out, seed=0)
    table_path = next(p for p in paths if str(p).endswith("_mrsfit.tsv"))
    table = pd.read_csv(table_path, sep="\t").set_index("metabolite")
    return table, json.loads(table_path.with_suffix(".json").read_text())


def test_discovery_finds_the_t1w_space_tissue_maps(study):
    inputs, _, _ = study
    maps = inputs.anat.probseg_t1w
    assert sorted(maps) == ["csf", "gm", "wm"]
    for key, path in maps.items():
        assert path.name == f"sub-{LABEL}_label-{key.upper()}_probseg.nii.gz"
    assert inputs.anat.gm_probseg_mni is not None and "space-" in inputs.anat.gm_probseg_mni.name
    assert len(inputs.mrs) == 1
    assert "tissue fractions from the T1w segmentation" in participant.plan(inputs, SpectroscopyParams())[1]


def test_planted_voxel_fractions_are_recovered_from_the_segmentation(study):
    inputs, planted, _ = study
    # the planted voxel is a realistic mix, far from the defaults, so recovering it is a real check
    assert planted["csf"] > 0.05 and abs(planted["gm"] - DEFAULT_FRACTIONS.gm) > 0.04
    measured = participant.segmentation_fractions(inputs, inputs.mrs[0])
    assert measured.source == "segmentation"
    for key in ("gm", "wm", "csf"):
        assert getattr(measured, key) == pytest.approx(planted[key], abs=0.02), key


def _molal_water_factor(fr: dict[str, float], te: float, tr: float) -> float:
    """Gasparovic et al. 2006 / Near et al. 2021: sum_t w_t R_W,t / (1 - w_CSF), with molal water fractions w."""
    a = QuantParams().water_content
    total = sum(fr[t] * a[t] for t in fr)
    w = {t: fr[t] * a[t] / total for t in fr}
    r = {t: attenuation(te, tr, RELAXATION_3T.water_t1[t], RELAXATION_3T.water_t2[t]) for t in fr}
    return sum(w[t] * r[t] for t in fr) / (1 - w["csf"])


def test_segmentation_fractions_drive_the_water_scaling(study, tmp_path, caplog):
    inputs, planted, truth = study
    with caplog.at_level(logging.WARNING):
        seg_table, seg_meta = _run(inputs, tmp_path / "seg")
    assert not [r for r in caplog.records if "default fractions" in r.getMessage()]
    assert seg_meta["TissueFractions"]["source"] == "segmentation"
    assert seg_meta["TissueFractions"]["gm"] == pytest.approx(planted["gm"], abs=0.02)
    assert len(seg_meta["TissueFractionsSources"]) == 3
    # with the voxel's own fractions, water scaling returns the planted molar concentrations
    planted_mm = truth["concentrations_mM"]
    assert seg_table.loc["tCr", "molar_mM"] == pytest.approx(planted_mm["Cr"] + planted_mm["PCr"], rel=0.04)
    assert seg_table.loc["tNAA", "molar_mM"] == pytest.approx(planted_mm["NAA"] + planted_mm["NAAG"], rel=0.04)

    caplog.clear()
    bare = replace(inputs, anat=AnatInputs(t1w=inputs.anat.t1w))
    with caplog.at_level(logging.WARNING):
        def_table, def_meta = _run(bare, tmp_path / "default")
    assert [r for r in caplog.records if "default fractions" in r.getMessage()]
    assert def_meta["TissueFractions"]["source"] == "default"
    # same spectra, same fit: the molal concentrations differ by the formula's water factor, nothing else
    te, tr = truth["basis"]["echo_time"], truth["repetition_time"]
    measured = {k: seg_meta["TissueFractions"][k] for k in ("gm", "wm", "csf")}
    defaults = {"gm": DEFAULT_FRACTIONS.gm, "wm": DEFAULT_FRACTIONS.wm, "csf": DEFAULT_FRACTIONS.csf}
    expected = _molal_water_factor(measured, te, tr) / _molal_water_factor(defaults, te, tr)
    assert abs(expected - 1) > 0.05
    for name in ("tCr", "tNAA", "Glx", "mI"):
        ratio = seg_table.loc[name, "molal_mM"] / def_table.loc[name, "molal_mM"]
        assert ratio == pytest.approx(expected, rel=1e-4), name  # tables keep 6 digits
        assert seg_table.loc[name, "concentration"] == def_table.loc[name, "concentration"]
