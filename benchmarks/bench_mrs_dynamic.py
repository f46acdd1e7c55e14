"""Benchmark of the dynamic (joint multi-block) fMRS fit against block-wise fitting (issue 16's acceptance).

Run: .venv/bin/python benchmarks/bench_mrs_dynamic.py [--sessions 200] [--studies 100] [--subjects 10] [--quick]

1. Sessions: ``--sessions`` simulated 3T PRESS sessions (synthetic generator: 4 coils x 128 transients, drift, phase
   noise, eddy currents; preprocessed by the participant level's chain; 6 blocks of 240 s, 2 before the onset),
   planted Glx/tNAA slopes cycling through the generator's four (pretreatment, sex) values. Each session is fitted
   both ways on the same data: dynamic (fit_dynamic, slope SE from the joint covariance) and block-wise (fit_spectrum
   per block, weighted regression of the block ratios on the same time model, SE from the CRLBs). Prints the SD of
   the slope errors both ways and their ratio (with a bootstrap 95 % interval), the mean error in SEs, the 95 %
   interval coverage, and the fit time per session both ways with their ratio.
2. Null calibration: ``--studies`` simulated crossover studies of ``--subjects`` subjects (2 sessions each, no
   pretreatment effect on the slope, sex effect kept, balanced period order), every session fitted dynamically,
   then the group summary-statistics model (group_summary.fit_time_model_group); counts the studies with
   pretreatment x time p < 0.05.
3. Demo group level (``--demo``): the synthetic demo study's spectroscopy part (``bids-ketamine demo``'s study,
   10 subjects x 2 sessions) through the participant and group levels of the CLI; prints the planted and estimated
   pretreatment x time of Glx/tNAA with 95 % CIs from the block-wise mixed model and the dynamic summary-statistics
   model, and the ratio of their CI widths.
Peak memory from resource.getrusage.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_ketamine.spectroscopy.dynamic_simulation import estimate_session, simulate_session  # noqa: E402
from bids_ketamine.spectroscopy.group_summary import fit_time_model_group  # noqa: E402
from bids_ketamine.synthetic.mrs import SLOPES, FmrsSimulator  # noqa: E402


def sessions(n: int, seed: int, phase: str | None = None) -> None:
    from bids_ketamine.spectroscopy.dynamic_params import DynamicFitParams

    dynamic = DynamicFitParams() if phase is None else DynamicFitParams(phase=phase)
    sim = FmrsSimulator()
    rng = np.random.default_rng(seed)
    slopes = list(SLOPES.values())
    rows = []
    t0 = time.perf_counter()
    for i in range(n):
        slope = slopes[i % len(slopes)]
        s = simulate_session(sim, rng, slope)
        e = estimate_session(s, sim.basis, dynamic=dynamic)
        rows.append((slope, *e.dynamic, *e.dynamic_se, *e.blockwise, *e.blockwise_se, e.dynamic_seconds,
                     e.blockwise_seconds, s.planted_level))
    a = np.array(rows)
    planted, dyn, dyn_se, bw, bw_se = a[:, 0], a[:, 2], a[:, 4], a[:, 6], a[:, 8]
    err_d, err_b = dyn - planted, bw - planted
    sd_d, sd_b = err_d.std(ddof=1), err_b.std(ddof=1)
    boot = np.random.default_rng(seed + 1)
    ratios = []
    for _ in range(2000):
        k = boot.integers(0, n, n)
        ratios.append(err_d[k].std(ddof=1) / err_b[k].std(ddof=1))
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    print(f"sessions: n = {n}, seed {seed}, dynamic phase {dynamic.phase!r} ({time.perf_counter() - t0:.0f} s incl. "
          "simulation and preprocessing)")
    print(f"  slope SD: dynamic {sd_d:.5f}, block-wise {sd_b:.5f} per min; ratio {sd_d / sd_b:.3f} "
          f"(bootstrap 95 % {lo:.3f}-{hi:.3f}); target <= 0.85: {'PASS' if sd_d / sd_b <= 0.85 else 'FAIL'}")
    for label, err, se in (("dynamic", err_d, dyn_se), ("block-wise", err_b, bw_se)):
        mean_se = err.std(ddof=1) / np.sqrt(n)
        cover = float(np.mean(np.abs(err) <= 1.96 * se))
        print(f"  {label}: mean error {err.mean():+.6f} = {err.mean() / mean_se:+.2f} SE; 95 % coverage "
              f"{100 * cover:.1f} %; reported SE / empirical SD {se.mean() / err.std(ddof=1):.3f}")
    cover_d = float(np.mean(np.abs(err_d) <= 1.96 * dyn_se))
    print(f"  dynamic unbiased (|mean| <= 2 SE): {'PASS' if abs(err_d.mean()) <= 2 * sd_d / np.sqrt(n) else 'FAIL'};"
          f" coverage in 92-98 %: {'PASS' if 0.92 <= cover_d <= 0.98 else 'FAIL'}")
    td, tb = float(np.median(a[:, 9])), float(np.median(a[:, 10]))
    print(f"  time per session (6 blocks, median): dynamic {td:.3f} s, block-wise {tb:.3f} s; dynamic / block-wise "
          f"= {td / tb:.2f}; per subject (2 sessions): {2 * td:.2f} s vs {2 * tb:.2f} s")


def null_studies(n_studies: int, n_subjects: int, seed: int) -> None:
    sim = FmrsSimulator()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    p_values, estimates = [], []
    for _ in range(n_studies):
        rows = []
        for i in range(n_subjects):
            sex = "M" if i % 2 == 0 else "F"
            slope = SLOPES[("placebo", sex)]  # null: the same slope after either pretreatment
            order = ["placebo", "naltrexone"] if (i // 2) % 2 == 0 else ["naltrexone", "placebo"]
            subject = sim.subject(rng)
            for ses in ("placebo", "naltrexone"):
                s = simulate_session(sim, rng, slope, subject=subject)
                e = estimate_session(s, sim.basis, blockwise=False)
                for j, par in enumerate(("level", "slope_per_min")):
                    rows.append({"participant_id": f"s{i}", "session_id": ses, "parameter": par,
                                 "estimate": e.dynamic[j], "se": e.dynamic_se[j], "nal": float(ses == "naltrexone"),
                                 "sex_c": 0.5 if sex == "M" else -0.5, "period": order.index(ses) + 1})
        table = fit_time_model_group(pd.DataFrame(rows), "Glx/tNAA")
        row = table[table["term"] == "pretreatment_x_time"].iloc[0]
        p_values.append(float(row["p"]))
        estimates.append(float(row["estimate"]))
        print(f"  study {len(p_values)}: pretreatment x time {estimates[-1]:+.6f}, df {float(row['df']):.1f}, "
              f"p = {p_values[-1]:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    p = np.array(p_values)
    k = int(np.sum(p < 0.05))
    from scipy import stats

    ks = stats.kstest(p, "uniform")
    print(f"null: {n_studies} studies x {n_subjects} subjects x 2 sessions ({time.perf_counter() - t0:.0f} s)")
    print(f"  pretreatment x time p < 0.05 in {k} of {n_studies}; target 1-10: {'PASS' if 1 <= k <= 10 else 'FAIL'}; "
          f"p < 0.01 in {int(np.sum(p < 0.01))}; mean estimate {np.mean(estimates):+.6f} "
          f"(SD {np.std(estimates, ddof=1):.6f}); p-values uniform? KS D = {ks.statistic:.3f}, p = {ks.pvalue:.3g}; "
          f"deciles {np.histogram(p, bins=10, range=(0, 1))[0].tolist()}")


def demo_group(workdir: str, seed: int) -> None:
    import tempfile
    from pathlib import Path

    from bids_ketamine.cli.run import main as run_main
    from bids_ketamine.synthetic.study import write_study

    t0 = time.perf_counter()
    root = Path(workdir or tempfile.mkdtemp(prefix="bench_mrs_dynamic_"))
    bids, out = root / "bids", root / "outputs"
    truth = write_study(bids, seed=seed, size="demo", parts=("mrs",))["spectroscopy"]
    for level in ("participant", "group"):
        code = run_main([str(bids), str(out), level, "--analyses", "spectroscopy", "--random-seed", str(seed),
                         "--skip-bids-validation"])
        if code:
            raise SystemExit(f"demo: the {level} level ended with exit code {code}")
    planted = truth["glx_tnaa_per_minute"]["pretreatment_x_time"]
    folder = out / "group" / "spectroscopy"
    widths = {}
    print(f"demo group level: {len(truth['sessions'])} sessions ({time.perf_counter() - t0:.0f} s); planted "
          f"Glx/tNAA pretreatment x time {planted:+.5f} per min")
    for label, name in (("block-wise", "desc-fmrslmm_stats.tsv"), ("dynamic", "desc-fmrsdynamicmodel_stats.tsv")):
        t = pd.read_csv(folder / name, sep="\t")
        r = t[(t["outcome"] == "Glx/tNAA") & (t["term"] == "pretreatment_x_time")].iloc[0]
        widths[label] = r["ci_high"] - r["ci_low"]
        ok = np.sign(r["estimate"]) == np.sign(planted) and r["ci_low"] <= planted <= r["ci_high"]
        print(f"  {label}: {r['estimate']:+.5f} (95 % CI {r['ci_low']:+.5f} to {r['ci_high']:+.5f}, p = "
              f"{r['p']:.3g}); sign and coverage: {'PASS' if ok else 'FAIL'}")
    ratio = widths["dynamic"] / widths["block-wise"]
    print(f"  CI width dynamic / block-wise = {ratio:.3f}: {'PASS' if ratio < 1 else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--subjects", type=int, default=10)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="20 sessions, 10 null studies of 6 subjects")
    ap.add_argument("--phase", choices=("shared", "per_block", "linear"), default=None,
                    help="phase design of the dynamic fit in the sessions part (default: DynamicFitParams' default)")
    ap.add_argument("--skip", choices=("sessions", "null"), action="append", default=[])
    ap.add_argument("--demo", action="store_true", help="also run the demo study's group level both ways")
    ap.add_argument("--demo-dir", default="", help="folder for the demo study (default: a new temporary one)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sessions, args.studies, args.subjects = 20, 10, 6
    if "sessions" not in args.skip:
        sessions(args.sessions, args.seed, args.phase)
    if "null" not in args.skip:
        null_studies(args.studies, args.subjects, args.seed + 100)
    if args.demo:
        demo_group(args.demo_dir, 20240601)
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
