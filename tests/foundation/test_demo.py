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
