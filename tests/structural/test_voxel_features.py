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


def _write_voxel_study(out, n_disc=60, n_ext=16, seed=5):
    """Participant-level outputs as the participant level writes them: a regional table (TIV, source) and a
    modulated GM map in MNI space (6 mm grid, nilearn's GM template x (1 + a frontal effect + voxel noise))."""
    from nilearn import datasets

    from bids_ketamine.structural.gm_features import resample_to_grid

    rng = np.random.default_rng(seed)
    tpl = datasets.load_mni152_gm_template(resolution=2)
    shape = (33, 39, 32)
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = tpl.affine[:3, 3]
    gm = resample_to_grid(tpl, shape, affine, order=1)
    y_mm = (np.indices(shape)[1] * 6.0 + affine[1, 3])
    frontal = (y_mm > 20) & (gm > 0.2)
    ids = [f"v{i:03d}" for i in range(n_disc + n_ext)]
    labels = rng.permutation(np.arange(len(ids)) % 2)
    sites = np.where(rng.random(len(ids)) < 0.5, "A", "B")
    for i, sub in enumerate(ids):
        folder = out / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        tiv = 1.5e6 * (1 + 0.05 * rng.standard_normal())
        factor = 1 + 0.08 * rng.standard_normal(shape) + 0.05 * (sites[i] == "B")
        factor[frontal] += 0.06 * (labels[i] - 0.5)
        density = (gm * np.clip(factor, 0, None)).astype(np.float32)
        nib.Nifti1Image(density, affine).to_filename(
            folder / f"sub-{sub}_space-MNI152NLin2009cAsym_label-GM_desc-modulated_probseg.nii.gz")
        path = folder / f"sub-{sub}_atlas-toy_morph.tsv"
        pd.DataFrame({"region": ["a", "b"], "hemisphere": "B", "structure": "cortex", "gm_volume_mm3": [1.0, 2.0],
                      "gm_fraction_tiv": [1 / tiv, 2 / tiv], "tiv_mm3": tiv}).to_csv(path, sep="\t", index=False)
        path.with_suffix(".json").write_text('{"FeatureSource": "builtin"}')
    rows = [{"participant_id": sub, "site": sites[i], "sex": "F" if i % 2 else "M", "age": 30 + i % 20,
             "arm": "ketamine", "cohort": "discovery" if i < n_disc else "external", "outcome": float(labels[i])}
            for i, sub in enumerate(ids)]
    return pd.DataFrame(rows), frontal, affine


def test_group_level_voxel_option_end_to_end_and_apply(tmp_path):
    """The voxel option through the group level: predictions above chance on a planted frontal effect, a Haufe
    NIfTI in MNI space positive in the frontal lobe, figure, sidecars and card naming the feature type; the saved
    voxel model re-scores the external cohort as in the run (1e-9) and refuses regional input with one line."""
    import json

    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.group import run_group
    from bids_ketamine.structural.params import StructuralParams

    out = tmp_path / "out"
    participants, frontal, affine = _write_voxel_study(out)
    params = StructuralParams(feature_type="voxel", voxel_size_mm=12.0, repeats=1, n_permutations=0,
                              n_bootstrap=0, calibration_bootstrap=50, anat={"atlas_name": "toy"})
    outputs = run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    names = {p.name for p in outputs}
    assert any(n.endswith("desc-voxelhaufe_weights.nii.gz") for n in names)
    assert any(n.endswith("voxelsvm_haufe.svg") for n in names)
    metrics = pd.read_csv(next(p for p in outputs if p.name.endswith("desc-voxelsvm_metrics.tsv")), sep="\t")
    auc = metrics.set_index(["cohort", "metric"])["value"]
    assert auc["discovery", "auc"] > 0.75 and auc["external", "auc"] > 0.75, auc
    haufe_path = next(p for p in outputs if p.name.endswith("desc-voxelhaufe_weights.nii.gz"))
    haufe = nib.load(haufe_path)
    grid = vf.mni_grid(12.0)
    assert haufe.shape == grid.shape and np.allclose(haufe.affine, grid.affine)
    data = np.asarray(haufe.dataobj)
    y_mm = np.indices(grid.shape)[1] * 12.0 + grid.affine[1, 3]
    assert data[grid.mask & (y_mm > 30)].mean() > 0 > data[grid.mask & (y_mm < 0)].mean() - 1e-9
    assert json.loads(haufe_path.with_name(haufe_path.name.replace(".nii.gz", ".json")).read_text())[
        "FeatureType"] == "voxel"
    card = json.loads(next(p for p in outputs if p.name.endswith("_model.json")).read_text())
    assert card["features"]["type"] == "voxel" and card["features"]["voxel_grid"]["voxel_size_mm"] == 12.0
    assert "PCA" in card["model"]["kind"] and any(item.startswith("Voxel-wise") for item in card["limitations"])
    card_md = next(p for p in outputs if p.name.endswith("_model.md")).read_text()
    assert "- voxel-wise: " in card_md and "refuses regional input" in card_md
    bundle = next(p for p in outputs if p.name.endswith("_model.skops"))
    in_run = pd.read_csv(next(p for p in outputs if p.name.endswith("desc-voxelsvm_predictions.tsv")), sep="\t")
    external = participants[participants["cohort"] == "external"]
    applied = run_group(out, participants=external, sessions=pd.DataFrame(),
                        params=StructuralParams(model_file=bundle, feature_type="voxel"), design=None,
                        writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    scores = pd.read_csv(next(p for p in applied if p.name.endswith("desc-applied_predictions.tsv")), sep="\t")
    expected = in_run.set_index("participant_id").loc[scores["participant_id"], "score"].to_numpy()
    assert np.allclose(scores["score"].to_numpy(), expected, atol=1e-9, rtol=0)
    # without structural.feature_type in the config, the bundle decides (voxel here): the same scores
    again = run_group(out, participants=external, sessions=pd.DataFrame(),
                      params=StructuralParams.model_validate({"model_file": str(bundle)}), design=None,
                      writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    rescored = pd.read_csv(next(p for p in again if p.name.endswith("desc-applied_predictions.tsv")), sep="\t")
    assert np.allclose(rescored["score"].to_numpy(), expected, atol=1e-9, rtol=0)
    # a config that names the other feature type is refused in one line, as a configured atlas is
    with pytest.raises(BadDataError) as info:
        run_group(out, participants=external, sessions=pd.DataFrame(),
                  params=StructuralParams(model_file=bundle, feature_type="regional"), design=None,
                  writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    assert "structural.feature_type = 'regional' but the model was trained on voxel features" in str(info.value)
    assert info.value.exit_code == 65 and "\n" not in str(info.value)
