"""Benchmark of the voxel-wise structural option against the regional baseline, measured in the same run.

Run: .venv/bin/python benchmarks/bench_voxel_features.py [--n 100] [--voxel-mm 4] [--fwhm 0]

1. Feature extraction per participant: a modulated GM map on nilearn's 2 mm MNI grid (template x noise) averaged
   onto the voxel grid and masked (``voxel_vector``), seconds per participant, with and without smoothing.
2. Group model: the nested CV (5 x 5, 2 repeats, 3 C values, no permutations) on ``--n`` synthetic subjects with the
   voxel features (PCA 0.8) and with 88 regional features, wall time and the ratio voxel / regional, AUC of both.

Prints peak memory (resource.getrusage, max RSS of the process).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--voxel-mm", type=float, default=4.0)
    ap.add_argument("--fwhm", type=float, default=8.0)
    args = ap.parse_args()

    from nilearn import datasets

    from bids_ketamine.structural import voxel_features as vf
    from bids_ketamine.structural.metrics import roc_auc
    from bids_ketamine.structural.model import ModelSpec, PreprocessorFactory, model_frame
    from bids_ketamine.structural.simulate_features import simulate_cohort
    from bids_ketamine.structural.validation import make_splits, nested_cv

    start = time.perf_counter()
    grid = vf.mni_grid(args.voxel_mm)
    print(f"grid {args.voxel_mm:g} mm: {grid.shape}, {int(grid.mask.sum())} voxels, {time.perf_counter() - start:.2f} s")
    tpl = datasets.load_mni152_gm_template(resolution=2)
    rng = np.random.default_rng(0)
    gm = np.asarray(tpl.dataobj, dtype=np.float32)
    maps = [nib.Nifti1Image(gm * (1 + 0.1 * rng.standard_normal(gm.shape)).astype(np.float32), tpl.affine)
            for _ in range(5)]
    for fwhm in (0.0, args.fwhm):
        start = time.perf_counter()
        for img in maps:
            vf.voxel_vector(img, grid, fwhm_mm=fwhm)
        print(f"extraction, FWHM {fwhm:g} mm: {(time.perf_counter() - start) / len(maps):.3f} s per participant")

    cohort = simulate_cohort(args.n, 88, mahalanobis=2.5, n_sites=3, seed=2)
    p_vox = int(grid.mask.sum())
    # voxel features of the same cohort: each region's value spread over p_vox / 88 voxels with voxel noise
    region = np.arange(p_vox) % 88
    std = (cohort.features.to_numpy() - cohort.features.mean().to_numpy()) / cohort.features.std().to_numpy()
    voxels = std[:, region] + 2.0 * rng.standard_normal((args.n, p_vox))
    splits = make_splits(cohort.labels, outer_folds=5, inner_folds=5, repeats=2, seed=7)
    timings = {}
    for name, features, pca in (("regional", cohort.features, None),
                                ("voxel", __import__("pandas").DataFrame(voxels, columns=grid.columns), 0.8)):
        spec = ModelSpec(covariates=("age", "sex", "tiv"), pca_variance=pca)
        data = model_frame(features, cohort.sites, cohort.covariates)
        start = time.perf_counter()
        result = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=(0.01, 0.1, 1.0), splits=splits)
        timings[name] = time.perf_counter() - start
        auc = roc_auc(cohort.labels, result.pooled[:, 0])[0]
        print(f"nested CV {name}: {features.shape[1]} features, {timings[name]:.2f} s, AUC {auc:.3f}")
    print(f"ratio voxel / regional nested CV time: {timings['voxel'] / timings['regional']:.1f}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
