"""Acceptance of failure behaviour on copies of the small synthetic study, through the command line as a user runs
it: bad tables, image defects, operating-system and resource failures, and runs killed with ``kill -9``.

For each class: the documented exit code, one line naming the file (or folder) and the fix, no traceback, no
partial outputs of the failed participant, the other participants finish, and a re-run after the repair is complete
and byte-identical to the clean run (the ``small_demo`` fixture's outputs, same seed and config). The codes observed
here are checked against the README's exit-code table at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bids_ketamine import errors

REPO = Path(__file__).resolve().parents[2]
#: exit code -> cases that observed it (filled by the tests of this module, read by the README test at the end)
OBSERVED: dict[int, set[str]] = {}


@pytest.fixture(scope="module")
def study(request) -> Path:
    root, code = request.getfixturevalue("small_demo")
    assert code == 0
    return root


@dataclass
class Run:
    code: int
    stderr: str
    lines: list[str]  #: the app's own lines (``bids-ketamine: ...``), not the log


def _command(study: Path, bids: Path, out: Path, level: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bids_ketamine.cli.run", str(bids), str(out), level, "--skip-bids-validation",
            "--random-seed", "5", "--config-file", str(study / "demo_config.toml"), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}


def cli(study: Path, bids: Path, out: Path, *extra: str, level: str = "participant", case: str = "",
        nprocs: str = "1") -> Run:
    proc = subprocess.run(_command(study, bids, out, level, "--nprocs", nprocs, *extra), capture_output=True,
                          text=True, env=_env(), timeout=900, cwd=study)
    run = _result(proc.returncode, proc.stderr)
    # nothing is written to the user's current folder (nipype's crash files went there by default)
    assert not list(study.glob("crash-*")), sorted(p.name for p in study.glob("crash-*"))
    OBSERVED.setdefault(run.code, set()).add(case or " ".join(extra))
    return run


def _result(code: int, stderr: str) -> Run:
    assert "Traceback" not in stderr, stderr[-3000:]
    return Run(code, stderr, [line for line in stderr.splitlines() if line.startswith("bids-ketamine:")])


def copy_study(study: Path, tmp_path: Path) -> Path:
    bids = tmp_path / "bids"
    shutil.copytree(study / "bids", bids)
    return bids


def clean_outputs(study: Path, subject: str, analysis: str) -> list[str]:
    """What the clean run wrote for one participant's analysis (its completion record)."""
    marker = study / "outputs" / ".bids_ketamine" / "done" / f"sub-{subject}_{analysis}.json"
    return json.loads(marker.read_text())["outputs"]


def assert_identical(study: Path, out: Path, jobs: list[tuple[str, str]]) -> None:
    for subject, analysis in jobs:
        assert (out / ".bids_ketamine" / "done" / f"sub-{subject}_{analysis}.json").exists(), (subject, analysis)
        for rel in clean_outputs(study, subject, analysis):
            assert (out / rel).read_bytes() == (study / "outputs" / rel).read_bytes(), rel


def assert_nothing_of(study: Path, out: Path, jobs: list[tuple[str, str]]) -> None:
    for subject, analysis in jobs:
        assert not (out / ".bids_ketamine" / "done" / f"sub-{subject}_{analysis}.json").exists()
        left = [rel for rel in clean_outputs(study, subject, analysis) if (out / rel).exists()]
        assert not left, f"partial outputs of sub-{subject} {analysis}: {left[:3]}"


def assert_no_leftovers(out: Path) -> None:
    staging = out / ".bids_ketamine" / "staging"
    assert not (staging.exists() and any(staging.iterdir())), list(staging.iterdir())
    assert not [p for p in out.rglob(".*.tmp*")], "temporary files left behind"


def assert_line(run: Run, who: str, path: Path | str, *words: str) -> str:
    found = [line for line in run.lines if who in line]
    assert len(found) == 1, (who, run.lines)
    line = found[0]
    assert str(path) in line and "Fix:" in line, line
    assert all(w in line for w in words), line
    return line


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _restore(study: Path, bids: Path, *relative: str) -> None:
    for rel in relative:
        shutil.copy2(study / "bids" / rel, bids / rel)


ALL = ("--analyses", "structural,connectivity,spectroscopy")
D1_GM = "derivatives/fmriprep/sub-d001/anat/sub-d001_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"


# ------------------------------------------------------------------------------------------------ 1. tables
def test_table_defects_refuse_their_participant_and_a_repaired_rerun_is_identical(study, tmp_path):
    bids, out = copy_study(study, tmp_path), tmp_path / "out"
    participants = bids / "participants.tsv"
    row = next(line for line in participants.read_text().splitlines() if line.startswith("sub-d001\t"))
    cells = row.split("\t")
    header = participants.read_text().splitlines()[0].split("\t")
    cells[header.index("madrs_baseline")] = "-38"
    _edit(participants, row, "\t".join(cells))
    sessions_h = bids / "sub-h001" / "sub-h001_sessions.tsv"
    _edit(sessions_h, "ses-ketamine\tketamine", "ses-ketamine\tn/a")
    sessions_m = bids / "sub-m001" / "sub-m001_sessions.tsv"
    _edit(sessions_m, "\tnaltrexone\t", "\tnaltrexon\t")
    labels = ("--participant-label", "d001", "d002", "h001", "m001")
    run = cli(study, bids, out, *labels, *ALL, case="tables: out-of-domain values, missing condition")
    assert run.code == errors.EXIT_BAD_DATA, run.lines
    assert len(run.lines) == 3, run.lines
    assert_line(run, "sub-d001 structural", participants, "line 2 (sub-d001): madrs_baseline is '-38'", "0-60")
    assert_line(run, "sub-h001 connectivity", sessions_h, "ses-ketamine has no condition")
    assert_line(run, "sub-m001 spectroscopy", sessions_m, "pretreatment is 'naltrexon'",
                "design.session_values.pretreatments")
    assert_nothing_of(study, out, [("d001", "structural"), ("h001", "connectivity"), ("m001", "spectroscopy")])
    assert_identical(study, out, [("d002", "structural"), ("m001", "structural")])  # unaffected: they finished
    inventory = (out / "sub-h001" / "sub-h001_inventory.tsv").read_text()
    assert "refused:" in inventory and "has no condition" in inventory
    _restore(study, bids, "participants.tsv", "sub-h001/sub-h001_sessions.tsv", "sub-m001/sub-m001_sessions.tsv")
    again = cli(study, bids, out, *labels, *ALL, case="tables repaired")
    assert again.code == 0 and again.lines == [], again.lines
    assert_identical(study, out, [("d001", "structural"), ("d002", "structural"), ("h001", "connectivity"),
                                  ("m001", "spectroscopy"), ("m001", "structural")])
    assert_no_leftovers(out)


@pytest.mark.parametrize("case, edit, words", [
    ("empty participants.tsv", lambda text: "", ["the participants.tsv is empty"]),
    ("participant listed twice", lambda text: text + text.splitlines()[1] + "\n",
     ["sub-d001 is listed twice (also on line 2)"]),
    ("row with a missing field", lambda text: text.replace("\tsiteA\t", "\t", 1), ["line 2 has 8 tab-separated "
                                                                                   "fields, the header 9"]),
])
def test_a_defective_participants_tsv_stops_the_run_before_any_work(study, tmp_path, case, edit, words):
    bids = tmp_path / "bids"
    bids.mkdir()
    for item in (study / "bids").iterdir():  # the images are only linked: this test never reaches them
        (bids / item.name).symlink_to(item)
    (bids / "participants.tsv").unlink()
    (bids / "participants.tsv").write_text(edit((study / "bids" / "participants.tsv").read_text()))
    run = cli(study, bids, tmp_path / "out", "--participant-label", "d001", "--analyses", "structural", case=case)
    assert run.code == errors.EXIT_BAD_DATA and len(run.lines) == 1, run.lines
    assert run.lines[0].startswith(f"bids-ketamine: error: {bids / 'participants.tsv'}: ")
    assert all(w in run.lines[0] for w in words) and "Fix:" in run.lines[0], run.lines[0]
    assert not (tmp_path / "out").exists(), "nothing is written before the tables are valid"


def test_a_failed_group_run_is_listed_in_the_group_report(study, tmp_path):
    bids = copy_study(study, tmp_path)
    out = tmp_path / "outputs"
    shutil.copytree(study / "outputs", out)
    _edit(bids / "participants.tsv", "sub-d001\tstructural\tsiteA\tM\t27", "sub-d001\tstructural\tsiteA\tM\tabc")
    before = {p.name: p.read_bytes() for p in (out / "group").rglob("*.tsv")}
    run = cli(study, bids, out, level="group", case="group: non-numeric age")
    assert run.code == errors.EXIT_BAD_DATA and len(run.lines) == 1, run.lines
    assert f"{bids / 'participants.tsv'}: line 2 (sub-d001): design.participants.age" in run.lines[0]
    assert before == {p.name: p.read_bytes() for p in (out / "group").rglob("*.tsv")}, "group results changed"
    report = (out / "group.html").read_text()
    section = report[report.index("Group-level failures"):]
    assert "line 2 (sub-d001): design.participants.age column has non-numeric value" in section
    assert "exit code 65" in section


# ------------------------------------------------------------------------------------------------ 2. images
def _nan_voxels(path: Path, n: int = 50) -> None:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[tuple(np.argwhere(data > 0.5)[:n].T)] = np.nan
    out = nib.Nifti1Image(data, img.affine, img.header)
    out.set_data_dtype(np.float32)
    out.to_filename(path)


def _real_valued(path: Path) -> None:
    import nibabel as nib

    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    nib.Nifti1Image(data.real.astype(data.dtype), img.affine, img.header).to_filename(path)


def test_image_defects_are_refused_at_the_door(study, tmp_path):
    import pandas as pd

    bids, out = copy_study(study, tmp_path), tmp_path / "out"
    gm = bids / D1_GM
    _nan_voxels(gm)
    wm = bids / "derivatives/fmriprep/sub-m001/anat/sub-m001_label-WM_probseg.nii.gz"
    _nan_voxels(wm)
    svs = bids / "sub-m002/ses-placebo/mrs/sub-m002_ses-placebo_task-infusion_svs.nii.gz"
    _real_valued(svs)
    confounds = bids / ("derivatives/fmriprep/sub-h001/ses-placebo/func/"
                        "sub-h001_ses-placebo_task-rest_desc-confounds_timeseries.tsv")
    table = pd.read_csv(confounds, sep="\t")
    table.drop(columns=["framewise_displacement"]).to_csv(confounds, sep="\t", index=False, na_rep="n/a")
    labels = ("--participant-label", "d001", "d002", "h001", "m001", "m002", "--analyses",
              "structural,connectivity,spectroscopy")
    run = cli(study, bids, out, *labels, case="images: NaN probability maps, real-valued NIfTI-MRS")
    assert run.code == errors.EXIT_BAD_DATA and len(run.lines) == 3, run.lines
    assert_line(run, "sub-d001 structural", gm, "NaN")
    assert_line(run, "sub-m001 spectroscopy", wm, "WM probability map has 50 NaN", "re-run the segmentation")
    assert_line(run, "sub-m002 spectroscopy", svs, "imaginary part is zero", "spec2nii")
    assert_nothing_of(study, out, [("d001", "structural"), ("m001", "spectroscopy"), ("m002", "spectroscopy")])
    assert_identical(study, out, [("d002", "structural"), ("m001", "structural"), ("m002", "structural")])
    # confounds without FD: the documented fallback, warned with the file and recorded per run
    assert re.search(rf"{re.escape(str(confounds))}: no framewise_displacement column; FD computed from", run.stderr)
    scrub_rel = next(r for r in clean_outputs(study, "h001", "connectivity") if r.endswith("scrubbing_stats.tsv"))
    got = pd.read_csv(out / scrub_rel, sep="\t").set_index("session")
    clean = pd.read_csv(study / "outputs" / scrub_rel, sep="\t").set_index("session")
    assert got.loc["placebo", "fd_source"].startswith("computed from trans_x..rot_z")
    assert got.loc["ketamine", "fd_source"] == clean.loc["ketamine", "fd_source"]
    # Power's FD from the motion parameters flags the frames fMRIPrep's column flags (the generator writes both)
    assert got.loc["placebo", "n_flagged_fd"] == clean.loc["placebo", "n_flagged_fd"]
    sidecar = json.loads((out / scrub_rel.replace(".tsv", ".json")).read_text())
    assert confounds.name in sidecar["FramewiseDisplacementWarnings"][0]
    _restore(study, bids, D1_GM, str(wm.relative_to(bids)), str(svs.relative_to(bids)))
    again = cli(study, bids, out, *labels, case="images repaired")
    assert again.code == 0 and again.lines == [], again.lines
    assert_identical(study, out, [("d001", "structural"), ("m001", "spectroscopy"), ("m002", "spectroscopy")])
    assert_no_leftovers(out)


# ------------------------------------------------------------------------------------------------ 3. OS errors
def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def test_truncated_inputs_are_exit_65_naming_the_file(study, tmp_path):
    bids, out = copy_study(study, tmp_path), tmp_path / "out"
    gm = bids / D1_GM
    mask = bids / ("derivatives/fmriprep/sub-h001/ses-placebo/func/sub-h001_ses-placebo_task-rest_space-"
                   "MNI152NLin2009cAsym_res-8_desc-brain_mask.nii.gz")
    ref = bids / "sub-m001/ses-placebo/mrs/sub-m001_ses-placebo_task-infusion_mrsref.nii.gz"
    for path in (gm, mask, ref):
        _truncate(path)
    labels = ("--participant-label", "d001", "d002", "h001", "m001", *ALL)
    run = cli(study, bids, out, *labels, case="truncated inputs")
    assert run.code == errors.EXIT_BAD_DATA and len(run.lines) == 3, run.lines
    for who, path in (("sub-d001 structural", gm), ("sub-h001 connectivity", mask), ("sub-m001 spectroscopy", ref)):
        line = assert_line(run, who, path, "truncated")
        assert "unexpected" not in line
    assert_nothing_of(study, out, [("d001", "structural"), ("h001", "connectivity"), ("m001", "spectroscopy")])
    assert_identical(study, out, [("d002", "structural"), ("m001", "structural")])
    _restore(study, bids, *(str(p.relative_to(bids)) for p in (gm, mask, ref)))
    again = cli(study, bids, out, *labels, case="truncated inputs repaired")
    assert again.code == 0 and again.lines == [], again.lines
    assert_identical(study, out, [("d001", "structural"), ("h001", "connectivity"), ("m001", "spectroscopy")])
    assert_no_leftovers(out)


@pytest.fixture
def tmpfs(tmp_path):
    """A small RAM file system (root only): ``mount(size, *options)`` mounts it, it is unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the full-disk test runs where the suite runs as root)")
    point = tmp_path / "disk"
    point.mkdir()
    mounted = []

    def mount(size: str, *options: str) -> Path:
        opts = ",".join([f"size={size}", *options])
        action = ["-o", f"remount,{opts}", str(point)] if mounted else ["-t", "tmpfs", "-o", opts, "tmpfs", str(point)]
        proc = subprocess.run(["mount", *action], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
        mounted.append(True)
        return point

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_a_full_disk_is_exit_73_in_one_line_and_the_folder_resumes(study, tmpfs):
    disk = tmpfs("2M")
    out = disk / "out"
    labels = ("--participant-label", "d001", "d002", "d003", "--analyses", "structural")
    run = cli(study, study / "bids", out, *labels, case="full disk (tmpfs)")
    assert run.code == errors.EXIT_CANNOT_CREATE_OUTPUT and len(run.lines) == 1, run.lines
    assert run.lines[0].startswith(f"bids-ketamine: error: {out}: cannot write here (No space left on device; ")
    assert " free on its file system)" in run.lines[0] and "Fix: free space" in run.lines[0]
    assert_no_leftovers(out)
    tmpfs("60M")  # space freed: the same folder resumes
    again = cli(study, study / "bids", out, *labels, case="full disk resumed")
    assert again.code == 0 and again.lines == [], again.lines
    assert_identical(study, out, [("d001", "structural"), ("d002", "structural"), ("d003", "structural")])
    assert_no_leftovers(out)
    tmpfs("60M", "ro")  # a read-only output folder
    ro = cli(study, study / "bids", disk / "elsewhere", *labels, case="read-only output folder")
    assert ro.code == errors.EXIT_CANNOT_CREATE_OUTPUT and len(ro.lines) == 1, ro.lines
    assert f"{disk / 'elsewhere'}: cannot write here (Read-only file system" in ro.lines[0]
    assert "choose a writable output_dir" in ro.lines[0]


def _cwd_killer(pattern: str, stop: threading.Event, killed: list[int]) -> None:
    """Kill -9 every process whose working folder matches ``pattern`` (as the OOM killer would kill a worker)."""
    while not stop.is_set():
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if re.search(pattern, cwd):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(int(entry.name))
                except OSError:
                    pass
        time.sleep(0.05)


def test_a_worker_killed_for_memory_is_exit_75_and_the_others_finish(study, tmp_path):
    if not Path("/proc/self/cwd").exists():
        pytest.skip("needs /proc to find the worker process")
    out = tmp_path / "out"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_cwd_killer, args=(r"sub[-_]d001[-_]structural", stop, killed), daemon=True)
    killer.start()
    try:
        run = cli(study, study / "bids", out, "--participant-label", "d001", "d002", "d003", "--analyses",
                  "structural", nprocs="2", case="worker killed (OOM)")
    finally:
        stop.set()
        killer.join()
    assert killed, "the worker of sub-d001 was never seen"
    assert run.code == errors.EXIT_TEMPORARY and len(run.lines) == 1, run.lines
    line = run.lines[0]
    assert "sub-d001 structural" in line and "was killed by SIGKILL" in line and "out of memory" in line
    assert "--mem" in line and "--nprocs" in line
    assert_nothing_of(study, out, [("d001", "structural")])
    assert_identical(study, out, [("d002", "structural"), ("d003", "structural")])
    assert_no_leftovers(out)


def test_out_of_memory_in_an_analysis_is_exit_75(study, tmp_path, monkeypatch, capsys):
    """A MemoryError inside sub-d001's analysis (the allocation that fails under a memory limit) names the
    participant; sub-d002 finishes."""
    import bids_ketamine.structural.participant as structural
    from bids_ketamine.cli.run import main

    real = structural.run_participant

    def short_of_memory(inputs, **kwargs):
        if inputs.subject == "d001":
            raise MemoryError()
        return real(inputs, **kwargs)

    monkeypatch.setattr(structural, "run_participant", short_of_memory)
    out = tmp_path / "out"
    code = main(_command(study, study / "bids", out, "participant", "--nprocs", "1", "--participant-label", "d001",
                         "d002", "--analyses", "structural")[3:])
    run = _result(code, capsys.readouterr().err)
    OBSERVED.setdefault(code, set()).add("MemoryError in an analysis")
    assert code == errors.EXIT_TEMPORARY and len(run.lines) == 1, run.lines
    assert "sub-d001 structural failed: out of memory in sub-d001 structural" in run.lines[0]
    assert "--mem" in run.lines[0]
    assert_identical(study, out, [("d002", "structural")])
    assert_no_leftovers(out)


# ------------------------------------------------------------------------------------------------ 4. kill -9
def _run_until(command: list[str], condition, timeout: float = 300) -> str:
    """Start the CLI, kill its whole process group with SIGKILL as soon as ``condition()`` holds."""
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    started = time.time()
    try:
        while time.time() - started < timeout:
            if condition():
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return "killed"
            if proc.poll() is not None:
                return f"ended by itself with exit code {proc.returncode}"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        return "timed out"
    finally:
        proc.wait()
        proc.stderr.close()


def test_kill_9_at_three_points_then_a_rerun_is_complete_identical_and_clean(study, tmp_path):
    out = tmp_path / "out"
    state = out / ".bids_ketamine"
    command = _command(study, study / "bids", out, "participant", "--nprocs", "1", "--participant-label", "d001",
                       "d002", "d003", "--analyses", "structural")

    def done() -> int:
        return len(list((state / "done").glob("*.json")))

    def staged_files() -> bool:
        return any(p.is_file() and not p.name.endswith(".lock") for p in (state / "staging").rglob("*"))

    # 1. right after discovery: the inventories are written, the jobs not yet started
    assert _run_until(command, lambda: (out / "sub-d003" / "sub-d003_inventory.tsv").exists()) == "killed"
    # 2. while a participant's outputs are being written into its staging folder
    assert _run_until(command, staged_files) == "killed"
    left = {p.name for p in (state / "staging").iterdir() if p.is_dir()}
    assert left, "the killed job left its staging folder (the case to clean up)"
    # 3. between participants: one more finished, the next one is writing its outputs
    first = done()
    assert _run_until(command, lambda: done() > first and staged_files()) == "killed"
    assert done() < 3
    now = {p.name for p in (state / "staging").iterdir() if p.is_dir()}
    assert now and not now & left, "the run after kill 2 removed its leftover; kill 3 left a new one"
    run = cli(study, study / "bids", out, "--participant-label", "d001", "d002", "d003", "--analyses", "structural",
              "--clean-workdir", case="re-run after kill -9")
    assert run.code == 0 and run.lines == [], run.lines
    assert "removed a leftover of a killed run: .bids_ketamine/staging/sub-d00" in run.stderr
    assert "--clean-workdir: removed the work folder" in run.stderr and not (state / "work").exists()
    record = json.loads(sorted((out / "logs").glob("run-*_participant_*.json"))[-1].read_text())
    assert any("staging" in item for item in record["removed"])
    assert_identical(study, out, [("d001", "structural"), ("d002", "structural"), ("d003", "structural")])
    assert_no_leftovers(out)


def test_a_live_jobs_staging_folder_is_never_removed(tmp_path):
    """Only leftovers: a folder whose lock a live job holds stays (here this process holds it)."""
    from bids_ketamine.io.derivatives import DerivativesWriter

    writer = DerivativesWriter(tmp_path / "out")
    stale = writer.state_dir / "staging" / "sub-01_structural_0123abcd"
    (stale / "sub-01").mkdir(parents=True)
    (stale / "sub-01" / "x.tsv").write_text("a\n")
    foreign = writer.state_dir / "staging" / "not-ours"
    foreign.mkdir()
    with writer.staged("02", "structural") as staged:
        staged.write_json({"a": 1}, entities={"sub": "02"}, suffix="test")
        live = [p for p in (writer.state_dir / "staging").iterdir() if p.name.startswith("sub-02") and p.is_dir()]
        assert writer.remove_stale_staging() == [".bids_ketamine/staging/sub-01_structural_0123abcd"]
        assert live[0].exists() and foreign.exists()
    assert (tmp_path / "out" / "sub-02" / "sub-02_test.json").exists()
    assert sorted(p.name for p in (writer.state_dir / "staging").iterdir()) == ["not-ours"]


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    from bids_ketamine.io.derivatives import _temp_prefix, remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    folder = tmp_path / "out" / "sub-01"
    folder.mkdir(parents=True)
    mine = folder / (_temp_prefix(folder / "a.tsv") + "x1.tmp")  # this (live) process
    killed = folder / (_temp_prefix(folder / "b.tsv").replace(f"-{os.getpid()}-", f"-{dead}-") + "x2.tmp")
    other_host = folder / f".c.tsv.tmp-elsewhere-{dead}-x3.tmp"
    for path in (mine, killed, other_host):
        path.write_text("partial")
    assert remove_stale_temporaries(tmp_path / "out") == [f"sub-01/{killed.name}"]
    assert mine.exists() and other_host.exists() and not killed.exists()


# ------------------------------------------------------------------------------------------------ README
#: What each code's README row must say (the classes the tests above exercise).
MEANINGS = {0: "ok", 1: "participant failed", 16: "invalid BIDS", 17: "unsupported analysis level",
            18: "matched nothing", 64: "usage error", 65: "bad data", 66: "missing input",
            73: "cannot create or write output", 75: "out of memory"}


def readme_exit_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| Code | Meaning |"):].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[int(cells[0])] = cells[1]
    return rows


def test_the_readme_exit_code_table_matches_the_codes_and_what_the_tests_observed():
    table = readme_exit_codes()
    constants = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert set(table) == constants, "README table and bids_ketamine.errors differ"
    for code, words in MEANINGS.items():
        assert words.lower() in table[code].lower(), (code, table[code])
    unknown = set(OBSERVED) - set(table)
    assert not unknown, f"exit codes observed but not documented: {unknown} ({OBSERVED})"
    if OBSERVED:  # the failure tests of this module ran: the classes met their documented codes
        expected = {errors.EXIT_OK, errors.EXIT_BAD_DATA, errors.EXIT_TEMPORARY}
        if os.geteuid() == 0:
            expected.add(errors.EXIT_CANNOT_CREATE_OUTPUT)  # the tmpfs test ran
        assert expected <= set(OBSERVED), OBSERVED
