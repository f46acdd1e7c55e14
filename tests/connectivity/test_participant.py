"""Participant level on the synthetic cohort: planted per-subject delta maps recovered, scrubbing exactly as
planted, session exclusion reported, and bad input refused with a clear message and its exit code."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity.participant import plan, run_participant
from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams
from bids_ketamine.design import StudyDesign
from bids_ketamine.errors import EXIT_BAD_DATA, EXIT_MISSING_INPUT, BadDataError, MissingInputError
from bids_ketamine.inputs import BoldRun, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.synthetic.bold import write_synthetic_bold_cohort

SUBJECTS = ["s01", "s02", "s03", "s04", "s05"]
CONDITIONS = {"a": "placebo", "b": "ketamine"}
HIGH_MOTION = ("s05", "b")
SPACE = "MNI152NLin2009cAsym"


def bold_run(fmriprep: Path, sub: str, ses: str, **changes) -> BoldRun:
    func = fmriprep / f"sub-{sub}" / f"ses-{ses}" / "func"
    run = dict(bold=next(func.glob("*desc-preproc_bold.nii.gz")),
               confounds=next(func.glob("*desc-confounds_timeseries.tsv")),
               mask=next(func.glob("*desc-brain_mask.nii.gz")), space=SPACE, session=ses, run=None, task="rest",
               condition=CONDITIONS[ses], repetition_time=2.0)
    run.update(changes)
    return BoldRun(**run)


def inputs_for(fmriprep: Path, sub: str, sessions=("a", "b"), **changes) -> ParticipantInputs:
    return ParticipantInputs(subject=sub, bold=tuple(bold_run(fmriprep, sub, s, **changes) for s in sessions))


def run(inputs: ParticipantInputs, out: Path, params=None) -> list[Path]:
    writer = DerivativesWriter(out)
    with writer.staged(inputs.subject, "connectivity") as staged:
        return run_participant(inputs, params=params or ConnectivityParticipantParams(), design=StudyDesign(),
                               writer=staged, work_dir=out / "work", seed=0)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("conn")
    truth = write_synthetic_bold_cohort(root / "raw", root / "fmriprep", SUBJECTS, CONDITIONS, n_components=2,
                                        seed=2024, n_volumes=150, high_motion=(HIGH_MOTION,))
    out = root / "out"
    for sub in SUBJECTS:
        run(inputs_for(root / "fmriprep", sub), out)
    return root, truth, out


def _vector(truth_map: dict, names: list[str]) -> np.ndarray:
    return np.array([truth_map[n] for n in names])


def test_delta_maps_recover_planted_per_subject_maps(study):
    root, truth, out = study
    correlations = []
    for sub in SUBJECTS:
        if sub == HIGH_MOTION[0]:
            continue
        table = pd.read_csv(out / f"sub-{sub}" / "func" / f"sub-{sub}_desc-ketamineminusplacebo_gbc.tsv", sep="\t")
        assert {"parcel", "delta_gbc", "hemisphere", "structure"} == set(table.columns)
        planted = pd.Series(truth["planted_delta"][sub]["ketamine"])
        estimate = table.set_index("parcel").loc[planted.index, "delta_gbc"]  # matched by name, not position
        correlations.append(np.corrcoef(estimate, planted)[0, 1])
    assert min(correlations) > 0.6, correlations
    assert np.mean(correlations) > 0.8, correlations


def test_session_gbc_close_to_analytic_expectation(study):
    _, truth, out = study
    for sub in SUBJECTS[:2]:
        for ses in CONDITIONS:
            path = next((out / f"sub-{sub}" / f"ses-{ses}" / "func").glob("*_atlas-*_gbc.tsv"))
            gbc = pd.read_csv(path, sep="\t").set_index("parcel")["gbc"]
            expected = pd.Series(truth["expected_gbc"][sub][ses])
            assert np.abs(gbc.loc[expected.index] - expected).mean() < 0.02


def test_scrubbing_censors_exactly_planted_spikes_and_neighbours(study):
    _, truth, out = study
    for sub in SUBJECTS:
        for ses in CONDITIONS:
            ts = next((out / f"sub-{sub}" / f"ses-{ses}" / "func").glob("*_timeseries.json"))
            assert json.loads(ts.read_text())["CensoredFrames"] == truth["expected_censored"][sub][ses]
            table = pd.read_csv(ts.with_suffix(".tsv"), sep="\t", na_values="n/a")
            n_missing = 150 if (sub, ses) == HIGH_MOTION else len(truth["expected_censored"][sub][ses])
            assert table.isna().all(axis=1).sum() == n_missing  # an excluded session is not cleaned: all n/a


def test_high_motion_session_is_excluded_and_reported(study, caplog):
    root, truth, out = study
    sub, ses = HIGH_MOTION
    assert [sub, ses] in truth["excluded_sessions"]
    stats = pd.read_csv(out / f"sub-{sub}" / "func" / f"sub-{sub}_desc-scrubbing_stats.tsv", sep="\t")
    row = stats.set_index("session").loc[ses]
    assert bool(row["session_excluded"]) and row["session_censored_fraction"] > 0.5
    assert "censored > 50 %" in row["reason"]
    assert not (out / f"sub-{sub}" / "func" / f"sub-{sub}_desc-ketamineminusplacebo_gbc.tsv").exists()
    assert not list((out / f"sub-{sub}" / f"ses-{ses}" / "func").glob("*_gbc.tsv"))
    with caplog.at_level("WARNING"):
        run(inputs_for(root / "fmriprep", sub), root / "out_again")
    assert f"ses-{ses} excluded" in caplog.text and "% of frames censored" in caplog.text


def test_missing_placebo_partner(study, tmp_path):
    root, _, _ = study
    inputs = inputs_for(root / "fmriprep", "s01", sessions=("b",))
    ok, why = plan(inputs, ConnectivityParticipantParams())
    assert not ok and "placebo" in why
    with pytest.raises(MissingInputError, match="placebo") as info:
        run(inputs, tmp_path / "out")
    assert info.value.exit_code == EXIT_MISSING_INPUT == 66
    assert not (tmp_path / "out" / "sub-s01").exists()  # nothing partial is left


def test_confounds_shorter_than_bold(study, tmp_path):
    root, _, _ = study
    good = bold_run(root / "fmriprep", "s01", "a")
    short = tmp_path / good.confounds.name
    lines = good.confounds.read_text().splitlines()
    short.write_text("\n".join(lines[:-5]) + "\n")
    inputs = ParticipantInputs(subject="s01", bold=(bold_run(root / "fmriprep", "s01", "a", confounds=short),
                                                    bold_run(root / "fmriprep", "s01", "b")))
    with pytest.raises(BadDataError, match="145 rows, shorter than the 150 BOLD volumes") as info:
        run(inputs, tmp_path / "out")
    assert info.value.exit_code == EXIT_BAD_DATA == 65 and short.name in str(info.value)


def _modified_bold(good: BoldRun, tmp_path: Path, change) -> Path:
    img = nib.load(good.bold)
    data = np.asarray(img.dataobj).copy()
    change(data)
    path = tmp_path / good.bold.name
    nib.Nifti1Image(data, img.affine, img.header).to_filename(path)
    return path


@pytest.mark.parametrize("kind", ["constant", "nan"])
def test_constant_or_nan_parcel(study, tmp_path, kind):
    root, truth, _ = study
    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.connectivity.parcellate import labels_on_grid

    good = bold_run(root / "fmriprep", "s01", "a")
    atlas = load_default_atlas()
    img = nib.load(good.bold)
    grid = labels_on_grid(atlas.data(), atlas.image.affine, img.shape[:3], img.affine)
    index = int(atlas.labels.set_index("name").loc["L_precentral", "index"])

    def change(data):
        if kind == "constant":
            data[grid == index] = 1000.0
        else:
            data[np.argwhere(grid == index)[0][0], np.argwhere(grid == index)[0][1],
                 np.argwhere(grid == index)[0][2], 10] = np.nan

    bad = bold_run(root / "fmriprep", "s01", "a", bold=_modified_bold(good, tmp_path, change))
    inputs = ParticipantInputs(subject="s01", bold=(bad, bold_run(root / "fmriprep", "s01", "b")))
    message = "constant over time" if kind == "constant" else "NaN"
    with pytest.raises(BadDataError, match=message) as info:
        run(inputs, tmp_path / "out")
    assert "L_precentral" in str(info.value) and info.value.exit_code == 65


def test_atlas_not_overlapping_brain_mask(study, tmp_path):
    root, _, _ = study
    good = bold_run(root / "fmriprep", "s01", "a")
    mask_img = nib.load(good.mask)
    mask = np.zeros(mask_img.shape, np.uint8)
    mask[0, 0, 0] = 1  # a corner voxel: outside every parcel
    path = tmp_path / good.mask.name
    nib.Nifti1Image(mask, mask_img.affine).to_filename(path)
    inputs = ParticipantInputs(subject="s01", bold=(bold_run(root / "fmriprep", "s01", "a", mask=path),
                                                    bold_run(root / "fmriprep", "s01", "b")))
    with pytest.raises(BadDataError, match="does not overlap the brain mask") as info:
        run(inputs, tmp_path / "out")
    assert info.value.exit_code == 65 and path.name in str(info.value)


def test_gsr_switch_changes_result(study, tmp_path):
    """Without global signal regression the planted global artefact inflates GBC: the switch is honoured."""
    root, _, out = study
    params = ConnectivityParticipantParams(global_signal_regression=False)
    run(inputs_for(root / "fmriprep", "s01"), tmp_path / "out", params)
    with_gsr = pd.read_csv(next((out / "sub-s01" / "ses-a" / "func").glob("*_gbc.tsv")), sep="\t")["gbc"]
    without = pd.read_csv(next((tmp_path / "out" / "sub-s01" / "ses-a" / "func").glob("*_gbc.tsv")), sep="\t")["gbc"]
    assert without.mean() > with_gsr.mean() + 0.05


def test_runs_of_a_session_are_concatenated(study, tmp_path):
    root, truth, _ = study
    runs = (bold_run(root / "fmriprep", "s01", "a", run="1"), bold_run(root / "fmriprep", "s01", "a", run="2"),
            bold_run(root / "fmriprep", "s01", "b"))
    run(ParticipantInputs(subject="s01", bold=runs), tmp_path / "out")
    func = tmp_path / "out" / "sub-s01" / "ses-a" / "func"
    assert len(list(func.glob("*_run-*_timeseries.tsv"))) == 2
    meta = json.loads(next(func.glob("*_desc-fisherz_relmat.json")).read_text())
    assert meta["NumberOfFramesUsed"] == 2 * (150 - len(truth["expected_censored"]["s01"]["a"]))
    stats = pd.read_csv(tmp_path / "out" / "sub-s01" / "func" / "sub-s01_desc-scrubbing_stats.tsv", sep="\t")
    assert len(stats) == 3
