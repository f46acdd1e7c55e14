"""Finished participant outputs copied into another output folder, as the participant level leaves them.

Shared by the tests that start a later step (a Slurm array of the remaining participants, a consortium's
reference folder, a group level over a subset) from participants another run has finished: the participant's
``sub-<label>`` folder and its done markers (``.bids_ketamine/done/sub-<label>_<analysis>.json``, which the group
level reads to know who finished). Nothing dataset-level is copied: the runs in the target write that themselves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def copy_finished_participants(source: Path, subjects: list[str], target: Path) -> None:
    """Copy ``subjects``' participant outputs (folders and done markers) from ``source`` into ``target``."""
    source, target = Path(source), Path(target)
    (target / ".bids_ketamine" / "done").mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        shutil.copytree(source / f"sub-{subject}", target / f"sub-{subject}", symlinks=True)
        for marker in (source / ".bids_ketamine" / "done").glob(f"sub-{subject}_*.json"):
            assert all(not Path(rel).is_absolute() for rel in json.loads(marker.read_text())["outputs"]), marker
            shutil.copy2(marker, target / ".bids_ketamine" / "done" / marker.name)
