"""Every difference between two bids_ketamine output folders that a re-run (serial, array job, container) must not make.

Why a dedicated comparison: "outputs identical to a serial run" has to mean the bytes of every result file (tables,
their sidecars, images, figures, dataset-level files), with only what legitimately changes from run to run left out.
Each exclusion below was checked on two runs of the demo study and carries its reason:

- ``logs/``: run records (``run-<date>-<time>_<level>_pid<N>.json``) name the moment, the process id and the
  platform of each run, and an array job writes one per task instead of one per level; crash notes live there too.
- ``.bids_ketamine/``: bookkeeping, not results (file locks, done markers naming the staged files, staging and
  work folders, a saved pybids index).
- ``*.html`` at the top level (``sub-<label>.html``, ``group.html``): the subtitle says when the report was built
  (``built YYYY-MM-DD HH:MM UTC``) and the group report lists the run records of ``logs/``; a view on the results,
  rebuilt with ``--reports-only``.

``methods.md`` is compared: it is written from the recorded parameters and versions and carries no date.
SVG figures are compared after one normalisation: matplotlib names clip paths and other ``id`` attributes from a
hash salted with a fresh ``uuid4`` per process (``rcParams["svg.hashsalt"]`` unset), so two runs of the same figure
differ only in those names; they are replaced by their order of first appearance, every other byte must agree.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

#: Top-level folders that hold run bookkeeping, not results (see the module docstring for why).
EXCLUDED_DIRS = ("logs", ".bids_ketamine")
#: Top-level files (glob patterns) that embed the build time: the HTML reports.
EXCLUDED_TOP_LEVEL = ("*.html",)

#: matplotlib's salted SVG ids: a short lowercase prefix ("p" clip path, "m" marker, "image", "h" hatch) + 10 hex.
_SVG_ID_DEF = re.compile(rb'id="([a-z]{1,5}[0-9a-f]{10})"')


def _excluded(rel: Path) -> bool:
    if rel.parts[0] in EXCLUDED_DIRS:
        return True
    return len(rel.parts) == 1 and any(rel.match(pattern) for pattern in EXCLUDED_TOP_LEVEL)


def result_files(root: Path) -> set[Path]:
    """Paths (relative to ``root``) of every file a comparison covers."""
    root = Path(root)
    return {p.relative_to(root) for p in root.rglob("*")
            if (p.is_file() or p.is_symlink()) and not _excluded(p.relative_to(root))}


def normalise_svg(data: bytes) -> bytes:
    """Replace matplotlib's per-process random element ids by their order of first definition."""
    names: dict[bytes, bytes] = {}
    for match in _SVG_ID_DEF.finditer(data):
        names.setdefault(match.group(1), b"id%d" % len(names))
    if not names:
        return data
    pattern = re.compile(b"|".join(re.escape(name) for name in sorted(names, key=len, reverse=True)))
    return pattern.sub(lambda m: names[m.group(0)], data)


def _comparable(path: Path) -> bytes:
    data = path.read_bytes()
    return normalise_svg(data) if path.suffix == ".svg" else data


def _first_difference(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"first at byte {i}"
    return f"sizes {len(a)} vs {len(b)}"


def output_differences(a: Path, b: Path) -> list[str]:
    """Every result file missing from one folder or whose bytes differ, one line each (empty: the same results)."""
    a, b = Path(a), Path(b)
    for root in (a, b):
        if not root.is_dir():
            return [f"{root}: not a folder"]
    files_a, files_b = result_files(a), result_files(b)
    problems = [f"only in {a}: {rel.as_posix()}" for rel in sorted(files_a - files_b)]
    problems += [f"only in {b}: {rel.as_posix()}" for rel in sorted(files_b - files_a)]
    for rel in sorted(files_a & files_b):
        data_a, data_b = _comparable(a / rel), _comparable(b / rel)
        if data_a != data_b:
            problems.append(f"differs: {rel.as_posix()} ({_first_difference(data_a, data_b)})")
    return problems


def demo_config(root: Path) -> Path:
    """The config file the demo ran with (its gene table): a re-run must pass it to reproduce the demo's outputs."""
    path = Path(root) / "demo_config.toml"
    assert path.is_file(), f"the demo wrote no {path.name} in {root}"
    return path


def runs_by_analysis(outputs: Path) -> dict[str, list[str]]:
    """Participants of a finished run per analysis that ran for them (from their inventory tables)."""
    runs: dict[str, list[str]] = {}
    for path in sorted(Path(outputs).glob("sub-*/sub-*_inventory.tsv")):
        subject = path.parent.name[len("sub-"):]
        table = pd.read_csv(path, sep="\t")
        for analysis in table.loc[table["runs"].astype(str) == "True", "analysis"]:
            runs.setdefault(analysis, []).append(subject)
    return runs


def participants_of_each_kind(outputs: Path, counts: dict[str, int]) -> list[str]:
    """``counts[analysis]`` participants of a finished run per analysis that ran for them, in the order of
    ``counts``, none twice (so later kinds fill up with participants the earlier ones did not take)."""
    runs, chosen = runs_by_analysis(outputs), []
    for analysis, count in counts.items():
        chosen += [s for s in runs.get(analysis, []) if s not in chosen][:count]
    return chosen
