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


@pytest.fixture(scope="module")
def builtin_outputs(shared_data, tmp_path_factory):
    root = shared_data / "ds002748_t1w"
    out = tmp_path_factory.mktemp("builtin_out")
    writer = DerivativesWriter(out)
    seconds = {}
    for sub in SUBJECTS:
        inputs = ParticipantInputs(sub, AnatInputs(t1w=(root / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz",)))
        runs, why = plan(inputs, AnatFeatureParams())
        assert runs and why.startswith("builtin:")
        start = time.perf_counter()
        with writer.staged(sub, "structural") as staged:
            run_participant(inputs, params=AnatFeatureParams(), writer=staged, work_dir=out.parent / f"w{sub}",
                            seed=20240601, n_procs=2)
        seconds[sub] = time.perf_counter() - start
    return out, seconds


@pytest.mark.realdata
def test_builtin_volumes_are_physiological(builtin_outputs):
    out, seconds = builtin_outputs
    features, info = load_regional_features(out)
    assert sorted(features.index) == sorted(SUBJECTS)
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
    print("seconds per subject:", seconds)


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
