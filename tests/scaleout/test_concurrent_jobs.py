"""Scale-out of the participant level: many independent jobs write into one output folder at the same time.

A cluster array starts one ``bids-ketamine ... participant --participant-label X`` per subject, all sharing one
output folder and one saved pybids index. Each job must give exactly the outputs a single run gives, leave the
shared dataset-level files whole, and leave nothing half-written behind. Inside one job, the resource flags must
reach nipype's MultiProc scheduler.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_ketamine.cli.run import build_config
from .compare import output_differences, participants_of_each_kind, runs_by_analysis

N_JOBS = 20
#: How many participants of each analysis go into the 20 jobs (the rest are structural-only participants).
WANTED = {"spectroscopy": 4, "connectivity": 6}


def choose_participants(outputs: Path) -> list[str]:
    """20 participants mixing the three analyses: fMRS ones, connectivity ones, then structural-only ones."""
    return participants_of_each_kind(outputs, {**WANTED, "structural": N_JOBS - sum(WANTED.values())})


def _restricted_reference(reference: Path, subjects: list[str], target: Path) -> Path:
    """The reference output folder with only ``subjects`` (and the dataset-level files), to compare against."""
    target.mkdir(parents=True)
    for item in reference.iterdir():
        if item.is_file() and not item.name.startswith("sub-") and item.name not in ("group.html", "methods.md"):
            shutil.copy2(item, target / item.name)
    for subject in subjects:
        shutil.copytree(reference / f"sub-{subject}", target / f"sub-{subject}")
        report = reference / f"sub-{subject}.html"
        if report.exists():
            shutil.copy2(report, target / report.name)
    return target


def _command() -> list[str]:
    script = Path(sys.executable).parent / "bids-ketamine"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bids_ketamine.cli.run"]


def _job_environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def test_twenty_participant_jobs_at_once_give_the_single_run_outputs(small_demo, tmp_path):
    root, code = small_demo
    assert code == 0
    bids, reference = root / "bids", root / "outputs"
    subjects = choose_participants(reference)
    runs = runs_by_analysis(reference)
    assert len(subjects) == N_JOBS
    for analysis in ("structural", "connectivity", "spectroscopy"):
        assert set(subjects) & set(runs.get(analysis, [])), f"no {analysis} participant among the 20 jobs"

    out, database = tmp_path / "outputs", tmp_path / "pybids_db"
    common = ["--skip-bids-validation", "--random-seed", "5", "--nprocs", "1", "--bids-database-dir", str(database)]
    env = _job_environment()
    # the shared index is built once, first (a dry run discovers and stops before writing any output)
    built = subprocess.run([*_command(), str(bids), str(out), "participant", "--dry-run", *common], env=env,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    assert any(database.iterdir()), "the dry run did not save the pybids index"
    assert not out.exists() or not any(out.rglob("*.tsv")), "a dry run must not write outputs"

    logs = tmp_path / "job_logs"
    logs.mkdir()
    started = time.time()
    procs = []
    for subject in subjects:
        with open(logs / f"{subject}.out", "w") as stdout, open(logs / f"{subject}.err", "w") as stderr:
            procs.append((subject, subprocess.Popen(
                [*_command(), str(bids), str(out), "participant", "--participant-label", subject, *common],
                env=env, stdout=stdout, stderr=stderr)))
    failed = []
    for subject, proc in procs:
        if proc.wait(timeout=900) != 0:
            failed.append(f"sub-{subject} exit {proc.returncode}: "
                          f"{(logs / f'{subject}.err').read_text().strip().splitlines()[-3:]}")
    elapsed = time.time() - started
    assert not failed, "\n".join(failed)
    print(f"{N_JOBS} concurrent participant jobs finished in {elapsed:.0f} s")

    # every participant's outputs equal those of the single run (the demo), nothing more and nothing less
    expected = _restricted_reference(reference, subjects, tmp_path / "reference")
    differences = output_differences(out, expected)
    assert differences == [], differences[:10]

    # dataset-level files: whole, valid, and describing the same dataset as a single run
    description = json.loads((out / "dataset_description.json").read_text())
    assert description == json.loads((reference / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert ignore == (reference / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)), "duplicated .bidsignore lines"
    for sidecar in out.rglob("*.json"):
        json.loads(sidecar.read_text())  # every JSON file is complete
    records = sorted((out / "logs").glob("run-*_participant_pid*.json"))
    assert len(records) == N_JOBS, [r.name for r in records]

    # nothing half-written: no temporary file, no staging folder left, a done marker per participant analysis
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".") and
                 p.is_file() and p.name != ".bidsignore"]
    assert leftovers == [], leftovers[:5]
    staging = out / ".bids_ketamine" / "staging"
    assert not staging.exists() or not any(staging.iterdir()), list(staging.iterdir())[:5]
    assert not list(out.rglob("participant_state_*.pkl")), "a job left its pickled plan behind"
    done = {p.stem for p in (out / ".bids_ketamine" / "done").glob("*.json")}
    want = {f"sub-{s}_{a}" for a, subs in runs.items() for s in subs if s in subjects}
    assert done == want

    from bids_ketamine.validation import validation_errors, validator_executable

    try:
        validator_executable()
    except Exception as exc:  # the validator is a test dependency; say plainly when it is absent
        pytest.skip(f"bids-validator-deno not usable here: {exc}")
    errors = validation_errors(out)
    assert errors == [], errors[:3]


# ---------------------------------------------------------------- resources reach nipype's MultiProc

def _minimal_bids(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    return root


def test_nprocs_omp_nthreads_and_mem_reach_multiproc(tmp_path, monkeypatch):
    """``--nprocs`` is MultiProc's process budget, ``--mem`` its memory budget, ``--omp-nthreads`` each node's
    thread count (so MultiProc runs nprocs / omp_nthreads nodes at once)."""
    from nipype.pipeline import engine as pe

    from bids_ketamine.cli.parser import _build_parser
    from bids_ketamine.workflows import participant as wp

    seen: dict = {}

    def fake_run(self, plugin=None, plugin_args=None, **_):
        seen["plugin"], seen["plugin_args"] = plugin, dict(plugin_args or {})
        seen["nodes"] = {node.name: (node.n_procs, node.mem_gb) for node in self._graph.nodes()}

    monkeypatch.setattr(pe.Workflow, "run", fake_run)
    # an earlier in-process CLI run may have left a handler on a closed (captured) stream
    monkeypatch.setattr(logging.getLogger("bids_ketamine"), "handlers", [])
    bids = _minimal_bids(tmp_path / "bids")
    args = _build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "--nprocs", "6",
                                       "--omp-nthreads", "3", "--mem", "7G"])
    cfg = build_config(args)
    jobs = [("01", "structural"), ("02", "connectivity"), ("03", "spectroscopy")]
    statuses = wp.run_participant_jobs(cfg, {}, jobs, dataset_links={}, container={})
    # MultiProc itself, in the subclass that counts a killed worker's jobs as crashed (reliability)
    from nipype.pipeline.plugins.multiproc import MultiProcPlugin
    assert isinstance(seen["plugin"], MultiProcPlugin)
    assert seen["plugin_args"]["n_procs"] == 6
    assert seen["plugin_args"]["memory_gb"] == pytest.approx(7.0)
    assert sorted(seen["nodes"]) == ["sub_01_structural", "sub_02_connectivity", "sub_03_spectroscopy"]
    assert {n_procs for n_procs, _ in seen["nodes"].values()} == {3}
    assert seen["nodes"]["sub_03_spectroscopy"][1] == wp.NODE_MEM_GB["spectroscopy"]
    # the fake run executed nothing: every job is reported as not finished, none silently as done
    assert [s["ok"] for s in statuses] == [False, False, False]

    # a plugin file overrides the scheduler but keeps the resource budget unless it sets its own
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text("plugin: Linear\nplugin_args:\n  n_procs: 2\n")
    args = _build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant", "--nprocs", "6",
                                       "--mem", "7G", "--use-plugin", str(plugin_file)])
    wp.run_participant_jobs(build_config(args), {}, jobs[:1], dataset_links={}, container={})
    assert seen["plugin"] == "Linear"
    assert seen["plugin_args"]["n_procs"] == 2 and seen["plugin_args"]["memory_gb"] == pytest.approx(7.0)


def test_omp_nthreads_reaches_the_numerical_libraries_of_a_job(tmp_path, monkeypatch):
    """Inside the node, ``--omp-nthreads`` sets the thread variables before the analysis imports run."""
    import pickle

    from bids_ketamine.cli.parser import _build_parser
    from bids_ketamine.workflows import participant as wp

    bids = _minimal_bids(tmp_path / "bids")
    cfg = build_config(_build_parser().parse_args([str(bids), str(tmp_path / "out"), "participant",
                                                   "--omp-nthreads", "3"]))
    state = tmp_path / "state.pkl"
    state.write_bytes(pickle.dumps({"config": cfg, "inputs": {"01": {}}, "dataset_links": {}, "container": {}}))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")
    seen = {}

    class Probe:
        @staticmethod
        def run_participant(*_, n_procs, **__):
            seen.update({v: os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
                        n_procs=n_procs)
            return []

    class ProbeAnalysis:
        @staticmethod
        def module(level):
            return Probe

    from bids_ketamine import analyses

    monkeypatch.setitem(analyses.ANALYSES, "structural", ProbeAnalysis)
    monkeypatch.setattr(type(cfg), "params", lambda self, name: None)
    status = wp.run_one(str(state), "01", "structural")
    assert status["ok"], status
    assert seen == {"OMP_NUM_THREADS": "3", "OPENBLAS_NUM_THREADS": "3", "MKL_NUM_THREADS": "3", "n_procs": 3}
