"""The reports open in headless Chromium with no missing image, no console error and every section present.

The checker is proven first on a deliberately broken page (a console error, an uncaught exception, an undecodable
image, a missing file and a remote URL): each must be caught, or a clean result on the reports would mean nothing.
A full-page screenshot of each report is taken (kept under $BIDS_KETAMINE_TEST_ARTIFACTS when that is set).
"""

from __future__ import annotations

import os
from pathlib import Path

from bids_ketamine.reports import build_reports

from .browser import check_page
from .test_reports import GROUP_IDS, PARTICIPANT_IDS

BROKEN_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>
<section id="only" data-status="ok"><div data-item="good"><img alt="good" src="data:image/png;base64,
iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="></div></section>
<img alt="undecodable" src="data:image/png;base64,AAAA">
<img alt="missing" src="figures/missing.svg">
<img alt="remote" src="https://cdn.example.org/plot.png">
<script>console.error("deliberate console error"); throw new Error("deliberate exception");</script>
</body></html>"""


def _artifacts(tmp_path: Path) -> Path:
    folder = os.environ.get("BIDS_KETAMINE_TEST_ARTIFACTS")
    return Path(folder) if folder else tmp_path / "screenshots"


def test_checker_catches_every_kind_of_breakage(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(BROKEN_PAGE)
    result = check_page(chromium, page, tmp_path / "broken.png")
    assert result.console_errors == ["deliberate console error"]
    assert len(result.exceptions) == 1 and "deliberate exception" in result.exceptions[0]
    assert sorted(b.split(" <")[0] for b in result.broken_images) == ["missing", "remote", "undecodable"]
    assert result.external_requests == ["https://cdn.example.org/plot.png"]
    assert any("ERR_FILE_NOT_FOUND" in e for e in result.log_errors)
    assert result.n_images == 4 and result.sections == {"only": "ok"} and result.items == ["good"]
    assert (tmp_path / "broken.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_reports_open_cleanly_with_every_section(chromium, fresh_output_folder, tmp_path):
    paths = build_reports(fresh_output_folder)
    shots = _artifacts(tmp_path)
    results = {}
    for path in paths:
        shot = shots / f"{path.stem}.png"
        result = results[path.name] = check_page(chromium, path, shot)
        assert result.problems == [], f"{path.name}: {result.problems}"
        expected = GROUP_IDS if path.name == "group.html" else PARTICIPANT_IDS
        assert list(result.sections) == expected, path.name
        assert result.n_images > 0
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    group = results["group.html"]
    assert next(iter(group.sections)) == "findings"
    assert len(group.findings) == 3  # one entry per analysis, each saying what became of it
    sub01 = results["sub-01.html"]
    assert next(iter(sub01.sections)) == "qc" and len(sub01.qc_verdicts) == 3
    assert {v["analysis"]: v["verdict"] for v in results["sub-03.html"].qc_verdicts}["spectroscopy"] == "fail"
    for key in ("roc", "confusion", "permutation", "weights", "scree", "pc-maps", "scores",
                "participation", "gene", "group-timecourse", "madrs", "mixed-model"):
        assert key in group.items, key
    sub01 = results["sub-01.html"]
    for key in ("inventory", "gm-over-t1w", "fd", "carpet", "gbc-map", "delta-gbc", "voxel", "fit", "timecourse",
                "mrsfit"):
        assert key in sub01.items, key
    assert sub01.sections["spectroscopy"] == "ok"
    assert results["sub-03.html"].sections["spectroscopy"] == "failed"
    assert results["sub-02.html"].sections["spectroscopy"] == "not-run"

