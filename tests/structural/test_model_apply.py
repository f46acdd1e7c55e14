"""A saved structural model applied to new participants (``group --model FILE``): same scores as the training run,
new patients without an outcome scored with probability, interval and flags, out-of-distribution patients flagged
or refused, and changed or foreign bundles refused before anything is written.

One small training run (module fixture) serves every test: 60 discovery and 12 external subjects from our own
generator, 16 regions, two sites.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.cli.run import main
from bids_ketamine.errors import BadDataError
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.structural.group import run_group
from bids_ketamine.structural.params import StructuralParams
from bids_ketamine.structural.simulate_features import simulate_cohort

N_DISC, N_EXT, N_NEW = 60, 12, 4
SOURCE = "builtin"


def _write_tables(out: Path, features: pd.DataFrame, tiv: np.ndarray, ids: list[str], *, atlas: str = "toy",
                  source: str = SOURCE) -> None:
    """Regional tables and sidecars named and laid out as the participant level writes them."""
    for i, sub in enumerate(ids):
        folder = out / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True, exist_ok=True)
        vol = features.iloc[i].to_numpy()
        path = folder / f"sub-{sub}_atlas-{atlas}_morph.tsv"
        pd.DataFrame({"region": features.columns, "hemisphere": "B", "structure": "cortex", "gm_volume_mm3": vol,
                      "gm_fraction_tiv": vol / tiv[i], "tiv_mm3": tiv[i]}).to_csv(path, sep="\t", index=False)
        path.with_suffix(".json").write_text(json.dumps({"FeatureSource": source}))


def _participants(cohort, rows: slice, ids: list[str], *, arm="ketamine", group="discovery", outcome=True):
    sex = np.where(cohort.covariates["sex"].to_numpy()[rows] > 0, "M", "F")
    return pd.DataFrame({"participant_id": ids, "site": cohort.sites[rows], "sex": sex,
                         "age": cohort.covariates["age"].to_numpy()[rows], "arm": arm, "cohort": group,
                         "outcome": cohort.labels[rows].astype(float) if outcome else np.nan})


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The training run: outputs, bundle path, in-run predictions, and the generator's held-back subjects."""
    total = N_DISC + N_EXT + N_NEW
    cohort = simulate_cohort(total, 16, mahalanobis=2.5, n_frontal=4, n_cerebellar=2, n_sites=2, seed=31)
    tiv = cohort.covariates["tiv"].to_numpy()
    root = tmp_path_factory.mktemp("trained")
    out = root / "out"
    ids = [f"s{i:03d}" for i in range(N_DISC + N_EXT)]
    _write_tables(out, cohort.features.iloc[: N_DISC + N_EXT], tiv, ids)
    participants = pd.concat([_participants(cohort, slice(0, N_DISC), ids[:N_DISC]),
                              _participants(cohort, slice(N_DISC, N_DISC + N_EXT), ids[N_DISC:],
                                            group="external")], ignore_index=True)
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=100,
                              anat={"atlas_name": "toy"})
    outputs = run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=DerivativesWriter(out), work_dir=root / "work", seed=3)
    bundle = next(p for p in outputs if p.name.endswith("_model.skops"))
    predictions = pd.read_csv(next(p for p in outputs if p.name.endswith("desc-svm_predictions.tsv")), sep="\t")
    return {"root": root, "out": out, "bundle": bundle, "predictions": predictions, "participants": participants,
            "cohort": cohort, "tiv": tiv, "ids": ids}


def _apply(out: Path, participants: pd.DataFrame, bundle: Path, work: Path) -> list[Path]:
    params = StructuralParams(model_file=bundle)
    return run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                     writer=DerivativesWriter(out), work_dir=work, seed=3)


def _applied(outputs: list[Path]) -> pd.DataFrame:
    return pd.read_csv(next(p for p in outputs if p.name.endswith("desc-applied_predictions.tsv")), sep="\t",
                       keep_default_na=False, na_values=["n/a"])


def test_bundle_and_card_are_written_with_a_checksum_of_the_file(trained):
    bundle = trained["bundle"]
    card = json.loads(bundle.with_suffix(".json").read_text())
    assert card["checksum"]["value"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert card["app"]["libraries"]["scikit-learn"] and card["features"]["atlas"] == "toy"
    assert card["features"]["source"] == [SOURCE] and len(card["features"]["names"]) == 16
    assert card["training_cohort"]["n"] == N_DISC
    assert {r["cohort"] for r in card["metrics"]} == {"discovery", "external"}
    assert card["limitations"] and card["calibration"]["method"].startswith("Platt")
    markdown = bundle.with_suffix(".md").read_text()
    assert "## Limitations" in markdown and card["checksum"]["value"] in markdown


def test_saved_model_reproduces_the_in_run_external_scores(trained, tmp_path):
    """The external cohort scored through ``--model`` (its own output folder, no training) equals the training
    run's scoring of the same subjects: score, probability and interval to 1e-9."""
    out = tmp_path / "out"
    ext_ids = trained["ids"][N_DISC:]
    for sub in ext_ids:
        shutil.copytree(trained["out"] / f"sub-{sub}", out / f"sub-{sub}")
    participants = trained["participants"].query("cohort == 'external'").reset_index(drop=True)
    outputs = _apply(out, participants, trained["bundle"], tmp_path / "work")
    applied = _applied(outputs).set_index("participant_id")
    in_run = trained["predictions"].query("cohort == 'external'").set_index("participant_id")
    assert sorted(applied.index) == sorted(in_run.index) == [f"sub-{s}" for s in ext_ids]
    for column in ("score", "probability", "probability_low", "probability_high"):
        assert np.max(np.abs(applied.loc[in_run.index, column] - in_run[column])) < 1e-9, column
    assert (applied.loc[in_run.index, "predicted"] == in_run["predicted"]).all()
    assert not list((out / "group" / "structural").glob("*_model.skops"))  # applying never trains


def _new_patients(trained, tmp_path, *, tiv_factor=(1.0,), sites=None, atlas="toy", source=SOURCE):
    """Held-back subjects of the generator as a new dataset without outcomes: (output folder, participants)."""
    cohort = trained["cohort"]
    n = len(tiv_factor)
    rows = slice(N_DISC + N_EXT, N_DISC + N_EXT + n)
    ids = [f"new{k + 1:02d}" for k in range(n)]
    out = tmp_path / "out"
    _write_tables(out, cohort.features.iloc[rows], trained["tiv"][rows] * np.asarray(tiv_factor), ids, atlas=atlas,
                  source=source)
    participants = _participants(cohort, rows, ids, outcome=False)
    if sites is not None:
        participants["site"] = sites
    return out, participants


def test_one_patient_without_outcome_through_the_cli_gets_probability_flags_and_a_report_section(trained,
                                                                                               tmp_path):
    """A one-participant BIDS dataset with no outcome column, scored by ``group --model``: probability with its
    interval, predicted class, empty flags, a per-patient summary and figure, and the participant report's item."""
    out, participants = _new_patients(trained, tmp_path)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "one patient", "BIDSVersion": "1.9.0"}))
    participants[["participant_id", "site", "sex", "age"]].assign(
        participant_id="sub-new01").to_csv(bids / "participants.tsv", sep="\t", index=False)
    code = main([str(bids), str(out), "group", "--model", str(trained["bundle"]), "--skip-bids-validation",
                 "--nprocs", "1", "-w", str(tmp_path / "work")])
    assert code == 0
    table = pd.read_csv(next((out / "group" / "structural").glob("*desc-applied_predictions.tsv")), sep="\t",
                        keep_default_na=False, na_values=["n/a"])
    assert table["participant_id"].tolist() == ["sub-new01"]
    row = table.iloc[0]
    assert 0 < row["probability_low"] <= row["probability"] <= row["probability_high"] < 1
    assert row["probability_high"] - row["probability_low"] > 0  # a real interval, not a point
    assert np.isnan(row["outcome"]) and row["flags"] == "" and not row["unseen_site"]
    summary = json.loads(next((out / "sub-new01" / "anat").glob("*desc-model_prediction.json")).read_text())
    assert summary["probability"] == pytest.approx(row["probability"], abs=1e-12)
    assert summary["limitations"] and summary["training_cohort"]["n"] == N_DISC and summary["top_regions"]
    assert list((out / "sub-new01" / "figures").glob("*desc-model_prediction.svg"))
    page = (out / "sub-new01.html").read_text()
    assert 'data-item="model-prediction"' in page and "desc-model_prediction.json" in page


def test_out_of_distribution_patients_are_flagged_with_what_was_done(trained, tmp_path, caplog):
    """Three new patients: one like the training cohort (no flag), one with twice the TIV (TIV outside the
    training range), one from a site the model has not seen (too few to harmonise: scored un-harmonised)."""
    out, participants = _new_patients(trained, tmp_path, tiv_factor=(1.0, 2.0, 1.0),
                                      sites=[trained["cohort"].sites[0], trained["cohort"].sites[0], "siteZ"])
    with caplog.at_level(logging.WARNING, logger="bids_ketamine"):
        table = _applied(_apply(out, participants, trained["bundle"], tmp_path / "work")).set_index("participant_id")
    card = json.loads(trained["bundle"].with_suffix(".json").read_text())
    low, high = card["training_cohort"]["ranges"]["tiv_mm3"]
    assert table.loc["sub-new01", "flags"] == ""
    assert not table.loc["sub-new01", ["ood_tiv", "ood_age", "unseen_site"]].astype(bool).any()
    assert table.loc["sub-new02", "ood_tiv"] and not table.loc["sub-new02", "unseen_site"]
    assert table.loc["sub-new02", "flags"].startswith("TIV ") and f"{high:.6g}" in table.loc["sub-new02", "flags"]
    assert table.loc["sub-new03", "unseen_site"] and not table.loc["sub-new03", "ood_tiv"]
    assert table.loc["sub-new03", "harmonisation"] == "unseen site with fewer than 5 subjects: not harmonised"
    assert "site 'siteZ' not in training" in table.loc["sub-new03", "flags"]
    assert np.isfinite(table["probability"]).all()  # flagged, still scored
    flagged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "flagged" in r.getMessage()]
    assert len(flagged) == 2 and all("\n" not in m for m in flagged)
    assert "sub-new02" in flagged[0] and "desc-model_prediction.json" in flagged[0]


@pytest.mark.parametrize("case", ["atlas", "source"])
def test_features_of_another_atlas_or_source_are_refused_with_one_line(trained, tmp_path, case):
    kwargs = {"atlas": "other"} if case == "atlas" else {"source": "freesurfer"}
    out, participants = _new_patients(trained, tmp_path, **kwargs)
    before = _snapshot(out)
    with pytest.raises(BadDataError) as info:
        _apply(out, participants, trained["bundle"], tmp_path / "work")
    message = str(info.value)
    assert info.value.exit_code == 65 and "\n" not in message
    if case == "atlas":
        assert "atlas 'other'" in message and "trained on atlas 'toy'" in message
    else:
        assert "feature source freesurfer differs from the model's (builtin)" in message
    assert _snapshot(out) == before  # nothing written


@pytest.mark.parametrize("case", ["byte", "version", "card"])
def test_changed_or_foreign_bundle_is_refused_exit_65_nothing_written(trained, tmp_path, monkeypatch, capsys, case):
    out, participants = _new_patients(trained, tmp_path)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "one patient", "BIDSVersion": "1.9.0"}))
    participants[["participant_id"]].to_csv(bids / "participants.tsv", sep="\t", index=False)
    model = tmp_path / "model" / trained["bundle"].name
    model.parent.mkdir()
    shutil.copy(trained["bundle"], model)
    shutil.copy(trained["bundle"].with_suffix(".json"), model.with_suffix(".json"))
    if case == "byte":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0x01
        model.write_bytes(bytes(data))
        expected = "checksum mismatch"
    elif case == "version":
        import bids_ketamine.structural.bundle as bundle_module

        monkeypatch.setattr(bundle_module, "__version__", "99.0.0")  # this app is another version than the writer
        expected = "written by bids_ketamine"
    else:
        card = json.loads(model.with_suffix(".json").read_text())
        card["training_cohort"]["n"] += 100  # a card edited after the fact (the bundle itself intact)
        model.with_suffix(".json").write_text(json.dumps(card))
        expected = "does not match the card inside the bundle"
    before = _snapshot(out)
    code = main([str(bids), str(out), "group", "--model", str(model), "--skip-bids-validation", "--nprocs", "1",
                 "-w", str(tmp_path / "work")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 65
    assert len(err) == 1 and expected in err[0] and model.stem in err[0], err
    assert _snapshot(out) == before and not (tmp_path / "work").exists()


def test_the_model_atlas_is_used_and_a_different_configured_atlas_refused(trained, tmp_path):
    """Tables of two atlases in one folder: the model's ('toy') is read even though 'other' sorts first; a config
    naming another atlas than the model's is refused with one line, nothing written."""
    out, participants = _new_patients(trained, tmp_path)
    rows = slice(N_DISC + N_EXT, N_DISC + N_EXT + 1)
    _write_tables(out, trained["cohort"].features.iloc[rows, :5], trained["tiv"][rows], ["new01"], atlas="aaa")
    table = _applied(_apply(out, participants, trained["bundle"], tmp_path / "work"))
    assert table["participant_id"].tolist() == ["sub-new01"] and np.isfinite(table["probability"]).all()
    before = _snapshot(out)
    params = StructuralParams(model_file=trained["bundle"], anat={"atlas_name": "aaa"})
    with pytest.raises(BadDataError) as info:
        run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                  writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    assert info.value.exit_code == 65 and "\n" not in str(info.value)
    assert "structural.anat.atlas_name = 'aaa' but the model was trained on atlas 'toy'" in str(info.value)
    assert _snapshot(out) == before


def test_scored_participants_are_labelled_applied_not_discovery(trained, tmp_path):
    out, participants = _new_patients(trained, tmp_path)
    assert participants["cohort"].eq("discovery").all()  # what the design calls them without a cohort column
    table = _applied(_apply(out, participants, trained["bundle"], tmp_path / "work"))
    assert table["cohort"].tolist() == ["applied"]


def test_a_dataset_without_site_column_is_flagged_site_unknown_never_a_training_site(trained, tmp_path,
                                                                                      capsys):
    """participants.tsv without a site column: the design's default site is the name of a training site
    ("site1"), yet the patient is flagged site unknown and scored un-harmonised, exactly as a patient from a site
    the model has not seen (and not as one of site1); the flag is a column, a warning line and a report warning."""
    assert "site1" in json.loads(trained["bundle"].with_suffix(".json").read_text())["training_cohort"]["sites"]
    out, participants = _new_patients(trained, tmp_path)
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "no site", "BIDSVersion": "1.9.0"}))
    participants[["participant_id", "sex", "age"]].assign(participant_id="sub-new01").to_csv(
        bids / "participants.tsv", sep="\t", index=False)
    code = main([str(bids), str(out), "group", "--model", str(trained["bundle"]), "--skip-bids-validation",
                 "--nprocs", "1", "-w", str(tmp_path / "work")])
    assert code == 0
    captured = capsys.readouterr()
    messages = (captured.out + captured.err).splitlines()
    row = pd.read_csv(next((out / "group" / "structural").glob("*desc-applied_predictions.tsv")), sep="\t",
                      keep_default_na=False, na_values=["n/a"]).iloc[0]
    assert row["site_unknown"] and row["unseen_site"] and row["harmonisation"] == "site unknown: not harmonised"
    assert row["flags"].startswith("site unknown (participants.tsv has no site column)")
    # the same features as a known training site and as an unseen site, scored through the library path
    reference = {}
    for site in ("site1", "siteZ"):
        table = _applied(_apply(tmp_path / "out", participants.assign(site=site), trained["bundle"],
                                tmp_path / f"w{site}")).set_index("participant_id")
        reference[site] = table.loc["sub-new01", "score"]
    assert row["score"] == pytest.approx(reference["siteZ"], abs=1e-12)
    assert abs(row["score"] - reference["site1"]) > 1e-6
    lines = [m for m in messages if "site unknown" in m]
    assert len(lines) == 1 and "sub-new01" in lines[0] and "\n" not in lines[0]
    page = (out / "sub-new01.html").read_text()
    errors = page[page.index('id="errors"'):]
    assert "model prediction flagged: site unknown" in errors


def test_participants_table_records_whether_the_site_is_known(tmp_path):
    from bids_ketamine.design import StudyDesign, participants_table

    (tmp_path / "participants.tsv").write_text("participant_id\tage\nsub-01\t30\nsub-02\t40\n")
    table = participants_table(tmp_path, StudyDesign())
    assert table["site"].tolist() == ["site1", "site1"] and not table["site_known"].any()
    (tmp_path / "participants.tsv").write_text("participant_id\tsite\tage\nsub-01\tA\t30\nsub-02\tB\t40\n")
    assert participants_table(tmp_path, StudyDesign())["site_known"].all()


def test_training_on_maps_of_two_template_spaces_is_refused_in_one_line(trained, tmp_path):
    """fMRIPrep's maps (MNI152NLin2009cAsym) and the built-in pipeline's (MNI152NLin2009aSym) under one atlas grid
    are not comparable: the group level refuses the mix, naming both spaces, and writes nothing."""
    out = tmp_path / "out"
    shutil.copytree(trained["out"], out, ignore=shutil.ignore_patterns("group"))
    for k, sidecar in enumerate(sorted(out.glob("sub-*/anat/*_morph.json"))):
        space = "MNI152NLin2009cAsym" if k % 2 else "MNI152NLin2009aSym"
        sidecar.write_text(json.dumps({"FeatureSource": "fmriprep" if k % 2 else "builtin", "TemplateSpace": space}))
    before = _snapshot(out)
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, anat={"atlas_name": "toy"})
    with pytest.raises(BadDataError) as info:
        run_group(out, participants=trained["participants"], sessions=pd.DataFrame(), params=params, design=None,
                  writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    message = str(info.value)
    assert info.value.exit_code == 65 and "\n" not in message
    assert "MNI152NLin2009aSym (36)" in message and "MNI152NLin2009cAsym (36)" in message
    assert _snapshot(out) == before


def test_one_template_space_is_found_or_a_mix_refused(tmp_path):
    from bids_ketamine.structural.participant import one_template_space

    assert one_template_space(["MNI152NLin2009aSym", None, "MNI152NLin2009aSym"], tmp_path) == "MNI152NLin2009aSym"
    assert one_template_space([None, None], tmp_path) is None
    with pytest.raises(BadDataError, match="IXI549Space \\(1\\), MNI152NLin2009aSym \\(1\\)"):
        one_template_space(["MNI152NLin2009aSym", "IXI549Space"], tmp_path)


def test_a_model_records_its_template_space_and_refuses_maps_of_another(trained, tmp_path):
    out = tmp_path / "train"
    shutil.copytree(trained["out"], out, ignore=shutil.ignore_patterns("group"))
    for sidecar in out.glob("sub-*/anat/*_morph.json"):
        sidecar.write_text(json.dumps({"FeatureSource": SOURCE, "TemplateSpace": "MNI152NLin2009aSym"}))
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=20,
                              anat={"atlas_name": "toy"})
    outputs = run_group(out, participants=trained["participants"], sessions=pd.DataFrame(), params=params,
                        design=None, writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    bundle = next(p for p in outputs if p.name.endswith("_model.skops"))
    assert json.loads(bundle.with_suffix(".json").read_text())["features"]["template_space"] == "MNI152NLin2009aSym"
    new, participants = _new_patients(trained, tmp_path)
    for sidecar in new.glob("sub-*/anat/*_morph.json"):
        sidecar.write_text(json.dumps({"FeatureSource": SOURCE, "TemplateSpace": "MNI152NLin2009cAsym"}))
    before = _snapshot(new)
    with pytest.raises(BadDataError) as info:
        _apply(new, participants, bundle, tmp_path / "work2")
    assert info.value.exit_code == 65 and "\n" not in str(info.value)
    assert ("template space MNI152NLin2009cAsym, the model was trained on maps in MNI152NLin2009aSym"
            in str(info.value))
    assert _snapshot(new) == before


def test_without_a_site_column_in_run_and_saved_model_scores_agree(tmp_path):
    """participants.tsv without a site column, in training and when applying: the training run's one implicit site
    and the applied path's "site unknown" are the same rule (nothing to harmonise: the model has no site effect),
    so the saved model reproduces the in-run external scores to 1e-9, the harmonisation column says so and the
    participants are not flagged for a site that the model never distinguished."""
    from bids_ketamine.design import DEFAULT_SITE

    cohort = simulate_cohort(N_DISC + N_EXT, 16, mahalanobis=2.5, n_frontal=4, n_cerebellar=2, n_sites=1, seed=37)
    tiv = cohort.covariates["tiv"].to_numpy()
    out = tmp_path / "train"
    ids = [f"s{i:03d}" for i in range(N_DISC + N_EXT)]
    _write_tables(out, cohort.features, tiv, ids)
    participants = pd.concat([_participants(cohort, slice(0, N_DISC), ids[:N_DISC]),
                              _participants(cohort, slice(N_DISC, N_DISC + N_EXT), ids[N_DISC:],
                                            group="external")], ignore_index=True)
    participants = participants.assign(site=DEFAULT_SITE, site_known=False)  # as participants_table writes it
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=50,
                              anat={"atlas_name": "toy"})
    outputs = run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=5)
    bundle = next(p for p in outputs if p.name.endswith("_model.skops"))
    in_run = pd.read_csv(next(p for p in outputs if p.name.endswith("desc-svm_predictions.tsv")), sep="\t") \
        .query("cohort == 'external'").set_index("participant_id")
    applied_out = tmp_path / "apply"
    for sub in ids[N_DISC:]:
        shutil.copytree(out / f"sub-{sub}", applied_out / f"sub-{sub}")
    external = participants.query("cohort == 'external'").reset_index(drop=True)
    applied = _applied(_apply(applied_out, external, bundle, tmp_path / "w2")).set_index("participant_id")
    assert sorted(applied.index) == sorted(in_run.index)
    for column in ("score", "probability", "probability_low", "probability_high"):
        assert np.max(np.abs(applied.loc[in_run.index, column] - in_run[column])) < 1e-9, column
    assert applied["site_unknown"].all()
    assert applied["harmonisation"].str.startswith("none").all(), applied["harmonisation"].tolist()
    assert not applied["flags"].str.contains("site").any(), applied["flags"].tolist()


def test_group_report_of_an_applied_model_lists_flags_and_the_models_fold_warnings(tmp_path):
    """The group report of a ``group --model`` run lists, in its warnings, each flagged participant's
    out-of-distribution reason (here a TIV far outside the training range) and the fold warnings of the training
    run that made the model (4 + 4 subjects: outer folds lowered), so a reader of the applied run sees both."""
    cohort = simulate_cohort(40, 16, mahalanobis=2.5, n_frontal=4, n_cerebellar=2, n_sites=1, seed=41)
    labels = cohort.labels.to_numpy() if hasattr(cohort.labels, "to_numpy") else np.asarray(cohort.labels)
    rows = np.concatenate([np.flatnonzero(labels == 1)[:4], np.flatnonzero(labels == 0)[:4]])
    new_rows = np.flatnonzero(labels == 1)[4:6]
    tiv = cohort.covariates["tiv"].to_numpy()
    train = tmp_path / "train"
    ids = [f"t{i:02d}" for i in range(rows.size)]
    _write_tables(train, cohort.features.iloc[rows], tiv[rows], ids)
    participants = pd.DataFrame({"participant_id": ids, "site": "A", "sex": "F", "age": 40.0, "arm": "ketamine",
                                 "cohort": "discovery", "outcome": labels[rows].astype(float)})
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=20,
                              anat={"atlas_name": "toy"})
    outputs = run_group(train, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=DerivativesWriter(train), work_dir=tmp_path / "work", seed=5)
    bundle = next(p for p in outputs if p.name.endswith("_model.skops"))
    notes = json.loads(bundle.with_suffix(".json").read_text())["training_notes"]
    assert any("outer_folds lowered" in n for n in notes), notes

    out = tmp_path / "out"
    _write_tables(out, cohort.features.iloc[new_rows], np.array([1.0, 3.0]) * np.median(tiv[rows]), ["p1", "p2"])
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "two patients", "BIDSVersion": "1.9.0"}))
    pd.DataFrame({"participant_id": ["sub-p1", "sub-p2"], "site": "A", "sex": "F", "age": 40}).to_csv(
        bids / "participants.tsv", sep="\t", index=False)
    code = main([str(bids), str(out), "group", "--model", str(bundle), "--skip-bids-validation", "--nprocs", "1",
                 "-w", str(tmp_path / "w2")])
    assert code == 0
    page = (out / "group.html").read_text()
    warnings_part = page[page.index('id="errors"'):]
    flagged = [item for item in warnings_part.split("<li") if "desc-model_prediction.json: Warnings" in item]
    assert len(flagged) == 1 and "sub-p2" in flagged[0] and "TIV" in flagged[0], flagged
    assert "model training: structural.outer_folds lowered" in warnings_part
