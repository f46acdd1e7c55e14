"""Null calibration on real-shaped cortical maps at 360 fsLR parcels (the acceptance of issue 13, point 3).

Run: .venv/bin/python benchmarks/bench_surface_nulls.py [--pairs N] [--n-null N] [--lengths 15,30,60] [--n-jobs N]

Maps: smooth random fields on the real fsLR 32k midthickness cortex (heat diffusion of white noise, the right
hemisphere's noise sharing half its variance with the left's at homologous vertices), averaged in the 360 Glasser
parcels of the built-in parcellation, i.e. the maps the group level calibrates its nulls on
(:func:`bids_ketamine.surface_atlas.random_parcel_maps`). Every pair is two independent maps, so a calibrated null
rejects at p < 0.05 in 5 % of pairs. Nulls: the spin test (nearest rotated parcel, medial wall rotating along; the
``auto`` default on surface parcellations), the spin test with Vasa's and with the Hungarian assignment, Moran
spectral randomisation on geodesic distances per hemisphere, and the naive parcel shuffle (with ``--brainsmash-pairs``
brainsmash on geodesic distances too).

Prints, per map set and null, the false-positive rate with its Clopper-Pearson 95 % interval, whether the default's
rate lies in the 3-7 % band, the wall and CPU time, and peak memory (resource.getrusage). Geodesic distances are
cached in a temporary folder for the run.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_ketamine.connectivity import genes as gn  # noqa: E402
from bids_ketamine.surface_atlas import builtin_surface_atlas, random_parcel_maps  # noqa: E402


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--n-null", type=int, default=199)
    parser.add_argument("--lengths", default="15,30,60", help="diffusion lengths (mm) of the map sets")
    parser.add_argument("--brainsmash-pairs", type=int, default=0)
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    atlas = builtin_surface_atlas("Glasser")
    names = atlas.with_geometry()
    hemis = atlas.hemispheres(names)
    t0, c0 = time.perf_counter(), cpu_s()
    with tempfile.TemporaryDirectory() as cache:
        distance = atlas.geodesic_distances(names, cache_dir=cache)
    sphere, wall = atlas.sphere_centroids(names), atlas.wall_centroids(names)
    print(f"Glasser: {len(names)} parcels; geometry (geodesic distances, sphere and wall centroids) "
          f"{time.perf_counter() - t0:.1f} s wall, {cpu_s() - c0:.1f} s CPU")
    settings = gn.SurrogateSettings(method="spin", per_hemisphere=True)
    others = ("spin_vasa", "spin_hungarian", "moran")
    rows = []
    for k, length in enumerate(float(x) for x in args.lengths.split(",")):
        t0, c0 = time.perf_counter(), cpu_s()
        maps = random_parcel_maps(atlas, names, 2 * args.pairs, length_mm=length, seed=args.seed + k)
        t_maps = time.perf_counter() - t0
        result = gn.null_calibration(None, hemispheres=hemis, n_pairs=args.pairs, n_null=args.n_null,
                                     length_mm=length, seed=args.seed + 100 + k, settings=settings,
                                     other_methods=others, maps=maps, distance=distance, sphere=sphere, wall=wall,
                                     geodesic=True, n_jobs=args.n_jobs)
        wall_s, cpu = time.perf_counter() - t0, cpu_s() - c0
        print(f"\nmap set: diffusion length {length:g} mm, {args.pairs} pairs, {args.n_null} nulls per pair "
              f"(maps {t_maps:.1f} s; set {wall_s:.1f} s wall, {cpu:.1f} s CPU)")
        for _, row in result.table.iterrows():
            mark = " <- default" if row["configured"] else ""
            print(f"  {row['method']:<24} FPR {row['false_positive_rate']:.3f} "
                  f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}]{mark}")
            rows.append((length, row["method"], float(row["false_positive_rate"]), bool(row["configured"])))
        if args.brainsmash_pairs:
            bs = gn.null_calibration(None, hemispheres=hemis, n_pairs=args.brainsmash_pairs, n_null=args.n_null,
                                     length_mm=length, seed=args.seed + 200 + k,
                                     settings=gn.SurrogateSettings(method="brainsmash", per_hemisphere=True),
                                     maps=maps[:2 * args.brainsmash_pairs], distance=distance, geodesic=True,
                                     n_jobs=args.n_jobs)
            row = bs.table.iloc[0]
            print(f"  {row['method']:<24} FPR {row['false_positive_rate']:.3f} "
                  f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] ({args.brainsmash_pairs} pairs)")
    default = [r for r in rows if r[3]]
    inside = all(0.03 <= r[2] <= 0.07 for r in default)
    print(f"\ndefault null ({default[0][1] if default else '?'}) FPR over map sets: "
          + ", ".join(f"{r[2]:.3f}" for r in default) + f"; all within 3-7 %: {inside}")
    print(f"peak memory {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
