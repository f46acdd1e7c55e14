"""Findings first (issue 15): number formatting, findings.json against the tables it summarises, verdict rules, the
participant QC verdicts and the demo's closing summary.

``findings.json`` is checked on the session's small demo (what the analyses really write), its values compared with
the TSVs read independently with pandas; verdict and QC rules are checked on small hand-written tables whose right
answer is known.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bids_ketamine.reports.findings import collect_findings
from bids_ketamine.reports.numbers import format_cell, format_number, format_volume_mm3, significant_digits
from bids_ketamine.reports.qc import participant_qc


@pytest.mark.parametrize("value, shown", [
    (0.734375, "0.734"), (0.001998, "0.002"), (1962824, "1.96e6"), (12.0, "12"), (60, "60"), (1000, "1000"),
    (-0.00305588, "-0.00306"), (3.37551e-70, "3.38e-70"), (0.9996, "1"), (12345, "1.23e4"), (0.000999001, "0.000999"),
    (0.0, "0"), (float("nan"), "n/a"), (99.96, "100"), (-2.0, "-2"),
])
def test_numbers_are_shown_with_at_most_three_significant_digits(value, shown):
    assert format_number(value) == shown
    assert significant_digits(shown) <= 3 or shown == "n/a"


def test_cells_round_numbers_only_and_volumes_read_in_cm3():
    assert [format_cell(c) for c in ("0.8724731", "True", "n/a", "x024", "L_bankssts", "7")] == \
        ["0.872", "True", "n/a", "x024", "L_bankssts", "7"]
    assert format_volume_mm3(1901328) == "1900 cm3"
    assert significant_digits("0.00200") == 3 and significant_digits("5000") == 1


def test_volumes_recorded_in_mm3_are_shown_in_cm3_with_one_unit_in_the_header(tmp_path):
    from bids_ketamine.reports.render import table_block

    path = tmp_path / "sub-01_atlas-X_morph.tsv"
    path.write_text("region\tgm_volume_mm3\ttiv_mm3\tcrlb\nL_a\t14036.7635\t1962824\t7.25\nL_b\tn/a\t1962824\t8\n")
    path.with_suffix(".json").write_text(json.dumps({"gm_volume_mm3": {"Units": "mm^3"}, "tiv_mm3": {"Units": "mm3"},
                                                     "crlb": {"Units": "%"}}))
    block, problems = table_block(path, path.name, "t")
    page = str(block.body)
    headers = re.findall(r"<th title=\"[^\"]*\">(.*?)</th>", page)
    assert problems == [] and headers == ["region", "gm_volume [cm3]", "tiv [cm3]", "crlb [%]"]
    cells = re.findall(r"<td>(.*?)</td>", page)
    assert cells == ["L_a", "14", "1960", "7.25", "L_b", "n/a", "1960", "8"]  # 14036.8 mm3 = 14.0 cm3


# ------------------------------------------------------------------------------------------------ verdict rules
def _metrics(tmp_path: Path, discovery_p: float, external_p: float) -> Path:
    path = tmp_path / "atlas-X_desc-svm_metrics.tsv"
    rows = [("discovery", "bac", 0.70, 0.6, 0.8, discovery_p), ("external", "bac", 0.62, 0.5, 0.75, external_p),
            ("saline", "bac", 0.45, 0.3, 0.6, 0.7)]
    path.write_text("cohort\tmetric\tvalue\tci_low\tci_high\tp_permutation\tn_permutations\tn_subjects\tn_responders\n"
                    + "".join(f"{c}\t{m}\t{v}\t{lo}\t{hi}\t{p}\t1000\t40\t20\n" for c, m, v, lo, hi, p in rows))
    return path


@pytest.mark.parametrize("discovery_p, external_p, verdict", [
    (0.002, 0.01, "replicates"), (0.002, 0.3, "partly replicates"), (0.2, 0.01, "does not replicate")])
def test_structural_verdict_follows_the_published_claims(tmp_path, discovery_p, external_p, verdict):
    path = _metrics(tmp_path, discovery_p, external_p)
    (finding, *_) = collect_findings({"structural": [path]}, {"structural": ("ran", "")}, lambda p: p.name)
    assert finding.verdict == verdict
    assert finding.sentence.startswith(f"Discovery BAC 0.7 [0.6, 0.8], permutation p = {format_number(discovery_p)}")


def test_a_saline_cohort_below_chance_is_not_called_at_chance(tmp_path):
    path = _metrics(tmp_path, 0.002, 0.01)
    path.write_text(path.read_text().replace("saline\tbac\t0.45\t0.3\t0.6", "saline\tbac\t0.25\t0.1\t0.4"))
    (finding, *_) = collect_findings({"structural": [path]}, {"structural": ("ran", "")}, lambda p: p.name)
    assert finding.verdict == "replicates"
    assert finding.reason.endswith("saline not above chance, as published, but below it (BAC CI under 0.5)")


def test_a_group_table_not_as_written_is_a_loud_failure_not_a_finding(tmp_path):
    path = tmp_path / "atlas-X_desc-svm_metrics.tsv"
    path.write_text("cohort\tvalue\ndiscovery\t0.7\n")
    found = collect_findings({"structural": [path]}, {"structural": ("ran", ""),
                                                      "connectivity": ("failed", "boom (exit code 65)")},
                             lambda p: p.name)
    assert [(f.analysis, f.status) for f in found] == [("structural", "failed"), ("connectivity", "failed"),
                                                       ("spectroscopy", "not-run")]
    assert "could not be read" in found[0].reason and found[1].reason == "boom (exit code 65)"


# ------------------------------------------------------------------------------------------------ participant QC
def _mrsfit(tmp_path: Path, crlbs: list[float]) -> Path:
    path = tmp_path / "sub-01_ses-placebo_task-infusion_mrsfit.tsv"
    rows = "".join(f"01\tplacebo\t{b}\tGlx\t{c}\t{1 + b / 10}\t{c < 50}\n" for b, c in enumerate(crlbs))
    path.write_text("participant_id\tsession_id\tblock\tmetabolite\tcrlb_percent\tratio_tNAA\tqc_pass\n" + rows)
    path.with_suffix(".json").write_text(json.dumps({"Parameters": {"max_crlb_percent": 50.0}}))
    return path


def test_fmrs_qc_verdict_names_each_block_that_failed(tmp_path):
    ok = participant_qc({"spectroscopy": [_mrsfit(tmp_path, [5.0, 6.0])]}, {}, {})
    assert [(v.analysis, v.verdict) for v in ok] == [("structural", "not run"), ("connectivity", "not run"),
                                                     ("spectroscopy", "pass")]
    assert ok[2].numbers == ["Glx/tNAA per block, placebo: 1, 1.1"]
    mixed = participant_qc({"spectroscopy": [_mrsfit(tmp_path, [5.0, 73.5])]}, {}, {})[2]
    assert mixed.verdict == "warning" and mixed.reasons[0] == "1 of 2 Glx blocks failed the fit QC"
    assert "placebo block 1: Glx fit failed QC (CRLB 73.5 %, limit 50 %)" in mixed.reasons
    none = participant_qc({"spectroscopy": [_mrsfit(tmp_path, [80.0, 90.0])]}, {}, {})[2]
    assert none.verdict == "fail" and none.reasons[0] == "no Glx block passed the fit QC"
    failed = participant_qc({}, {"spectroscopy": "truncated file (exit code 65)"}, {})[2]
    assert failed.verdict == "fail" and "truncated file (exit code 65)" in failed.reasons[0]


def test_connectivity_qc_verdict_reads_the_scrubbing_table(tmp_path):
    path = tmp_path / "sub-01_desc-scrubbing_stats.tsv"
    path.write_text("session\trun\tcondition\tn_frames\tsession_censored_fraction\tsession_excluded\treason\n"
                    "ketamine\tn/a\tketamine\t150\t0.62\tTrue\tcensored fraction 0.62 > 0.5\n"
                    "placebo\tn/a\tplacebo\t150\t0.08\tFalse\tn/a\n")
    verdict = participant_qc({"connectivity": [path]}, {}, {})[1]
    assert verdict.verdict == "warning"
    assert verdict.reasons == ["session ketamine excluded: censored fraction 0.62 > 0.5"]
    assert verdict.numbers[0] == "frames scrubbed: ketamine 62 %, placebo 8 %"


# ------------------------------------------------------------------------------------------------ on the demo
@pytest.fixture(scope="module")
def demo_outputs(small_demo) -> Path:
    root, code = small_demo
    assert code == 0, f"the demo failed (exit {code})"
    return root / "outputs"


def _tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _table(outputs: Path, pattern: str, sources: list[str]) -> pd.DataFrame:
    """The one group table matching ``pattern``, found by its name here (not taken from findings.json), which
    findings.json must also name as a source."""
    (path,) = sorted((outputs / "group").glob(f"**/{pattern}"))
    assert path.relative_to(outputs).as_posix() in sources, (path, sources)
    return _tsv(path)


def test_findings_json_values_equal_the_tables_they_summarise(demo_outputs):
    doc = json.loads((demo_outputs / "group" / "findings.json").read_text())
    analyses = doc["analyses"]
    assert {a for a, e in analyses.items() if e["status"] == "ran"} == {"structural", "connectivity", "spectroscopy"}

    structural = analyses["structural"]
    metrics = _table(demo_outputs, "*_desc-svm_metrics.tsv", structural["sources"])
    for cohort, values in structural["values"].items():
        bac = metrics[(metrics.cohort == cohort) & (metrics.metric == "bac")].iloc[0]
        auc = metrics[(metrics.cohort == cohort) & (metrics.metric == "auc")].iloc[0]
        assert values["bac"] == bac["value"] and values["bac_ci_low"] == bac["ci_low"]
        assert values["bac_ci_high"] == bac["ci_high"] and values["p_permutation"] == bac["p_permutation"]
        assert values["n_subjects"] == bac["n_subjects"] and values["auc"] == auc["value"]
    assert set(structural["values"]) == set(metrics.cohort)

    connectivity = analyses["connectivity"]
    pca = _table(demo_outputs, "*_desc-ketaminepca_stats.tsv", connectivity["sources"]).sort_values("component")
    values = connectivity["values"]
    assert values["n_significant_components"] == int(pca["significant"].sum())
    assert values["pc1_explained_variance_ratio"] == pca["explained_variance_ratio"].iloc[0]
    assert values["pc2_explained_variance_ratio"] == pca["explained_variance_ratio"].iloc[1]
    dims = _table(demo_outputs, "desc-dimensionality_stats.tsv", connectivity["sources"])
    assert values["participation_ratio"] == dims.set_index("drug").loc[values["drug"], "pr_all_subjects"]
    genes = _table(demo_outputs, "*_desc-ketaminepc1genes_stats.tsv", connectivity["sources"])
    top = genes.loc[genes["r"].abs().idxmax()]
    assert values["pc1_top_gene"] == {"gene": top["gene"], "r": top["r"], "p_spatial": top["p_spatial"],
                                      "q_spatial": top["q_spatial"]}

    spectroscopy = analyses["spectroscopy"]
    lmm = _table(demo_outputs, "desc-fmrslmm_stats.tsv", spectroscopy["sources"])
    glx = lmm[(lmm.outcome == "Glx/tNAA") & (lmm.term == "pretreatment_x_time")].iloc[0]
    term = spectroscopy["values"]["glx_pretreatment_x_time"]
    for key in ("estimate", "se", "ci_low", "ci_high", "p", "n_obs", "n_subjects"):
        assert term[key] == glx[key], key
    madrs = _table(demo_outputs, "desc-madrslmm_stats.tsv", spectroscopy["sources"])
    assert spectroscopy["values"]["madrs_pretreatment_x_time"]["p"] == \
        madrs[madrs.term == "pretreatment_x_time"].iloc[0]["p"]


def test_demo_prints_the_same_findings_as_the_group_report(demo_outputs, capsys):
    from bids_ketamine.cli.demo import print_summary

    print_summary(demo_outputs)
    printed = capsys.readouterr().out
    assert f"group report           : {demo_outputs / 'group.html'}" in printed
    page = (demo_outputs / "group.html").read_text()
    headlines = [re.sub(r"\s+", " ", h) for h in re.findall(r'<p class="headline">(.*?)</p>', page, flags=re.S)]
    assert len(headlines) == 3
    import html

    for headline in headlines:
        assert html.unescape(headline) in printed
    assert printed.count("  - ") == 3 and "Verdict: " in printed
