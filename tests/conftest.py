"""Shared fixtures: where the real data lives, and a skip with a clear reason where it does not."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
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


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> tuple[Path, int]:
    """The demo (small size, seed 5) run once per session through the CLI: ``(root, exit code)``.

    ``root/bids`` is the synthetic study and ``root/outputs`` both levels' outputs. Shared by the foundation, report
    and scale-out tests: a test that changes files there must leave them as it found them (or work on a copy).
    """
    from bids_ketamine.cli.run import main

    root = tmp_path_factory.mktemp("demo")
    code = main(["demo", str(root), "--size", "small", "--random-seed", "5"])
    return root, code


@contextmanager
def _bids_ketamine_log() -> Iterator[list[str]]:
    """Messages of the ``bids_ketamine`` logger at INFO (whatever handlers and levels an earlier CLI run set)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("bids_ketamine")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def bids_ketamine_log():
    """``with bids_ketamine_log() as records:`` collects the ``bids_ketamine`` logger's INFO messages."""
    return _bids_ketamine_log
