"""Tissue fractions inside a (rotated) MRS voxel from segmentation probability maps with planted geometry."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.errors import BadDataError
from bids_ketamine.spectroscopy.nifti_io import tissue_fractions_in_voxel

SEG_AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])  # 1 mm grid, index = mm


def _maps():
    shape = (80, 80, 80)
    gm = np.zeros(shape)
    gm[:40] = 1.0  # x < 40 mm is grey matter
    wm = 1.0 - gm
    csf = np.zeros(shape)
    csf[:, :, 70:] = 1.0  # a CSF slab at z >= 70 mm
    wm[:, :, 70:] = gm[:, :, 70:] = 0.0
    return {"gm": gm, "wm": wm, "csf": csf}


def _voxel(centre, size, angle_deg=0.0):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(size)
    aff[:3, 3] = centre
    return aff


def test_voxel_straddling_the_boundary_is_half_grey_half_white():
    f = tissue_fractions_in_voxel(_voxel((39.5, 40, 30), (20, 20, 20)), _maps(), SEG_AFFINE)
    assert f["gm"] == pytest.approx(0.5, abs=0.03) and f["wm"] == pytest.approx(0.5, abs=0.03)
    assert f["csf"] == 0.0


def test_rotation_and_size_are_honoured():
    # a 40 x 10 mm voxel across the boundary: along x it is half grey; rotated 90 deg it lies along y, within grey
    along_x = tissue_fractions_in_voxel(_voxel((39.5, 40, 30), (40, 10, 10)), _maps(), SEG_AFFINE)
    along_y = tissue_fractions_in_voxel(_voxel((30, 40, 30), (40, 10, 10), 90.0), _maps(), SEG_AFFINE)
    assert along_x["gm"] == pytest.approx(0.5, abs=0.03)
    assert along_y["gm"] == pytest.approx(1.0)


def test_csf_fraction():
    f = tissue_fractions_in_voxel(_voxel((20, 40, 69.5), (10, 10, 20)), _maps(), SEG_AFFINE)
    assert f["csf"] == pytest.approx(0.5, abs=0.06) and sum(f.values()) == pytest.approx(1.0)


def test_voxel_outside_the_segmentation_is_an_error():
    with pytest.raises(BadDataError):
        tissue_fractions_in_voxel(_voxel((500, 500, 500), (20, 20, 20)), _maps(), SEG_AFFINE)


def test_participant_uses_t1w_segmentation_when_discovery_provides_it(tmp_path):
    from types import SimpleNamespace

    import nibabel as nib

    from bids_ketamine.inputs import MrsAcquisition, ParticipantInputs
    from bids_ketamine.spectroscopy.nifti_io import make_nifti_mrs
    from bids_ketamine.spectroscopy.participant import segmentation_fractions

    maps = {}
    for k, arr in _maps().items():
        maps[k] = tmp_path / f"label-{k}_probseg.nii.gz"
        nib.Nifti1Image(arr.astype(np.float32), SEG_AFFINE).to_filename(str(maps[k]))
    img = make_nifti_mrs(np.ones((64, 1), complex), dwell_time=2.5e-4, spectrometer_frequency=123.2,
                         dim_tags=("DIM_DYN",))
    img.set_qform(_voxel((39.5, 40, 30), (20, 20, 20)), code=1)
    img.set_sform(_voxel((39.5, 40, 30), (20, 20, 20)), code=1)
    svs = tmp_path / "sub-1_svs.nii.gz"
    img.to_filename(str(svs))
    acq = MrsAcquisition(svs=svs)
    with_seg = ParticipantInputs(subject="1", anat=SimpleNamespace(probseg_t1w=maps), mrs=(acq,))
    fr = segmentation_fractions(with_seg, acq)
    assert fr.source == "segmentation" and fr.gm == pytest.approx(0.5, abs=0.03)
    assert segmentation_fractions(ParticipantInputs(subject="1", mrs=(acq,)), acq) is None
