"""Shared fixtures: where the real data lives, and a skip with a clear reason where it does not."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIDS_KETAMINE_SHARED", REPO_ROOT.parent / "shared")) / "data"

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


#: Session fixtures that cost minutes, by the name of the worker's unit that shares them (``pytest -n``): every file
#: that uses one runs on the worker that built it, not on a second worker that would build it again.
SHARED_SETUPS = {"small_demo": "demo study", "t1w_consortium": "t1w consortium", "output_folder": "report folder"}
#: Folders whose files share a session set-up through an autouse fixture (the simulated-basis cache).
SHARED_FOLDERS = {"spectroscopy": "spectroscopy"}
#: Units that take longest, started first so that none is left alone at the end. Measured in a full run on 2 cores
#: (two workers, 23.5 min): demo study 1045 s, t1w consortium 585 s, the container test 556 s (podman installed and
#: the image built from scratch), spectroscopy 258 s; no other unit over 75 s.
LONGEST_FIRST = ("demo study", "t1w consortium", "tests/container/test_image.py", "spectroscopy")


@functools.lru_cache(maxsize=None)
def worker_unit(test_file: str) -> str:
    """The unit of tests one worker runs together: the file itself (its module fixtures are built once and its tests
    run in order; test_reliability checks at its end the exit codes its earlier tests observed), or the shared
    set-up a file uses (read from its source: the controller process schedules by test id and collects nothing)."""
    path = REPO_ROOT / test_file
    source = path.read_text() if path.is_file() else ""
    for fixture, unit in SHARED_SETUPS.items():
        if re.search(rf"\b{fixture}\b", source):
            return unit
    parts = Path(test_file).parts
    return SHARED_FOLDERS.get(parts[1] if len(parts) > 2 else "", test_file)


if importlib.util.find_spec("xdist") is not None:
    from xdist.scheduler import LoadScopeScheduling

    class SharedSetupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling with ``worker_unit`` as the scope and the longest units handed out first.

        Own scheduler rather than ``--dist loadgroup`` marks: with pytest 9.2 xdist 3.8's loadgroup no longer tags
        the test ids (it sets ``Item._nodeid``, which ``Item.nodeid`` stopped reading), so marked tests spread
        over the workers anyway."""

        def _split_scope(self, nodeid: str) -> str:
            return worker_unit(nodeid.split("::", 1)[0])

        def _assign_work_unit(self, node) -> None:
            rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
            for unit in sorted(self.workqueue, key=lambda u: rank.get(u, len(rank))):
                self.workqueue.move_to_end(unit)
            super()._assign_work_unit(node)

    def pytest_xdist_make_scheduler(config, log):
        return SharedSetupScheduling(config, log)


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
