"""One place that sets up the ``bids_ketamine`` logger: the CLI's process and every nipype worker process.

Why: MultiProc and cluster plugins run nodes in fresh processes whose logger has no handler, so progress lines
(participant, step, permutation counters) written there would vanish; the worker calls ``ensure_logging``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(verbose: int, log_file: Path | None = None) -> None:
    """Console handler on stderr at the -v/-q level, plus a DEBUG log file when given."""
    level = logging.WARNING if verbose < 0 else (logging.INFO if verbose <= 1 else logging.DEBUG)
    root = logging.getLogger("bids_ketamine")
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(asctime)s [bids-ketamine] %(message)s", "%H:%M:%S"))
    root.addHandler(console)
    root.propagate = False
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    for noisy in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.INFO)


def ensure_logging(verbose: int) -> None:
    """Set up the logger in a worker process that has none (keeps the handlers a parent process installed)."""
    if not logging.getLogger("bids_ketamine").handlers:
        setup_logging(verbose)
