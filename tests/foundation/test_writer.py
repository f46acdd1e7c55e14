"""The derivatives writer: names, described tables, provenance, staging, concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.io.derivatives import DerivativesWriter, bids_name


def test_entity_order_and_label_hygiene():
    assert bids_name({"desc": "x", "sub": "01", "ses": "a", "atlas": "DK"}, "morph", ".tsv") == \
        "sub-01_ses-a_atlas-DK_desc-x_morph.tsv"
    for bad in ("0_1", "a-b", "../x", ""):
        if bad:
            with pytest.raises(ValueError):
                bids_name({"sub": bad}, "morph", ".tsv")
    with pytest.raises(ValueError, match="unknown entities"):
        bids_name({"sub": "01", "colour": "red"}, "morph", ".tsv")


def test_table_needs_a_description_of_every_column(tmp_path):
    writer = DerivativesWriter(tmp_path / "out")
    with pytest.raises(ValueError, match="without a description: \\['b'\\]"):
        writer.write_table(pd.DataFrame({"a": [1], "b": [2]}), entities={"sub": "01"}, suffix="morph",
                           columns={"a": "first"})


def test_table_sidecar_describes_columns_and_names_sources_as_bids_uris(tmp_path):
    raw = tmp_path / "raw"
    (raw / "sub-01" / "anat").mkdir(parents=True)
    src = raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    src.write_bytes(b"")
    writer = DerivativesWriter(tmp_path / "out", dataset_links={"raw": raw})
    path = writer.write_table(pd.DataFrame({"region": ["L_x"], "volume": [1.5]}), entities={"sub": "01"},
                              suffix="morph", datatype="anat", sources=[src], parameters={"fwhm": 4},
                              columns={"region": "atlas region", "volume": {"Description": "GM", "Units": "mm^3"}})
    assert path == tmp_path / "out" / "sub-01" / "anat" / "sub-01_morph.tsv"
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["volume"] == {"Description": "GM", "Units": "mm^3"}
    assert sidecar["region"] == {"Description": "atlas region"}
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]
    assert sidecar["Parameters"] == {"fwhm": 4}
    assert pd.read_csv(path, sep="\t").to_dict("list") == {"region": ["L_x"], "volume": [1.5]}


def test_dataset_description_is_a_derivative_with_provenance(tmp_path):
    writer = DerivativesWriter(tmp_path / "out", dataset_links={"raw": tmp_path / "raw"},
                               container={"Type": "docker", "Tag": "bids_ketamine:0.1.0"})
    writer.init_dataset()
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0]["Name"] == "bids_ketamine" and desc["GeneratedBy"][0]["Version"] == "0.1.0"
    assert desc["GeneratedBy"][0]["Container"]["Tag"] == "bids_ketamine:0.1.0"
    assert desc["SourceDatasets"][0]["URL"].endswith("/raw")
    ignore = (tmp_path / "out" / ".bidsignore").read_text().splitlines()
    assert "*_morph.tsv" in ignore and len(ignore) == len(set(ignore))


def test_failed_participant_leaves_nothing_and_success_is_remembered(tmp_path):
    writer = DerivativesWriter(tmp_path / "out")
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    with pytest.raises(RuntimeError):
        with writer.staged("01", "structural") as staged:
            staged.write_nifti(img, entities={"sub": "01", "space": "MNI152NLin2009cAsym", "label": "GM"},
                               suffix="probseg", datatype="anat")
            raise RuntimeError("analysis failed half way")
    assert not (tmp_path / "out" / "sub-01").exists()
    assert not writer.is_done("01", "structural")
    assert not list((tmp_path / "out" / ".bids_ketamine" / "staging").iterdir())
    with writer.staged("01", "structural") as staged:
        path = staged.write_nifti(img, entities={"sub": "01", "label": "GM"}, suffix="probseg", datatype="anat")
        assert not path.exists()  # staged until the block succeeds
    assert path.exists() and path.with_name("sub-01_label-GM_probseg.json").exists()
    assert writer.is_done("01", "structural")


def _job(args):
    root, i = args
    writer = DerivativesWriter(root, dataset_links={f"raw{i % 3}": f"/data/raw{i % 3}"})
    writer.init_dataset()
    with writer.staged(f"{i:02d}", "structural") as staged:
        staged.write_table(pd.DataFrame({"v": [i]}), entities={"sub": f"{i:02d}"}, suffix="morph",
                           columns={"v": "value"})
    return i


def test_twenty_parallel_jobs_share_one_output_folder(tmp_path):
    root = tmp_path / "out"
    with mp.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.map(_job, [(root, i) for i in range(20)])) == list(range(20))
    desc = json.loads((root / "dataset_description.json").read_text())
    assert sorted(s["URL"] for s in desc["SourceDatasets"]) == [f"file:///data/raw{k}" for k in range(3)]
    for i in range(20):
        assert pd.read_csv(root / f"sub-{i:02d}" / f"sub-{i:02d}_morph.tsv", sep="\t")["v"].tolist() == [i]
    leftovers = [p for p in root.rglob("*.tmp")] + [p for p in root.rglob(".*.tsv.*")]
    assert not leftovers


def test_the_same_svg_figure_is_byte_identical_across_processes(tmp_path):
    """matplotlib salts SVG ids randomly per process; the writer fixes the salt so re-runs give the same bytes."""
    import subprocess
    import sys

    code = ("import sys, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt; "
            "from bids_ketamine.io.derivatives import DerivativesWriter; "
            "fig, ax = plt.subplots(); ax.plot([0, 1, 2], [1, 0, 2]); ax.fill_between([0, 1], 0, 1); "
            "DerivativesWriter(sys.argv[1]).write_figure(fig, entities={'sub': '01', 'desc': 'x'}, suffix='plot')")
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True)
    first, second = (tmp_path / n / "sub-01" / "figures" / "sub-01_desc-x_plot.svg" for n in "ab")
    assert b"clipPath id=" in first.read_bytes()  # the ids the salt feeds are there
    assert first.read_bytes() == second.read_bytes()
