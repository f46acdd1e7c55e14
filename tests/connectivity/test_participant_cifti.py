"""CIFTI input: fMRIPrep's fsLR dense time series parcellated by a user dlabel, matched grayordinate by grayordinate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from nibabel import cifti2

from bids_ketamine.connectivity.parcellate import parcel_timeseries_cifti
from bids_ketamine.connectivity.participant import run_participant
from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams
from bids_ketamine.design import StudyDesign
from bids_ketamine.inputs import BoldRun, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter

N_LEFT, N_RIGHT, N_FRAMES = 12, 9, 120


def _brain(order=("left", "right")):
    parts = {"left": cifti2.BrainModelAxis.from_surface(np.arange(N_LEFT), 100, "CortexLeft"),
             "right": cifti2.BrainModelAxis.from_surface(np.arange(N_RIGHT), 100, "CortexRight")}
    return parts[order[0]] + parts[order[1]]


def _keys_left_right():
    left = np.repeat([1, 2, 3], 4)          # 3 parcels x 4 vertices
    right = np.repeat([4, 5, 6], 3)         # 3 parcels x 3 vertices
    return left, right


def write_dlabel(path, order=("left", "right")):
    left, right = _keys_left_right()
    keys = np.concatenate([left, right] if order[0] == "left" else [right, left]).astype(np.float32)
    table = {0: ("???", (0, 0, 0, 0))}
    for k, name in enumerate(["L_a", "L_b", "L_c", "R_a", "R_b", "R_c"], start=1):
        table[k] = (name, (k / 6, 0.5, 0.5, 1.0))
    img = cifti2.Cifti2Image(keys[None, :], header=(cifti2.LabelAxis(["parcels"], [table]), _brain(order)))
    img.to_filename(path)


def write_dtseries(path, data):
    img = cifti2.Cifti2Image(data.astype(np.float32), header=(cifti2.SeriesAxis(0, 2.0, data.shape[0]), _brain()))
    img.to_filename(path)


def _signals(rng, n_frames=N_FRAMES):
    data = 500 + rng.standard_normal((n_frames, N_LEFT + N_RIGHT))
    return data


def test_cifti_parcel_means_match_by_grayordinate(tmp_path):
    rng = np.random.default_rng(0)
    data = _signals(rng)
    write_dtseries(tmp_path / "bold.dtseries.nii", data)
    write_dlabel(tmp_path / "parc.dlabel.nii", order=("right", "left"))  # other order: must match by vertex
    series = parcel_timeseries_cifti(tmp_path / "bold.dtseries.nii", tmp_path / "parc.dlabel.nii")
    assert series.names == ["L_a", "L_b", "L_c", "R_a", "R_b", "R_c"]
    left, right = _keys_left_right()
    keys = np.concatenate([left, right])
    expected = np.column_stack([data[:, keys == k].mean(axis=1) for k in range(1, 7)])
    np.testing.assert_allclose(series.timeseries, expected, rtol=1e-5)
    assert series.n_voxels.tolist() == [4, 4, 4, 3, 3, 3]


def test_cifti_run_participant_writes_delta_map(tmp_path):
    rng = np.random.default_rng(1)
    runs = []
    left, right = _keys_left_right()
    keys = np.concatenate([left, right])
    for ses, cond, coupling in (("a", "placebo", 0.2), ("b", "ketamine", 0.8)):
        shared = rng.standard_normal(N_FRAMES)
        parcel = rng.standard_normal((N_FRAMES, 6))
        parcel[:, :3] += coupling * shared[:, None]  # ketamine couples the left parcels more strongly
        data = 500 + 5 * parcel[:, keys - 1] + rng.standard_normal((N_FRAMES, keys.size))
        bold = tmp_path / f"sub-01_ses-{ses}_task-rest_space-fsLR_den-91k_bold.dtseries.nii"
        write_dtseries(bold, data)
        conf = pd.DataFrame({c: 0.01 * rng.standard_normal(N_FRAMES) for c in
                             ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "csf", "white_matter",
                              "global_signal")})
        conf["framewise_displacement"] = 0.1
        conf_path = tmp_path / f"sub-01_ses-{ses}_task-rest_desc-confounds_timeseries.tsv"
        conf.to_csv(conf_path, sep="\t", index=False)
        runs.append(BoldRun(bold=bold, confounds=conf_path, mask=None, space="fsLR", session=ses, run=None,
                            task="rest", condition=cond, repetition_time=2.0))
    write_dlabel(tmp_path / "parc.dlabel.nii")
    params = ConnectivityParticipantParams(space="fsLR", cifti_dlabel=tmp_path / "parc.dlabel.nii",
                                           global_signal_regression=False)
    writer = DerivativesWriter(tmp_path / "out")
    run_participant(ParticipantInputs(subject="01", bold=tuple(runs)), params=params, design=StudyDesign(),
                    writer=writer, work_dir=tmp_path, seed=0)
    delta = pd.read_csv(tmp_path / "out" / "sub-01" / "func" / "sub-01_desc-ketamineminusplacebo_gbc.tsv",
                        sep="\t").set_index("parcel")["delta_gbc"]
    assert (delta[["L_a", "L_b", "L_c"]] > 0.05).all()
    assert delta[["L_a", "L_b", "L_c"]].min() > delta[["R_a", "R_b", "R_c"]].max()
    meta = json.loads((tmp_path / "out" / "sub-01" / "func" /
                       "sub-01_desc-ketamineminusplacebo_gbc.json").read_text())
    assert meta["Drug"] == "ketamine" and meta["Reference"] == "placebo"


def test_fslr_needs_a_dlabel():
    with pytest.raises(ValueError, match="cifti_dlabel"):
        ConnectivityParticipantParams(space="fsLR")
