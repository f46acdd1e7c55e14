"""The README demo as a new user runs it: wall time against the 300 s target, a stage breakdown, peak memory, and
whether the demo recovers the effects its generator planted.

    .venv/bin/python benchmarks/bench_demo.py                # default size and seed, as the README runs it
    .venv/bin/python benchmarks/bench_demo.py --size small   # the tests' small demo (checks wiring, not power)
    BIDS_KETAMINE_CACHE=$(mktemp -d) .venv/bin/python benchmarks/bench_demo.py   # as on a fresh machine: no
                                                             # cached simulated MRS basis

The figure excludes `pip install` (network-bound); the README's first command adds it.

Why a benchmark and not a test: the README-size demo takes about 200 s on a quiet 2-core machine and 400-1000 s on a
shared one, more than the whole suite may spend on one check. The planted-effect check itself
(``planted_effects_missed``) is one function used here; the truth comes from the generator's
``code/ground_truth.json``, the findings from ``findings.json``. The stage breakdown reads the times at which the
demo prints its stage lines and the modification times of each analysis' participant outputs; the machine's load
average is printed with it, since the figure depends on it.
Exit status: 0 when the demo finished, recovered its planted effects and met the target; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300.0


def planted_effects_missed(root: Path) -> list[str]:
    """What the demo in ``root`` failed to recover of its planted effects (empty: all recovered)."""
    truth = json.loads((root / "bids" / "code" / "ground_truth.json").read_text())
    doc = json.loads((root / "outputs" / "group" / "findings.json").read_text())["analyses"]
    missed = []
    discovery = doc["structural"]["values"]["discovery"]
    if not (discovery["p_permutation"] < 0.05 and discovery["bac_ci_low"] > 0.5):
        missed.append(f"structural discovery BAC {discovery['bac']} [{discovery['bac_ci_low']}, "
                      f"{discovery['bac_ci_high']}], permutation p {discovery['p_permutation']}")
    planted_pcs = len(truth["connectivity"]["components"])
    found_pcs = doc["connectivity"]["values"]["n_significant_components"]
    if found_pcs != planted_pcs or doc["connectivity"]["verdict"] != "replicates":
        missed.append(f"connectivity: {found_pcs} significant PCs for {planted_pcs} planted, verdict "
                      f"{doc['connectivity']['verdict']!r}")
    planted = truth["spectroscopy"]["glx_tnaa_per_minute"]["pretreatment_x_time"]
    glx = doc["spectroscopy"]["values"]["glx_pretreatment_x_time"]
    if not (planted < 0 and glx["estimate"] < 0 and glx["ci_low"] <= planted <= glx["ci_high"]):
        missed.append(f"Glx/tNAA pretreatment x time {glx['estimate']} [{glx['ci_low']}, {glx['ci_high']}] for "
                      f"planted {planted}")
    return missed


def _participant_spans(out_dir: Path, t0: float) -> dict[str, tuple[float, float, int]]:
    """Per datatype folder of the participant outputs (anat, func, mrs, figures; ``inventory`` for files directly in
    ``sub-*/``): first and last file time (s after start) and file count. Files written before ``t0`` (a resumed
    run) are counted too, with negative times."""
    groups: dict[str, list[float]] = {}
    for path in out_dir.glob("sub-*/**/*"):
        if path.is_file():
            key = path.parent.name if not path.parent.name.startswith(("sub-", "ses-")) else "inventory"
            groups.setdefault(key, []).append(path.stat().st_mtime - t0)
    return {key: (min(times), max(times), len(times)) for key, times in sorted(groups.items())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default=None, help="demo size (default: the demo's own default, as the README)")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="bench_demo_"))
    command = [str(Path(sys.executable).parent / "bids-ketamine"), "demo", str(workdir)]
    if args.size:
        command += ["--size", args.size]
    load_before = os.getloadavg()
    t0 = time.time()
    stages: list[tuple[float, str]] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            if line.startswith("demo:"):
                stages.append((time.time() - t0, line.strip()))
            tail = (tail + [line.rstrip()])[-40:]
        code = proc.wait()
    wall = time.time() - t0
    load_after = os.getloadavg()
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(f"command          : {' '.join(command)}")
    print(f"load average     : {load_before[0]:.2f} at start, {load_after[0]:.2f} at end (1-min)")
    print(f"exit code        : {code}")
    for at, text in stages:
        print(f"  {at:7.1f} s  {text[:100]}")
    out_dir = workdir / "outputs"
    if out_dir.is_dir():
        print("participant outputs per datatype folder (first - last file, s after start):")
        for name, (first, last, count) in _participant_spans(out_dir, t0).items():
            print(f"  {name:14s} {first:7.1f} - {last:7.1f} s  ({count} files)")
    print(f"wall time        : {wall:.1f} s; target {TARGET_SECONDS:.0f} s; ratio {wall / TARGET_SECONDS:.2f}")
    print(f"peak memory      : {peak_mib:.0f} MiB (largest single process)")
    if code != 0:
        print("\n".join(tail))
        return 1
    missed = planted_effects_missed(workdir)
    print("planted effects  : " + ("all recovered" if not missed else "MISSED: " + "; ".join(missed)))
    return 0 if not missed and wall <= TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
