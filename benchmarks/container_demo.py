"""Container figures: image size, build time, and the demo study (participant + group level) through the image
versus the same run with the host's venv. Run as root on the CI machine after .ci/container/setup_podman.sh:

    .venv/bin/python benchmarks/container_demo.py [--size small|demo] [--rebuild]

``--rebuild`` rebuilds the image without podman's layer cache (a cold build, network needed); otherwise the build
step reuses the image whose inputs are unchanged and the printed build time is that of the check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import runpy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CI_DIR = REPO / ".ci" / "container"
DEMO = runpy.run_path(str(CI_DIR / "demo_run.py"))
ENV = dict(os.environ, CONTAINERS_CONF=str(CI_DIR / "containers.conf"), OMP_NUM_THREADS="1", MPLBACKEND="Agg")
NODE_LIKE = ["--rm", "--network", "none", "--read-only", "--user", "12345:12345"]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False, **kw)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd[:8])}\n{proc.stderr[-3000:]}")
    return proc


def _levels(bids: Path, out: Path, analyses: list[str], image: str | None, extra: tuple[str, ...] = ()) -> float:
    started = time.perf_counter()
    for level in ("participant", "group"):
        args = [*DEMO["level_arguments"](analyses), *extra]
        if image is None:
            _run([str(Path(sys.executable).parent / "bids-ketamine"), str(bids), str(out), level, *args])
        else:
            _run(["podman", "run", *NODE_LIKE, "-v", f"{bids}:/data:ro", "-v", f"{out}:/out", image,
                  "/data", "/out", level, *args])
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "demo"), default="small")
    parser.add_argument("--rebuild", action="store_true", help="cold build without the layer cache")
    parser.add_argument("--skip-bids-validation", action="store_true",
                        help="time the levels even when the synthetic study fails validation")
    args = parser.parse_args()

    if args.rebuild:
        ENV["PODMAN_BUILD_EXTRA"] = "--no-cache"
    started = time.perf_counter()
    build = _run([str(CI_DIR / "build_image.sh"), *(["--force"] if args.rebuild else [])])
    build_seconds = time.perf_counter() - started
    image = build.stdout.strip().splitlines()[-1]
    size = int(_run(["podman", "image", "inspect", "--format", "{{.Size}}", image]).stdout.strip())

    analyses = DEMO["demo_analyses"]()
    figures: dict[str, object] = {"image": image, "image size MB": round(size / 1e6, 1),
                                  "build seconds": round(build_seconds, 1), "build": build.stderr.strip()[-200:],
                                  "analyses": analyses, "study size": args.size}
    with tempfile.TemporaryDirectory(prefix="bids_ketamine_bench_") as tmp:
        root = Path(tmp)
        bids = root / "bids"
        DEMO["write_demo_study"](bids, analyses, size=args.size)
        if analyses:
            out_host, out_cont = root / "out_host", root / "out_container"
            out_cont.mkdir()
            out_cont.chmod(0o777)
            extra = ("--skip-bids-validation",) if args.skip_bids_validation else ()
            figures["host seconds"] = round(_levels(bids, out_host, analyses, None, extra), 1)
            figures["container seconds"] = round(_levels(bids, out_cont, analyses, image, extra), 1)
            figures["container / host"] = round(figures["container seconds"] / figures["host seconds"], 2)
            same = DEMO["list_outputs"](out_host) == DEMO["list_outputs"](out_cont)
            figures["same output files"] = same
        else:
            figures["note"] = "no analysis is built in this version: no demo levels to time"
        started = time.perf_counter()
        _run(["podman", "run", *NODE_LIKE, image, "--version"])
        figures["container start + --version seconds"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        subprocess.run(["podman", "run", *NODE_LIKE, "-v", f"{bids}:/data:ro", "--entrypoint",
                        "bids-validator-deno", image, "/data", "--format", "json"], env=ENV, capture_output=True,
                       check=False)
        figures["container validator seconds"] = round(time.perf_counter() - started, 2)
    figures["peak memory of host runs MB (children maxrss)"] = round(
        resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
