"""Benchmark: simulating basis sets (uncached and cached), the synthetic fMRS cohort, and preprocessing.

Run: ``.venv/bin/python benchmarks/bench_mrs_simulate.py [--cohort]``. Uses a fresh temporary cache folder so the
first simulation is a true cold start. Prints timings and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", action="store_true", help="also time the 10-subject x 2-session demo cohort")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="bench_basis_"))
    os.environ["BIDS_KETAMINE_CACHE"] = str(cache)
    import numpy as np

    from bids_ketamine.spectroscopy.simulate import DEFAULT_METABOLITES, simulate_basis

    cases = [("3T PRESS TE 30 ms, 2048 pts", dict(spectrometer_frequency=123.2, echo_time=0.030, sequence="PRESS",
                                                  dwell_time=2.5e-4, n_points=2048)),
             ("7T STEAM TE 11 ms, 4096 pts", dict(spectrometer_frequency=297.22, echo_time=0.011, sequence="STEAM",
                                                  mixing_time=0.0, dwell_time=8.33e-5, n_points=4096)),
             ("3T sLASER TE 35 ms, 2048 pts", dict(spectrometer_frequency=123.2, echo_time=0.035,
                                                   sequence="sLASER", dwell_time=2.5e-4, n_points=2048))]
    print(f"default basis: {len(DEFAULT_METABOLITES)} metabolites (macromolecules are the fit model)")
    for label, kw in cases:
        cold = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            basis = simulate_basis(**kw, use_cache=False)
            cold.append(time.perf_counter() - t0)
        simulate_basis(**kw)  # fill the cache
        t0 = time.perf_counter()
        simulate_basis(**kw)
        warm = time.perf_counter() - t0
        print(f"{label:32s} simulate median {np.median(cold):6.2f} s (min {min(cold):.2f}), "
              f"cached load {1000 * warm:6.1f} ms, {basis.n_metabolites} components")
    if args.cohort:
        from bids_ketamine.spectroscopy.nifti_io import read_nifti_mrs
        from bids_ketamine.spectroscopy.preprocess import preprocess_svs
        from bids_ketamine.synthetic.mrs import write_synthetic_fmrs_cohort

        root = Path(tempfile.mkdtemp(prefix="bench_fmrs_"))
        subjects = {f"m{i + 1:03d}": ("F" if i % 2 else "M") for i in range(10)}
        t0 = time.perf_counter()
        write_synthetic_fmrs_cohort(root, subjects, {"placebo": "placebo", "naltrexone": "naltrexone"}, seed=1)
        gen = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
        print(f"synthetic cohort 10 subjects x 2 sessions x 128 transients x 4 coils: {gen:.1f} s, {size:.0f} MB "
              "(budget 60 s, 200 MB)")
        svs = read_nifti_mrs(root / "sub-m001/ses-placebo/mrs/sub-m001_ses-placebo_task-infusion_svs.nii.gz")
        ref = read_nifti_mrs(root / "sub-m001/ses-placebo/mrs/sub-m001_ses-placebo_task-infusion_mrsref.nii.gz")
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            preprocess_svs(svs.fid, dwell_time=svs.dwell_time, spectrometer_frequency=svs.spectrometer_frequency,
                           water=ref.fid)
            times.append(time.perf_counter() - t0)
        print(f"preprocessing 4 coils x 128 transients x 2048 points: median {np.median(times):.2f} s")
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)
    print(f"peak memory {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
