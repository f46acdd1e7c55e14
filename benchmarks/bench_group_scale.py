"""Benchmark of the group level at scale: peak memory for 1000 participants, and resampling throughput per worker.

Run: ``.venv/bin/python benchmarks/bench_group_scale.py`` (one command, prints a table; 26 min on 2 shared cores
at load 7-14, dominated by (a)'s nested CV of 1000 subjects under tracemalloc; ``--no-tracemalloc`` is faster).

(a) Peak memory and wall time of the structural group level for 1000 participants x 400 regional features: a
    synthetic cohort (``simulate_cohort``, the generator of bench_structural_group.py) is written as the
    participant level writes it (one ``sub-<label>/anat/sub-<label>_atlas-<name>_morph.tsv`` with its sidecar per
    participant, through ``DerivativesWriter``), then the real CLI group level runs on it with the default
    parameters except the permutation count (``--perms``, default 20 instead of 1000: each permutation re-runs the
    whole nested CV). Reported: ru_maxrss of this process and of the joblib workers, tracemalloc's peak of Python
    and numpy allocations in this process, each relative to the size of the feature matrix (n x p float64).
(b) Permutation throughput (permutations per second) with 1 and 2 joblib workers, and the ratio: the structural
    permutation test (whole nested CV per permuted label set, 200 x 400, 2 repeats) and the connectivity PCA
    shuffle null (40 x 718 delta maps, as bench_connectivity_group.py).

The machine is shared: the load average is printed beside every timing; CPU seconds show the work itself.
Options: ``--n``, ``--features``, ``--perms``, ``--skip-memory``, ``--skip-throughput``, ``--no-tracemalloc``,
``--throughput-perms``, ``--pca-shuffles``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bids_ketamine.structural.simulate_features import simulate_cohort  # noqa: E402

ATLAS = "bench"
MB = 1024.0 * 1024.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}/{os.cpu_count()} CPUs"


def cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def maxrss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux: kilobytes


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name:<52} | {value:>16} | {note}")


def workers_peak_mb(executor) -> list[float]:
    """Peak resident memory (VmHWM) of each live joblib (loky) worker.

    ru_maxrss of reaped children is not used: on Linux it can carry the parent's size from before the exec.
    """
    peaks = []
    for pid in list(getattr(executor, "_processes", {}) or {}):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks.append(int(line.split()[1]) / 1024.0)
    return peaks


# ------------------------------------------------------------------------------------------------ (a) memory
def write_study(root: Path, n: int, p: int, seed: int = 11) -> tuple[Path, Path, float]:
    """A BIDS folder with participants.tsv and an output folder with one morph table per participant.

    80 % discovery, 10 % external (ketamine arm) and 10 % saline, so every branch of the group level runs.
    Returns (bids_dir, output_dir, seconds spent writing the participant tables).
    """
    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.participant import MORPH_COLUMNS

    cohort = simulate_cohort(n, p, mahalanobis=2.0, seed=seed)
    rng = np.random.default_rng(seed)
    labels = [f"b{k:05d}" for k in range(n)]
    group = rng.choice(["discovery", "external", "saline"], size=n, p=[0.8, 0.1, 0.1])
    baseline = rng.integers(25, 45, n)
    followup = np.where(cohort.labels == 1, np.floor(baseline * rng.uniform(0.1, 0.45, n)),
                        np.ceil(baseline * rng.uniform(0.6, 1.0, n))).astype(int)
    bids = root / "bids"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        '{"Name": "bench_group_scale", "BIDSVersion": "1.10.0", "DatasetType": "raw"}\n')
    pd.DataFrame({
        "participant_id": [f"sub-{s}" for s in labels], "site": cohort.sites,
        "sex": np.where(cohort.covariates["sex"] > 0, "M", "F"), "age": cohort.covariates["age"].round(1),
        "arm": np.where(group == "saline", "saline", "ketamine"),
        "cohort": np.where(group == "external", "external", "discovery"),
        "madrs_baseline": baseline, "madrs_24h": followup,
    }).to_csv(bids / "participants.tsv", sep="\t", index=False)

    out = root / "outputs"
    writer = DerivativesWriter(out, dataset_links={"raw": bids})
    writer.init_dataset()
    regions = list(cohort.features.columns)
    hemisphere = [r[0] if r[:2] in ("L_", "R_") else "B" for r in regions]
    structure = ["cerebellum" if "cerebellum" in r else "cortex" for r in regions]
    started = time.perf_counter()
    for k, subject in enumerate(labels):
        volumes = cohort.features.iloc[k].to_numpy()
        tiv = float(cohort.covariates["tiv"].iloc[k])
        table = pd.DataFrame({"region": regions, "hemisphere": hemisphere, "structure": structure,
                              "gm_volume_mm3": volumes, "gm_fraction_tiv": volumes / tiv, "tiv_mm3": tiv})
        writer.write_table(table, entities={"sub": subject, "atlas": ATLAS}, suffix="morph", datatype="anat",
                           columns=MORPH_COLUMNS, float_format="%.9g", metadata={"FeatureSource": "synthetic"},
                           description="Regional grey-matter volumes (synthetic, bench_group_scale)")
    return bids, out, time.perf_counter() - started


def bench_memory(n: int, p: int, perms: int, jobs: int, use_tracemalloc: bool) -> None:
    from joblib.externals.loky import reusable_executor

    from bids_ketamine.cli.run import main
    from bids_ketamine.structural.params import StructuralParams

    defaults = StructuralParams()
    matrix_mb = n * p * 8 / MB
    with tempfile.TemporaryDirectory(prefix="bench_group_scale_") as tmp:
        root = Path(tmp)
        bids, out, write_s = write_study(root, n, p)
        config = root / "bench.toml"
        config.write_text(f"[structural]\nn_permutations = {perms}\n")
        row(f"(a) participant tables written ({n} x {p})", f"{write_s:.1f} s", load())
        rss_before = maxrss_mb(resource.RUSAGE_SELF)
        if use_tracemalloc:
            tracemalloc.start()
        wall, cpu = time.perf_counter(), cpu_s()
        code = main([str(bids), str(out), "group", "--analyses", "structural", "--skip-bids-validation",
                     "--random-seed", "5", "--config-file", str(config), "--nprocs", str(jobs)])
        wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
        traced_peak = tracemalloc.get_traced_memory()[1] / MB if use_tracemalloc else float("nan")
        if use_tracemalloc:
            tracemalloc.stop()
        workers_mb = workers_peak_mb(reusable_executor._executor)  # the pool joblib used (None if none)
        if code != 0:
            raise SystemExit(f"the group level failed with exit code {code}")
        metrics = pd.read_csv(next(out.glob("group/structural/*_metrics.tsv")), sep="\t")
        bac = metrics.query("cohort == 'discovery' and metric == 'bac'")["value"].iloc[0]
        row("(a) structural group level, wall", f"{wall:.1f} s",
            f"{jobs} jobs; {defaults.repeats} repeats x {defaults.outer_folds}x{defaults.inner_folds} nested CV, "
            f"{perms} permutations (default {defaults.n_permutations}), {defaults.n_bootstrap} bootstraps; "
            f"{load()}" + ("; under tracemalloc (slower)" if use_tracemalloc else ""))
        row("(a) ... CPU of this process", f"{cpu:.1f} s", "the workers' CPU is not visible while they live")
        row("(a) ... discovery BAC (sanity)", f"{bac:.3f}", "planted effect: Mahalanobis 2.0 (Bayes BAC 0.84)")
        self_mb = maxrss_mb(resource.RUSAGE_SELF)
        row("(a) feature matrix n x p float64", f"{matrix_mb:.1f} MB", "")
        row("(a) peak RSS, this process (ru_maxrss)", f"{self_mb:.0f} MB",
            f"x{self_mb / matrix_mb:.0f} the matrix; {rss_before:.0f} MB before the group level (imports, tables): "
            f"+{self_mb - rss_before:.0f} MB = x{(self_mb - rss_before) / matrix_mb:.0f} the matrix")
        if workers_mb:
            row("(a) peak RSS, largest joblib worker (VmHWM)", f"{max(workers_mb):.0f} MB",
                f"x{max(workers_mb) / matrix_mb:.0f} the matrix; {len(workers_mb)} workers")
        if use_tracemalloc:
            row("(a) tracemalloc peak (Python + numpy, this process)", f"{traced_peak:.1f} MB",
                f"x{traced_peak / matrix_mb:.1f} the matrix")


# ------------------------------------------------------------------------------------------------ (b) throughput
def structural_throughput(perms: int, jobs: int) -> tuple[float, float, float]:
    """(permutations per second, wall s, CPU s) of the nested-CV permutation test, 200 x 400, 2 repeats."""
    from bids_ketamine.structural.model import ModelSpec, PreprocessorFactory, model_frame
    from bids_ketamine.structural.params import StructuralParams
    from bids_ketamine.structural.validation import make_splits, nested_cv

    params = StructuralParams()
    cohort = simulate_cohort(200, 400, mahalanobis=2.0, seed=11)
    data = model_frame(cohort.features, cohort.sites, cohort.covariates)
    spec = ModelSpec(covariates=("age", "sex", "tiv"), tol=params.solver_tol)
    splits = make_splits(cohort.labels, outer_folds=5, inner_folds=5, repeats=2, seed=5)
    wall, cpu = time.perf_counter(), cpu_s()
    nested_cv(data, cohort.labels, PreprocessorFactory(spec), c_grid=params.c_grid, splits=splits,
              n_permutations=perms, seed=5, tol=params.solver_tol, n_jobs=jobs)
    wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
    return (perms + 1) / wall, wall, cpu


def pca_throughput(shuffles: int, jobs: int) -> tuple[float, float, float]:
    """(shuffles per second, wall s, CPU s) of the connectivity PCA null, 40 x 718."""
    from bids_ketamine.connectivity.pca import shuffle_null

    delta = np.random.default_rng(0).standard_normal((40, 718))
    wall, cpu = time.perf_counter(), cpu_s()
    shuffle_null(delta, n_shuffles=shuffles, seed=1, n_jobs=jobs)
    wall, cpu = time.perf_counter() - wall, cpu_s() - cpu
    return shuffles / wall, wall, cpu


def bench_throughput(perms: int, shuffles: int) -> None:
    from joblib import Parallel, delayed

    Parallel(n_jobs=2)(delayed(abs)(k) for k in range(4))  # start the worker pool outside the timings
    for name, fn, count in (("structural permutation test", structural_throughput, perms),
                            ("connectivity PCA null", pca_throughput, shuffles)):
        rates = {}
        for jobs in (1, 2):
            rate, wall, cpu = fn(count, jobs)
            rates[jobs] = rate
            work = f", {cpu:.1f} s CPU" if jobs == 1 else ""  # the workers' CPU is not visible until they exit
            row(f"(b) {name}, {jobs} worker{'s' if jobs > 1 else ''}", f"{rate:.1f} /s",
                f"{count} resamples in {wall:.1f} s wall{work}; {load()}")
        row(f"(b) {name}: 2 / 1 workers", f"x{rates[2] / rates[1]:.2f}", "ideal x2.00 on 2 idle cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--features", type=int, default=400)
    parser.add_argument("--perms", type=int, default=20, help="permutations in (a) (default 20; the app's is 1000)")
    parser.add_argument("--jobs", type=int, default=2, help="joblib workers in (a)")
    parser.add_argument("--throughput-perms", type=int, default=100)
    parser.add_argument("--pca-shuffles", type=int, default=2000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--no-tracemalloc", action="store_true")
    args = parser.parse_args()
    print(f"bench_group_scale: {os.cpu_count()} CPUs, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {load()}")
    row("measure", "value", "notes")
    if not args.skip_memory:
        bench_memory(args.n, args.features, args.perms, args.jobs, not args.no_tracemalloc)
    if not args.skip_throughput:
        bench_throughput(args.throughput_perms, args.pca_shuffles)
    print(f"done; {load()}")


if __name__ == "__main__":
    main()
