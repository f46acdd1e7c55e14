"""Group-level resampling on a dask.distributed cluster gives the same results as the local run.

The permutations, bootstrap and surrogates of the group level go through joblib; ``--dask-scheduler ADDRESS`` routes
them to an existing cluster. Every resample is seeded by its own index, never by the worker that runs it, so where the
work runs must not change a byte of the results. The test also proves the work really ran on the cluster's workers
(a silently unused cluster would pass the comparison too).
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from bids_ketamine.cli.run import main
from bids_ketamine.errors import EXIT_TEMPORARY

from .compare import demo_config, output_differences

distributed = pytest.importorskip("distributed")

#: What the group level writes: the group/ folder and the group report with its methods text.
GROUP_OUTPUTS = ("group", "group.html", "methods.md")
#: joblib names a dask task after the function of its batch: resampling functions of each analysis that must appear.
RESAMPLING_TASKS = {"structural": "_outer_fold_scores", "connectivity": "_null_batch"}


@pytest.fixture(scope="module")
def cluster():
    """A real local cluster: 2 worker processes with 1 thread each, no dashboard."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as local:
        yield local


def _without_group_outputs(reference: Path, target: Path) -> Path:
    """A copy of the reference outputs with the group level (and its work folder, e.g. cached surrogates) removed,
    so the group level recomputes everything."""
    shutil.copytree(reference, target, symlinks=True)
    for name in GROUP_OUTPUTS:
        path = target / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    shutil.rmtree(target / ".bids_ketamine" / "work", ignore_errors=True)
    return target


def _cluster_activity(address: str) -> tuple[dict[str, float], dict[str, int]]:
    """Task prefixes the scheduler has seen (with their total compute time) and tasks executed per worker."""
    with distributed.Client(address, timeout="30s") as client:
        prefixes = client.run_on_scheduler(
            lambda dask_scheduler: {name: float(sum(p.all_durations.values()))
                                    for name, p in dask_scheduler.task_prefixes.items()})
        executed = client.run(lambda dask_worker: dask_worker.state.executed_count)
    return prefixes, executed


def test_group_level_on_a_dask_cluster_equals_the_local_run(small_demo, cluster, tmp_path, capsys):
    root, code = small_demo
    assert code == 0
    reference = root / "outputs"
    assert (reference / "group").is_dir(), "the demo wrote no group outputs"
    copy = _without_group_outputs(reference, tmp_path / "outputs")
    assert not (copy / "group").exists()
    before, _ = _cluster_activity(cluster.scheduler_address)

    started = time.time()
    # --nprocs 1: the local process budget must not keep the resampling off the cluster
    exit_code = main([str(root / "bids"), str(copy), "group", "--skip-bids-validation", "--random-seed", "5",
                      "--config-file", str(demo_config(root)),
                      "--analyses", "structural,connectivity,spectroscopy", "--nprocs", "1",
                      "--dask-scheduler", cluster.scheduler_address])
    elapsed = time.time() - started
    assert exit_code == 0, capsys.readouterr().err[-2000:]

    # the resampling really ran on the cluster's workers
    after, executed = _cluster_activity(cluster.scheduler_address)
    new = {name: seconds for name, seconds in after.items() if name not in before}
    for analysis, function in RESAMPLING_TASKS.items():
        assert any(function in name for name in new), f"no {analysis} resampling task ({function}) on the " \
                                                      f"cluster; tasks seen: {sorted(new)}"
    assert len(executed) == 2 and all(count > 0 for count in executed.values()), \
        f"tasks executed per worker: {executed}"
    print(f"group level on the dask cluster: {elapsed:.0f} s; tasks per worker {executed}; "
          f"task types {sorted(new)}")

    # ... and every group result is byte-identical to the local (loky) run
    assert (copy / "group").is_dir()
    differences = output_differences(copy, reference)
    assert differences == [], differences[:10]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_is_a_temporary_failure_with_one_line(small_demo, tmp_path, capsys):
    """An address nobody listens on: exit 75 (retry later) and one line naming the address and the fix."""
    root, _ = small_demo
    copy = _without_group_outputs(root / "outputs", tmp_path / "outputs")
    address = f"tcp://127.0.0.1:{_closed_port()}"
    capsys.readouterr()
    import dask

    started = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "3s"}):  # the user's dask config sets the wait
        exit_code = main([str(root / "bids"), str(copy), "group", "--skip-bids-validation", "--random-seed", "5",
                          "--config-file", str(demo_config(root)),
                          "--dask-scheduler", address])
    assert time.monotonic() - started < 25, "the configured 3 s connect timeout was not used"
    assert exit_code == EXIT_TEMPORARY
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids-ketamine: ")]
    assert len(lines) == 1, lines
    assert address in lines[0] and "Fix:" in lines[0]
    assert not (copy / "group").exists(), "nothing may be written when the cluster cannot be reached"
