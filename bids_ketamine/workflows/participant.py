"""Participant level as a nipype workflow: one node per participant and analysis, run by MultiProc or a plugin.

The node is thin: it calls the analysis' ``run_participant`` inside a staged writer, so a failure leaves nothing
partial, and records a status (ok / exit code / one-line message) instead of crashing the graph, so one bad
participant never stops the others. Science stays in the analysis packages.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import traceback
import uuid
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from bids_ketamine.errors import BidsKetamineError

LOG = logging.getLogger("bids_ketamine")
#: Rough peak memory per node (GB), so MultiProc does not oversubscribe --mem.
NODE_MEM_GB = {"structural": 3.0, "connectivity": 3.0, "spectroscopy": 1.0}


def run_one(state_file: str, subject: str, analysis: str) -> dict[str, Any]:
    """Run one analysis for one participant; return a status record (never raises for data problems)."""
    with open(state_file, "rb") as handle:
        state = pickle.load(handle)
    cfg, inputs = state["config"], state["inputs"][subject]
    from bids_ketamine.logs import ensure_logging

    ensure_logging(cfg.verbose)  # a MultiProc or cluster worker starts with no handler: progress would vanish
    threads = str(cfg.omp_nthreads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        os.environ[var] = threads
    from bids_ketamine.analyses import ANALYSES
    from bids_ketamine.io.derivatives import DerivativesWriter

    writer = DerivativesWriter(cfg.output_dir, dataset_links=state["dataset_links"], container=state["container"])
    status: dict[str, Any] = {"subject": subject, "analysis": analysis}
    try:
        module = ANALYSES[analysis].module("participant")
        work = Path(cfg.work_dir) / f"sub-{subject}" / analysis
        work.mkdir(parents=True, exist_ok=True)
        with writer.staged(subject, analysis) as staged:
            outputs = module.run_participant(inputs, params=cfg.params(analysis), design=cfg.design, writer=staged,
                                             work_dir=work, seed=cfg.random_seed, n_procs=cfg.omp_nthreads)
        status.update(ok=True, exit_code=0, outputs=[str(p) for p in outputs or []])
    except BidsKetamineError as exc:
        status.update(ok=False, exit_code=exc.exit_code, message=str(exc))
    except Exception as exc:
        from bids_ketamine.io.failures import describe, input_paths

        # an OS or resource failure (full disk, unreadable input, out of memory) has its documented code
        mapped = describe(exc, outputs=[Path(cfg.output_dir), Path(cfg.work_dir)], inputs=input_paths(inputs),
                          who=f"sub-{subject} {analysis}")
        if mapped is not None:
            status.update(ok=False, exit_code=mapped.exit_code, message=str(mapped))
        else:  # a bug, not bad data: keep the traceback for the user to send us
            status.update(ok=False, exit_code=1, message=_crash_message(cfg, subject, analysis, exc))
    return status


def _crash_message(cfg, subject: str, analysis: str, exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    text = traceback.format_exc()
    try:
        log_dir = Path(cfg.output_dir) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        crash = log_dir / f"sub-{subject}_{analysis}_crash.txt"
        crash.write_text(text)
        where = f"traceback in {crash}"
    except OSError:
        LOG.error("sub-%s %s: %s", subject, analysis, text)
        where = "traceback in the log above"
    return f"unexpected error {type(exc).__name__}: {first} ({where})"


def quiet_nipype(work: Path, verbose: int) -> None:
    """Keep nipype's per-node messages out of the log unless -vv: our own log says what runs and how it ended.

    A config file in the work folder (``NIPYPE_CONFIG_DIR``) carries the levels to the worker processes too.
    """
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = "INFO" if verbose >= 2 else "WARNING"
    # crash files go to the work folder: nipype's default is the current directory (the user's, or a repo's)
    settings = {"execution": {"crashfile_format": "txt", "crashdump_dir": str(work / "crash"),
                              "remove_unnecessary_outputs": "false", "check_version": "false"},
                "logging": {"workflow_level": level, "interface_level": level, "utils_level": level},
                "monitoring": {"enabled": "false"}}
    config_dir = work / "nipype_config"
    config_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for section, values in settings.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value}" for key, value in values.items())
    (config_dir / "nipype.cfg").write_text("\n".join(lines) + "\n")
    os.environ["NIPYPE_CONFIG_DIR"] = str(config_dir)
    nipype_config.update_config(settings)
    nipype_logging.update_logging(nipype_config)


def init_participant_wf(state_file: Path, jobs: list[tuple[str, str]], work_dir: Path, omp_nthreads: int = 1):
    """A workflow with one ``RunAnalysis`` node per (subject, analysis).

    Each node declares ``omp_nthreads`` processors, so MultiProc runs at most ``nprocs / omp_nthreads`` at once.
    """
    from nipype.pipeline import engine as pe

    from bids_ketamine.workflows.interfaces import RunAnalysis

    wf = pe.Workflow(name="bids_ketamine_participant", base_dir=str(work_dir))
    for subject, analysis in jobs:
        node = pe.Node(RunAnalysis(state_file=str(state_file), subject=subject, analysis=analysis),
                       name=f"sub_{subject}_{analysis}", mem_gb=NODE_MEM_GB.get(analysis, 2.0), n_procs=omp_nthreads,
                       overwrite=True)
        wf.add_nodes([node])
    return wf


def run_participant_jobs(cfg, inputs: dict, jobs: list[tuple[str, str]], *, dataset_links: dict,
                         container: dict) -> list[dict[str, Any]]:
    """Run every job; return their statuses (in job order)."""
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    # a name of its own per run: concurrent jobs share the default work folder (inside OUTPUT_DIR)
    from filelock import FileLock

    state_file = work / f"participant_state_{uuid.uuid4().hex}.pkl"
    owner = FileLock(str(state_file) + ".lock", timeout=0)
    owner.acquire()  # held while the run lives: a killed run's state file is unlocked (remove_stale_states)
    try:
        with open(state_file, "wb") as handle:
            pickle.dump({"config": cfg, "inputs": inputs, "dataset_links": dataset_links, "container": container},
                        handle)
        return _run_jobs(cfg, state_file, jobs, work)
    finally:
        state_file.unlink(missing_ok=True)
        Path(owner.lock_file).unlink(missing_ok=True)
        owner.release()


def remove_stale_states(work_dir: Path) -> list[str]:
    """Remove the state files (and per-job status files) that killed participant runs left in the work folder;
    a state file whose lock a live run holds is kept."""
    import re

    from filelock import FileLock, Timeout

    work = Path(work_dir)
    removed: list[str] = []
    if not work.is_dir():
        return removed
    for path in sorted(work.glob("participant_state_*.pkl*")):
        match = re.match(r"^(participant_state_[0-9a-f]{32})\.pkl", path.name)
        if not match or path.name.endswith(".lock") or not path.exists():
            continue
        lock = FileLock(str(work / f"{match.group(1)}.pkl.lock"), timeout=0)
        try:
            lock.acquire()
        except (Timeout, OSError):
            continue
        try:
            for leftover in sorted(work.glob(f"{match.group(1)}*")):
                if leftover.name.endswith(".lock"):
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(str(leftover))
        finally:
            Path(lock.lock_file).unlink(missing_ok=True)
            lock.release()
    return removed


#: How often the local (MultiProc) scheduler looks for finished participant jobs, in seconds.
LOCAL_POLL_SECONDS = 0.1


def _run_jobs(cfg, state_file: Path, jobs: list[tuple[str, str]], work: Path) -> list[dict[str, Any]]:
    if cfg.stop_on_first_crash or (cfg.nprocs == 1 and cfg.use_plugin is None):
        statuses = []
        for subject, analysis in jobs:
            LOG.info("sub-%s: %s ...", subject, analysis)
            status = run_one(str(state_file), subject, analysis)
            statuses.append(status)
            _log_status(status)
            if cfg.stop_on_first_crash and not status["ok"]:
                break
        return statuses
    quiet_nipype(work, cfg.verbose)
    wf = init_participant_wf(state_file, jobs, work, omp_nthreads=cfg.omp_nthreads)
    # forkserver: worker processes must not inherit the parent's threads and locks (fork after threads deadlocks)
    plugin, plugin_args = "MultiProc", {"n_procs": cfg.nprocs, "raise_insufficient": False,
                                        "mp_context": "forkserver"}
    if cfg.mem_gb:
        plugin_args["memory_gb"] = cfg.mem_gb
    if cfg.use_plugin is not None:
        import yaml

        settings = yaml.safe_load(Path(cfg.use_plugin).read_text()) or {}
        plugin = settings.get("plugin", plugin)
        plugin_args = {**plugin_args, **settings.get("plugin_args", {})}
        # nipype's SLURM/SGE/PBS plugins name jobs after $LOGNAME and fail with a KeyError where batch or
        # container environments do not set it
        os.environ.setdefault("LOGNAME", _login_name())
    local = plugin == "MultiProc"
    if local:
        # nipype checks for finished jobs every poll_sleep_duration (default 2 s) and only then starts new ones:
        # with participant jobs of 1-2 s that left the cores idle about half the time (the demo's 96 T1w jobs
        # took ~2 s each in wall time whatever their CPU time); a local pool can afford a 0.1 s poll
        wf.config["execution"]["poll_sleep_duration"] = LOCAL_POLL_SECONDS
        plugin = _resilient_multiproc()(plugin_args=plugin_args)  # a killed worker must not hang the workflow
    try:
        wf.run(plugin=plugin, plugin_args=plugin_args)
    except (RuntimeError, BrokenProcessPool) as exc:  # nodes whose process died; said per participant below
        LOG.debug("the participant workflow reported: %s", exc)
    statuses = []
    lost = []
    for subject, analysis in jobs:
        path = work / wf.name / f"sub_{subject}_{analysis}" / "status.json"
        if path.exists():
            statuses.append(json.loads(path.read_text()))
        else:
            lost.append((subject, analysis))
            statuses.append(None)
    if lost and local:
        # a worker died (the OOM killer sends SIGKILL) and took the pool's other jobs with it: run each such job
        # alone in a process of its own, so the one that dies again is named and the others finish
        LOG.warning("%d participant job(s) lost their worker process; running them one at a time", len(lost))
        again = {job: run_isolated(state_file, *job) for job in lost}
    else:
        again = {job: {"subject": job[0], "analysis": job[1], "ok": False, "exit_code": 1,
                       "message": f"the workflow node did not finish (see nipype crash files in {work})"}
                 for job in lost}
    statuses = [s if s is not None else again[job] for s, job in zip(statuses, jobs)]
    for status in statuses:
        _log_status(status)
    return statuses


def _run_and_save(state_file: str, subject: str, analysis: str, status_path: str) -> None:
    folder = Path(status_path).with_suffix("")
    folder.mkdir(exist_ok=True)
    os.chdir(folder)  # a job runs in a folder of its own (as nipype's nodes do): its process can be told apart
    status = run_one(state_file, subject, analysis)
    Path(status_path).write_text(json.dumps(status))


def run_isolated(state_file: Path, subject: str, analysis: str) -> dict[str, Any]:
    """Run one job in a fresh process; a process that dies without a status is a killed worker (exit 75)."""
    import multiprocessing as mp

    from bids_ketamine.io.failures import killed_worker_error

    status_path = Path(state_file).with_name(f"{Path(state_file).stem}_sub-{subject}_{analysis}_status.json")
    status_path.unlink(missing_ok=True)
    process = mp.get_context("forkserver").Process(target=_run_and_save,
                                                   args=(str(state_file), subject, analysis, str(status_path)))
    process.start()
    process.join()
    try:
        if status_path.exists():
            return json.loads(status_path.read_text())
    finally:
        status_path.unlink(missing_ok=True)
        shutil.rmtree(status_path.with_suffix(""), ignore_errors=True)
    error = killed_worker_error(f"sub-{subject} {analysis}", process.exitcode)
    return {"subject": subject, "analysis": analysis, "ok": False, "exit_code": error.exit_code,
            "message": str(error)}


def _resilient_multiproc():
    from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer

    class _ResilientMultiProc(MultiProcPlugin):
        """nipype's MultiProc that survives a worker process killed from outside (the OOM killer).

        nipype reads results in a future's callback; when a worker dies the callback raises BrokenProcessPool,
        the result never arrives and MultiProc waits forever. Here the failed futures count as crashed nodes and
        the broken pool is replaced, so the workflow ends and says which jobs did not finish.
        """

        def _async_callback(self, args):
            if args.cancelled() or args.exception() is not None:
                return  # read by _get_result
            super()._async_callback(args)

        def _get_result(self, taskid):
            result = super()._get_result(taskid)
            if result is not None:
                return result
            future = self._task_obj.get(taskid)
            if future is not None and future.done() and (future.cancelled() or future.exception() is not None):
                self._renew_pool()
                why = "cancelled" if future.cancelled() else f"{type(future.exception()).__name__}: " \
                                                             f"{future.exception()}"
                # a crashed node, as nipype records one (its traceback is a list of lines)
                return {"taskid": taskid, "result": None, "traceback": [f"the worker process died ({why})\n"]}
            return None

        def _renew_pool(self):
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            if getattr(self.pool, "_broken", False):
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = ProcessPoolExecutor(max_workers=self.processors, initializer=process_initializer,
                                                initargs=(self._cwd,),
                                                mp_context=mp.get_context(self.plugin_args.get("mp_context")))

    return _ResilientMultiProc



def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user with no passwd entry
        return f"uid{os.getuid()}"


def _log_status(status: dict[str, Any]) -> None:
    if status["ok"]:
        LOG.info("sub-%s: %s done (%d files)", status["subject"], status["analysis"], len(status.get("outputs", [])))
    else:
        LOG.error("sub-%s: %s failed (exit %d): %s", status["subject"], status["analysis"], status["exit_code"],
                  status["message"])
