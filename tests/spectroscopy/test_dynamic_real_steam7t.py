"""The dynamic fit on real data: the 7T STEAM acquisition (4 coils x 16 transients, TR 5 s) split into four timed
blocks of 20 s around a pseudo-onset at 40 s, through the participant level (preprocessing, block-wise fits, joint
fit, tables). The subject did nothing in those 80 s, so the Glx/tNAA slope must be null within its interval, and the
joint fit's level must agree with the block-wise fits of the same blocks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.design import StudyDesign
from bids_ketamine.inputs import MrsAcquisition, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.spectroscopy import participant
from bids_ketamine.spectroscopy.params import SpectroscopyParams

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def steam_blocks(shared_data, tmp_path_factory):
    mrs = shared_data / "steam7t_mrs" / "sub-01" / "mrs"
    base = tmp_path_factory.mktemp("steam_dynamic")
    events = base / "sub-01_acq-steam_events.tsv"  # the data have no infusion: a pseudo-onset after 8 transients
    events.write_text("onset\tduration\ttrial_type\n40.0\t40.0\tinfusion\n")
    acq = MrsAcquisition(svs=mrs / "sub-01_acq-steam_svs.nii.gz", events=events, acq="steam",
                         references={"water": mrs / "sub-01_acq-steam_mrsref.nii.gz",
                                     "ecc": mrs / "sub-01_acq-ecc_mrsref.nii.gz",
                                     "quant": mrs / "sub-01_acq-quant_mrsref.nii.gz"})
    writer = DerivativesWriter(base / "out")
    writer.init_dataset()
    with writer.staged("01", "spectroscopy") as staged:
        participant.run_participant(ParticipantInputs(subject="01", mrs=(acq,)), params=SpectroscopyParams(
            figures=False), design=StudyDesign.model_validate({"fmrs": {"block_seconds": 20.0}}), writer=staged,
            work_dir=base, seed=0)
    dyn_path = next((base / "out").rglob("*_mrsdynamic.tsv"))
    return (pd.read_csv(dyn_path, sep="\t"), pd.read_csv(next((base / "out").rglob("*_mrsfit.tsv")), sep="\t"),
            json.loads(dyn_path.with_suffix(".json").read_text()))


def _row(table: pd.DataFrame, quantity: str, parameter: str) -> pd.Series:
    return table[(table["quantity"] == quantity) & (table["parameter"] == parameter)].iloc[0]


def test_dynamic_fit_of_real_blocks_is_finite_and_passes_qc(steam_blocks):
    dyn, fits, sidecar = steam_blocks
    assert dyn["n_blocks"].eq(4).all() and dyn["qc_pass"].all()
    assert np.all(np.isfinite(dyn[["estimate", "se", "ci_low", "ci_high"]].to_numpy())) and (dyn["se"] > 0).all()
    assert sidecar["DynamicFit"]["qc_pass"] and sidecar["DynamicFit"]["converged"]
    glx = fits[fits["metabolite"] == "Glx"]
    assert glx["n_transients"].sum() <= 16 and np.all(np.isfinite(glx["dynamic_ratio_tNAA"]))


def test_real_slope_is_null_and_level_agrees_with_blockwise_fits(steam_blocks):
    dyn, fits, _ = steam_blocks
    slope = _row(dyn, "Glx/tNAA", "slope_per_min")
    assert slope["ci_low"] <= 0.0 <= slope["ci_high"]
    level = _row(dyn, "Glx/tNAA", "level")
    glx = fits[fits["metabolite"] == "Glx"]
    blockwise = float(np.average(glx["ratio_tNAA"], weights=glx["n_transients"]))
    assert level["estimate"] == pytest.approx(blockwise, rel=0.08)
    # published healthy-brain 7T NAA/tCr about 1.3-1.6 (Tkac et al. 2009), as the single-average test checks
    assert 1.0 <= _row(dyn, "NAA/tCr", "level")["estimate"] <= 2.0
