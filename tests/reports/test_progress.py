"""Progress: a bar on a terminal, sparse log lines elsewhere, nothing when off; counts are exact."""

from __future__ import annotations

import io
import logging

import pytest

from bids_ketamine.progress import Progress, progress, progress_mode, step


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture()
def log_lines(caplog):
    caplog.set_level(logging.INFO, logger="bids_ketamine")
    return caplog


def test_mode_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv("BIDS_KETAMINE_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "log"
    assert progress_mode(TTY()) == "bar"
    monkeypatch.setenv("BIDS_KETAMINE_PROGRESS", "off")
    assert progress_mode(TTY()) == "off"
    monkeypatch.setenv("BIDS_KETAMINE_PROGRESS", "loud")
    with pytest.raises(ValueError, match="use one of bar, log, off"):
        progress_mode(io.StringIO())


def test_log_mode_is_sparse_and_exact(log_lines):
    clock = FakeClock()
    bar = Progress(total=1000, desc="permutations", unit="perm", mode="log", log_every_s=30.0, clock=clock)
    for _ in range(1000):  # 1000 iterations over 100 simulated seconds
        clock.now += 0.1
        bar.update()
    bar.close()
    bar.close()  # closing twice logs once
    lines = [r.getMessage() for r in log_lines.records]
    assert lines[0] == "permutations: started (1000 perm)"
    assert lines[-1].startswith("permutations: done, 1000 perm in 01:40")
    middle = lines[1:-1]
    assert len(middle) == 3  # at 30, 60 and 90 s: not one line per iteration
    assert middle[0].startswith("permutations: 300/1000 perm (30 %), elapsed 00:30, remaining ~01:10")
    assert bar.n == 1000


def test_iterating_yields_everything_and_postfix_is_shown(log_lines):
    clock = FakeClock()
    items = list(range(5))
    bar = Progress(items, desc="fits", unit="fit", mode="log", log_every_s=1.0, clock=clock)
    seen = []
    for item in bar:
        clock.now += 2.0
        bar.set_postfix(block=item)
        seen.append(item)
    assert seen == items and bar.n == 5 and bar.total == 5
    assert any("[block=" in r.getMessage() for r in log_lines.records)


def test_bar_mode_draws_on_the_terminal_stream():
    stream = TTY()
    with progress(total=20, desc="surrogates", unit="map", mode="bar", stream=stream) as bar:
        for _ in range(20):
            bar.update()
    text = stream.getvalue()
    assert text.startswith("\rsurrogates:") and "/20 [" in text and "map/s" in text and bar.n == 20
    assert text.endswith("\r")  # the finished bar is cleared (leave=False): no pile of dead bars per participant


def test_off_mode_says_nothing(log_lines):
    stream = io.StringIO()
    for _ in progress(range(50), desc="quiet", mode="off", stream=stream):
        pass
    assert stream.getvalue() == "" and not log_lines.records


def test_step_names_participant_analysis_and_step(log_lines):
    step("fitting spectra", subject="01", analysis="spectroscopy")
    step("group PCA")
    assert [r.getMessage() for r in log_lines.records] == ["sub-01 | spectroscopy | fitting spectra", "group PCA"]


def test_wrapping_nothing_cannot_be_iterated():
    with pytest.raises(TypeError, match="wraps no iterable"):
        iter(progress(total=3, mode="off")).__next__()


def test_progress_of_a_participant_reaches_the_log_from_a_multiproc_worker(small_demo, tmp_path):
    """With --nprocs 2 the analysis runs in a nipype worker process; its step and progress lines still appear.

    The block-wise fits without figures are enough to show that (the dynamic fit and the figures are other tests'):
    the worker's lines are what is checked, not the fit or the dataset (the demo fixture validated it already), so
    the run is kept to the cheapest one that logs them."""
    import os
    import subprocess
    import sys

    root, code = small_demo
    assert code == 0
    env = {**os.environ, "BIDS_KETAMINE_PROGRESS": "log"}
    from pathlib import Path

    config = tmp_path / "config.toml"
    config.write_text('[spectroscopy]\ntime_fit = "blockwise"\nfigures = false\n')
    script = Path(sys.executable).parent / "bids-ketamine"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bids_ketamine.cli.run"]
    proc = subprocess.run([*command, str(root / "bids"), str(tmp_path / "out"),
                           "participant", "--participant-label", "m001", "--analyses", "spectroscopy",
                           "--nprocs", "2", "--config-file", str(config), "--skip-bids-validation",
                           "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sub-m001 | spectroscopy | fitting" in proc.stderr
    assert "sub-m001 fMRS fits: done" in proc.stderr
