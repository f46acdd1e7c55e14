"""CAT12 and FreeSurfer sources, parsed from fixture files written by hand; bad T1w input refused cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.atlas import load_default_atlas
from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.inputs import AnatInputs, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.structural.anat_params import AnatFeatureParams
from bids_ketamine.structural.gm_features import check_t1w_image
from bids_ketamine.structural.participant import run_participant
from bids_ketamine.structural.sources import freesurfer_regional_volumes, read_cat12_tiv, read_freesurfer_stats

AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -20], [0, 0, 2.0, -20], [0, 0, 0, 1]])


# ---------------------------------------------------------------------------------------------------- CAT12
@pytest.fixture
def cat12_subject(tmp_path):
    """A CAT12 folder (mri/mwp1sub-01_T1w.nii + report/cat_sub-01_T1w.xml) and a two-region user atlas."""
    atlas = np.zeros((20, 20, 20), np.int16)
    atlas[2:8, 2:8, 2:8] = 5  # 216 voxels
    atlas[10:14, 10:15, 10:16] = 9  # 120 voxels
    nib.Nifti1Image(atlas, AFFINE).to_filename(tmp_path / "atlas.nii.gz")
    pd.DataFrame({"index": [5, 9], "name": ["frontal", "cerebellum"], "hemisphere": ["B", "B"],
                  "structure": ["cortex", "cerebellum"]}).to_csv(tmp_path / "atlas.tsv", sep="\t", index=False)
    mwp1 = np.zeros((20, 20, 20), np.float32)
    mwp1[atlas == 5] = 0.5
    mwp1[atlas == 9] = 1.25  # modulated values can exceed 1 (expanded tissue)
    mwp1[0, 0, 0] = 0.7  # outside every region: counted in no region
    cat = tmp_path / "cat12" / "sub-01"
    (cat / "mri").mkdir(parents=True)
    (cat / "report").mkdir()
    nib.Nifti1Image(mwp1, AFFINE).to_filename(cat / "mri" / "mwp1sub-01_T1w.nii")
    (cat / "report" / "cat_sub-01_T1w.xml").write_text(
        "<?xml version='1.0'?>\n<S><subjectmeasures><vol_TIV>1523.5</vol_TIV>"
        "<vol_abs_CGW>[310.2 650.1 540.3 0 0]</vol_abs_CGW></subjectmeasures></S>\n")
    return tmp_path, cat / "mri" / "mwp1sub-01_T1w.nii"


def test_cat12_regional_volumes_and_tiv(cat12_subject):
    root, mwp1 = cat12_subject
    params = AnatFeatureParams(atlas_nifti=root / "atlas.nii.gz", atlas_labels=root / "atlas.tsv",
                               atlas_name="toy")
    inputs = ParticipantInputs("01", AnatInputs(t1w=(root / "none_T1w.nii.gz",), cat12_mwp1=mwp1))
    writer = DerivativesWriter(root / "out")
    outputs = run_participant(inputs, params=params, writer=writer, work_dir=root / "work", seed=0)
    table = pd.read_csv(root / "out/sub-01/anat/sub-01_atlas-toy_morph.tsv", sep="\t")
    assert table["region"].tolist() == ["frontal", "cerebellum"]
    np.testing.assert_allclose(table["gm_volume_mm3"], [216 * 0.5 * 8, 120 * 1.25 * 8], rtol=1e-5)
    np.testing.assert_allclose(table["tiv_mm3"], 1523500.0)
    np.testing.assert_allclose(table["gm_fraction_tiv"], table["gm_volume_mm3"] / 1523500.0, rtol=1e-5)
    sidecar = json.loads((root / "out/sub-01/anat/sub-01_atlas-toy_morph.json").read_text())
    assert sidecar["FeatureSource"] == "cat12" and sidecar["TIVMethod"] == "CAT12 report vol_TIV"
    assert any(p.name == "sub-01_space-IXI549Space_label-GM_desc-modulated_probseg.nii.gz" for p in outputs)


def test_cat12_without_report_or_with_broken_values(cat12_subject):
    root, mwp1 = cat12_subject
    report = mwp1.parent.parent / "report" / "cat_sub-01_T1w.xml"
    assert read_cat12_tiv(report) == pytest.approx(1_523_500.0)
    report.write_text("<S><subjectmeasures/></S>")
    params = AnatFeatureParams(atlas_nifti=root / "atlas.nii.gz", atlas_labels=root / "atlas.tsv")
    inputs = ParticipantInputs("01", AnatInputs(cat12_mwp1=mwp1))
    with pytest.raises(BadDataError, match="vol_TIV"):
        run_participant(inputs, params=params, writer=DerivativesWriter(root / "o1"), work_dir=root, seed=0)
    (mwp1.parent.parent / "report" / "cat_sub-01_T1w.xml").unlink()
    with pytest.raises(MissingInputError, match="report"):
        run_participant(inputs, params=params, writer=DerivativesWriter(root / "o2"), work_dir=root, seed=0)
    nib.Nifti1Image(np.full((20, 20, 20), np.nan, np.float32), AFFINE).to_filename(mwp1)
    with pytest.raises(BadDataError, match="NaN"):
        run_participant(inputs, params=params, writer=DerivativesWriter(root / "o3"), work_dir=root, seed=0)
    assert not (root / "o1" / "sub-01").exists() and not (root / "o3" / "sub-01").exists()


# ---------------------------------------------------------------------------------------------------- FreeSurfer
ASEG_ROWS = [
    ("Left-Lateral-Ventricle", 7011.2), ("Left-Cerebellum-White-Matter", 14001.0),
    ("Left-Cerebellum-Cortex", 51234.5), ("Left-Thalamus", 7512.3), ("Left-Caudate", 3456.7),
    ("Left-Putamen", 4567.8), ("Left-Pallidum", 1987.6), ("3rd-Ventricle", 901.2), ("Brain-Stem", 20123.4),
    ("Left-Hippocampus", 4012.3), ("Left-Amygdala", 1534.5), ("Left-Accumbens-area", 543.2),
    ("Right-Cerebellum-Cortex", 52345.6), ("Right-Thalamus-Proper", 7398.1), ("Right-Caudate", 3501.2),
    ("Right-Putamen", 4602.3), ("Right-Pallidum", 1899.9), ("Right-Hippocampus", 4123.4),
    ("Right-Amygdala", 1645.6), ("Right-Accumbens-area", 601.7), ("WM-hypointensities", 1200.0),
]
DK = ["bankssts", "caudalanteriorcingulate", "caudalmiddlefrontal", "cuneus", "entorhinal", "fusiform",
      "inferiorparietal", "inferiortemporal", "isthmuscingulate", "lateraloccipital", "lateralorbitofrontal",
      "lingual", "medialorbitofrontal", "middletemporal", "parahippocampal", "paracentral", "parsopercularis",
      "parsorbitalis", "parstriangularis", "pericalcarine", "postcentral", "posteriorcingulate", "precentral",
      "precuneus", "rostralanteriorcingulate", "rostralmiddlefrontal", "superiorfrontal", "superiorparietal",
      "superiortemporal", "supramarginal", "frontalpole", "temporalpole", "transversetemporal", "insula"]


def write_freesurfer(subject_dir: Path, etiv: float = 1_612_345.6) -> dict[str, float]:
    """aseg.stats and ?h.aparc.stats in FreeSurfer 7's layout; returns the expected volume of every region."""
    stats = subject_dir / "stats"
    stats.mkdir(parents=True)
    lines = ["# Title Segmentation Statistics", "# subjectname sub-01",
             "# Measure BrainSeg, BrainSegVol, Brain Segmentation Volume, 1234567.000000, mm^3",
             f"# Measure EstimatedTotalIntraCranialVol, eTIV, Estimated Total Intracranial Volume, {etiv:.6f}, mm^3",
             "# NTableCols 10",
             "# ColHeaders  Index SegId NVoxels Volume_mm3 StructName normMean normStdDev normMin normMax normRange"]
    for i, (name, vol) in enumerate(ASEG_ROWS, start=1):
        lines.append(f"{i:3d} {i + 3:4d} {int(vol):8d} {vol:10.1f}  {name:<30s} 80.1 10.2 20.0 120.0 100.0")
    (stats / "aseg.stats").write_text("\n".join(lines) + "\n")
    expected = {"brainstem": 20123.4}
    for name, vol in ASEG_ROWS:
        for side, hemi in (("Left-", "L_"), ("Right-", "R_")):
            if name.startswith(side):
                key = name[len(side):].lower().replace("-", "")
                key = {"thalamus": "thalamusproper", "cerebellumcortex": "cerebellum"}.get(key, key)
                if key not in ("lateralventricle", "cerebellumwhitematter"):  # not grey matter
                    expected[hemi + key] = vol
    for prefix, hemi in (("lh", "L_"), ("rh", "R_")):
        lines = ["# Table of FreeSurfer cortical parcellation anatomical statistics",
                 "# Measure Cortex, NumVert, Number of Vertices, 131234, unitless",
                 "# NTableCols 10",
                 "# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd"]
        for j, name in enumerate(DK):
            gray = 1000.0 + 137 * j + (11 if hemi == "R_" else 0)
            lines.append(f"{name:<40s} {1500 + j:6d} {1000 + j:6d} {int(gray):6d}  2.512 0.611  0.110  0.021  12  1.3")
            expected[hemi + name] = float(int(gray))
        (stats / f"{prefix}.aparc.stats").write_text("\n".join(lines) + "\n")
    return expected


def test_freesurfer_stats_parse_to_the_default_atlas(tmp_path):
    expected = write_freesurfer(tmp_path / "sub-01")
    table, etiv = freesurfer_regional_volumes(tmp_path / "sub-01")
    assert etiv == pytest.approx(1_612_345.6)
    got = dict(zip(table["region"], table["gm_volume_mm3"]))
    assert got == pytest.approx(expected)
    atlas = load_default_atlas()
    assert set(atlas.names) == set(expected)  # every default-atlas region, nothing else (no ventricles, WM)
    inputs = ParticipantInputs("01", AnatInputs(freesurfer_dir=tmp_path / "sub-01"))
    outputs = run_participant(inputs, params=AnatFeatureParams(), writer=DerivativesWriter(tmp_path / "out"),
                              work_dir=tmp_path / "w", seed=0)
    assert [p.name for p in outputs] == ["sub-01_atlas-DKcereb_morph.tsv"]  # no map, no figure
    out = pd.read_csv(outputs[0], sep="\t")
    assert out["region"].tolist() == atlas.names
    assert dict(zip(out["region"], out["gm_volume_mm3"])) == pytest.approx(expected)
    assert out.set_index("region").loc["L_cerebellum", "structure"] == "cerebellum"
    np.testing.assert_allclose(out["tiv_mm3"], 1_612_345.6)


def test_freesurfer_measures_and_bad_files(tmp_path):
    write_freesurfer(tmp_path / "s")
    table, measures = read_freesurfer_stats(tmp_path / "s" / "stats" / "aseg.stats")
    assert measures["BrainSegVol"] == 1234567.0 and len(table) == len(ASEG_ROWS)
    broken = tmp_path / "s" / "stats" / "lh.aparc.stats"
    broken.write_text(broken.read_text().replace("# ColHeaders", "# Col"))
    with pytest.raises(BadDataError, match="ColHeaders") as err:
        freesurfer_regional_volumes(tmp_path / "s")
    assert str(broken) in str(err.value)
    with pytest.raises(MissingInputError):
        read_freesurfer_stats(tmp_path / "nowhere.stats")
    aseg = tmp_path / "s" / "stats" / "aseg.stats"
    write_freesurfer(tmp_path / "t", etiv=150_000.0)  # 150 cm^3: not an adult brain
    with pytest.raises(BadDataError, match="intracranial"):
        run_participant(ParticipantInputs("t", AnatInputs(freesurfer_dir=tmp_path / "t")),
                        params=AnatFeatureParams(), writer=DerivativesWriter(tmp_path / "o"), work_dir=tmp_path,
                        seed=0)
    assert aseg.exists() and not (tmp_path / "o" / "sub-t").exists()


# ---------------------------------------------------------------------------------------------------- bad T1w
def _head(shape=(96, 112, 96)) -> np.ndarray:
    """An ellipsoidal 'head' with brighter inner 'brain': enough to pass the cheap plausibility checks."""
    ijk = np.indices(shape, dtype=float)
    r = sum(((ijk[i] - shape[i] / 2) / (shape[i] * 0.4)) ** 2 for i in range(3))
    return np.where(r < 1, 300.0, 0.0) + np.where(r < 0.6, 500.0, 0.0)


BAD_T1W = {
    "2-D": (lambda: _head()[:, :, 48:49], "2-D"),
    "empty": (lambda: np.zeros((96, 112, 96)), "empty"),
    "constant": (lambda: np.full((96, 112, 96), 7.0), "empty"),
    "NaN-filled": (lambda: np.full((96, 112, 96), np.nan), "NaN"),
    "some NaN": (lambda: np.where(np.random.default_rng(0).random((96, 112, 96)) < 0.01, np.nan, _head()), "NaN"),
    "noise, not a brain": (lambda: np.random.default_rng(1).random((96, 112, 96)) * 1000, "does not look like a head"),
    "tiny field of view": (lambda: _head((20, 20, 20)), "field of view"),
}


@pytest.mark.parametrize("case", list(BAD_T1W))
def test_bad_t1w_is_refused_before_any_work(tmp_path, case):
    make, message = BAD_T1W[case]
    path = tmp_path / "sub-01_T1w.nii.gz"
    zooms = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.Nifti1Image(make().astype(np.float32), zooms).to_filename(path)
    with pytest.raises(BadDataError, match=message) as err:
        check_t1w_image(nib.load(path), path)
    assert err.value.exit_code == 65 and str(path) in str(err.value) and "Fix:" in str(err.value)
    # through the participant level (built-in source): the error, and nothing written
    out = DerivativesWriter(tmp_path / "out")
    with pytest.raises(BadDataError, match=message):
        with out.staged("01", "structural") as staged:
            run_participant(ParticipantInputs("01", AnatInputs(t1w=(path,))), params=AnatFeatureParams(),
                            writer=staged, work_dir=tmp_path / "work", seed=0)
    assert not (tmp_path / "out" / "sub-01").exists()
    assert not list((tmp_path / "out").rglob("*.nii.gz")) and not list((tmp_path / "out").rglob("*.tsv"))


def test_plausible_head_passes_the_cheap_checks(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    nib.Nifti1Image(_head().astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    assert check_t1w_image(nib.load(path), path).shape == (96, 112, 96)


def test_unreadable_t1w_is_bad_data(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(b"not a nifti at all")
    with pytest.raises(BadDataError, match="cannot read") as err:
        run_participant(ParticipantInputs("01", AnatInputs(t1w=(path,))), params=AnatFeatureParams(),
                        writer=DerivativesWriter(tmp_path / "out"), work_dir=tmp_path / "w", seed=0)
    assert str(path) in str(err.value) and not (tmp_path / "out" / "sub-01").exists()


def test_total_gm_is_the_whole_modulated_map_and_the_qc_title_shows_that_one_value(tmp_path):
    """Which total GM is right (the QC figure once showed the atlas regions' sum, 905 cm3, the report the whole map,
    1270 cm3): the generator's truth is the template's GM volume x the planted head-volume ratio (site offset 0).
    The whole modulated map matches it; the atlas regions hold only part of it. The title reads the same value."""
    from nilearn import datasets

    from bids_ketamine.structural.participant import _atlas, features_from_fmriprep, qc_title
    from bids_ketamine.synthetic.anat import write_synthetic_anat

    truth = write_synthetic_anat(tmp_path, tmp_path / "derivatives", "01", gm_effect=0.0, site_offset=0.0, seed=3)
    files = {k: Path(v) for k, v in truth["files"].items()}
    anat = AnatInputs(t1w=(files["t1w"],), gm_probseg_mni=files["gm_probseg_mni"],
                      t1w_to_mni_xfm=files["t1w_to_mni_xfm"], brain_mask_t1w=files["brain_mask"])
    params = AnatFeatureParams()
    features = features_from_fmriprep(anat, params, _atlas(params))
    expected = datasets.load_mni152_gm_template(resolution=2).get_fdata().sum() * 8.0 * truth["head_volume_ratio"]
    assert features.total_gm_mm3 == pytest.approx(expected, rel=0.01)
    assert features.table["gm_volume_mm3"].sum() < 0.8 * expected  # the atlas regions are a part, not the total
    assert f"total GM {features.total_gm_mm3 / 1000:.0f} cm3" in qc_title("01", features)
