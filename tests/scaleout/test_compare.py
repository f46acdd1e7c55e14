"""The output comparison finds every kind of difference and ignores only the documented run bookkeeping."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .compare import output_differences



def _folder(root: Path) -> Path:
    """A small output folder with every kind of file the comparison covers or leaves out."""
    (root / "sub-01" / "anat").mkdir(parents=True)
    (root / "sub-01" / "anat" / "sub-01_desc-gm_morph.tsv").write_text("region\tvolume\nA\t1.5\nB\t2.25\n")
    (root / "sub-01" / "anat" / "sub-01_desc-gm_morph.json").write_text('{"volume": {"Units": "mm^3"}}\n')
    (root / "group").mkdir()
    (root / "group" / "group_metrics.tsv").write_text("metric\tvalue\nauc\t0.75\n")
    (root / "dataset_description.json").write_text('{"Name": "bids_ketamine outputs"}\n')
    (root / "methods.md").write_text("# Methods\n")
    (root / "logs").mkdir()
    (root / "logs" / "run-20260101-000000_participant_pid1.json").write_text("{}\n")
    (root / ".bids_ketamine" / "done").mkdir(parents=True)
    (root / ".bids_ketamine" / "done" / "sub-01_structural.json").write_text("{}\n")
    (root / "group.html").write_text("<p>built 2026-01-01 00:00 UTC</p>\n")
    return root


@pytest.fixture
def pair(tmp_path) -> tuple[Path, Path]:
    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    return a, b


def test_identical_folders_have_no_differences(pair):
    assert output_differences(*pair) == []


def test_run_bookkeeping_and_report_dates_are_ignored(pair):
    a, b = pair
    (b / "logs" / "run-20260101-000000_participant_pid1.json").write_text('{"pid": 2}\n')
    (b / "logs" / "run-20260102-000000_group_pid7.json").write_text("{}\n")
    (b / ".bids_ketamine" / "locks").mkdir()
    (b / ".bids_ketamine" / "locks" / "dataset.lock").write_text("")
    (b / "group.html").write_text("<p>built 2026-01-02 09:15 UTC</p>\n")
    assert output_differences(a, b) == []


def test_a_changed_byte_is_found(pair):
    a, b = pair
    table = b / "sub-01" / "anat" / "sub-01_desc-gm_morph.tsv"
    data = bytearray(table.read_bytes())
    data[-2] = ord("6")  # 2.25 -> 2.26
    table.write_bytes(bytes(data))
    assert output_differences(a, b) == [
        f"differs: sub-01/anat/sub-01_desc-gm_morph.tsv (first at byte {len(data) - 2})"]


def test_a_missing_and_an_extra_file_are_found(pair):
    a, b = pair
    (b / "group" / "group_metrics.tsv").unlink()
    (b / "sub-01" / "anat" / "sub-01_desc-extra_morph.tsv").write_text("x\n")
    assert output_differences(a, b) == [
        f"only in {a}: group/group_metrics.tsv",
        f"only in {b}: sub-01/anat/sub-01_desc-extra_morph.tsv",
    ]


def test_methods_and_sidecars_are_compared(pair):
    a, b = pair
    (b / "methods.md").write_text("# Methods (other)\n")
    (b / "dataset_description.json").write_text('{"Name": "other"}\n')
    assert [line.split(" (")[0] for line in output_differences(a, b)] == [
        "differs: dataset_description.json", "differs: methods.md"]


def _svg(path: Path, salt: str) -> None:
    """A figure saved as the writer saves it; ``salt`` stands in for matplotlib's per-process random id salt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1, 2], [1, 3, 2], marker="o")
    ax.imshow([[0, 1], [2, 3]], extent=(0, 2, 0, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"svg.hashsalt": salt}):
        fig.savefig(path, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def test_svg_figures_differ_only_in_matplotlib_ids_and_a_real_change_is_still_found(tmp_path):
    """Two salts (as two processes get) give different raw bytes but no difference; an edit still shows."""
    rel = Path("sub-01") / "figures" / "sub-01_demo.svg"
    _svg(tmp_path / "a" / rel, "first process")
    _svg(tmp_path / "b" / rel, "second process")
    raw_a, raw_b = (tmp_path / "a" / rel).read_bytes(), (tmp_path / "b" / rel).read_bytes()
    assert raw_a != raw_b  # the ids differ, so the normalisation is exercised
    assert output_differences(tmp_path / "a", tmp_path / "b") == []
    edited = raw_b.replace(b'<rect x="', b'<rect x="1', 1)  # move the first rectangle
    assert edited != raw_b
    (tmp_path / "b" / rel).write_bytes(edited)
    assert [line.split(" (")[0] for line in output_differences(tmp_path / "a", tmp_path / "b")] == [
        f"differs: {rel.as_posix()}"]
