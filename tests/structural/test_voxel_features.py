"""Voxel-wise GM features: planted regional effect recovered near the Bayes AUC, grid/mask/resampling, Haufe map
in MNI space, and a model of one feature type refusing the other."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.errors import BadDataError
from bids_ketamine.structural.metrics import roc_auc
from bids_ketamine.structural.model import ModelSpec, PreprocessorFactory, make_pipeline, model_frame
from bids_ketamine.structural.interpret import pipeline_pattern
from bids_ketamine.structural.simulate_features import simulate_voxel_cohort
from bids_ketamine.structural.validation import choose_c_by_cv, make_splits, nested_cv
from bids_ketamine.structural import voxel_features as vf


@pytest.fixture(scope="module")
def voxel_cohort():
    cohort = simulate_voxel_cohort(200, 88, mahalanobis=2.5, n_sites=3, seed=2)
    grid = vf.VoxelGrid(shape=cohort.region_of_voxel.shape, affine=cohort.affine, mask=cohort.region_of_voxel > 0)
    return cohort, grid, vf.voxel_table(cohort.images, grid)


def test_voxel_option_recovers_planted_effect_near_bayes_auc(voxel_cohort):
    """Same cohort as the regional test (n = 200, 88 regions, Mahalanobis 2.5, 3 sites), each region a 27-voxel
    cube with voxel noise: nested CV with PCA (80 % variance, fitted in the training folds) reaches the closed-form
    Bayes AUC of the voxel data within 0.07."""
    cohort, grid, table = voxel_cohort
    regional = cohort.regional
    assert table.shape == (200, 88 * 27)
    assert cohort.bayes_auc < regional.bayes_auc  # voxel noise costs information, never adds it
    spec = ModelSpec(covariates=("age", "sex", "tiv"), pca_variance=0.8)
    data = model_frame(table.reset_index(drop=True), regional.sites, regional.covariates)
    splits = make_splits(regional.labels, outer_folds=5, inner_folds=5, repeats=2, seed=7)
    result = nested_cv(data, regional.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits)
    auc = roc_auc(regional.labels, result.pooled[:, 0])[0]
    assert abs(auc - cohort.bayes_auc) <= 0.07, (auc, cohort.bayes_auc)


def test_haufe_map_recovers_planted_regions_and_is_mni_nifti(voxel_cohort):
    """The Haufe pattern of the final voxel model (C chosen by inner CV, as the group level does), mapped back to
    the grid: frontal cubes positive, cerebellar cubes negative (the planted sign), the cube means correlate with
    the planted shift; the image carries the grid and the MNI code."""
    cohort, grid, table = voxel_cohort
    regional = cohort.regional
    spec = ModelSpec(covariates=("age", "sex", "tiv"), pca_variance=0.8)
    frame = model_frame(table.reset_index(drop=True), regional.sites, regional.covariates)
    c, _ = choose_c_by_cv(frame, regional.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), folds=5,
                          seed=0)
    final = make_pipeline(spec, c).fit(frame, regional.labels)
    assert "pca" in dict(final.steps) and final.named_steps["pca"].n_components_ < 200
    pattern = pipeline_pattern(final, frame).set_index("region")["activation"]
    img = vf.pattern_image(pattern, grid)
    assert np.allclose(img.affine, grid.affine) and int(img.header["sform_code"]) == 4
    data = np.asarray(img.dataobj)
    region_mean = pd.Series(data[grid.mask]).groupby(cohort.region_of_voxel[grid.mask] - 1).mean()
    shift = regional.shift.to_numpy()
    assert (region_mean[shift > 0] > 0).all() and (region_mean[shift < 0] < 0).all()
    assert np.corrcoef(region_mean, shift)[0, 1] > 0.8
    assert region_mean[shift != 0].abs().min() > region_mean[shift == 0].abs().median()


def test_mni_grid_and_voxel_vector_keep_gm_volume():
    """A smooth modulated map on nilearn's 2 mm MNI grid sampled on the 4 mm grid: the voxel values (mm^3) sum to
    the map's GM volume inside the mask within 3 %; columns name their grid voxel."""
    from nilearn import datasets

    grid = vf.mni_grid(4.0)
    assert grid.voxel_size_mm == 4.0 and 15000 < grid.mask.sum() < 30000
    tpl = datasets.load_mni152_gm_template(resolution=2)
    density = np.asarray(tpl.dataobj, dtype=np.float32) * 1.1  # a plausible modulated density
    img = nib.Nifti1Image(density, tpl.affine)
    values = vf.voxel_vector(img, grid)
    assert values.shape == (int(grid.mask.sum()),)
    # reference: integrate the 2 mm map over the 4 mm mask voxels (each 4 mm voxel covers a 2x2x2 block)
    ijk = np.indices(density.shape).reshape(3, -1).T
    mm = ijk * 2.0 + tpl.affine[:3, 3]
    cell = np.floor((mm - grid.affine[:3, 3]) / 4.0 + 0.5).astype(int)
    ok = np.all((cell >= 0) & (cell < np.asarray(grid.shape)), axis=1)
    in_mask = np.zeros(len(cell), dtype=bool)
    in_mask[ok] = grid.mask[tuple(cell[ok].T)]
    reference = float(density.ravel()[in_mask].sum() * 8.0)
    assert abs(values.sum() / reference - 1) < 0.03, (values.sum(), reference)
    assert grid.columns[0].startswith(vf.VOXEL_PREFIX)


def test_feature_type_refusal_is_one_line():
    vf.check_feature_type("voxel", ["vox-1_2_3", "vox-4_5_6"])
    vf.check_feature_type("regional", ["L_superiorfrontal"])
    with pytest.raises(BadDataError, match="trained on voxel features but the input has regional features"):
        vf.check_feature_type("voxel", ["L_superiorfrontal"])
    with pytest.raises(BadDataError, match="trained on regional features but the input has voxel features"):
        vf.check_feature_type("regional", ["vox-1_2_3"])


def test_map_outside_mni_refused():
    grid = vf.mni_grid(6.0)
    far = nib.Nifti1Image(np.ones((20, 20, 20), dtype=np.float32), np.diag([2.0, 2, 2, 1]) + np.eye(4) * 0
                          + np.array([[0, 0, 0, 500], [0, 0, 0, 500], [0, 0, 0, 500], [0, 0, 0, 0]]))
    with pytest.raises(BadDataError, match="covers only 0% of the grey-matter mask"):
        vf.voxel_vector(far, grid, path="sub-01_mod.nii.gz")
