"""Container smoke test: set podman up, build the image (or reuse the build of identical inputs), then run the demo
study through it as Apptainer would on a cluster node: no network, read-only root, an arbitrary uid, data mounted
read-only. Output files are compared with the committed list and checked with bids-validator-deno.

Needs root and apt (the CI machine); skipped with the reason otherwise. Deselect with ``-m "not container"``.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from bids_ketamine.__about__ import __version__

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
CI_DIR = REPO / ".ci" / "container"
CONTAINERS_CONF = CI_DIR / "containers.conf"
DEMO = runpy.run_path(str(CI_DIR / "demo_run.py"))
UID = "12345:12345"
#: the runtime of a cluster node: no network, read-only image, the caller's uid, a private /tmp
NODE_LIKE = ["--rm", "--network", "none", "--read-only", "--user", UID]
#: measured numbers, printed at the end of the module (run pytest with -s to see them)
FIGURES: dict[str, float | str] = {}


def _env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(CONTAINERS_CONF))


def _podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["podman", *args], env=_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:6])} ... exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def image() -> str:
    """The image reference, after an idempotent podman setup and a build that is skipped when inputs are unchanged."""
    if os.environ.get("BIDS_KETAMINE_SKIP_CONTAINER"):
        pytest.skip("BIDS_KETAMINE_SKIP_CONTAINER is set")
    if os.geteuid() != 0:
        pytest.skip("the container smoke test installs podman and runs it rootful: it needs root (CI runs as root)")
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.skip("neither podman nor apt-get is available to install it")
    setup = subprocess.run([str(CI_DIR / "setup_podman.sh")], env=_env(), capture_output=True, text=True,
                           timeout=1800, check=False)
    assert setup.returncode == 0, f"podman setup failed:\n{setup.stdout[-2000:]}\n{setup.stderr[-4000:]}"
    started = time.perf_counter()
    build = subprocess.run([str(CI_DIR / "build_image.sh")], env=_env(), capture_output=True, text=True,
                           timeout=1800, check=False)
    assert build.returncode == 0, f"image build failed:\n{build.stderr[-6000:]}"
    ref = build.stdout.strip().splitlines()[-1]
    reused = "reusing" in build.stderr
    FIGURES["build seconds"] = round(time.perf_counter() - started, 1)
    FIGURES["build reused"] = str(reused)
    size = _podman("image", "inspect", "--format", "{{.Size}}", ref).stdout.strip()
    FIGURES["image size MB"] = round(int(size) / 1e6, 1)
    yield ref
    print("\ncontainer figures: " + json.dumps(FIGURES))


def _inspect(ref: str) -> dict:
    return json.loads(_podman("image", "inspect", ref).stdout)[0]


def test_image_metadata(image):
    info = _inspect(image)
    config = info.get("Config", {})
    labels = config.get("Labels") or info.get("Labels") or {}
    assert labels["org.opencontainers.image.version"] == __version__
    entrypoint = config["Entrypoint"]
    assert len(entrypoint) == 1 and entrypoint[0].startswith("/") and entrypoint[0].endswith("/bids-ketamine")
    user = config.get("User", "")
    assert user and user.split(":")[0] not in ("0", "root"), f"image runs as {user!r}"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["BIDS_KETAMINE_CONTAINER_IMAGE"] == f"bids_ketamine:{__version__}"
    assert env["OMP_NUM_THREADS"] == "1"


def test_version_as_arbitrary_uid_read_only(image):
    proc = _podman("run", *NODE_LIKE, image, "--version")
    assert proc.stdout.strip() == f"bids-ketamine {__version__}"


def test_command_on_path_and_no_build_leftovers(image):
    """The command is on PATH for `apptainer exec`; the build-time certificate and pip.conf did not stay behind."""
    script = ("command -v bids-ketamine && command -v bids-validator-deno && "
              "test ! -e /etc/pip.conf && test ! -e /opt/build-ca && echo clean")
    proc = _podman("run", *NODE_LIKE, "--entrypoint", "/bin/sh", image, "-c", script)
    lines = proc.stdout.split()
    assert lines[0] == "/opt/bids_ketamine/bin/bids-ketamine" and lines[-1] == "clean", proc.stdout


def test_scientific_stack_imports_offline_as_arbitrary_uid(image):
    """Caches (matplotlib, nipype, the app's) land in writable places; the default atlas comes from inside."""
    code = ("import matplotlib.pyplot, nipype, nilearn.maskers, sklearn, bids_ketamine.atlas as a; "
            "atlas = a.load_default_atlas(); print(len(atlas.labels))")
    proc = _podman("run", *NODE_LIKE, "--entrypoint", "python", image, "-c", code)
    assert int(proc.stdout.strip().splitlines()[-1]) > 80
    assert "read-only" not in proc.stderr.lower(), proc.stderr


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory) -> tuple[list[str], Path]:
    """The demo's analyses and its synthetic study (size 'small'), written once on the host."""
    analyses = DEMO["demo_analyses"]()
    data = tmp_path_factory.mktemp("container_demo") / "data"
    started = time.perf_counter()
    DEMO["write_demo_study"](data, analyses)
    FIGURES["study writing seconds"] = round(time.perf_counter() - started, 1)
    return analyses, data


def test_validator_runs_offline_read_only(image, demo_study):
    """bids-validator-deno (deno) works with no network, a read-only root and an unknown uid, and the demo study
    it checks is valid BIDS (else participant level would stop with exit 16)."""
    analyses, data = demo_study
    proc = _podman("run", *NODE_LIKE, "-v", f"{data}:/data:ro", "--entrypoint", "bids-validator-deno", image,
                   "/data", "--format", "json", check=False)
    report = json.loads(proc.stdout)
    assert "issues" in report, proc.stderr[-2000:]
    if analyses:  # a study with data parts is valid BIDS; with no part written it lacks subject folders
        errors = [i for i in report["issues"]["issues"] if i.get("severity") == "error"]
        assert proc.returncode == 0 and not errors, f"the demo study is not valid BIDS: {errors[:3]}"


def test_demo_study_through_the_image(image, demo_study, tmp_path):
    analyses, data = demo_study
    expected_analyses, expected_files = DEMO["read_expected"]()
    assert analyses == expected_analyses, (
        f"this version's demo runs {analyses}, but .ci/container/expected_files.txt was made for "
        f"{expected_analyses}: run .ci/container/update_expected_files.sh and commit the list")
    if not analyses:
        pytest.skip("no analysis is built in this version: the demo runs nothing through the image")
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the container's uid 12345 must be able to write here, as a cluster user in their scratch
    mounts = ["-v", f"{data}:/data:ro", "-v", f"{out}:/out"]
    started = time.perf_counter()
    for level in ("participant", "group"):
        proc = _podman("run", *NODE_LIKE, *mounts, image, "/data", "/out", level,
                       *DEMO["level_arguments"](analyses), check=False, timeout=1200)
        assert proc.returncode == 0, f"{level} level exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    FIGURES["container demo seconds"] = round(time.perf_counter() - started, 1)

    found = DEMO["list_outputs"](out)
    missing, extra = sorted(set(expected_files) - set(found)), sorted(set(found) - set(expected_files))
    assert not missing and not extra, (
        f"outputs differ from .ci/container/expected_files.txt: missing {missing[:10]}, unexpected {extra[:10]} "
        "(intended? run .ci/container/update_expected_files.sh)")

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    containers = [g.get("Container", {}) for g in description.get("GeneratedBy", [])]
    assert {"Type": "docker", "Tag": f"bids_ketamine:{__version__}"} in containers

    proc = _podman("run", *NODE_LIKE, "-v", f"{out}:/out:ro", "--entrypoint", "bids-validator-deno", image,
                   "/out", "--format", "json", check=False)
    errors = [i for i in json.loads(proc.stdout)["issues"]["issues"] if i.get("severity") == "error"]
    assert not errors, f"bids-validator-deno finds errors in the outputs: {errors[:3]}"
