"""Progress of long runs: a bar on a terminal, a few log lines elsewhere, never a flood in cluster logs.

Why: a permutation test or a cohort of spectral fits can take minutes; a user at a terminal wants a live bar, while a
SLURM log must not receive one carriage-return line per iteration. The mode is chosen once per bar:

* ``bar``: a tqdm bar on stderr (chosen when stderr is a terminal);
* ``log``: INFO lines on the ``bids_ketamine`` logger at the start, at most every ``log_every_s`` seconds
  (default 30 s) and at the end (chosen when stderr is not a terminal: files, pipes, batch jobs);
* ``off``: nothing at all.
The environment variable ``BIDS_KETAMINE_PROGRESS`` (``bar``/``log``/``off``) overrides the choice, e.g. for tests.

API (import as ``from bids_ketamine.progress import progress, step``)::

    for perm in progress(range(n_permutations), desc="permutations", unit="perm"):
        ...                                       # wraps an iterable (total taken from len() when it has one)

    with progress(total=n_blocks, desc=f"sub-{sub} fMRS fits", unit="fit") as bar:
        for result in pool_results:              # manual updates, e.g. as joblib results arrive
            bar.update(1)
            bar.set_postfix(block=result.block)  # optional short status shown in the bar or the next log line

    step("fitting spectra", subject="01", analysis="spectroscopy")  # one log line: what the run does now

Progress output never changes results: it only reads counters, so it is safe inside seeded computations.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LOG = logging.getLogger("bids_ketamine")
MODES = ("bar", "log", "off")
#: Seconds between two log lines of one bar when not on a terminal.
DEFAULT_LOG_EVERY_S = 30.0


def progress_mode(stream: TextIO | None = None) -> str:
    """``bar`` on a terminal, ``log`` otherwise; ``BIDS_KETAMINE_PROGRESS`` overrides (bar/log/off)."""
    forced = os.environ.get("BIDS_KETAMINE_PROGRESS", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"BIDS_KETAMINE_PROGRESS={forced!r}: use one of {', '.join(MODES)}")
        return forced
    stream = stream if stream is not None else sys.stderr
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # closed or odd streams (e.g. captured by a test runner)
        return "log"


def step(description: str, *, subject: str | None = None, analysis: str | None = None) -> None:
    """Log what the run is doing now, e.g. ``sub-01 | spectroscopy | fitting spectra``."""
    parts = [f"sub-{subject}" if subject else None, analysis, description]
    LOG.info(" | ".join(p for p in parts if p))


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """A progress counter shown as a bar or as sparse log lines; iterate it or call ``update``."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", mode: str | None = None, log_every_s: float = DEFAULT_LOG_EVERY_S,
                 stream: TextIO | None = None, clock=time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.mode = mode or progress_mode(stream)
        if self.mode not in MODES:
            raise ValueError(f"progress mode {self.mode!r}: use one of {', '.join(MODES)}")
        self.log_every_s = float(log_every_s)
        self.n = 0
        self.postfix = ""
        self._clock = clock
        self._start = clock()
        self._last_log = self._start
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc or None, unit=unit, file=stream or sys.stderr,
                             dynamic_ncols=True, leave=False)
        elif self.mode == "log":
            size = f"{total} {unit}" if total is not None else f"? {unit}"
            LOG.info("%s: started (%s)", desc or "progress", size)

    # -------------------------------------------------------------- counting
    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = self._clock()
            if now - self._last_log >= self.log_every_s and not self._finished():
                self._last_log = now
                LOG.info("%s", self._line(now))

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self.postfix, refresh=False)

    def _finished(self) -> bool:
        return self.total is not None and self.n >= self.total

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = elapsed * (self.total - self.n) / self.n if self.n else float("nan")
            eta_text = _format_seconds(eta) if self.n else "?"
            text = (f"{self.desc or 'progress'}: {self.n}/{self.total} {self.unit} ({pct:.0f} %), "
                    f"elapsed {_format_seconds(elapsed)}, remaining ~{eta_text}")
        else:
            text = f"{self.desc or 'progress'}: {self.n} {self.unit}, elapsed {_format_seconds(elapsed)}"
        return f"{text} [{self.postfix}]" if self.postfix else text

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self.mode in ("log", "bar"):
            elapsed = self._clock() - self._start
            rate = self.n / elapsed if elapsed > 0 else float("inf")
            LOG.info("%s: done, %d %s in %s (%.3g %s/s)", self.desc or "progress", self.n, self.unit,
                     _format_seconds(elapsed), rate, self.unit)

    # -------------------------------------------------------------- protocols
    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress counter wraps no iterable: use it as a context manager and call update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             mode: str | None = None, log_every_s: float = DEFAULT_LOG_EVERY_S,
             stream: TextIO | None = None) -> Progress:
    """A progress counter: iterate it (wrapping ``iterable``) or use it as a context manager with ``update``."""
    return Progress(iterable, total=total, desc=desc, unit=unit, mode=mode, log_every_s=log_every_s, stream=stream)
