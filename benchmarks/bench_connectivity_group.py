"""Benchmark of the connectivity group level's resampling work.

Run: .venv/bin/python benchmarks/bench_connectivity_group.py

1. The 5000-shuffle PCA null of a 40 x 718 delta matrix (target: <= 20 s on 2 cores), with n_jobs 1 and 2.
2. Gene tests: 10 genes x 10,000 spatial surrogates (default: whole-brain) of a cortical map on the default atlas
   (target: <= 5 min),
   then the same call again to show that cached surrogates are reused.
3. Null calibration on the default atlas's cortex: false-positive rate of the spatial-surrogate test and of the naive
   parcel shuffle on unrelated smooth maps, surrogates whole-brain and per hemisphere side by side (the report's
   evidence; target: rate of the default surrogates <= 7 %).

Prints wall and CPU times, ratios to the targets and peak memory (resource.getrusage). Options:
``--skip-genes``, ``--skip-calibration``, ``--pairs N`` (calibration pairs, default 200), ``--n-null N`` (default 199),
``--n-jobs N`` (default 2).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_ketamine.connectivity import genes as gn  # noqa: E402
from bids_ketamine.connectivity import pca  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), cpu_s()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, cpu_s() - cpu


def bench_pca(n_jobs: int) -> None:
    rng = np.random.default_rng(0)
    delta = rng.standard_normal((40, 718))
    for jobs in sorted({1, n_jobs}):
        null, wall, cpu = timed(pca.shuffle_null, delta, n_shuffles=5000, seed=1, n_jobs=jobs)
        print(f"PCA null 5000 shuffles, 40 x 718, n_jobs={jobs}: wall {wall:.1f} s (target 20 s, ratio "
              f"{wall / 20:.2f}), CPU {cpu:.1f} s, null {null.shape}, peak {peak_mb():.0f} MB")


def cortex_of_default_atlas():
    from bids_ketamine.atlas import load_default_atlas

    atlas = load_default_atlas()
    labels = atlas.labels.set_index("name")
    names = labels.index[labels["structure"] == "cortex"].tolist()
    xyz = atlas.centroids_mm().loc[names].to_numpy()
    return names, xyz, labels.loc[names, "hemisphere"].astype(str).tolist()


def bench_genes(n_jobs: int) -> None:
    names, xyz, hemis = cortex_of_default_atlas()
    rng = np.random.default_rng(1)
    maps = gn.smooth_random_maps(xyz, 11, length_mm=30.0, rng=rng)
    brain = pd.Series(maps[0], index=names)
    expression = pd.DataFrame(maps[1:].T, index=names, columns=[f"GENE{i}" for i in range(10)])
    dist = gn.distance_matrix(xyz)
    with tempfile.TemporaryDirectory() as cache:
        def once():
            surr = gn.cached_surrogates(brain.to_numpy(), dist, n_surrogates=10_000, seed=3, cache_dir=cache,
                                        hemispheres=hemis, n_jobs=n_jobs)
            return gn.gene_correlations(brain, expression, surr, n_naive=10_000, seed=4)
        table, wall, cpu = timed(once)
        print(f"genes: 10 genes x 10,000 surrogates ({len(names)} cortical parcels, n_jobs={n_jobs}):"
              f" wall {wall:.1f} s (target 300 s, ratio {wall / 300:.2f}), CPU {cpu:.1f} s, peak {peak_mb():.0f} MB")
        _, wall2, _ = timed(once)
        print(f"genes again with cached surrogates: wall {wall2:.2f} s")
        print(table.round(4).to_string(index=False))


def bench_calibration(pairs: int, n_null: int, n_jobs: int) -> None:
    names, xyz, hemis = cortex_of_default_atlas()
    for length in (30.0,):
        res, wall, cpu = timed(gn.null_calibration, xyz, hemispheres=hemis, n_pairs=pairs, n_null=n_null,
                               length_mm=length, seed=20240601, both_hemisphere_modes=True, n_jobs=n_jobs)
        print(f"null calibration: {pairs} pairs x {n_null} nulls, {len(names)} cortical parcels, length "
              f"{length:g} mm: wall {wall:.0f} s, CPU {cpu:.0f} s, peak {peak_mb():.0f} MB")
        print(res.table.round(4).to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pca", action="store_true")
    parser.add_argument("--skip-genes", action="store_true")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--n-null", type=int, default=199)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_pca:
        bench_pca(args.n_jobs)
    if not args.skip_genes:
        bench_genes(args.n_jobs)
    if not args.skip_calibration:
        bench_calibration(args.pairs, args.n_null, args.n_jobs)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; peak memory {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
