"""Benchmark of the structural group level: repeated nested CV with a full permutation test.

Default (the acceptance case): n = 200 subjects x 400 regional features, 3 sites, 5 x 5 nested CV x 10 repeats,
1000 permutations, 2 workers; target <= 120 s. Also times the straightforward loop (a full scikit-learn pipeline
refitted per fold, C and permutation) on one repeat with a few permutations and extrapolates it, and prints the
ratio and peak memory. Run: ``.venv/bin/python benchmarks/bench_structural_group.py [--repeats R] [--perms N]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


from bids_ketamine.structural.metrics import balanced_accuracy, permutation_p, roc_auc  # noqa: E402
from bids_ketamine.structural.params import StructuralParams  # noqa: E402
from bids_ketamine.structural.model import ModelSpec, PipelineFactory, PreprocessorFactory, model_frame  # noqa: E402
from bids_ketamine.structural.simulate_features import simulate_cohort  # noqa: E402
from bids_ketamine.structural.validation import make_splits, nested_cv, nested_cv_straightforward  # noqa: E402

C_GRID = StructuralParams().c_grid


def peak_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, child_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--features", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--perms", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--tol", type=float, default=StructuralParams().solver_tol)
    parser.add_argument("--naive-perms", type=int, default=2, help="permutations timed in the straightforward loop")
    args = parser.parse_args()

    cohort = simulate_cohort(args.n, args.features, mahalanobis=2.0, seed=11)
    spec = ModelSpec(covariates=("age", "sex", "tiv"), tol=args.tol)
    data = model_frame(cohort.features, cohort.sites, cohort.covariates)
    splits = make_splits(cohort.labels, outer_folds=5, inner_folds=5, repeats=args.repeats, seed=5)

    start, cpu_start = time.perf_counter(), time.process_time()
    result = nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=C_GRID, splits=splits,
                       n_permutations=args.perms, seed=5, n_jobs=args.jobs, tol=args.tol)
    fast = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    pooled = result.pooled
    bac = balanced_accuracy(result.label_sets, pooled)
    auc = roc_auc(result.label_sets, pooled)
    print(f"fast nested CV: n={args.n} p={args.features} 5x5 x {args.repeats} repeats, {args.perms} permutations, "
          f"{args.jobs} jobs: {fast:.1f} s wall (target <= 120 s)"
          + (f"; CPU {cpu:.1f} s (the work itself, fair on a loaded machine)" if args.jobs == 1 else ""))
    print(f"  load average during the run: {os.getloadavg()}")
    print(f"  observed BAC {bac[0]:.3f}  AUC {auc[0]:.3f} (Bayes AUC {cohort.bayes_auc:.3f}); "
          f"permutation p(BAC) {permutation_p(bac[0], bac[1:]):.4f}; null BAC mean {bac[1:].mean():.3f}")

    one_repeat = [s for s in splits if s.repeat == 0]
    start = time.perf_counter()
    for k in range(args.naive_perms):
        nested_cv_straightforward(data, result.label_sets[:, k], PipelineFactory(spec), c_grid=C_GRID,
                                  splits=one_repeat)
    naive_per_labelset = (time.perf_counter() - start) / args.naive_perms
    naive_total = naive_per_labelset * (args.perms + 1) * args.repeats
    print(f"straightforward loop: {naive_per_labelset:.2f} s per label set and repeat -> one repeat with "
          f"{args.perms} permutations ~{naive_per_labelset * (args.perms + 1):.0f} s, the full run "
          f"~{naive_total:.0f} s single-core; speed-up x{naive_total / fast:.0f} (x{naive_total / 2 / fast:.0f} "
          "against a perfect 2-core split)")
    print(f"peak memory (max of this process and workers): {peak_mb():.0f} MB")


if __name__ == "__main__":
    main()
