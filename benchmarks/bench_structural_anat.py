"""Benchmark: the built-in anatomical pipeline on every T1w of ../shared/data/ds002748_t1w (24 subjects).

Prints seconds per subject (target <= 90 s on 2 cores), peak memory, TIV and GM volume per subject (physiological
ranges: TIV 1100-2000 cm^3, GM 450-900 cm^3), and writes the participant-level outputs (the group level's input)
to OUT, plus OUT/../ds002748_structural_features.tsv (regional GM volumes, TIV, age, sex and the `group` column:
depression vs control) so the group classification can be run end to end.

    .venv/bin/python benchmarks/bench_structural_anat.py [--out /tmp/bench_structural_anat/out] [--subjects 01 52]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BIDS_KETAMINE_SHARED", REPO.parent / "shared")) / "data" / "ds002748_t1w"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_structural_anat/out"))
    parser.add_argument("--subjects", nargs="*", help="labels without sub- (default: all)")
    parser.add_argument("--n-procs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args(argv)

    import pandas as pd

    from bids_ketamine.inputs import AnatInputs, ParticipantInputs
    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.anat_params import AnatFeatureParams
    from bids_ketamine.structural.participant import load_regional_features, run_participant

    if not DATA.is_dir():
        print(f"real data not found at {DATA}", file=sys.stderr)
        return 66
    subjects = args.subjects or sorted(p.name[4:] for p in DATA.glob("sub-*") if p.is_dir())
    writer = DerivativesWriter(args.out, dataset_links={"raw": DATA})
    writer.init_dataset()
    rows = []
    for sub in subjects:
        t1w = DATA / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
        inputs = ParticipantInputs(sub, AnatInputs(t1w=(t1w,)))
        start = time.perf_counter()
        cpu = time.process_time()
        try:
            with writer.staged(sub, "structural") as staged:
                run_participant(inputs, params=AnatFeatureParams(), writer=staged,
                                work_dir=args.out.parent / "work", seed=args.seed, n_procs=args.n_procs)
        except Exception as exc:  # report and go on: one failure must not hide the others' numbers
            rows.append({"subject": sub, "seconds": time.perf_counter() - start, "error": str(exc)})
            print(f"sub-{sub}: FAILED {exc}", flush=True)
            continue
        seconds = time.perf_counter() - start
        sidecar = json.loads((args.out / f"sub-{sub}/anat/sub-{sub}_atlas-DKcereb_morph.json").read_text())
        row = {"subject": sub, "seconds": round(seconds, 1), "cpu_seconds": round(time.process_time() - cpu, 1),
               "tiv_cm3": round(sidecar["TIV_mm3"] / 1000, 1), "gm_cm3": round(sidecar["TotalGM_mm3"] / 1000, 1),
               "wm_cm3": round(sidecar["TotalWM_mm3"] / 1000, 1),
               "template_r": round(sidecar["TemplateCorrelation"], 3),
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
               **{f"t_{k}": v for k, v in sidecar.get("StepSeconds", {}).items()}}
        rows.append(row)
        print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    table = pd.DataFrame(rows)
    ok = table[table.get("error").isna()] if "error" in table else table
    print("\n" + table.to_string(index=False))
    print(f"\nsubjects: {len(table)}, failed: {len(table) - len(ok)}")
    if len(ok):
        print(f"seconds per subject: median {ok['seconds'].median():.1f}, max {ok['seconds'].max():.1f} "
              f"(target <= 90 s on 2 cores); load average now {os.getloadavg()[0]:.1f}")
        print(f"TIV cm^3: {ok['tiv_cm3'].min():.0f}-{ok['tiv_cm3'].max():.0f} (range 1100-2000: "
              f"{ok['tiv_cm3'].between(1100, 2000).all()}); GM cm^3: {ok['gm_cm3'].min():.0f}-"
              f"{ok['gm_cm3'].max():.0f} (range 450-900: {ok['gm_cm3'].between(450, 900).all()})")
        print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        features, info = load_regional_features(args.out)
        participants = pd.read_csv(DATA / "participants.tsv", sep="\t")
        participants["participant_id"] = participants["participant_id"].str.replace("sub-", "", regex=False)
        merged = (participants.set_index("participant_id")[["age", "gender", "group"]]
                  .join(info[["tiv_mm3"]], how="inner").join(features, how="inner"))
        target = args.out.parent / "ds002748_structural_features.tsv"
        merged.to_csv(target, sep="\t")
        print(f"group-level input: {args.out} (participant outputs) and {target} "
              f"({len(merged)} subjects x {features.shape[1]} regions; group counts "
              f"{merged['group'].value_counts().to_dict()})")
    phantom_refused = check_phantom_is_refused(args.out.parent / "phantom", args.seed)
    identical = check_rerun_is_identical(args.out, args.out.parent / "rerun", subjects[0], args.seed)
    return 0 if len(ok) == len(table) and phantom_refused and identical else 1


def check_rerun_is_identical(out: Path, rerun: Path, sub: str, seed: int) -> bool:
    """Same input and seed, fresh process state: the regional table must be byte-identical."""
    from bids_ketamine.inputs import AnatInputs, ParticipantInputs
    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.anat_params import AnatFeatureParams
    from bids_ketamine.structural.participant import run_participant

    t1w = DATA / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
    run_participant(ParticipantInputs(sub, AnatInputs(t1w=(t1w,))), params=AnatFeatureParams(),
                    writer=DerivativesWriter(rerun), work_dir=rerun.parent / "work_rerun", seed=seed)
    name = f"sub-{sub}/anat/sub-{sub}_atlas-DKcereb_morph.tsv"
    same = (out / name).read_bytes() == (rerun / name).read_bytes()
    print(f"re-run of sub-{sub} with the same seed: regional table {'identical' if same else 'DIFFERS'}")
    return same


def check_phantom_is_refused(folder: Path, seed: int) -> bool:
    """An ellipsoidal 'head' phantom passes the cheap input checks; the registration check must refuse it."""
    import nibabel as nib
    import numpy as np

    from bids_ketamine.errors import BadDataError
    from bids_ketamine.inputs import AnatInputs, ParticipantInputs
    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.structural.anat_params import AnatFeatureParams
    from bids_ketamine.structural.participant import run_participant

    shape = (96, 112, 96)
    ijk = np.indices(shape, dtype=float)
    r = sum(((ijk[i] - shape[i] / 2) / (shape[i] * 0.4)) ** 2 for i in range(3))
    data = np.where(r < 1, 300.0, 0.0) + np.where(r < 0.6, 500.0, 0.0)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sub-phantom_T1w.nii.gz"
    nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])).to_filename(path)
    writer = DerivativesWriter(folder / "out")
    start = time.perf_counter()
    try:
        with writer.staged("phantom", "structural") as staged:
            run_participant(ParticipantInputs("phantom", AnatInputs(t1w=(path,))), params=AnatFeatureParams(),
                            writer=staged, work_dir=folder / "work", seed=seed)
    except BadDataError as exc:
        written = [p for p in (folder / "out").rglob("*") if p.is_file() and "sub-phantom" in str(p)]
        print(f"phantom refused in {time.perf_counter() - start:.0f} s (exit {exc.exit_code}, files written: "
              f"{len(written)}): {exc}")
        return not written
    print("phantom NOT refused: the registration check let a non-brain through")
    return False


if __name__ == "__main__":
    sys.exit(main())
