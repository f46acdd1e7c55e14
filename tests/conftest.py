"""Shared fixtures: where the real data lives, and a skip with a clear reason where it does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIDS_KETAMINE_SHARED", REPO_ROOT.parent / "shared")) / "data"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; real-data tests skip only where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent (installed from the wheel?)")
    return SHARED_DATA
