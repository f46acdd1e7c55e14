"""Container tests: the `container` marker (registered here so it works before pyproject.toml lists it)."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "container: builds the image with podman and runs the demo study through it (needs root and apt; "
        "deselect with -m 'not container')",
    )
