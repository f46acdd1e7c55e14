"""Consortium group level from features that left their sites without images.

Real data (``t1w_consortium``): 24 T1w of ds002748 in three sites, each site's export of participant outputs; the
pooled group level (a BIDS folder with only participants.tsv, validation on) against one participant run over all
24 and its group level. Synthetic participant outputs (our writer) test the refusals that need no image.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.consortium.compat import TableSettings, check_compatible
from bids_ketamine.consortium.export import MANIFEST, export_site, sha256_of
from bids_ketamine.consortium.sanitize import sanitize
from bids_ketamine.errors import BadDataError

from .conftest import run_cli


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.relative_to(folder).as_posix(): pd.read_csv(p, sep="\t")
            for p in sorted((folder / "group").rglob("*.tsv"))}


@pytest.mark.realdata
def test_pooled_group_tables_equal_one_run_over_all_participants(t1w_consortium):
    c = t1w_consortium
    for name in ("A", "export-A", "export-B", "export-C", "all24", "all24-group", "pooled"):
        assert c.runs[name][0] == 0, (name, c.runs[name][2][-2000:])
    assert not list(c.coordinator.glob("sub-*"))  # the coordinating site has no image (no subject folder at all)
    assert "--skip-bids-validation" not in json.dumps(c.runs)  # validation ran at every step
    pooled_log = c.runs["pooled"][2]
    assert "validating the export of site A" in pooled_log or "pooled 24 participants" in pooled_log
    reference, pooled = _tables(c.reference), _tables(c.pooled)
    assert set(pooled) == set(reference) and len(reference) >= 3
    for rel, ref in reference.items():
        got = pooled[rel]
        assert list(got.columns) == list(ref.columns), rel
        for column in ref.columns:
            if pd.api.types.is_numeric_dtype(ref[column]):
                np.testing.assert_allclose(got[column].to_numpy(float), ref[column].to_numpy(float), rtol=0,
                                           atol=1e-9, equal_nan=True, err_msg=f"{rel}:{column}")
            else:
                assert got[column].astype(str).tolist() == ref[column].astype(str).tolist(), (rel, column)
    predictions = reference["group/structural/atlas-DKcereb_desc-svm_predictions.tsv"]
    assert len(predictions) == 24 and set(predictions["site"]) == {"A", "B", "C"}  # ComBat had three sites


@pytest.mark.realdata
def test_exports_hold_no_image_and_verify(t1w_consortium):
    c = t1w_consortium
    for name, export in c.exports.items():
        manifest = json.loads((export / MANIFEST).read_text())
        assert manifest["Site"] == name and manifest["Participants"] == c.sites[name]
        files = sorted(p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file())
        assert sorted([*manifest["Files"], MANIFEST]) == files
        assert not [f for f in files if f.endswith((".nii", ".nii.gz", ".png", ".svg", ".html"))]
        for rel, entry in manifest["Files"].items():
            assert sha256_of(export / rel) == entry["sha256"]
        text = "".join((export / rel).read_text() for rel in manifest["Files"] if rel.endswith(".json"))
        assert str(c.root) not in text  # the site's paths stay at the site


@pytest.mark.realdata
def test_a_changed_byte_is_refused(t1w_consortium, tmp_path):
    c = t1w_consortium
    tampered = tmp_path / "export_B"
    shutil.copytree(c.exports["B"], tampered)
    table = sorted(tampered.glob("sub-*/anat/*_morph.tsv"))[3]
    data = bytearray(table.read_bytes())
    at = data.index(b"\t", data.index(b"\n") + 1) + 1 + 30
    data[at] = ord("7") if data[at] != ord("7") else ord("3")
    table.write_bytes(bytes(data))
    code, out, err = run_cli([c.coordinator, tmp_path / "out", "group", "--config-file", c.config,
                              "--participant-outputs", c.exports["A"], tampered, c.exports["C"]])
    assert code == 65
    assert f"{table}: site B: checksum mismatch, the file changed after the export" in err
    assert not (tmp_path / "out").exists()  # nothing was pooled


@pytest.mark.realdata
def test_an_export_with_another_feature_resolution_is_refused(t1w_consortium, tmp_path):
    """Site C re-runs one participant with another built-in resolution and exports it: refused in one line."""
    c = t1w_consortium
    subject = c.sites["C"][0]
    config = tmp_path / "other.toml"
    config.write_text(c.config.read_text().replace("builtin_work_resolution_mm = 3.0",
                                                   "builtin_work_resolution_mm = 2.5"))
    out = tmp_path / "out_C2"
    code, _, err = run_cli([c.bids["C"], out, "participant", "--participant-label", subject,
                            "--config-file", config])
    assert code == 0, err
    assert run_cli(["export", out, tmp_path / "export_C2", "--site", "C2"])[0] == 0
    code, _, err = run_cli([c.coordinator, tmp_path / "pooled", "group", "--config-file", c.config,
                            "--participant-outputs", c.exports["A"], tmp_path / "export_C2"])
    assert code == 65
    line = [ln for ln in err.splitlines() if "cannot be pooled" in ln]
    assert len(line) == 1
    assert (f"site C2, sub-{subject}: structural.anat.builtin_work_resolution_mm is 2.5 but 3.0 in site A "
            f"(sub-{c.sites['A'][0]})") in line[0]
    assert 'accept_differences = ["structural.anat.builtin_work_resolution_mm"]' in line[0]


@pytest.mark.realdata
def test_methods_list_every_site_and_only_what_ran(t1w_consortium):
    c = t1w_consortium
    methods = (c.pooled / "methods.md").read_text()
    for name in ("A", "B", "C"):
        records = json.loads((c.pooled / "logs" / "pooled_exports.json").read_text())
        site = next(s for s in records["sites"] if s["site"] == name)
        assert site["run_records"] and f"Site {name}: 8 participants (structural 8)" in methods
        for record in site["run_records"]:
            if json.loads((c.pooled / "logs" / "sites" / name / record).read_text()).get("jobs"):
                assert record in methods
        assert f"### site {name}" in methods
    assert "builtin_work_resolution_mm` = `3`" in methods  # the sites' parameters, not the group run's defaults
    assert "on 20 label permutations" in methods
    # no external or saline cohort in this study: the methods do not claim they were scored
    assert "external ketamine cohort" not in methods and "saline cohort" not in methods


# ------------------------------------------------------------------------------------------------- synthetic
def _site_output(root: Path, subjects: list[str], *, atlas: str = "DKcereb", version: str | None = None,
                 extra_sidecar: dict | None = None) -> Path:
    """Participant outputs as our writer leaves them (regional table + sidecar), without running a pipeline."""
    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.anat_params import AnatFeatureParams
    from bids_ketamine.structural.participant import MORPH_COLUMNS

    writer = DerivativesWriter(root)
    writer.init_dataset()
    rng = np.random.default_rng(len(subjects))
    for subject in subjects:
        table = pd.DataFrame({"region": ["L_a", "R_a"], "hemisphere": ["L", "R"], "structure": ["cortex"] * 2,
                              "gm_volume_mm3": rng.uniform(1000, 2000, 2)})
        table["gm_fraction_tiv"] = table["gm_volume_mm3"] / 1.5e6
        table["tiv_mm3"] = 1.5e6
        path = writer.write_table(table, entities={"sub": subject, "atlas": atlas}, suffix="morph", datatype="anat",
                                  columns=MORPH_COLUMNS, parameters=AnatFeatureParams().model_dump(mode="json"),
                                  metadata={"FeatureSource": "builtin", "Atlas": f"{atlas} atlas",
                                            "TemplateSpace": "MNI152NLin2009aSym", **(extra_sidecar or {})})
        if version:
            sidecar = json.loads(path.with_suffix(".json").read_text())
            sidecar["GeneratedBy"][0]["Version"] = version
            path.with_suffix(".json").write_text(json.dumps(sidecar))
    return root


def _coordinator(root: Path, subjects: dict[str, str]) -> Path:
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "coordinator", "BIDSVersion": "1.10.0"}))
    (root / "participants.tsv").write_text("participant_id\tsite\n" + "".join(
        f"sub-{s}\t{site}\n" for s, site in subjects.items()))
    return root


@pytest.mark.parametrize("change, field", [
    pytest.param({"atlas": "Schaefer100"}, "structural.atlas", id="atlas"),
    pytest.param({"version": "0.0.9"}, "app_version", id="app-version"),
])
def test_other_atlas_or_app_version_is_refused_naming_site_participant_and_field(tmp_path, change, field):
    _site_output(tmp_path / "a", ["a1", "a2"])
    _site_output(tmp_path / "b", ["b1", "b2"], **change)
    for site in ("a", "b"):
        assert run_cli(["export", tmp_path / site, tmp_path / f"export_{site}", "--site", site.upper()])[0] == 0
    coordinator = _coordinator(tmp_path / "coord", {"a1": "A", "a2": "A", "b1": "B", "b2": "B"})
    code, _, err = run_cli([coordinator, tmp_path / "pooled", "group", "--skip-bids-validation",
                            "--participant-outputs", tmp_path / "export_a", tmp_path / "export_b"])
    assert code == 65
    assert f"site B, sub-b1: {field} is " in err and "cannot be pooled" in err
    assert not (tmp_path / "pooled").exists()


def test_accepted_differences_are_recorded_for_the_methods(tmp_path):
    settings = [TableSettings("A", "a1", "structural", "t1", {"app_version": "0.1.0", "structural.x": "1"}),
                TableSettings("B", "b1", "structural", "t2", {"app_version": "0.1.0", "structural.x": "2"})]
    with pytest.raises(BadDataError, match=r"site B, sub-b1: structural.x is 2 but 1 in site A \(sub-a1\)"):
        check_compatible(settings)
    assert check_compatible(settings, ("structural.x",)) == {"structural.x": {"A": ["1"], "B": ["2"]}}
    missing = [settings[0], TableSettings("B", "b1", "structural", "t2", {"app_version": "0.1.0"})]
    with pytest.raises(BadDataError, match=r"structural.x is \(not recorded\) but 1"):
        check_compatible(missing)


def test_identifying_fields_and_paths_do_not_leave_the_site(tmp_path):
    out = _site_output(tmp_path / "site", ["01"], extra_sidecar={
        "PatientName": "Doe^Jane", "Header": {"PatientBirthDate": "19700101", "InstitutionName": "Clinic",
                                              "EchoTime": 0.03},
        "AtlasFile": str(tmp_path / "home" / "jane" / "atlas.nii.gz")})
    result = export_site(out, tmp_path / "export", "S1")
    sidecar = json.loads(next((tmp_path / "export").glob("sub-01/anat/*_morph.json")).read_text())
    assert "PatientName" not in sidecar and sidecar["Header"] == {"EchoTime": 0.03}
    assert sidecar["AtlasFile"] == "atlas.nii.gz"
    assert result.removed_fields == ["InstitutionName", "PatientBirthDate", "PatientName"]
    assert sanitize({"Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz", "file:///data/x/sub-01_T1w.nii.gz"]}) \
        == {"Sources": ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz", "sub-01_T1w.nii.gz"]}
    # the same outputs export to the same bytes
    export_site(out, tmp_path / "export2", "S1")
    assert (tmp_path / "export" / MANIFEST).read_bytes() == (tmp_path / "export2" / MANIFEST).read_bytes()


def test_pooling_refuses_duplicate_participants_and_foreign_outputs(tmp_path):
    _site_output(tmp_path / "a", ["x1"])
    _site_output(tmp_path / "b", ["x1"])
    for site in ("a", "b"):
        export_site(tmp_path / site, tmp_path / f"export_{site}", site.upper())
    coordinator = _coordinator(tmp_path / "coord", {"x1": "A"})
    code, _, err = run_cli([coordinator, tmp_path / "pooled", "group", "--skip-bids-validation",
                            "--participant-outputs", tmp_path / "export_a", tmp_path / "export_b"])
    assert code == 65 and "participant sub-x1 is in the exports of sites A and B" in err
    stale = _site_output(tmp_path / "pooled2", ["old1"])
    code, _, err = run_cli([coordinator, stale, "group", "--skip-bids-validation",
                            "--participant-outputs", tmp_path / "export_a"])
    assert code == 64 and "participant outputs that no export brings (sub-old1/anat/" in err


def test_export_into_a_blocked_folder_is_exit_73(tmp_path):
    """An OS failure of the export (a file stands where the export folder goes) is one line, exit 73."""
    _site_output(tmp_path / "site", ["01"])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run_cli(["export", tmp_path / "site", blocker / "export", "--site", "S1"])
    assert code == 73, err
    lines = [line for line in err.splitlines() if line.startswith("bids-ketamine export: error:")]
    assert len(lines) == 1 and f"{blocker / 'export'}: cannot write the export (Not a directory)" in lines[0], err
