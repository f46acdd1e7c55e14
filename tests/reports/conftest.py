"""Fixtures of the report tests: one complete output folder (built once per session) and the browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .fixtures import make_output_folder


@pytest.fixture(scope="session")
def output_folder(tmp_path_factory) -> Path:
    """A finished run: 3 participants x 3 analyses (one failure, one missing input, one exclusion), group level."""
    return make_output_folder(tmp_path_factory.mktemp("run"))


@pytest.fixture()
def fresh_output_folder(output_folder, tmp_path) -> Path:
    """A private copy of the finished run, for tests that change files."""
    copy = tmp_path / "outputs"
    shutil.copytree(output_folder, copy)
    return copy


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (installed here when missing and running as root); skip with the reason otherwise."""
    from .browser import ensure_chromium

    path, why = ensure_chromium()
    if path is None:
        pytest.skip(f"headless browser test skipped: {why}")
    return path
