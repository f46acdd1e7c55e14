"""Synthetic BOLD cohort: deterministic bytes, fMRIPrep-shaped files, and a self-consistent ground truth."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.synthetic.bold import write_synthetic_bold_cohort

CONDITIONS = {"pla": "placebo", "ket": "ketamine"}


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("synbold")
    truth = write_synthetic_bold_cohort(root / "raw", root / "fmriprep", ["01", "02"], CONDITIONS, n_components=2,
                                        seed=11, n_volumes=100)
    return root, truth


def test_same_seed_gives_identical_bytes(cohort, tmp_path):
    root, truth = cohort
    again = write_synthetic_bold_cohort(tmp_path / "raw", tmp_path / "fmriprep", ["01", "02"], CONDITIONS,
                                        n_components=2, seed=11, n_volumes=100)
    assert _digest(root / "raw") == _digest(tmp_path / "raw")
    assert _digest(root / "fmriprep") == _digest(tmp_path / "fmriprep")
    assert json.dumps(truth, sort_keys=True) == json.dumps(again, sort_keys=True)
    other = write_synthetic_bold_cohort(tmp_path / "r2", tmp_path / "f2", ["01"], CONDITIONS, n_components=2,
                                        seed=12, n_volumes=100)
    assert other["planted_delta"]["01"] != truth["planted_delta"]["01"]


def test_files_follow_bids_and_fmriprep_names(cohort):
    root, _ = cohort
    func = root / "fmriprep" / "sub-01" / "ses-ket" / "func"
    stem = "sub-01_ses-ket_task-rest"
    bold = func / f"{stem}_space-MNI152NLin2009cAsym_res-8_desc-preproc_bold.nii.gz"
    mask = func / f"{stem}_space-MNI152NLin2009cAsym_res-8_desc-brain_mask.nii.gz"
    confounds = func / f"{stem}_desc-confounds_timeseries.tsv"
    for path in (bold, mask, confounds, bold.with_name(bold.name.replace(".nii.gz", ".json"))):
        assert path.exists(), path
    raw = root / "raw" / "sub-01" / "ses-ket" / "func" / f"{stem}_bold.nii.gz"
    meta = json.loads(raw.with_name(f"{stem}_bold.json").read_text())
    assert meta == {"RepetitionTime": 2.0, "TaskName": "rest"}
    assert not (root / "raw" / "participants.tsv").exists()
    img = nib.load(bold)
    assert img.shape[3] == 100 and np.allclose(np.diag(img.affine)[:3], 8.0)
    with open(bold, "rb") as handle:  # gzip header mtime must be 0 for byte-identical files
        assert handle.read(8)[4:8] == b"\x00\x00\x00\x00"
    table = pd.read_csv(confounds, sep="\t", na_values="n/a")
    for col in ("framewise_displacement", "trans_x", "rot_z", "csf", "white_matter", "global_signal",
                "trans_x_derivative1", "global_signal_derivative1"):
        assert col in table, col
    assert len(table) == 100 and np.isnan(table["framewise_displacement"][0])
    # global_signal is the mean over the brain mask of the preprocessed BOLD, as fMRIPrep computes it
    m = np.asarray(nib.load(mask).dataobj) > 0
    data = np.asarray(img.dataobj)[m]
    np.testing.assert_allclose(table["global_signal"], data.mean(axis=0, dtype=np.float64), rtol=1e-6)


def test_ground_truth_is_consistent(cohort):
    _, truth = cohort
    names = truth["parcels"]
    comps = np.array([[truth["components"][k][n] for n in names] for k in sorted(truth["components"])])
    assert comps.shape == (2, len(names))
    np.testing.assert_allclose(comps @ comps.T / len(names), np.eye(2) * truth["component_sd"] ** 2, atol=1e-8)
    for sub in ("01", "02"):
        planted = np.array([truth["planted_delta"][sub]["ketamine"][n] for n in names])
        expected = np.array([truth["expected_delta"][sub]["ketamine"][n] for n in names])
        np.testing.assert_allclose(expected, planted, atol=1e-7)
        gbc = {s: np.array([truth["expected_gbc"][sub][s][n] for n in names]) for s in CONDITIONS}
        np.testing.assert_allclose(gbc["ket"] - gbc["pla"], planted, atol=1e-7)
        w = np.array(truth["weights"][sub]["ketamine"])
        residual = planted - w @ comps
        assert residual.std() < 3 * truth["noise_sd"]
        for ses in CONDITIONS:
            spikes = truth["spikes"][sub][ses]
            assert 2 <= len(spikes) <= 4
            assert set(truth["expected_censored"][sub][ses]) == {t + k for t in spikes for k in (-1, 0, 1, 2)}
