"""Participant and group reports built from an output folder: sections, statuses, provenance, size, no recompute."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from bids_ketamine.errors import MissingInputError
from bids_ketamine.reports import build_group_report, build_participant_report, build_reports
from bids_ketamine.reports.collect import OutputFolder
from bids_ketamine.reports.participant import participant_sections
from bids_ketamine.reports.render import SizeBudget, figure_problem
from bids_ketamine.reports.sections import ITEM_RULES, guess_analysis, match_rule

from .fixtures import make_output_folder

PARTICIPANT_IDS = ["qc", "inventory", "anatomy", "connectivity", "spectroscopy", "errors", "methods"]
GROUP_IDS = ["findings", "overview", "prediction", "heterogeneity", "spectroscopy", "errors", "methods"]


def _section(page: str, section_id: str) -> str:
    match = re.search(rf'<section class="report-section" id="{section_id}" data-status="([a-z-]+)">(.*?)</section>',
                      page, flags=re.S)
    assert match, f"section {section_id} missing"
    return match.group(1) + "|" + match.group(2)


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".html" and p.name not in ("methods.md", "findings.json")}


def test_reports_only_rebuilds_without_touching_results(fresh_output_folder):
    before = _snapshot(fresh_output_folder)
    paths = build_reports(fresh_output_folder)
    assert sorted(p.name for p in paths) == ["group.html", "sub-01.html", "sub-02.html", "sub-03.html"]
    assert (fresh_output_folder / "methods.md").is_file()
    assert _snapshot(fresh_output_folder) == before  # no result, sidecar or log changed: nothing was recomputed
    again = build_reports(fresh_output_folder)
    assert [p.name for p in again] == [p.name for p in paths]


def test_participant_report_sections_and_statuses(fresh_output_folder):
    page1 = build_participant_report(fresh_output_folder, "sub-01").read_text()
    ids = re.findall(r'<section class="report-section" id="([a-z]+)"', page1)
    assert ids == PARTICIPANT_IDS
    for section_id in ("inventory", "anatomy", "connectivity", "spectroscopy"):
        assert _section(page1, section_id).startswith("ok|"), section_id
    # every expected participant item of the mapping is found in the fixture (names as the analyses write them)
    for rule in ITEM_RULES:
        if rule.level == "participant" and rule.key not in ("qc", "relmat", "timeseries"):
            assert f'data-item="{rule.key}"' in page1, rule.key
    # missing input: the inventory's reason is the section's reason
    page2 = build_participant_report(fresh_output_folder, "02").read_text()
    spectro2 = _section(page2, "spectroscopy")
    assert spectro2.startswith("not-run|") and "not run: no mrs/ svs data" in spectro2
    assert "spectroscopy not run: no mrs/ svs data" in _section(page2, "errors")
    # failure: the node's message, with its exit code, in the section and in the errors
    page3 = build_participant_report(fresh_output_folder, "03").read_text()
    spectro3 = _section(page3, "spectroscopy")
    assert spectro3.startswith("failed|") and "dwell time differs from the metabolite data" in spectro3
    errors3 = _section(page3, "errors")
    assert errors3.startswith("failed|") and "exit code 65" in errors3
    # exclusion notes from the sidecars are listed with their file
    assert "ExcludedFrames: ses-2: 7 of 150 frames censored" in errors3
    # exclusions written as table rows (a session censored beyond the limit), and no false note from the column
    # descriptions of such a table
    errors1 = _section(page1, "errors")
    assert errors1.startswith("warning|")  # nothing failed, but a session was set aside: not "ok"
    assert "desc-scrubbing_stats.tsv: excluded (session 2): 62.0 % of frames censored &gt; 50 %" in errors1
    assert "session_excluded Description" not in errors1 and "excluded (session 1)" not in errors1
    assert "excluded (session" not in _section(page2, "errors")
    # provenance: sources as BIDS URIs, version and parameters from the sidecar
    assert "bids:raw:sub-01/anat/sub-01_T1w.nii.gz" in page1
    assert "bids_ketamine 0.1.0" in page1 and "&#34;smoothing_fwhm&#34;: 4.0" in page1


def _unbalanced_tags(page: str) -> list[str]:
    """Tags closed out of order or never closed (the template must produce well-nested HTML)."""
    from html.parser import HTMLParser

    void = {"meta", "link", "img", "br", "hr", "input"}

    class Checker(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack: list[str] = []
            self.errors: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in void:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if self.stack and self.stack[-1] == tag:
                self.stack.pop()
            else:
                self.errors.append(f"</{tag}> at {self.getpos()} inside {self.stack[-3:]}")

    checker = Checker()
    checker.feed(page)
    return checker.errors + [f"<{t}> never closed" for t in checker.stack]


def test_reports_are_self_contained_and_small(fresh_output_folder):
    paths = build_reports(fresh_output_folder)
    assert _unbalanced_tags("<div><p>x</div>") and _unbalanced_tags("<section>")  # the checker can fail
    for path in paths:
        page = path.read_text()
        assert _unbalanced_tags(page) == [], path.name
        assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page), path.name  # no CDN, no remote asset
        assert "<script" not in page and "@import" not in page and "url(http" not in page
        images = re.findall(r'<img src="([^"]+)"', page)
        assert images and all(src.startswith(("data:image/svg+xml;base64,", "data:image/png;base64,"))
                              for src in images)
        if path.name.startswith("sub-"):
            assert path.stat().st_size < 10_000_000


def test_size_budget_links_figures_instead_of_growing(output_folder):
    folder = OutputFolder.read(output_folder)
    sections = participant_sections(folder, "01", budget=SizeBudget(150_000))
    notes = [b.body for s in sections for b in s.blocks if b.kind == "note"]
    assert any("size limit" in str(n) for n in notes)
    uris = [uri for s in sections for b in s.blocks if b.kind == "gallery" for uri, _ in b.body]
    assert uris and sum(len(u) for u in uris) <= 150_000


def test_unreadable_figure_is_reported_not_embedded(fresh_output_folder):
    figure = next((fresh_output_folder / "sub-01" / "figures").glob("*carpet*.png"))
    figure.write_bytes(figure.read_bytes()[:200])  # truncated PNG
    page = build_participant_report(fresh_output_folder, "01").read_text()
    assert f"{figure.name}: not a complete PNG file" in _section(page, "errors")
    n_png = len(list((fresh_output_folder / "sub-01" / "figures").glob("*.png")))
    assert page.count("data:image/png") == n_png - 1  # the intact PNGs stay embedded, the broken one does not
    assert figure_problem(Path("x.svg"), b"<svg><g>") == "truncated SVG (no closing </svg>)"
    assert figure_problem(Path("x.png"), b"") == "empty file"


def test_group_report_sections(fresh_output_folder):
    path = build_group_report(fresh_output_folder)
    assert path.name == "group.html"
    page = path.read_text()
    assert re.findall(r'<section class="report-section" id="([a-z]+)"', page) == GROUP_IDS
    assert "desc-haufe_weights.nii.gz (drawn by the report)" in _section(page, "prediction")
    for key in ("roc", "confusion", "permutation", "weights", "metrics", "weights-table", "scree",
                "pc-maps", "scores", "participation", "gene", "components", "group-timecourse", "madrs",
                "mixed-model"):
        assert f'data-item="{key}"' in page, key
    heterogeneity = _section(page, "heterogeneity")
    assert 'data-item="summary"' in heterogeneity and "&#34;NumberOfSignificantComponents&#34;: 2" in heterogeneity
    overview = _section(page, "overview")
    assert "3 participants" in overview
    assert "Runs recorded in this folder" in overview and "_participant_pid" in overview and "_group_pid" in overview
    # run status as counts, failed participants listed before the (collapsed) table of every participant
    assert "<td>spectroscopy</td><td>1</td><td class=failed>1</td>" in overview
    assert overview.index("Failed participants") < overview.index("<details class='collapsed-table'>")
    assert "sub-03 spectroscopy" in overview.split("<details")[0]
    errors = _section(page, "errors")
    assert "sub-03 spectroscopy" in errors and "exit code 65" in errors
    assert "ExcludedFrames" in errors
    assert "Methods" in page and "Random seed: 7." in page
    assert (fresh_output_folder / "methods.md").read_text().startswith("# Methods")


def test_sections_say_why_nothing_is_there(tmp_path):
    out = make_output_folder(tmp_path, subjects=("01",), analyses=("structural",), group=False)
    page = build_participant_report(out, "01").read_text()
    assert _section(page, "anatomy").startswith("ok|")
    connectivity = _section(page, "connectivity")
    assert connectivity.startswith("not-run|") and "not selected in this run (--analyses)" in connectivity
    group = build_group_report(out).read_text()
    prediction = _section(group, "prediction")
    assert prediction.startswith("not-run|") and "the group level has not run on this output folder" in prediction
    assert "<figure>" not in prediction  # a statement, not an empty box


def test_missing_folder_or_subject_raises(tmp_path, output_folder):
    with pytest.raises(MissingInputError, match="output folder not found"):
        build_group_report(tmp_path / "nope")
    with pytest.raises(MissingInputError, match="no outputs and no run record for sub-99"):
        build_participant_report(output_folder, "99")


@pytest.mark.parametrize(("relpath", "analysis"), [
    ("sub-01/anat/sub-01_atlas-DK_morph.tsv", "structural"),
    ("sub-01/ses-1/func/sub-01_ses-1_task-rest_atlas-DK_gbc.tsv", "connectivity"),
    ("sub-01/figures/sub-01_ses-1_task-infusion_block-2_desc-fit_svs.svg", "spectroscopy"),
    ("group/connectivity/desc-ketamine_components.tsv", "connectivity"),
    ("group/figures/desc-roc_structural.svg", "structural"),
    ("sub-01/sub-01_inventory.tsv", "inventory"),
])
def test_guess_analysis_from_names(relpath, analysis):
    assert guess_analysis(relpath) == analysis


def test_mapping_first_match_is_the_specific_one():
    rel = "sub-01/figures/sub-01_desc-ketamineminusplacebo_gbc.svg"
    assert match_rule("participant", "connectivity", "figure", rel).key == "delta-gbc"
    rel = "sub-01/figures/sub-01_ses-1_task-rest_desc-gbcmap_bold.svg"
    assert match_rule("participant", "connectivity", "figure", rel).key == "gbc-map"
    assert match_rule("participant", "connectivity", "figure", "sub-01/figures/x_desc-fd_bold.svg").key == "fd"


def test_outputs_without_provenance_are_named(fresh_output_folder):
    import json

    table = next((fresh_output_folder / "sub-01" / "anat").glob("*_atlas-DK_morph.tsv"))
    sidecar = table.with_suffix(".json")
    data = json.loads(sidecar.read_text())
    assert data["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz"] and data["GeneratedBy"]
    page = build_participant_report(fresh_output_folder, "01").read_text()
    assert "Outputs without provenance" not in page
    del data["Sources"]
    sidecar.write_text(json.dumps(data))
    page = build_participant_report(fresh_output_folder, "01").read_text()
    errors = _section(page, "errors")
    assert f"{table.name}: its sidecar does not name its sources" in errors and not errors.startswith("ok|")


def test_a_crash_shows_its_traceback(fresh_output_folder):
    crash = fresh_output_folder / "logs" / "sub-03_spectroscopy_crash.txt"  # sub-03 spectroscopy failed
    crash.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: planted bug\n")
    errors = _section(build_participant_report(fresh_output_folder, "03").read_text(), "errors")
    assert "Traceback (logs/sub-03_spectroscopy_crash.txt)" in errors and "ValueError: planted bug" in errors
    old = fresh_output_folder / "logs" / "sub-03_connectivity_crash.txt"  # connectivity succeeded since
    old.write_text("Traceback (most recent call last):\nKeyError: an old bug\n")
    errors = _section(build_participant_report(fresh_output_folder, "03").read_text(), "errors")
    assert "an old bug" not in errors and "planted bug" in errors


def test_participant_report_stays_under_10_mb_with_huge_figures(fresh_output_folder):
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(0)
    figures = fresh_output_folder / "sub-01" / "figures"
    for i in range(5):  # incompressible noise: about 2.3 MB each as PNG, 3 MB as base64
        plt.imsave(figures / f"sub-01_run-{i}_desc-carpet_bold.png", rng.random((800, 960, 3)))
    assert sum(p.stat().st_size for p in figures.glob("*_run-*_desc-carpet_bold.png")) > 10_000_000
    page = build_participant_report(fresh_output_folder, "01")
    assert page.stat().st_size < 10_000_000
    text = page.read_text()
    assert "figure not embedded (the report would exceed its size limit)" in text
    assert text.count("desc-carpet_bold.png\">sub-01/figures/") >= 1  # linked by its relative path instead


def test_command_line_rebuilds_reports(fresh_output_folder, tmp_path, capsys):
    from bids_ketamine.reports.__main__ import main

    assert main([str(fresh_output_folder), "sub-02"]) == 0
    assert capsys.readouterr().out.strip() == str(fresh_output_folder / "sub-02.html")
    assert not (fresh_output_folder / "group.html").exists()
    assert main([str(tmp_path / "missing")]) == 66
    assert "output folder not found" in capsys.readouterr().err


def test_tiv_held_in_the_regional_table_is_shown_not_missing(fresh_output_folder):
    anat = fresh_output_folder / "sub-01" / "anat"
    tiv_table = next(anat.glob("*_desc-tiv_morph.tsv"))
    tiv_table.unlink()
    tiv_table.with_suffix(".json").unlink()
    morph = next(anat.glob("*_atlas-DK_morph.tsv"))
    lines = morph.read_text().splitlines()
    morph.write_text("\n".join([lines[0] + "\ttiv_mm3"] + [line + "\t1523000" for line in lines[1:]]) + "\n")
    anatomy = _section(build_participant_report(fresh_output_folder, "01").read_text(), "anatomy")
    assert 'data-item="tiv"' in anatomy and "tiv = 1520 cm3" in anatomy
    assert "Total intracranial volume (table)" not in anatomy  # not listed as missing
    spectroscopy = _section(build_participant_report(fresh_output_folder, "01").read_text(), "spectroscopy")
    qc = re.search(r'data-item="qc">(.*?)</div>', spectroscopy, flags=re.S)
    assert qc and "glx_crlb_percent = 6.1, 5.8, 6.4" in qc.group(1) and "snr = " in qc.group(1)


def test_a_missing_template_is_a_clear_error():
    from bids_ketamine.errors import NotBuiltError
    from bids_ketamine.reports.render import template_text

    assert "<!DOCTYPE html>" in template_text("report.html.j2")
    with pytest.raises(NotBuiltError, match="report template nothing.j2 is missing from this installation"):
        template_text("nothing.j2")


def test_errors_section_is_a_warning_when_only_exclusions_were_recorded(tmp_path):
    """Nothing failed, but frames were set aside: the section lists them and is marked "warning", not "ok"."""
    out = make_output_folder(tmp_path, subjects=("01", "02"), analyses=("structural", "connectivity"))
    errors = _section(build_group_report(out).read_text(), "errors")
    assert errors.startswith("warning|") and "status-warning" in errors
    assert "sub-01_desc-ketamineminusplacebo_gbc.json: ExcludedFrames: ses-2: 7 of 150 frames censored" in errors
    clean = make_output_folder(tmp_path / "clean", subjects=("01",), analyses=("structural",))
    assert _section(build_group_report(clean).read_text(), "errors").startswith("ok|")
