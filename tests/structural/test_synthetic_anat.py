"""The synthetic anatomy generator: budget, determinism, sMRIPrep layout, planted truth."""

from __future__ import annotations

import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from bids_ketamine.synthetic.anat import FRACTION_PER_Z, write_synthetic_anat


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("synanat")
    write_synthetic_anat(root, root / "derivatives" / "fmriprep", "warm", gm_effect=0.0, site_offset=0.0, seed=1)
    start = time.process_time()  # CPU time: the CI machine is shared, wall time is not ours to control
    truth = write_synthetic_anat(root, root / "derivatives" / "fmriprep", "01", gm_effect=1.2, site_offset=0.03,
                                 seed=42)
    return root, truth, time.process_time() - start


def test_files_follow_smriprep_names_and_budget(generated):
    root, truth, seconds = generated
    expected = {
        root / "sub-01/anat/sub-01_T1w.nii.gz", root / "sub-01/anat/sub-01_T1w.json",
        root / "derivatives/fmriprep/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz",
        root / "derivatives/fmriprep/sub-01/anat/sub-01_desc-brain_mask.nii.gz",
        root / "derivatives/fmriprep/sub-01/anat/sub-01_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz",
        root / "derivatives/fmriprep/sub-01/anat/sub-01_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5",
    }
    written = {p for p in root.rglob("*") if p.is_file() and "sub-01" in p.name}
    assert written == expected
    assert sum(p.stat().st_size for p in written) <= 3e6
    assert seconds < 2.0
    assert not (root / "participants.tsv").exists() and not (root / "dataset_description.json").exists()


def test_transform_is_an_itk_composite(generated):
    _, truth, _ = generated
    with h5py.File(truth["files"]["t1w_to_mni_xfm"], "r") as h5:
        kinds = [h5[f"TransformGroup/{k}/TransformType"][0].decode() for k in sorted(h5["TransformGroup"], key=int)]
        fixed = h5["TransformGroup/2/TransformFixedParameters"][()]
        n = h5["TransformGroup/2/TransformParameters"].shape[0]
    assert kinds == ["CompositeTransform_double_3_3", "AffineTransform_double_3_3",
                     "DisplacementFieldTransform_double_3_3"]
    assert n == 3 * int(np.prod(fixed[:3]))


def test_images_are_plausible(generated):
    _, truth, _ = generated
    t1 = nib.load(truth["files"]["t1w"])
    gm = nib.load(truth["files"]["gm_probseg_mni"]).get_fdata()
    assert t1.ndim == 3 and np.asarray(t1.dataobj).max() > 500
    assert 0 <= gm.min() and gm.max() <= 1.0 + 1e-6  # uint8 with slope 1/255 (float32)
    # nilearn's MNI152 GM template holds ~1000 cm^3 of GM; site_offset 0.03 scales it up by 3 %
    assert 950 < gm.sum() * 8 / 1000 < 1150


def test_same_seed_gives_identical_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_synthetic_anat(root, root / "fmriprep", "07", gm_effect=-0.5, site_offset=-0.02, seed=3)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    write_synthetic_anat(tmp_path / "c", tmp_path / "c" / "fmriprep", "07", gm_effect=-0.5, site_offset=-0.02,
                         seed=4)
    assert (tmp_path / "c/sub-07/anat/sub-07_T1w.nii.gz").read_bytes() != (a / "sub-07/anat/sub-07_T1w.nii.gz"
                                                                             ).read_bytes()


def test_truth_names_planted_regions(generated):
    _, truth, _ = generated
    up, down = truth["planted_regions"]["increase"], truth["planted_regions"]["decrease"]
    assert {"L_superiorfrontal", "R_superiorfrontal", "L_rostralmiddlefrontal"} <= set(up)
    assert set(down) == {"L_cerebellum", "R_cerebellum"}
    assert truth["fractional_change_per_z"] == FRACTION_PER_Z
    # interior change is 6 % x 1.2; the border taper lowers the regional mean, never flips it
    for name in up:
        assert 0.4 * FRACTION_PER_Z * 1.2 < truth["expected_fractional_change"][name] <= FRACTION_PER_Z * 1.2
    for name in down:
        assert -FRACTION_PER_Z * 1.2 <= truth["expected_fractional_change"][name] < -0.4 * FRACTION_PER_Z * 1.2


def test_refuses_impossible_arguments(tmp_path):
    with pytest.raises(ValueError, match="resolution"):
        write_synthetic_anat(tmp_path, tmp_path / "f", "01", gm_effect=0, site_offset=0, seed=1, resolution_mm=3)
    with pytest.raises(ValueError, match="50 %"):
        write_synthetic_anat(tmp_path, tmp_path / "f", "01", gm_effect=9, site_offset=0, seed=1)
    assert not any(Path(tmp_path).rglob("*.nii.gz"))
