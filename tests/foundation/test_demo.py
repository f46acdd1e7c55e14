"""End to end: the demo (small size) runs both levels, its outputs pass the BIDS validator, and a re-run resumes."""

from __future__ import annotations

import json

import pytest

from bids_ketamine.cli.run import main


@pytest.fixture(scope="module")
def demo(small_demo):
    return small_demo


def test_demo_finishes(demo, capsys):
    root, code = demo
    assert code == 0
    outputs = root / "outputs"
    desc = json.loads((outputs / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert list(outputs.glob("sub-*/sub-*_inventory.tsv"))
    assert list((outputs / "logs").glob("run-*_group_*.json"))


def test_demo_gene_analysis_finds_the_planted_gene_and_only_it(demo):
    """The demo configures its synthetic gene table: the gene that follows planted component C1 survives FDR over
    the spatial null; the unrelated smooth genes do not, though the naive shuffle would call some significant."""
    import pandas as pd

    root, _ = demo
    truth = json.loads((root / "bids" / "code" / "ground_truth.json").read_text())["connectivity"]["genes"]
    table = pd.read_csv(next((root / "outputs" / "group").glob("atlas-*_desc-ketaminepc1genes_stats.tsv")),
                        sep="\t").set_index("gene")
    assert set(table.index) == {truth["planted_gene"], *truth["random_genes"]}
    assert table.loc[truth["planted_gene"], "q_spatial"] < 0.05
    assert abs(table.loc[truth["planted_gene"], "r"]) > 0.5
    assert (table.loc[truth["random_genes"], "q_spatial"] >= 0.05).all()
    assert (table["p_naive"] <= table["p_spatial"]).all()  # the naive null is never the more cautious here


def test_demo_outputs_are_valid_bids_derivatives(demo):
    from bids_ketamine.validation import validation_errors

    root, _ = demo
    errors = validation_errors(root / "outputs")
    assert errors == [], errors[:3]


def test_every_table_has_a_sidecar_describing_each_column(demo):
    root, _ = demo
    tables = list((root / "outputs").rglob("*.tsv"))
    assert tables
    for table in tables:
        if ".bids_ketamine" in table.parts:
            continue
        sidecar = table.with_suffix(".json")
        assert sidecar.exists(), f"no sidecar for {table}"
        meta = json.loads(sidecar.read_text())
        header = table.read_text().splitlines()[0].split("\t")
        missing = [c for c in header if c not in meta]
        assert not missing, f"{table.name}: columns without description {missing}"


def test_rerun_skips_finished_participants(demo, caplog):
    root, _ = demo
    # the inventory is re-written by every run (it describes the latest one); analysis outputs must be untouched
    before = {p: p.stat().st_mtime_ns for p in (root / "outputs").rglob("sub-*/**/*.tsv")
              if not p.name.endswith("_inventory.tsv")}
    assert before
    code = main([str(root / "bids"), str(root / "outputs"), "participant", "--skip-bids-validation",
                 "--random-seed", "5"])
    assert code == 0
    after = {p: p.stat().st_mtime_ns for p in before}
    assert before == after, "a re-run must not recompute finished participants"


def test_demo_writes_reports_and_reports_only_rebuilds_them_without_recomputing(demo):
    root, _ = demo
    out = root / "outputs"
    reports = sorted(out.glob("sub-*.html"))
    assert reports and (out / "group.html").exists() and (out / "methods.md").exists()
    results = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix in (".tsv", ".nii.gz", ".gz")}
    for report in reports:
        report.unlink()
    code = main([str(root / "bids"), str(out), "group", "--reports-only"])
    assert code == 0
    assert sorted(out.glob("sub-*.html")) == reports
    assert all(p.read_bytes() == data for p, data in results.items())


def test_demo_model_bundle_scores_its_external_cohort_through_group_model_as_the_training_run_did(demo, tmp_path):
    """Issue 14's demo acceptance through the CLI: the demo's group level wrote the model bundle and its card
    (checksum of the bundle file); the external cohort, in a dataset of its own without outcome columns, scored by
    ``group --model`` gets the training run's scores, probabilities and intervals (to 1e-9)."""
    import hashlib
    import shutil

    import numpy as np
    import pandas as pd

    root, code = demo
    assert code == 0
    structural = root / "outputs" / "group" / "structural"
    bundle = next(structural.glob("*_desc-svm_model.skops"))
    card = json.loads(bundle.with_suffix(".json").read_text())
    assert card["checksum"]["value"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert bundle.with_suffix(".md").is_file()
    in_run = pd.read_csv(structural / "atlas-DKcereb_desc-svm_predictions.tsv", sep="\t", keep_default_na=False,
                         na_values=["n/a"]).query("cohort == 'external'").set_index("participant_id")
    assert len(in_run) >= 6

    participants = pd.read_csv(root / "bids" / "participants.tsv", sep="\t", dtype=str)
    external = participants[participants["participant_id"].isin(in_run.index)]
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    shutil.copy2(root / "bids" / "dataset_description.json", bids / "dataset_description.json")
    external[["participant_id", "site", "sex", "age"]].to_csv(bids / "participants.tsv", sep="\t", index=False)
    for subject in external["participant_id"]:
        (bids / subject).symlink_to(root / "bids" / subject, target_is_directory=True)
        shutil.copytree(root / "outputs" / subject, out / subject)
    code = main([str(bids), str(out), "group", "--analyses", "structural", "--model", str(bundle),
                 "--skip-bids-validation", "--nprocs", "1", "-w", str(tmp_path / "work")])
    assert code == 0
    applied = pd.read_csv(next((out / "group" / "structural").glob("*desc-applied_predictions.tsv")), sep="\t",
                          keep_default_na=False, na_values=["n/a"]).set_index("participant_id")
    assert sorted(applied.index) == sorted(in_run.index)
    for column in ("score", "probability", "probability_low", "probability_high"):
        assert np.max(np.abs(applied.loc[in_run.index, column] - in_run[column])) < 1e-9, column
    assert (applied.loc[in_run.index, "predicted"] == in_run["predicted"]).all()
    assert not list((out / "group" / "structural").glob("*_model.skops"))  # applying never trains
