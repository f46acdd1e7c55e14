"""The built-in antspyx pipeline on real T1w images (ds002748): physiological volumes, volume-preserving
modulation, QC figure. Two subjects here (one depressed, one control); all 24 in benchmarks/bench_structural_anat.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.inputs import AnatInputs, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.structural.anat_params import AnatFeatureParams
from bids_ketamine.structural.participant import load_regional_features, plan, run_participant

SUBJECTS = ("01", "52")  # sub-01: depression group, sub-52: control group
WHOLE_HEAD = "head"  # a whole-head T1w (scalp and skull) from our generator


@pytest.fixture(scope="module")
def builtin_outputs(shared_data, tmp_path_factory):
    from bids_ketamine.synthetic.anat import write_synthetic_anat

    root = shared_data / "ds002748_t1w"
    out = tmp_path_factory.mktemp("builtin_out")
    synthetic = tmp_path_factory.mktemp("whole_head")
    truth = write_synthetic_anat(synthetic, synthetic / "derivatives", WHOLE_HEAD, gm_effect=0.0, site_offset=0.0,
                                 seed=3, whole_head=True)
    writer = DerivativesWriter(out)
    seconds = {}
    t1w = {sub: root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz" for sub in SUBJECTS}
    t1w[WHOLE_HEAD] = Path(truth["files"]["t1w"])
    for sub, path in t1w.items():
        inputs = ParticipantInputs(sub, AnatInputs(t1w=(path,)))
        runs, why = plan(inputs, AnatFeatureParams())
        assert runs and why.startswith("builtin:")
        start = time.perf_counter()
        with writer.staged(sub, "structural") as staged:
            run_participant(inputs, params=AnatFeatureParams(), writer=staged, work_dir=out.parent / f"w{sub}",
                            seed=20240601, n_procs=2)
        seconds[sub] = time.perf_counter() - start
    return out, seconds, truth


@pytest.mark.realdata
def test_builtin_volumes_are_physiological(builtin_outputs):
    out, seconds, _ = builtin_outputs
    features, info = load_regional_features(out)
    assert sorted(features.index) == sorted(SUBJECTS + (WHOLE_HEAD,))
    assert (info["feature_source"] == "builtin").all()
    for sub in SUBJECTS:
        sidecar = json.loads((out / f"sub-{sub}/anat/sub-{sub}_atlas-DKcereb_morph.json").read_text())
        tiv, gm = sidecar["TIV_mm3"] / 1000, sidecar["TotalGM_mm3"] / 1000
        assert 1100 <= tiv <= 2000, (sub, tiv)
        assert 450 <= gm <= 900, (sub, gm)
        assert 0.3 < gm / tiv < 0.6
        assert sidecar["TemplateCorrelation"] > 0.5  # refused below 0.4 (default min_template_correlation)
        # modulation preserves the subject's GM volume: the modulated map sums to the native GM volume
        img = nib.load(out / f"sub-{sub}/anat/sub-{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg"
                             ".nii.gz")
        total = img.get_fdata().sum() * abs(np.linalg.det(img.affine[:3, :3])) / 1000
        assert total == pytest.approx(gm, rel=0.03)
        # atlas regions hold most of the GM (the rest lies outside the atlas' labels)
        assert 0.6 * gm < features.loc[sub].sum() / 1000 <= gm
        table = pd.read_csv(out / f"sub-{sub}/anat/sub-{sub}_atlas-DKcereb_morph.tsv", sep="\t")
        cerebellum = table.set_index("region").loc[["L_cerebellum", "R_cerebellum"], "gm_volume_mm3"].sum() / 1000
        assert 40 < cerebellum < 200
        qc = out / f"sub-{sub}/figures/sub-{sub}_space-MNI152NLin2009aSym_label-GM_desc-modulated_probseg.png"
        assert qc.stat().st_size > 10_000
        # the whole-participant values are columns of the participant's table too, equal to the sidecar's
        for column, key in (("total_gm_mm3", "TotalGM_mm3"), ("total_wm_mm3", "TotalWM_mm3"),
                            ("total_csf_mm3", "TotalCSF_mm3"), ("template_correlation", "TemplateCorrelation")):
            assert table[column].nunique() == 1 and table[column].iloc[0] == pytest.approx(sidecar[key], rel=1e-6)
    print("seconds per subject:", seconds)


@pytest.mark.realdata
def test_skull_stripped_input_is_noticed_and_tiv_method_said(builtin_outputs):
    """ds002748's T1w are skull-stripped (zero outside the brain); the generator's whole-head T1w is not. Both get
    TIV from the warped template brain mask, and the whole-head one matches the generator's truth (the template's
    brain-mask volume x the planted head-volume ratio, not computed by the pipeline)."""
    from nilearn import datasets

    out, _, truth = builtin_outputs
    meta = {sub: json.loads((out / f"sub-{sub}/anat/sub-{sub}_atlas-DKcereb_morph.json").read_text())
            for sub in SUBJECTS + (WHOLE_HEAD,)}
    for sub in SUBJECTS:
        assert meta[sub]["SkullStripped"] is True, meta[sub]["ForegroundOutsideBrain"]
        assert meta[sub]["ForegroundOutsideBrain"] < 0.05
        assert meta[sub]["TIVMethod"].startswith("skull-stripped input")
        assert "warped to the subject" in meta[sub]["TIVMethod"]
    head = meta[WHOLE_HEAD]
    assert head["SkullStripped"] is False and head["ForegroundOutsideBrain"] > 0.25
    assert head["TIVMethod"].startswith("whole-head input")
    mask = datasets.load_mni152_brain_mask(resolution=2)
    expected_tiv = (mask.get_fdata() > 0.5).sum() * 8.0 * truth["head_volume_ratio"]
    assert head["TIV_mm3"] == pytest.approx(expected_tiv, rel=0.03)


@pytest.mark.realdata
def test_methods_name_the_space_and_the_tiv_method(builtin_outputs):
    from bids_ketamine.structural.participant import anatomy_provenance

    out, _, _ = builtin_outputs
    record = anatomy_provenance(out)
    assert record["sources"] == {"builtin": 3} and record["spaces"] == {"MNI152NLin2009aSym": 3}
    assert record["n_skull_stripped"] == 2
    from bids_ketamine.reports.boilerplate import _anatomy_text

    space, tiv = _anatomy_text(record)
    assert space == "MNI152NLin2009aSym space"
    assert "2 of them had skull-stripped inputs" in tiv and "warped to the participant" in tiv


def test_skull_strip_rule_on_known_masks():
    brain = np.zeros((20, 20, 20), bool)
    brain[5:15, 5:15, 5:15] = True
    from bids_ketamine.structural.builtin import is_skull_stripped

    assert is_skull_stripped(brain, brain) == (True, 0.0)
    head = np.zeros_like(brain)
    head[2:18, 2:18, 2:18] = True  # 4096 voxels, 1000 of them brain
    stripped, outside = is_skull_stripped(head, brain)
    assert not stripped and outside == pytest.approx(3096 / 4096)


def test_qc_figure_labels_slices_in_mni_mm_and_has_a_colour_bar():
    from nilearn import datasets

    from bids_ketamine.structural.qc import gm_qc_figure

    tpl = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2).get_fdata()
    fig = gm_qc_figure(tpl.get_fdata(), gm, affine=tpl.affine, title="t", n_slices=4)
    slices = fig.axes[:8]
    titles = [ax.get_title() for ax in slices]
    # nilearn's 2 mm grid: z = 2 k - 72, y = 2 j - 134 (its affine, written out here)
    assert all(t.endswith(" mm") for t in titles)
    z = [float(t.split("=")[1].removesuffix(" mm")) for t in titles[:4]]
    assert all(v % 2 == 0 and -72 <= v <= 116 for v in z) and z == sorted(z)
    assert titles[4].startswith("y = ")
    assert len(fig.axes) == 9 and "modulated GM" in fig.axes[8].get_ylabel()


def test_builtin_pipeline_leaves_no_temporary_files_outside_its_work_dir():
    """antspy's Atropos writes probability images with tempfile.mktemp: they must land in the work dir's scratch."""
    import tempfile as _tempfile

    from bids_ketamine.structural import builtin

    seen = {}

    def fake(t1w_path, *, work_dir, seed, **options):
        seen["tempdir"] = _tempfile.gettempdir()
        (Path(seen["tempdir"]) / "antsrXXprob01.nii.gz").write_bytes(b"")
        raise RuntimeError("stop after the check")

    original = builtin._run_builtin_pipeline
    builtin._run_builtin_pipeline = fake
    try:
        work = Path(_tempfile.mkdtemp())
        with pytest.raises(RuntimeError):
            builtin.run_builtin_pipeline("unused.nii.gz", work_dir=work, seed=1)
    finally:
        builtin._run_builtin_pipeline = original
    assert Path(seen["tempdir"]) == work / "ants_tmp"
    assert not (work / "ants_tmp").exists()
    assert _tempfile.gettempdir() != seen["tempdir"]
