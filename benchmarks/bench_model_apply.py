"""Benchmark of applying a saved structural model (``group --model FILE``) after feature extraction.

Run: .venv/bin/python benchmarks/bench_model_apply.py

Trains one model on a synthetic discovery cohort (our generator, default 100 subjects x 88 regions, two sites),
writes its skops bundle, then times: loading and checking the bundle (checksum, version, card), and scoring 1 and
1000 new participants with ``predict.score_participants`` (score, calibrated probability with bootstrap interval,
out-of-distribution flags). Baseline measured in the same run: the bare pipeline's ``decision_function`` on the
same participants (what in-run scoring does), so the ratio is the cost of the probability, interval and flags.
Target: under 1 s per participant. Prints the bundle size and peak memory (resource.getrusage).
Options: ``--n-train N``, ``--regions N``, ``--n-new N`` (default 1000).
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import numpy as np
    import pandas as pd

    from bids_ketamine.structural.bundle import load_bundle, write_bundle
    from bids_ketamine.structural.card import build_bundle
    from bids_ketamine.structural.group import analyse, outcome_wording
    from bids_ketamine.structural.model import model_frame
    from bids_ketamine.structural.params import StructuralParams
    from bids_ketamine.structural.predict import score_participants
    from bids_ketamine.structural.simulate_features import simulate_cohort

    parser = argparse.ArgumentParser()
    parser.add_argument("--n-train", type=int, default=100)
    parser.add_argument("--regions", type=int, default=88)
    parser.add_argument("--n-new", type=int, default=1000)
    args = parser.parse_args()

    total = args.n_train + args.n_new
    cohort = simulate_cohort(total, args.regions, mahalanobis=2.5, n_sites=2, seed=7)
    ids = [f"b{i:05d}" for i in range(total)]
    features = cohort.features.set_axis(ids)
    table = pd.DataFrame({"participant_id": ids, "site": cohort.sites,
                          "sex": np.where(cohort.covariates["sex"] > 0, "M", "F"),
                          "age": cohort.covariates["age"].to_numpy(), "arm": "ketamine", "cohort": "discovery",
                          "outcome": cohort.labels.astype(float), "tiv_mm3": cohort.covariates["tiv"].to_numpy()})
    train = ids[: args.n_train]
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=1000)
    start = time.perf_counter()
    results = analyse(features.loc[train], table.iloc[: args.n_train], params, seed=1)
    bundle = build_bundle(results, params=params, atlas="bench", feature_source=["builtin"],
                          wording=outcome_wording(None), seed=1)
    train_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "atlas-bench_desc-svm_model.skops"
        write_bundle(bundle, path)
        size = path.stat().st_size
        start = time.perf_counter()
        loaded = load_bundle(path)
        load_s = time.perf_counter() - start

    new = table.iloc[args.n_train:].assign(outcome=np.nan, cohort="new").set_index("participant_id")
    from bids_ketamine.structural.group import covariate_column

    names = [c.removeprefix("__cov_").removesuffix("__") for c in loaded.reference["covariates"]]
    print(f"training (not timed below): {train_s:.1f} s; bundle {size / 1e3:.1f} kB; load + check {load_s:.3f} s")
    print(f"{'participants':>12} {'apply s':>9} {'s/participant':>14} {'bare pipeline s':>16} {'ratio':>7} "
          f"{'target 1 s/p':>13}")
    for n in (1, args.n_new):
        subset = new.iloc[:n]
        cov = pd.DataFrame({c: covariate_column(subset, c) for c in names}, index=subset.index)
        start = time.perf_counter()
        scored = score_participants(loaded, features.loc[subset.index], subset, cov)
        apply_s = time.perf_counter() - start
        frame = model_frame(features.loc[subset.index].reset_index(drop=True), subset["site"].to_numpy(),
                            cov.reset_index(drop=True) if names else None)
        start = time.perf_counter()
        loaded.pipeline.decision_function(frame)
        bare_s = time.perf_counter() - start
        assert len(scored) == n and np.isfinite(scored["probability"]).all()
        print(f"{n:>12} {apply_s:>9.3f} {apply_s / n:>14.5f} {bare_s:>16.4f} {apply_s / max(bare_s, 1e-9):>7.1f} "
              f"{(apply_s / n) / 1.0:>13.4f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
