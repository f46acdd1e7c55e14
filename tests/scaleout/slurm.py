"""A real one-node Slurm cluster for the tests: Debian's slurm-wlm and munge, private config, started and torn down.

Why a private cluster rather than the distribution's services: nothing under /etc or /run is touched (the munge key,
sockets, state and spool folders, logs and pid files all live in one temporary folder), the daemons run in the
foreground as children of the test so they can be stopped by their own process ids, and the ports are chosen free.
The folder sits directly under the system temporary folder with mode 0755 because munged refuses a socket in a
folder that not everyone may traverse (pytest's own temporary folders are 0700).
Process tracking is ``proctrack/linuxproc`` and task binding ``task/none``: no cgroups, which a container sandbox
usually does not delegate. Finished jobs are recorded by ``jobcomp/filetxt`` (no slurmdbd needed) so the test can
read every array task's exit code after Slurm has forgotten the job.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Debian packages: the metapackage pulls slurmctld, slurmd, slurm-client and munge.
SLURM_PACKAGES = ("slurm-wlm",)
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here; the message says exactly why (the test skips with it)."""


def _have_slurm() -> bool:
    return all(shutil.which(name) for name in (*DAEMONS, "sbatch", "squeue", "sinfo", "scontrol"))


def ensure_slurm() -> float:
    """Install Debian's slurm-wlm when missing (root only); the seconds the install took (0 when present)."""
    if _have_slurm():
        return 0.0
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable("slurm-wlm is not installed and this user cannot install it (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", *SLURM_PACKAGES]
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:  # a stale package list: refresh once and retry
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not _have_slurm():
        raise SlurmUnavailable(f"apt-get install slurm-wlm failed: {proc.stderr.strip()[-300:]}")
    return time.monotonic() - started


def versions() -> dict[str, str]:
    """Installed versions of Slurm and munge (program and Debian package), for the test's report."""
    slurm = subprocess.run(["slurmd", "-V"], capture_output=True, text=True).stdout.strip()
    munge = subprocess.run(["munged", "--version"], capture_output=True, text=True)
    packages = subprocess.run(["dpkg-query", "-W", "-f=${Package}=${Version} ", "slurmd", "slurmctld", "munge"],
                              capture_output=True, text=True).stdout.strip()
    return {"slurm": slurm, "munge": (munge.stdout or munge.stderr).strip().splitlines()[0], "packages": packages}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _real_memory_mb() -> int:
    """MemTotal of /proc/meminfo in MB, as slurmd measures it (a larger RealMemory would drain the node)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("/proc/meminfo has no MemTotal line")


def slurm_conf(folder: Path, *, host: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    """A minimal slurm.conf for one node whose every path lies under ``folder``."""
    return "\n".join([
        "ClusterName=bidsketamine",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={folder / 'munge.socket'}",
        f"StateSaveLocation={folder / 'state'}",
        f"SlurmdSpoolDir={folder / 'spool'}",
        f"SlurmctldPidFile={folder / 'slurmctld.pid'}",
        f"SlurmdPidFile={folder / 'slurmd.pid'}",
        f"SlurmctldLogFile={folder / 'slurmctld.log'}",
        f"SlurmdLogFile={folder / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={folder / 'jobcomp.txt'}",
        "SwitchType=switch/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "MinJobAge=3600",
        "MaxArraySize=10001",
        "SchedulerParameters=sched_interval=2,sched_min_interval=100000",  # start the next task at once
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
        f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
        "",
    ])


@dataclass
class SlurmCluster:
    """A running one-node cluster; ``env`` is what ``sbatch``/``squeue`` need to reach it (``SLURM_CONF``)."""

    folder: Path
    host: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def logs(self) -> str:
        """The daemons' log tails, for a failure message."""
        parts = []
        for name in (*DAEMONS, "slurmctld.log", "slurmd.log"):
            path = self.folder / (f"{name}.out" if name in DAEMONS else name)
            if path.exists():
                parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(parts)

    def completed_jobs(self) -> list[dict[str, str]]:
        """jobcomp/filetxt records: one dict per finished job or array task (JobId, JobState, ExitCode...)."""
        path = self.folder / "jobcomp.txt"
        if not path.exists():
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in path.read_text().splitlines() if line.strip()]

    def job_states(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job`` of a job or of every task of an array (kept for MinJobAge after they end)."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False, timeout=30)
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]

    def cancel_all(self, timeout: float = 120) -> None:
        """Cancel every job still queued or running and wait until they are gone (their processes must not outlive
        the daemons)."""
        if self.processes.get("slurmctld") is None or self.processes["slurmctld"].poll() is not None:
            return
        jobs = self.run("squeue", "-h", "-o", "%A", check=False, timeout=30).split()
        if not jobs:
            return
        self.run("scancel", *jobs, check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.run("squeue", "-h", check=False, timeout=30).strip():
            time.sleep(1)

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged (in that order) by their process ids; wait for each."""
        for name in reversed(DAEMONS):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


def _wait(predicate, timeout: float, what: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with code {proc.returncode} while waiting for {what}:\n"
                                       f"{cluster.logs()}")
        if predicate():
            return
        time.sleep(0.5)
    raise SlurmUnavailable(f"timed out after {timeout:.0f} s waiting for {what}:\n{cluster.logs()}")


def start_cluster(cpus: int = 2, timeout: float = 90) -> SlurmCluster:
    """Write the munge key and slurm.conf, start munged, slurmctld and slurmd, and wait until the node is idle."""
    folder = Path(tempfile.mkdtemp(prefix="bids_ketamine_slurm_"))
    folder.chmod(0o755)
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    key = folder / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host=host, cpus=cpus, memory_mb=_real_memory_mb(),
                               ctld_port=_free_port(), slurmd_port=_free_port()))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(folder=folder, host=host, env=env)
    commands = {
        "munged": ["munged", "--foreground", f"--key-file={key}", f"--socket={folder / 'munge.socket'}",
                   f"--pid-file={folder / 'munged.pid'}", f"--seed-file={folder / 'munged.seed'}",
                   f"--log-file={folder / 'munged.log'}"],
        "slurmctld": ["slurmctld", "-D", "-i", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", host],
    }
    try:
        for name, command in commands.items():
            with open(folder / f"{name}.out", "wb") as out:
                cluster.processes[name] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                           stdin=subprocess.DEVNULL)
            if name == "munged":
                _wait(lambda: (folder / "munge.socket").exists(), timeout, "munged's socket", cluster)
            elif name == "slurmctld":
                _wait(lambda: cluster.run("scontrol", "ping", check=False, timeout=10).find("UP") >= 0, timeout,
                      "slurmctld to answer", cluster)
        _wait(lambda: cluster.run("sinfo", "-h", "-N", "-o", "%t", check=False, timeout=10).strip() == "idle",
              timeout, "the node to be idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def destroy(cluster: SlurmCluster) -> None:
    """Cancel leftover jobs, stop every daemon and remove the cluster's folder (nothing is left running or on disk)."""
    try:
        cluster.cancel_all()
    finally:
        cluster.stop()
    shutil.rmtree(cluster.folder, ignore_errors=True)
