"""Benchmark of the consortium steps for 1000 participants: export time and size, pooling time, beside the size of
the feature tables themselves and a plain copy / plain read of them measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_consortium.py`` (one command, prints a table; about 1-2 min on 2 shared
cores, most of it bids-validator-deno on the exports and the coordinator's tables).

Set-up (synthetic, our generator): ``--n`` participants (default 1000) with ``--features`` regional GM volumes
(default 100, simulate_cohort) in ``--sites`` sites (default 4), each site's participant outputs written as the
participant level writes them (``sub-<label>/anat/sub-<label>_atlas-bench_morph.tsv`` and its sidecar, with the
built-in pipeline's feature parameters, through ``DerivativesWriter``) plus one participant-level run record.

Measured:
(a) the feature tables: bytes of every ``*_morph.tsv`` (and with their sidecars); baseline times of a plain
    ``shutil.copytree`` of each site's ``sub-*`` folders and a plain ``pandas.read_csv`` of every table;
(b) ``bids-ketamine export`` (``export_site``) per site: total time, export size, and the ratios to (a);
(c) pooling at the coordinating site (what ``group --participant-outputs`` does before the group analyses):
    reading the manifests and verifying every SHA-256, the compatibility check of every table's settings,
    bids-validator-deno on every export and on the coordinator's tables (``--skip-validation`` leaves it out),
    and copying the verified files into the output folder; each stage's time, the total, and the ratio to the
    plain read of (a). Peak memory: tracemalloc's peak over the pooling (Python and numpy allocations) and this
    process's ru_maxrss.

The machine is shared: the load average is printed beside the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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

ATLAS = "bench"
MB = 1024.0 * 1024.0


def load() -> str:
    return f"load {os.getloadavg()[0]:.1f}/{os.cpu_count()} CPUs"


def row(name: str, value: str, note: str = "") -> None:
    print(f"| {name:<50} | {value:>14} | {note}")


def folder_bytes(root: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern) if p.is_file())


def write_sites(root: Path, n: int, p: int, n_sites: int, seed: int = 7) -> tuple[dict[str, Path], Path, float]:
    """Each site's participant-level output folder and the coordinator's BIDS folder (participants.tsv only)."""
    from bids_ketamine.__about__ import __version__
    from bids_ketamine.io.derivatives import DerivativesWriter, atomic_write_text, dumps_json
    from bids_ketamine.structural.anat_params import AnatFeatureParams
    from bids_ketamine.structural.participant import MORPH_COLUMNS
    from bids_ketamine.structural.simulate_features import simulate_cohort

    cohort = simulate_cohort(n, p, mahalanobis=2.0, n_sites=n_sites, seed=seed)
    labels = [f"c{k:05d}" for k in range(n)]
    site_names = [chr(ord("A") + k) for k in range(n_sites)]
    site_of = {label: site_names[k % n_sites] for k, label in enumerate(labels)}
    regions = list(cohort.features.columns)
    hemisphere = [r[0] if r[:2] in ("L_", "R_") else "B" for r in regions]
    structure = ["cerebellum" if "cerebellum" in r else "cortex" for r in regions]
    parameters = AnatFeatureParams().model_dump(mode="json")
    outputs: dict[str, Path] = {}
    started = time.perf_counter()
    for site in site_names:
        out = root / f"out_{site}"
        writer = DerivativesWriter(out)
        writer.init_dataset()
        members = [s for s in labels if site_of[s] == site]
        for subject in members:
            k = labels.index(subject)
            volumes = cohort.features.iloc[k].to_numpy()
            tiv = float(cohort.covariates["tiv"].iloc[k])
            table = pd.DataFrame({"region": regions, "hemisphere": hemisphere, "structure": structure,
                                  "gm_volume_mm3": volumes, "gm_fraction_tiv": volumes / tiv, "tiv_mm3": tiv})
            writer.write_table(table, entities={"sub": subject, "atlas": ATLAS}, suffix="morph", datatype="anat",
                               columns=MORPH_COLUMNS, float_format="%.9g", parameters=parameters,
                               metadata={"FeatureSource": "builtin", "Atlas": "bench atlas",
                                         "TemplateSpace": "MNI152NLin2009aSym"},
                               description="Regional grey-matter volumes (synthetic, bench_consortium)")
        record = {"level": "participant", "version": __version__, "config": {"random_seed": seed},
                  "jobs": [{"subject": s, "analysis": "structural", "ok": True, "exit_code": 0} for s in members]}
        atomic_write_text(out / "logs" / "run-20260101T000000_participant_bench.json", dumps_json(record))
        outputs[site] = out
    write_s = time.perf_counter() - started

    bids = root / "coordinator"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "bench_consortium coordinator",
                                                                "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    (bids / "README").write_text("coordinating site of bench_consortium (participants.tsv only, no image)\n")
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in labels], "site": [site_of[s] for s in labels],
                  "age": cohort.covariates["age"].round(1)}).to_csv(bids / "participants.tsv", sep="\t",
                                                                     index=False)
    (bids / "participants.json").write_text(json.dumps({"site": {"Description": "consortium site"},
                                                        "age": {"Description": "age", "Units": "year"}}))
    return outputs, bids, write_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="participants (default 1000)")
    parser.add_argument("--features", type=int, default=100, help="regions per table (default 100)")
    parser.add_argument("--sites", type=int, default=4, help="sites (default 4)")
    parser.add_argument("--skip-validation", action="store_true", help="leave bids-validator-deno out")
    args = parser.parse_args(argv)

    from bids_ketamine.consortium.compat import check_compatible
    from bids_ketamine.consortium.export import export_site
    from bids_ketamine.consortium.pool import copy_exports, read_exports, table_settings, validate_pooled_inputs

    with tempfile.TemporaryDirectory(prefix="bench_consortium_") as tmp:
        root = Path(tmp)
        outputs, bids, write_s = write_sites(root, args.n, args.features, args.sites)
        print(f"bench_consortium: {args.n} participants x {args.features} regions in {args.sites} sites "
              f"(participant outputs written in {write_s:.1f} s); {load()}")
        print(f"| {'measure':<50} | {'value':>14} | note")
        print(f"|{'-' * 52}|{'-' * 16}|------")

        # (a) the feature tables and the plain baselines
        table_bytes = sum(folder_bytes(out / "", "*_morph.tsv") for out in outputs.values())
        with_sidecars = table_bytes + sum(folder_bytes(out, "*_morph.json") for out in outputs.values())
        row("feature tables (*_morph.tsv)", f"{table_bytes / MB:.2f} MB",
            f"{table_bytes / args.n / 1024:.1f} kB per participant")
        row("feature tables with their sidecars", f"{with_sidecars / MB:.2f} MB")
        started = time.perf_counter()
        for site, out in outputs.items():
            for folder in sorted(out.glob("sub-*")):
                shutil.copytree(folder, root / f"plain_{site}" / folder.name)
        copy_s = time.perf_counter() - started
        row("baseline: plain copy of the sub-* folders", f"{copy_s:.2f} s", load())
        started = time.perf_counter()
        frames = [pd.read_csv(p, sep="\t") for out in outputs.values() for p in sorted(out.glob("sub-*/anat/*.tsv"))]
        read_s = time.perf_counter() - started
        row("baseline: pandas.read_csv of every table", f"{read_s:.2f} s", f"{len(frames)} tables")
        del frames

        # (b) export
        exports = {}
        started = time.perf_counter()
        for site, out in outputs.items():
            exports[site] = export_site(out, root / f"export_{site}", site).root
        export_s = time.perf_counter() - started
        export_bytes = sum(folder_bytes(e) for e in exports.values())
        manifest_bytes = sum((e / "export_manifest.json").stat().st_size for e in exports.values())
        row("export (all sites)", f"{export_s:.2f} s", f"{export_s / copy_s:.1f}x the plain copy; {load()}")
        row("export size (all sites, manifests included)", f"{export_bytes / MB:.2f} MB",
            f"{export_bytes / with_sidecars:.2f}x the tables with sidecars; manifests {manifest_bytes / 1024:.0f} kB")

        # (c) pooling
        tracemalloc.start()
        t0 = time.perf_counter()
        read = read_exports(list(exports.values()))
        t1 = time.perf_counter()
        settings = [s for e in read for s in table_settings(e)]
        accepted = check_compatible(settings)
        t2 = time.perf_counter()
        if not args.skip_validation:
            validate_pooled_inputs(bids, read, root / "work")
        t3 = time.perf_counter()
        copy_exports(read, root / "pooled", accepted)
        t4 = time.perf_counter()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        row("pool: read manifests + verify SHA-256", f"{t1 - t0:.2f} s", f"{len(settings)} tables")
        row("pool: compatibility of every table's settings", f"{t2 - t1:.2f} s")
        row("pool: bids-validator-deno (exports + coordinator)",
            "skipped" if args.skip_validation else f"{t3 - t2:.2f} s", load())
        row("pool: copy into the output folder", f"{t4 - t3:.2f} s")
        total = t4 - t0
        row("pool: total", f"{total:.2f} s", f"{total / read_s:.1f}x the plain read; "
                                              f"{(total - (t3 - t2)) / read_s:.1f}x without validation")
        pooled = folder_bytes(root / "pooled")
        row("pooled output folder", f"{pooled / MB:.2f} MB")
        row("peak memory of the pooling (tracemalloc)", f"{peak / MB:.1f} MB",
            f"{peak / table_bytes:.2f}x the feature tables")
        row("peak resident memory of this process", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
