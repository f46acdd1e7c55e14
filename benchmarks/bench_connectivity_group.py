"""Benchmark of the connectivity group level's resampling work.

Run: .venv/bin/python benchmarks/bench_connectivity_group.py

1. The 5000-shuffle PCA null of a 40 x 718 delta matrix (target: <= 20 s on 2 cores), with n_jobs 1 and 2; then
   the rate of structure-free 40 x 88 and 40 x 718 data sets with a significant PC (expected 5 %, bound 10 %).
2. Gene tests: 10 genes x 10,000 spatial surrogates (default: Moran, whole-brain; and brainsmash) of a cortical map
   on the default atlas (target: <= 5 min), then the same call again to show that cached surrogates are reused.
3. Null calibration: false-positive rate of the surrogate tests (Moran and brainsmash, whole-brain and per
   hemisphere) and of the naive parcel shuffle on unrelated smooth maps: five map sets (Gaussian covariance 15, 30,
   45 mm; exponential 20, 60 mm) on the default atlas's 68 cortical parcels and on a 360-parcel k-means cortical
   parcellation (target: rate of the default surrogates <= 7 %).

Prints wall and CPU times, ratios to the targets and peak memory (resource.getrusage). Options:
``--skip-pca``, ``--skip-genes``, ``--skip-calibration``, ``--pairs N`` (Moran calibration pairs, default 1000),
``--brainsmash-pairs N`` (default 100), ``--brainsmash-fine``, ``--n-null N`` (default 199), ``--pca-null-sets N``
(default 200), ``--pca-null-shuffles N`` (default 500), ``--n-jobs N`` (default 2).
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


def structure_free_delta(n_subjects: int, n_parcels: int, seed: int) -> np.ndarray:
    """Noise maps with subject-specific offsets and scales (kept by the within-subject shuffle): no components."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, (n_subjects, n_parcels)) * rng.uniform(0.5, 2.0, (n_subjects, 1))
            + rng.normal(0, 1, (n_subjects, 1)))


def bench_pca_null_rate(n_sets: int, n_parcels: int, n_shuffles: int, n_jobs: int) -> None:
    """Rate of data sets with >= 1 significant PC (= PC1 significant, counted from rank 1) on structure-free
    40 x n_parcels data; expected 5 % (the rank-1 test's size), the acceptance bound is 10 %."""
    from scipy import stats

    def one(i: int) -> int:
        return pca.delta_pca(structure_free_delta(40, n_parcels, 5000 + i), n_shuffles=n_shuffles,
                             seed=i).n_significant

    wall = time.perf_counter()
    if n_jobs == 1:
        counts = [one(i) for i in range(n_sets)]
    else:
        from joblib import Parallel, delayed

        counts = Parallel(n_jobs=n_jobs)(delayed(one)(i) for i in range(n_sets))
    hits = int(np.sum(np.asarray(counts) > 0))
    ci = stats.binomtest(hits, n_sets).proportion_ci(method="exact")
    tail = stats.binom.sf(int(np.ceil(0.1 * 50)), 50, hits / n_sets) if hits else 0.0
    print(f"PCA null, 40 x {n_parcels}, {n_sets} structure-free data sets x {n_shuffles} shuffles: "
          f"{hits} with a significant PC ({hits / n_sets:.3f}, 95 % CI {ci.low:.3f}-{ci.high:.3f}; expected 0.05); "
          f"at this rate P(> 5 of 50) = {tail:.3f}; wall {time.perf_counter() - wall:.0f} s")


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
    for method in ("moran", "brainsmash"):
        settings = gn.SurrogateSettings(method=method)
        with tempfile.TemporaryDirectory() as cache:
            def once():
                surr = gn.cached_surrogates(brain.to_numpy(), dist, n_surrogates=10_000, seed=3, cache_dir=cache,
                                            hemispheres=hemis, n_jobs=n_jobs, settings=settings)
                return gn.gene_correlations(brain, expression, surr, n_naive=10_000, seed=4)
            table, wall, cpu = timed(once)
            print(f"genes ({method}): 10 genes x 10,000 surrogates ({len(names)} cortical parcels, n_jobs={n_jobs}):"
                  f" wall {wall:.1f} s (target 300 s, ratio {wall / 300:.2f}), CPU {cpu:.1f} s, "
                  f"peak {peak_mb():.0f} MB")
            _, wall2, _ = timed(once)
            print(f"genes ({method}) again with cached surrogates: wall {wall2:.2f} s")
            print(table.round(4).to_string(index=False))


def finer_cortical_parcellation(n_per_hemisphere: int = 180, seed: int = 0):
    """Centroids of a finer cortical parcellation (k-means of the default atlas's cortical voxels, per hemisphere;
    360 parcels like HCP-MMP1), to check the nulls beyond the 68 Desikan-Killiany cortical parcels."""
    from sklearn.cluster import KMeans

    from bids_ketamine.atlas import load_default_atlas

    atlas = load_default_atlas()
    data = atlas.data()
    cortex = atlas.labels[atlas.labels["structure"] == "cortex"]
    xyz, hemis = [], []
    for hemi in ("L", "R"):
        ijk = np.argwhere(np.isin(data, cortex.loc[cortex["hemisphere"] == hemi, "index"].to_numpy()))
        points = ijk[::3] @ atlas.image.affine[:3, :3].T + atlas.image.affine[:3, 3]
        xyz.append(KMeans(n_per_hemisphere, n_init=1, random_state=seed).fit(points).cluster_centers_)
        hemis += [hemi] * n_per_hemisphere
    return np.vstack(xyz), hemis


#: Map sets of the calibration: (covariance, length scale mm). Gaussian covariance = very smooth maps (45 mm is
#: close to a few whole-brain gradients); exponential = rough at short range with long-range trends.
MAP_SETS = (("gaussian", 15.0), ("gaussian", 30.0), ("gaussian", 45.0), ("exponential", 20.0),
            ("exponential", 60.0))


def bench_calibration(pairs: int, n_null: int, n_jobs: int, brainsmash_pairs: int, brainsmash_fine: bool) -> None:
    """False-positive rates (p < 0.05) on unrelated smooth map pairs, per parcellation and map set: Moran and
    brainsmash surrogates, whole-brain and per hemisphere, and the naive shuffle. Nominal rate: the largest
    (1 + k) / (1 + n_null) below 0.05 (4.5 % for 199 nulls)."""
    _, dk_xyz, dk_hemis = cortex_of_default_atlas()
    parcellations = {"DK cortex (68)": (dk_xyz, dk_hemis), "k-means cortex (360)": finer_cortical_parcellation()}
    rows = []
    for atlas_name, (xyz, hemis) in parcellations.items():
        for covariance, length in MAP_SETS:
            for method, n_pairs in (("moran", pairs), ("brainsmash", brainsmash_pairs)):
                if n_pairs == 0 or (method == "brainsmash" and len(xyz) > 100 and not brainsmash_fine):
                    continue
                settings = gn.SurrogateSettings(method=method)
                res, wall, cpu = timed(gn.null_calibration, xyz, hemispheres=hemis, n_pairs=n_pairs, n_null=n_null,
                                       length_mm=length, covariance=covariance, seed=20240601,
                                       settings=settings, both_hemisphere_modes=True, n_jobs=n_jobs)
                for _, row in res.table.iterrows():
                    if method == "brainsmash" and row["method"] == "naive_parcel_shuffle":
                        continue
                    rows.append({"parcellation": atlas_name, "maps": f"{covariance} {length:g} mm",
                                 "method": row["method"], "pairs": n_pairs,
                                 "fpr": row["false_positive_rate"], "ci": f"{row['ci_low']:.3f}-{row['ci_high']:.3f}",
                                 "wall_s_per_pair": wall / n_pairs})
                print(f"  {atlas_name}, {covariance} {length:g} mm, {method}: {n_pairs} pairs, wall {wall:.0f} s, "
                      f"CPU {cpu:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print(f"null calibration ({n_null} nulls per pair; alpha 0.05):")
    print(table.round(4).to_string(index=False))
    default = table[table["method"] == "moran_whole_brain"]
    print(f"default (moran_whole_brain): max rate {default['fpr'].max():.3f} over {len(default)} map sets "
          f"(target <= 0.07); pooled {np.average(default['fpr'], weights=default['pairs']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-pca", action="store_true")
    parser.add_argument("--skip-genes", action="store_true")
    parser.add_argument("--skip-calibration", action="store_true")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--n-null", type=int, default=199)
    parser.add_argument("--brainsmash-pairs", type=int, default=100,
                        help="calibration pairs for brainsmash (about 1 s each at 68 parcels; 0: skip)")
    parser.add_argument("--brainsmash-fine", action="store_true",
                        help="also calibrate brainsmash on the 360-parcel parcellation (slow: several s per pair)")
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--pca-null-sets", type=int, default=200,
                        help="structure-free data sets for the PCA false-positive rate (0: skip)")
    parser.add_argument("--pca-null-shuffles", type=int, default=500)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.skip_pca:
        bench_pca(args.n_jobs)
    if args.pca_null_sets:
        for n_parcels in (88, 718):
            bench_pca_null_rate(args.pca_null_sets, n_parcels, args.pca_null_shuffles, args.n_jobs)
    if not args.skip_genes:
        bench_genes(args.n_jobs)
    if not args.skip_calibration:
        bench_calibration(args.pairs, args.n_null, args.n_jobs, args.brainsmash_pairs, args.brainsmash_fine)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; peak memory {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
