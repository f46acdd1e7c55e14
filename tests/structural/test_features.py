"""Grey-matter features: Jacobians of ITK transforms, modulation, planted-volume recovery, participant outputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.inputs import AnatInputs, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.structural import gm_features as gmf
from bids_ketamine.structural.anat_params import AnatFeatureParams
from bids_ketamine.structural.participant import load_regional_features, plan, run_participant
from bids_ketamine.synthetic.anat import write_synthetic_anat

FLIP = np.diag([-1.0, -1.0, 1.0])


def write_h5(path: Path, components: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """An ITK HDF5 composite written by hand: (type, parameters, fixed parameters) in storage order."""
    with h5py.File(path, "w") as h5:
        group = h5.create_group("TransformGroup")
        group.create_group("0").create_dataset("TransformType", data=[b"CompositeTransform_double_3_3"])
        for i, (kind, params, fixed) in enumerate(components, start=1):
            g = group.create_group(str(i))
            g.create_dataset("TransformType", data=[kind.encode()])
            g.create_dataset("TransformParameters", data=params)
            g.create_dataset("TransformFixedParameters", data=fixed)
    return path


def field_params(vectors_ras: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ITK parameters of a RAS displacement field on a RAS grid (LPS vectors, x index fastest)."""
    spacing = np.sqrt((affine_ras[:3, :3] ** 2).sum(axis=0))
    direction = FLIP @ affine_ras[:3, :3] @ np.diag(1 / spacing)
    fixed = np.concatenate([np.array(vectors_ras.shape[:3], float), FLIP @ affine_ras[:3, 3], spacing,
                            direction.ravel()])
    return (vectors_ras @ FLIP).transpose(2, 1, 0, 3).ravel(), fixed


def grid(shape=(20, 24, 22), spacing=3.0, origin=(-30.0, -36.0, -33.0)):
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    ijk = np.indices(shape, dtype=float).reshape(3, -1).T
    xyz = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    return affine, xyz


# ---------------------------------------------------------------------------------------------------- Jacobians
def test_linear_field_and_affine_give_exact_determinants(tmp_path):
    affine, xyz = grid()
    a, scale = 0.05, 1.1
    params, fixed = field_params(a * xyz, affine)
    matrix = FLIP @ (scale * np.eye(3)) @ FLIP
    path = write_h5(tmp_path / "xfm.h5", [
        ("AffineTransform_double_3_3", np.concatenate([matrix.ravel(), [1.0, 2.0, 3.0]]), np.zeros(3)),
        ("DisplacementFieldTransform_double_3_3", params, fixed),
    ])
    comps = gmf.read_itk_transform(path)
    assert isinstance(comps[0], gmf.AffineComponent) and isinstance(comps[1], gmf.DisplacementField)
    np.testing.assert_allclose(comps[1].vectors, a * xyz, atol=1e-12)
    inner = (slice(3, -3),) * 3
    jac = gmf.jacobian_on_grid(comps, xyz.shape[:3], affine)
    np.testing.assert_allclose(jac[inner], scale**3 * (1 + a) ** 3, rtol=1e-9)


def test_field_is_applied_before_the_affine(tmp_path):
    """A composite [affine, field] applies the field to the MNI point: its Jacobian is evaluated at x, not A x."""
    affine, xyz = grid(shape=(40, 30, 30), spacing=2.0, origin=(-40.0, -30.0, -30.0))
    c = 0.004
    vectors = np.zeros_like(xyz)
    vectors[..., 0] = c * xyz[..., 0] ** 2  # d u_x / d x = 2 c x
    params, fixed = field_params(vectors, affine)
    shift = np.array([10.0, 0.0, 0.0])  # RAS shift, far enough to tell x from x + shift
    path = write_h5(tmp_path / "xfm.h5", [
        ("AffineTransform_double_3_3", np.concatenate([np.eye(3).ravel(), FLIP @ shift]), np.zeros(3)),
        ("DisplacementFieldTransform_double_3_3", params, fixed),
    ])
    target_affine, target_xyz = grid(shape=(10, 5, 5), spacing=4.0, origin=(-20.0, -10.0, -10.0))
    jac = gmf.jacobian_on_grid(gmf.read_itk_transform(path), target_xyz.shape[:3], target_affine)
    np.testing.assert_allclose(jac, 1 + 2 * c * target_xyz[..., 0], atol=1e-9)


def test_ants_nifti_warp_is_read_in_lps(tmp_path):
    affine, xyz = grid()
    a = -0.04
    lps = (a * xyz) @ FLIP
    img = nib.Nifti1Image(lps[:, :, :, None, :].astype(np.float32), affine)
    img.header.set_intent("vector")
    img.to_filename(tmp_path / "warp.nii.gz")
    comps = gmf.read_itk_transform(tmp_path / "warp.nii.gz")
    jac = gmf.jacobian_on_grid(comps, xyz.shape[:3], affine)
    np.testing.assert_allclose(jac[(slice(2, -2),) * 3], (1 + a) ** 3, rtol=1e-5)


def test_transform_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.h5"
    with h5py.File(bad, "w") as h5:
        h5.create_dataset("junk", data=[1])
    with pytest.raises(BadDataError, match="TransformGroup") as err:
        gmf.read_itk_transform(bad)
    assert str(bad) in str(err.value) and err.value.exit_code == 65
    affine, xyz = grid()
    params, fixed = field_params(0 * xyz, affine)
    path = write_h5(tmp_path / "t.h5", [("DisplacementFieldTransform_double_3_3", params[:-3], fixed)])
    with pytest.raises(BadDataError, match="truncated"):
        gmf.read_itk_transform(path)
    with pytest.raises(BadDataError, match="implausible Jacobian"):
        gmf.check_jacobian(np.full(100, -1.0), path)


def test_modulation_preserves_the_subject_volume():
    """sum(GM_mni x J) x voxel = GM volume in the subject, for a uniform 10 % expansion."""
    gm = np.zeros((10, 10, 10), np.float32)
    gm[2:8, 2:8, 2:8] = 0.5
    mod = gmf.modulate(gm, np.full(gm.shape, 1.1))
    assert gmf.total_volume(mod, 8.0) == pytest.approx(216 * 0.5 * 8.0 * 1.1, rel=1e-6)
    labels = np.zeros(gm.shape, np.int32)
    labels[2:5] = 3
    labels[5:8] = 7
    vols = gmf.regional_volumes(mod, 8.0, labels, np.array([7, 3]))
    np.testing.assert_allclose(vols, [108 * 0.5 * 8 * 1.1] * 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- planted truth
@pytest.fixture(scope="module")
def synthetic_outputs(tmp_path_factory):
    """Three copies of one synthetic subject (same seed) with latent scores 0, +1 and -1, through the participant
    level with the sMRIPrep source; plus the truth of each."""
    root = tmp_path_factory.mktemp("planted")
    fmriprep = root / "derivatives" / "fmriprep"
    out = DerivativesWriter(root / "out")
    truths = {}
    for label, z in (("zero", 0.0), ("plus", 1.0), ("minus", -1.0)):
        truth = write_synthetic_anat(root, fmriprep, label, gm_effect=z, site_offset=0.0, seed=11)
        files = truth["files"]
        inputs = ParticipantInputs(subject=label, anat=AnatInputs(
            t1w=(Path(files["t1w"]),), gm_probseg_mni=Path(files["gm_probseg_mni"]),
            t1w_to_mni_xfm=Path(files["t1w_to_mni_xfm"]), brain_mask_t1w=Path(files["brain_mask"]),
            mni_space="MNI152NLin2009cAsym"))
        runs, why = plan(inputs, AnatFeatureParams())
        assert runs and why.startswith("fmriprep:")
        with out.staged(label, "structural") as staged:
            run_participant(inputs, params=AnatFeatureParams(), design=None, writer=staged,
                            work_dir=root / "work", seed=1)
        truths[label] = truth
    return root / "out", truths


def test_planted_volume_change_is_recovered(synthetic_outputs):
    """Frontal regions grow and cerebellar ones shrink by the planted fraction.

    Tolerance: the reader differentiates the displacement field on its 4 mm grid and interpolates the Jacobian,
    which blunts the planted borders (tapered with a 4 mm Gaussian) by a few per cent of the change; 15 % of the
    expected change (about 0.7 percentage points) bounds that with margin, while a sign error, a missing Jacobian
    or an affine/field order mix-up would miss by 100 % or more.
    """
    out, truths = synthetic_outputs
    features, info = load_regional_features(out)
    assert set(features.index) == {"zero", "plus", "minus"}
    assert (info["feature_source"] == "fmriprep").all()
    planted = truths["plus"]["planted_regions"]
    for label, sign in (("plus", 1), ("minus", -1)):
        change = features.loc[label] / features.loc["zero"] - 1
        expected = pd.Series(truths[label]["expected_fractional_change"])
        assert np.sign(expected[planted["increase"]]).eq(sign).all()
        np.testing.assert_allclose(change[expected.index], expected, atol=0, rtol=0.15)
        others = change.drop(expected.index)
        assert others.abs().mean() < 0.2 * expected.abs().mean()
        # the planted regions lead a ranking of the change, in the planted direction
        top = change.abs().sort_values(ascending=False).index[: len(expected)]
        assert len(set(top) & set(expected.index)) >= len(expected) - 2


def test_participant_outputs_are_complete(synthetic_outputs):
    out, truths = synthetic_outputs
    anat = out / "sub-plus" / "anat"
    gm_map = anat / "sub-plus_space-MNI152NLin2009cAsym_label-GM_desc-modulated_probseg.nii.gz"
    table_path = anat / "sub-plus_atlas-DKcereb_morph.tsv"
    assert gm_map.exists() and gm_map.with_name(gm_map.name.replace(".nii.gz", ".json")).exists()
    assert (out / "sub-plus" / "figures" /
            "sub-plus_space-MNI152NLin2009cAsym_label-GM_desc-modulated_probseg.png").stat().st_size > 10_000
    table = pd.read_csv(table_path, sep="\t")
    assert list(table.columns) == ["region", "hemisphere", "structure", "gm_volume_mm3", "gm_fraction_tiv",
                                   "tiv_mm3", "total_gm_mm3", "total_wm_mm3", "total_csf_mm3",
                                   "template_correlation"]
    # fMRIPrep gives a GM map (so a whole-brain GM total, above the atlas regions' sum) but no WM/CSF totals of ours
    # and no registration of ours to check: those are n/a, not zero
    assert table["total_gm_mm3"].nunique() == 1 and table["total_gm_mm3"].iloc[0] > table["gm_volume_mm3"].sum()
    assert table[["total_wm_mm3", "total_csf_mm3", "template_correlation"]].isna().all().all()
    assert len(table) == 85 and table["gm_volume_mm3"].gt(0).all()
    sidecar = json.loads(table_path.with_suffix(".json").read_text())
    assert sidecar["FeatureSource"] == "fmriprep"
    # TIV: the T1w brain mask = nilearn's MNI152 brain mask (1883 cm^3) times the subject's head-size ratio
    head = truths["plus"]["head_volume_ratio"]
    assert sidecar["TIV_mm3"] / 1000 == pytest.approx(1883 * head, rel=0.03)
    np.testing.assert_allclose(table["tiv_mm3"], sidecar["TIV_mm3"], rtol=1e-5)
    # the modulated map sums to the GM volume in the subject: template GM (~1008 cm^3) x head ratio, roughly
    mod = nib.load(gm_map).get_fdata()
    assert mod.sum() * 8 / 1000 == pytest.approx(1008 * head, rel=0.05)


# ---------------------------------------------------------------------------------------------------- choice
def test_source_preference_and_plan_messages(tmp_path):
    t1 = tmp_path / "sub-1_T1w.nii.gz"
    both = AnatInputs(t1w=(t1,), gm_probseg_mni=tmp_path / "gm.nii.gz", t1w_to_mni_xfm=tmp_path / "x.h5",
                      cat12_mwp1=tmp_path / "mwp1.nii", freesurfer_dir=tmp_path / "fs")
    assert plan(ParticipantInputs("1", both), AnatFeatureParams())[1].startswith("fmriprep")
    assert plan(ParticipantInputs("1", both), AnatFeatureParams(sources=("cat12", "builtin")))[1].startswith("cat12")
    no_xfm = AnatInputs(gm_probseg_mni=tmp_path / "gm.nii.gz")
    ok, why = plan(ParticipantInputs("1", no_xfm), AnatFeatureParams())
    assert not ok and "no T1w-to-MNI transform" in why
    ok, why = plan(ParticipantInputs("1", AnatInputs(t1w=(t1,))), AnatFeatureParams(sources=("fmriprep",)))
    assert not ok
    with pytest.raises(MissingInputError):
        run_participant(ParticipantInputs("1", AnatInputs()), params=AnatFeatureParams(), writer=None,
                        work_dir=tmp_path, seed=0)


def test_params_refuse_unknown_fields_and_half_atlases(tmp_path):
    with pytest.raises(ValueError):
        AnatFeatureParams(atlas_nifti=tmp_path / "a.nii.gz")
    with pytest.raises(ValueError):
        AnatFeatureParams(smoothing=3)
    with pytest.raises(ValueError):
        AnatFeatureParams(sources=("spm",))


def test_smoothing_changes_the_map_not_the_regional_volumes(synthetic_outputs, tmp_path):
    out, truths = synthetic_outputs
    files = truths["zero"]["files"]
    inputs = ParticipantInputs(subject="zero", anat=AnatInputs(
        gm_probseg_mni=Path(files["gm_probseg_mni"]), t1w_to_mni_xfm=Path(files["t1w_to_mni_xfm"]),
        brain_mask_t1w=Path(files["brain_mask"]), mni_space="MNI152NLin2009cAsym"))
    writer = DerivativesWriter(tmp_path / "smoothed")
    run_participant(inputs, params=AnatFeatureParams(smoothing_fwhm_mm=8, write_qc=False), writer=writer,
                    work_dir=tmp_path, seed=1)
    name = "sub-zero/anat/sub-zero_space-MNI152NLin2009cAsym_label-GM_desc-modulated_probseg.nii.gz"
    raw, smooth = nib.load(out / name).get_fdata(), nib.load(tmp_path / "smoothed" / name).get_fdata()
    roughness = [np.abs(np.diff(m, axis=0)).mean() for m in (raw, smooth)]
    assert roughness[1] < 0.5 * roughness[0]
    assert smooth.sum() == pytest.approx(raw.sum(), rel=0.01)  # a Gaussian kernel keeps the total
    table = "sub-zero/anat/sub-zero_atlas-DKcereb_morph.tsv"
    pd.testing.assert_frame_equal(pd.read_csv(out / table, sep="\t"), pd.read_csv(tmp_path / "smoothed" / table,
                                                                                   sep="\t"))
    assert not (tmp_path / "smoothed" / "sub-zero" / "figures").exists()
