"""Benchmark: the synthetic BOLD cohort budget (20 subjects x 2 sessions <= 250 MB and <= 60 s, byte-identical).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_synthetic_bold.py [--subjects 20]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import shutil
import tempfile
import time
from pathlib import Path


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.synthetic.bold import write_synthetic_bold_cohort

    t0 = time.perf_counter()
    load_default_atlas()
    atlas_s = time.perf_counter() - t0
    subjects = [f"{i + 1:03d}" for i in range(args.subjects)]
    conditions = {"placebo": "placebo", "ketamine": "ketamine"}
    digests, seconds, sizes = [], [], []
    for _ in range(2):
        root = Path(tempfile.mkdtemp(prefix="bench_synbold_"))
        try:
            t0 = time.perf_counter()
            write_synthetic_bold_cohort(root / "raw", root / "fmriprep", subjects, conditions, n_components=3,
                                        seed=args.seed)
            seconds.append(time.perf_counter() - t0)
            sizes.append(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 2**20)
            digests.append(_digest(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"atlas load (once per process): {atlas_s:.1f} s")
    print(f"{args.subjects} subjects x 2 sessions: {min(seconds):.1f} s (runs: {', '.join(f'{s:.1f}' for s in seconds)}; "
          f"target <= 60 s), {sizes[0]:.0f} MB (target <= 250 MB), peak memory {peak:.0f} MB")
    print(f"byte-identical across two runs with the same seed: {digests[0] == digests[1]}")


if __name__ == "__main__":
    main()
