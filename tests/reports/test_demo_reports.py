"""The demo's own reports, opened in headless Chromium: no missing image, no console error, no remote request, every
section present, and the items a reader expects for each kind of participant and for the group (issue 6).

Runs on the session's small demo (``small_demo``), so it checks what the analyses really write, not a fixture. The
participants checked are one of each kind the demo has: structural only, connectivity, fMRS, and any participant
whose analysis failed (on a copy of the demo with one spectrum truncated, since the demo has no failure). A
full-page screenshot of each report is kept under $BIDS_KETAMINE_TEST_ARTIFACTS when that is set.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bids_ketamine.reports.collect import OutputFolder, table_exclusions
from bids_ketamine.reports.numbers import NUMBER_IN_TEXT, significant_digits

from .browser import check_page
from .test_reports import GROUP_IDS, PARTICIPANT_IDS

#: A participant report must stay below this size (issue 6).
MAX_PARTICIPANT_BYTES = 10 * 1024 * 1024
GROUP_ITEMS = ("roc", "confusion", "permutation", "weights", "scree", "pc-maps", "scores", "participation", "gene",
               "group-timecourse", "madrs", "mixed-model")
STRUCTURAL_ITEMS = ("inventory", "gm-over-t1w")
CONNECTIVITY_ITEMS = ("fd", "carpet", "gbc-map", "delta-gbc")
FMRS_ITEMS = ("fit", "timecourse")


def _runs(outputs: Path, subject: str) -> set[str]:
    """Analyses the participant's inventory says run for it."""
    lines = (outputs / f"sub-{subject}" / f"sub-{subject}_inventory.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]
    return {r["analysis"] for r in rows if r["runs"].lower() in ("true", "1", "yes")}


def _has_fmrs_t1w(bids: Path, subject: str) -> bool:
    return any(bids.glob(f"sub-{subject}/**/anat/sub-{subject}*_T1w.nii*"))


@pytest.fixture(scope="module")
def demo_outputs(small_demo) -> Path:
    root, code = small_demo
    assert code == 0, f"the demo failed (exit {code}); its reports cannot be checked"
    return root / "outputs"


@pytest.fixture(scope="module")
def kinds(demo_outputs) -> dict[str, str]:
    """One participant label per kind: structural, connectivity, fmrs, and failed/excluded when the demo has one."""
    folder = OutputFolder.read(demo_outputs)
    chosen: dict[str, str] = {}
    for subject in folder.subjects():
        runs = _runs(demo_outputs, subject)
        if runs == {"structural"}:
            chosen.setdefault("structural", subject)
        if "connectivity" in runs:
            chosen.setdefault("connectivity", subject)
        if "spectroscopy" in runs:
            chosen.setdefault("fmrs", subject)
    for (subject, _), status in sorted(folder.participant_statuses().items()):
        if not status.get("ok"):
            chosen.setdefault("failed", subject)
    for table in sorted(demo_outputs.glob("sub-*/**/*.tsv")):
        if "failed" not in chosen and table_exclusions(table):
            chosen.setdefault("excluded", table.relative_to(demo_outputs).parts[0][4:])
    for kind in ("structural", "connectivity", "fmrs"):
        assert kind in chosen, f"the demo has no {kind} participant"
    return chosen


def _artifacts(tmp_path: Path) -> Path:
    folder = os.environ.get("BIDS_KETAMINE_TEST_ARTIFACTS")
    return Path(folder) if folder else tmp_path / "screenshots"


def _open(chromium: str, page: Path, tmp_path: Path):
    assert page.is_file(), f"{page.name} was not written"
    shot = _artifacts(tmp_path) / f"demo-{page.stem}.png"
    result = check_page(chromium, page, shot)
    assert result.problems == [], f"{page.name}: {result.problems}"
    assert result.external_requests == []  # self-contained: nothing fetched from the network (no CDN)
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result


def _over_three_digits(result) -> dict[str, list[str]]:
    """Numbers a reader sees with more than 3 significant digits, per section (methods text and code excepted)."""
    found = {}
    for section, text in result.visible_text.items():
        if section == "methods":  # prose with the parameters as configured (seeds, counts), not results
            continue
        bad = [t for t in NUMBER_IN_TEXT.findall(text) if significant_digits(t) > 3]
        if bad:
            found[section] = bad[:10]
    return found


def _one_sentence(text: str) -> bool:
    """One sentence: ends with a full stop and has no full stop followed by a new sentence inside."""
    return text.endswith(".") and re.search(r"\.\s+[A-Z]", text[:-1]) is None


def _missing(result, keys) -> list[str]:
    return [k for k in keys if k not in result.items]


def test_group_report_of_the_demo(chromium, demo_outputs, tmp_path):
    result = _open(chromium, demo_outputs / "group.html", tmp_path)
    assert list(result.sections) == GROUP_IDS
    assert result.n_images > 0
    assert _missing(result, GROUP_ITEMS) == []
    # findings first: one sentence per analysis that ran (every group analysis of the demo ran), with a verdict
    assert next(iter(result.sections)) == "findings" and result.sections["findings"] == "ok"
    ran = {a for a, s in OutputFolder.read(demo_outputs).group_statuses().items() if s.get("ok")}
    assert ran == {"structural", "connectivity", "spectroscopy"}
    assert sorted(f["analysis"] for f in result.findings if f["status"] == "ran") == sorted(ran)
    for finding in result.findings:
        assert _one_sentence(finding["headline"]), finding
        assert finding["verdict"] in ("replicates", "partly replicates", "does not replicate"), finding
    assert _over_three_digits(result) == {}
    # the gene item is the demo's real gene analysis (its synthetic gene table), not only the null calibration
    figures = {p.name for p in (demo_outputs / "group" / "figures").iterdir()}
    assert any(name.endswith("pc1genes_null.svg") for name in figures), sorted(figures)


@pytest.fixture(scope="module")
def failed_outputs(small_demo, tmp_path_factory) -> tuple[Path, str]:
    """The demo with one fMRS participant's spectrum truncated, run at participant level: ``(outputs, subject)``.

    The small demo itself has no failure, so the report's failure path is shown on this copy (files linked, only the
    broken spectrum is a real file).
    """
    import shutil

    from bids_ketamine.cli.run import main

    root, _ = small_demo
    work = tmp_path_factory.mktemp("failed_demo")
    bids = work / "bids"
    shutil.copytree(root / "bids", bids, symlinks=False, copy_function=os.symlink)
    subject = "m001"
    spectrum = sorted(bids.glob(f"sub-{subject}/ses-*/mrs/*_svs.nii.gz"))[0]
    data = spectrum.read_bytes()
    spectrum.unlink()
    spectrum.write_bytes(data[: len(data) // 3])
    code = main([str(bids), str(work / "outputs"), "participant", "--participant-label", subject,
                 "--analyses", "spectroscopy", "--skip-bids-validation", "--nprocs", "1", "-w", str(work / "work")])
    assert code == 65, f"a truncated spectrum must fail its participant with exit 65, got {code}"
    return work / "outputs", subject


@pytest.mark.parametrize("kind", ["structural", "connectivity", "fmrs", "failed-or-excluded"])
def test_participant_report_of_the_demo(chromium, demo_outputs, failed_outputs, kinds, kind, tmp_path):
    if kind == "failed-or-excluded":
        demo_outputs, subject = failed_outputs
    else:
        subject = kinds[kind]
    page = demo_outputs / f"sub-{subject}.html"
    result = _open(chromium, page, tmp_path)
    assert page.stat().st_size < MAX_PARTICIPANT_BYTES, f"{page.name}: {page.stat().st_size} bytes"
    assert list(result.sections) == PARTICIPANT_IDS
    runs = _runs(demo_outputs, subject)
    # the QC verdict comes first: one verdict per analysis, "not run" exactly for those the inventory skips
    assert next(iter(result.sections)) == "qc"
    verdicts = {v["analysis"]: v["verdict"] for v in result.qc_verdicts}
    assert set(verdicts) == {"structural", "connectivity", "spectroscopy"}
    if kind == "failed-or-excluded":  # a copy of the study where only spectroscopy ran, and failed
        assert verdicts["spectroscopy"] == "fail" and result.sections["qc"] == "failed"
    else:
        assert {a for a, v in verdicts.items() if v != "not run"} == runs, verdicts
        assert all(verdicts[a] == "pass" for a in runs), verdicts  # the demo's planted data are clean
    assert _over_three_digits(result) == {}
    expected = ["inventory"]
    if "structural" in runs:
        expected += STRUCTURAL_ITEMS
        assert "tiv" in result.items or "regional-gm" in result.items, f"sub-{subject}: no TIV or regional GM"
    if "connectivity" in runs and kind != "failed-or-excluded":
        expected += CONNECTIVITY_ITEMS
    if "spectroscopy" in runs and kind != "failed-or-excluded":
        expected += FMRS_ITEMS
        assert "mrsfit" in result.items or "qc" in result.items, f"sub-{subject}: no fit/QC table"
        if _has_fmrs_t1w(demo_outputs.parent / "bids", subject):
            expected.append("voxel")
        assert result.sections["spectroscopy"] == "ok"
    for analysis, section in (("structural", "anatomy"), ("connectivity", "connectivity"),
                              ("spectroscopy", "spectroscopy")):
        if analysis not in runs:
            assert result.sections[section] == "not-run", f"sub-{subject} {section}"
    assert _missing(result, expected) == [], f"sub-{subject} ({kind})"
    folder = OutputFolder.read(demo_outputs)
    failed = {a for (s, a), st in folder.participant_statuses().items() if s == subject and not st.get("ok")}
    for analysis, section in (("structural", "anatomy"), ("connectivity", "connectivity"),
                              ("spectroscopy", "spectroscopy")):
        if analysis in failed:
            assert result.sections[section] == "failed", f"sub-{subject} {section}"
        elif analysis in runs and kind != "failed-or-excluded":
            assert result.sections[section] == "ok", f"sub-{subject} {section}: {result.sections[section]}"
    errors = _section_html(page, "errors")
    if failed:
        assert result.sections["errors"] == "failed" and "Failures" in errors, f"sub-{subject}"
    if kind == "failed-or-excluded":
        assert failed == {"spectroscopy"} and "exit code 65" in errors
        assert "_svs.nii.gz" in errors, f"sub-{subject}: the failure names no file"


def _section_html(page: Path, section_id: str) -> str:
    match = re.search(rf'<section class="report-section" id="{section_id}"[^>]*>(.*?)</section>', page.read_text(),
                      flags=re.S)
    assert match, f"{page.name}: section {section_id} missing"
    return match.group(1)
