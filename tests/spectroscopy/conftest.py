"""Spectroscopy tests share one simulated-basis cache folder per session (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _basis_cache(tmp_path_factory):
    old = os.environ.get("BIDS_KETAMINE_CACHE")
    os.environ["BIDS_KETAMINE_CACHE"] = str(tmp_path_factory.mktemp("bids_ketamine_cache"))
    yield
    if old is None:
        os.environ.pop("BIDS_KETAMINE_CACHE", None)
    else:
        os.environ["BIDS_KETAMINE_CACHE"] = old
