"""``bids-ketamine demo OUTDIR``: write the synthetic study, run participant then group level, say where it all is.

Analyses (or study parts) that this version does not have are named plainly as not built, never simulated.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

from bids_ketamine.errors import EXIT_OK, EXIT_USAGE

#: analysis -> study part it needs
ANALYSIS_PARTS = {"structural": "anat", "connectivity": "bold", "spectroscopy": "mrs"}


def _built(analysis: str) -> bool:
    return all(importlib.util.find_spec(f"bids_ketamine.{analysis}.{level}") is not None
               for level in ("participant", "group")) if importlib.util.find_spec(
        f"bids_ketamine.{analysis}") is not None else False


def main(argv: list[str]) -> int:
    from bids_ketamine.cli.parser import _build_demo_parser

    try:
        args = _build_demo_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    from bids_ketamine.cli.run import main as run_main
    from bids_ketamine.synthetic.study import part_available, write_study

    started = time.time()
    root = args.output_dir.absolute()
    bids_dir, out_dir = root / "bids", root / "outputs"
    analyses = [a for a, part in ANALYSIS_PARTS.items() if _built(a) and part_available(part)]
    for analysis, part in ANALYSIS_PARTS.items():
        if analysis not in analyses:
            print(f"demo: the {analysis} analysis is not built yet in this version; it is left out of the demo.")
    parts = tuple(ANALYSIS_PARTS[a] for a in analyses)
    truth_file = bids_dir / "code" / "ground_truth.json"
    previous = json.loads(truth_file.read_text()) if truth_file.exists() else {}
    if previous.get("seed") == args.random_seed and previous.get("size") == args.size and \
            all(k in previous for k in ("structural", "connectivity", "spectroscopy") if ANALYSIS_PARTS[k] in parts):
        print(f"demo: reusing the synthetic study in {bids_dir}")
    else:
        print(f"demo: writing the synthetic study ({args.size}) to {bids_dir} ...", flush=True)
        from bids_ketamine.errors import BidsKetamineError
        from bids_ketamine.io.failures import writing

        try:
            with writing(root, "demo folder"):  # a full or read-only disk: one line, exit 73
                write_study(bids_dir, seed=args.random_seed, size=args.size, parts=parts,
                            n_jobs=args.nprocs or len(os.sched_getaffinity(0)))
        except BidsKetamineError as exc:
            print(f"bids-ketamine demo: error: {exc}", file=sys.stderr)
            return exc.exit_code
    if not analyses:
        print("demo: no analysis is built yet; the synthetic study is written, nothing else to run.")
        return EXIT_OK
    common = ["--random-seed", str(args.random_seed), "--analyses", ",".join(analyses)]
    genes = bids_dir / "code" / "genes.tsv"
    if "connectivity" in analyses and genes.is_file():
        # the study's synthetic gene table feeds the gene analysis, configured as a user would: a config file
        config = root / "demo_config.toml"
        config.write_text("# written by `bids-ketamine demo`: the synthetic study's parcels x genes table\n"
                          f"[connectivity]\ngene_table = {json.dumps(str(genes))}\n")
        common += ["--config-file", str(config)]
    if args.nprocs:
        common += ["--nprocs", str(args.nprocs)]
    for level in ("participant", "group"):
        print(f"demo: {level} level ...", flush=True)
        code = run_main([str(bids_dir), str(out_dir), level, *common])
        if code != EXIT_OK:
            print(f"demo: the {level} level ended with exit code {code}; see the messages above.", file=sys.stderr)
            return code
    print(f"demo: finished in {time.time() - started:.0f} s")
    print(f"  synthetic BIDS dataset : {bids_dir}")
    print(f"  planted ground truth   : {truth_file}")
    print_summary(out_dir)
    return EXIT_OK


def print_summary(out_dir) -> None:
    """Where the results are and what the analyses found: the same sentences as the group report's Findings."""
    from bids_ketamine.reports.findings import FINDINGS_NAME, findings_lines

    reports = sorted(out_dir.glob("sub-*.html"))
    print(f"  results (derivatives)  : {out_dir}")
    print(f"  findings (JSON)        : {out_dir / 'group' / FINDINGS_NAME}")
    print(f"  participant reports    : {len(reports)} files sub-<label>.html in {out_dir}")
    print(f"  group report           : {out_dir / 'group.html'}")
    lines = findings_lines(out_dir)
    if lines:
        print("demo: findings")
        for line in lines:
            print(f"  - {line}")
