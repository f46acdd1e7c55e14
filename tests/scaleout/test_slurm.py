"""The documented SLURM recipe on a real one-node cluster: an array job plus a dependent group job give
byte-for-byte the outputs of the serial demo run.

The array covers the participants still missing from the output folder (the recipe's ``PARTICIPANTS`` list, as a
site re-submits what an earlier array left undone): one of each kind (spectroscopy, connectivity, structural only)
run as array tasks, the other participants' outputs and done markers copied from the serial run. The group job then
runs over all of them. What a task writes into a shared folder while others write there too is tested with twenty
jobs at once in ``test_concurrent_jobs``; running every demo participant as a task here (56 tasks, about 330 s on 2
cores) would repeat that and not test more of the recipe.

The job scripts are not written here: they are read from ``docs/scaling.md`` (the blocks marked
``<!-- scaling-recipe: NAME -->``), so the documentation is exactly what this test submits.
"""

from __future__ import annotations

import getpass
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from participant_outputs import copy_finished_participants

from .compare import demo_config, output_differences, participants_of_each_kind, runs_by_analysis
from .slurm import SlurmUnavailable, destroy, ensure_slurm, start_cluster, versions

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
RECIPES = ("submit.sh", "participant.sbatch", "group.sbatch", "slurm_plugin.yml")
#: How long the array plus the group job may take before the test gives up (a loaded 2-core machine is slow).
JOBS_TIMEOUT_S = 40 * 60
FINISHED_OK = "COMPLETED"
#: Array tasks per analysis that decides a participant's kind (the first participants of each kind in the demo).
ARRAY_TASKS = {"spectroscopy": 1, "connectivity": 1, "structural": 2}
FAILED_STATES = {"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                 "DEADLINE"}


def recipe_scripts(markdown: str) -> dict[str, str]:
    """The fenced code blocks that follow ``<!-- scaling-recipe: NAME -->`` markers, by NAME."""
    blocks = re.findall(r"<!-- scaling-recipe: (\S+) -->\n```\w*\n(.*?)```", markdown, flags=re.S)
    return dict(blocks)


def demo_analyses() -> list[str]:
    """The analyses ``bids-ketamine demo`` ran (its own rule), so the jobs use the same options."""
    from bids_ketamine.cli.demo import ANALYSIS_PARTS, _built
    from bids_ketamine.synthetic.study import part_available

    return [a for a, part in ANALYSIS_PARTS.items() if _built(a) and part_available(part)]


def test_docs_hold_the_recipes_and_every_shell_block_parses():
    text = DOCS.read_text()
    scripts = recipe_scripts(text)
    assert sorted(scripts) == sorted(RECIPES)
    assert "--dependency=\"afterok:$array_id\"" in scripts["submit.sh"]
    assert "--participant-label \"$label\"" in scripts["participant.sbatch"]
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        proc = subprocess.run(["bash", "-n"], input=block, capture_output=True, text=True)
        assert proc.returncode == 0, f"{proc.stderr}\n{block}"
    plugin = yaml.safe_load(scripts["slurm_plugin.yml"])
    assert plugin["plugin"] == "SLURM" and "--cpus-per-task=1" in plugin["plugin_args"]["sbatch_args"]


@pytest.fixture(scope="module")
def slurm_cluster():
    """Debian's Slurm (installed when missing), one node with this machine's 2 CPUs, torn down afterwards."""
    started = time.monotonic()
    try:
        install_s = ensure_slurm()
    except SlurmUnavailable as exc:
        pytest.skip(f"no Slurm: {exc}")
    cluster = start_cluster(cpus=2)
    print(f"\nslurm: install {install_s:.1f} s, cluster up {time.monotonic() - started - install_s:.1f} s, "
          f"{versions()}")
    try:
        yield cluster
    finally:
        destroy(cluster)


def _tail(path: Path, lines: int = 8) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _task_failure(task: dict, logs: Path, array_id: str) -> str:
    log = logs / f"participant_{array_id}_{task.get('ArrayTaskId')}.out"
    return f"task {task.get('ArrayTaskId')} {task.get('JobState')} {task.get('ExitCode')}:\n{_tail(log)}"


def _wait_for(cluster, array_id: str, group_id: str, timeout: float) -> tuple[list[dict], dict]:
    """Poll until the group job ended or an array task failed (then the group job can never start)."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = cluster.job_states(array_id)
        group = (cluster.job_states(group_id) or [{}])[0]
        if group.get("JobState") in FAILED_STATES | {FINISHED_OK}:
            return tasks, group
        if any(t.get("JobState") in FAILED_STATES for t in tasks):
            return tasks, group
        if time.monotonic() > deadline:
            pytest.fail(f"the jobs did not finish within {timeout:.0f} s: "
                        f"{sorted({t.get('JobState') for t in tasks})}, group {group.get('JobState')}")
        time.sleep(5)


@pytest.mark.slow
def test_array_of_the_remaining_participants_and_dependent_group_job_reproduce_the_serial_run(
        small_demo, slurm_cluster, tmp_path, record_property):
    root, code = small_demo
    assert code == 0
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for name, text in recipe_scripts(DOCS.read_text()).items():
        if name.endswith((".sh", ".sbatch")):
            (jobs / name).write_text(text)
    bids, outputs, reference = root / "bids", tmp_path / "outputs", root / "outputs"
    labels = sorted(p.name[len("sub-"):] for p in bids.glob("sub-*") if p.is_dir())
    assert len(labels) == 56
    remaining = participants_of_each_kind(reference, ARRAY_TASKS)
    runs = runs_by_analysis(reference)
    assert all(set(remaining) & set(runs[a]) for a in ARRAY_TASKS), (remaining, sorted(runs))
    copy_finished_participants(reference, [s for s in labels if s not in remaining], outputs)
    (jobs / "participants.txt").write_text("\n".join(remaining) + "\n")
    env = {**slurm_cluster.env, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster.env['PATH']}",
           "BIDS_DIR": str(bids), "OUTPUT_DIR": str(outputs), "BIDS_DB": str(tmp_path / "pybids_db"),
           "WORK_ROOT": str(tmp_path / "work"), "SEED": "5", "ANALYSES": ",".join(demo_analyses()),
           "CONFIG": str(demo_config(root)),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    started = time.monotonic()
    submit = subprocess.run(["bash", str(jobs / "submit.sh")], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=900)
    assert submit.returncode == 0, submit.stderr[-2000:]
    ids = re.search(r"participant array: (\d+) \((\d+) tasks\); group job: (\d+)", submit.stdout)
    assert ids, submit.stdout
    array_id, n_tasks, group_id = ids.group(1), int(ids.group(2)), ids.group(3)
    assert n_tasks == len(remaining) == sum(ARRAY_TASKS.values())
    submitted = time.monotonic()

    tasks, group = _wait_for(slurm_cluster, array_id, group_id, JOBS_TIMEOUT_S)
    finished = time.monotonic()
    failed = [t for t in tasks if (t.get("JobState"), t.get("ExitCode")) != (FINISHED_OK, "0:0")]
    assert not failed, "\n".join(_task_failure(t, jobs / "slurm_logs", array_id) for t in failed[:5])
    assert sorted(int(t["ArrayTaskId"]) for t in tasks) == list(range(1, n_tasks + 1))
    assert (group.get("JobState"), group.get("ExitCode")) == (FINISHED_OK, "0:0"), \
        _tail(jobs / "slurm_logs" / f"group_{group_id}.out", 20)
    # afterok: the group job started only after the last participant task had ended
    assert group["StartTime"] >= max(t["EndTime"] for t in tasks)

    record_property("slurm_submit_s", round(submitted - started, 1))
    record_property("slurm_jobs_s", round(finished - submitted, 1))
    print(f"\nslurm: submit (validate + index) {submitted - started:.0f} s, {n_tasks} array tasks + group job "
          f"{finished - submitted:.0f} s")
    assert output_differences(outputs, root / "outputs") == []


@pytest.mark.slow
def test_nipype_slurm_plugin_from_the_docs_runs_a_participant_as_a_slurm_job(small_demo, slurm_cluster, tmp_path):
    """``--use-plugin`` with the documented plugin file: the analysis node becomes a Slurm job, same outputs."""
    root, code = small_demo
    assert code == 0
    plugin = tmp_path / "slurm_plugin.yml"
    plugin.write_text(recipe_scripts(DOCS.read_text())["slurm_plugin.yml"])
    label, outputs = "d001", tmp_path / "outputs"
    env = {**slurm_cluster.env, "PATH": f"{Path(sys.executable).parent}:{slurm_cluster.env['PATH']}",
           "LOGNAME": slurm_cluster.env.get("LOGNAME") or getpass.getuser(), "OMP_NUM_THREADS": "1",
           "MPLBACKEND": "Agg"}
    before = {job["JobId"] for job in slurm_cluster.completed_jobs()}
    run = subprocess.run([str(Path(sys.executable).parent / "bids-ketamine"), str(root / "bids"), str(outputs),
                          "participant", "--participant-label", label, "--analyses", ",".join(demo_analyses()),
                          "--random-seed", "5", "--skip-bids-validation", "--nprocs", "1",
                          "--use-plugin", str(plugin), "-w", str(tmp_path / "work")],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = [job for job in slurm_cluster.completed_jobs() if job["JobId"] not in before]
    assert [(job["Name"].split(".")[0], job["JobState"], job["ExitCode"]) for job in jobs] == [
        (f"sub_{label}_structural", "COMPLETED", "0:0")]
    assert output_differences(outputs / f"sub-{label}", root / "outputs" / f"sub-{label}") == []
