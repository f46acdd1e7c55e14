"""``bids-ketamine``: parse, check, discover, plan, then run participant or group level.

Imports of the scientific stack happen inside functions, so ``--help`` and ``--version`` answer at once.
Every user-facing failure ends as one line on stderr and the exit code of the BIDS-Apps execution spec.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from bids_ketamine.errors import (
    EXIT_OK,
    EXIT_USAGE,
    BidsKetamineError,
    MissingInputError,
    UnsupportedLevelError,
    UsageError,
)

from bids_ketamine.logs import setup_logging

LOG = logging.getLogger("bids_ketamine")


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or child.is_relative_to(parent)


def build_config(args):
    """Turn parsed arguments into a checked ``RunConfig`` (usage errors exit 64, missing input 66)."""
    from bids_ketamine.cli.parser import LEVELS
    from bids_ketamine.config import DEFAULT_SEED, RunConfig, design_from_file, read_config_file
    from bids_ketamine.discovery import clean_labels, load_filters

    level = args.analysis_level.lower()
    if level not in LEVELS:
        raise UnsupportedLevelError(f"unsupported analysis level {args.analysis_level!r}",
                                    fix="use 'participant' or 'group'")
    bids_dir = args.bids_dir.absolute()
    output_dir = args.output_dir.absolute()
    if not bids_dir.is_dir():
        raise MissingInputError("BIDS folder not found", path=bids_dir,
                                fix="check the path (and the container's bind mount)")
    if not (bids_dir / "dataset_description.json").exists():
        raise MissingInputError("not a BIDS dataset: dataset_description.json is missing", path=bids_dir,
                                fix="point bids_dir at the dataset root")
    if output_dir.exists() and output_dir.resolve() == bids_dir.resolve():
        raise UsageError("output_dir is the BIDS folder itself", path=output_dir,
                         fix="write outputs elsewhere, e.g. bids_dir/derivatives/bids_ketamine")
    if _inside(output_dir, bids_dir) and not _inside(output_dir, bids_dir / "derivatives"):
        raise UsageError("output_dir is inside the BIDS dataset (outside derivatives/)", path=output_dir,
                         fix="use bids_dir/derivatives/bids_ketamine or a folder outside the dataset")
    if _inside(bids_dir, output_dir):
        raise UsageError("output_dir contains the BIDS dataset", path=output_dir,
                         fix="choose an output folder that is not a parent of bids_dir")
    work_dir = (args.work_dir or output_dir / ".bids_ketamine" / "work").absolute()
    if _inside(work_dir, bids_dir):
        raise UsageError("the work folder is inside the BIDS dataset", path=work_dir,
                         fix="put -w/--work-dir outside bids_dir (e.g. on scratch)")
    data = read_config_file(args.config_file) if args.config_file else {}
    design = design_from_file(data, args.config_file)
    seed = args.random_seed if args.random_seed is not None else data.get("random_seed", DEFAULT_SEED)
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"random_seed must be a non-negative integer, not {seed!r}", path=args.config_file)
    if args.use_plugin is not None and not args.use_plugin.is_file():
        raise UsageError("nipype plugin file not found", path=args.use_plugin, fix="give an existing YAML file")
    analyses = args.analyses
    sections = {k: v for k, v in data.items() if k not in ("design", "random_seed")}
    if getattr(args, "model", None) is not None:
        from bids_ketamine.structural.bundle import load_bundle

        if level != "group":
            raise UsageError("--model applies a saved model at the group level", fix="use analysis level 'group'")
        load_bundle(args.model.absolute())  # refuse a changed or foreign bundle before anything is written
        sections["structural"] = {**sections.get("structural", {}), "model_file": str(args.model.absolute())}
        analyses = analyses or ["structural"]
    if args.participant_outputs and level != "group":
        raise UsageError("--participant-outputs is an option of the group level", fix="run it with 'group'")
    nprocs = args.nprocs or len(os.sched_getaffinity(0))
    return RunConfig(
        bids_dir=bids_dir, output_dir=output_dir, level=level, work_dir=work_dir, design=design,
        analysis_sections=sections,
        config_path=args.config_file,
        participant_label=clean_labels(args.participant_label, "sub-", "participant"),
        session_label=clean_labels(args.session_label, "ses-", "session"),
        task_id=args.task_id, bids_filters=load_filters(args.bids_filter_file),
        derivatives=dict(args.derivatives or []), analyses=analyses,
        skip_bids_validation=args.skip_bids_validation, bids_database_dir=args.bids_database_dir,
        nprocs=nprocs, omp_nthreads=args.omp_nthreads or 1, mem_gb=args.mem_gb, clean_workdir=args.clean_workdir,
        use_plugin=args.use_plugin, stop_on_first_crash=args.stop_on_first_crash,
        dask_scheduler=args.dask_scheduler, random_seed=seed, dry_run=args.dry_run,
        reports_only=args.reports_only, rerun=args.rerun, verbose=args.verbose,
        participant_outputs=[p.absolute() for p in args.participant_outputs] if args.participant_outputs else None,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from bids_ketamine.cli.demo import main as demo_main

        return demo_main(argv[1:])
    if argv and argv[0] == "export":  # a site packs its features for a consortium (no images)
        from bids_ketamine.cli.export import main as export_main

        return export_main(argv[1:])
    if argv and argv[0] == "brainlife":  # the brainlife.io app's entry (platforms/brainlife/main)
        from bids_ketamine.platforms.brainlife import main as brainlife_main

        return brainlife_main(argv[1:])
    from bids_ketamine.cli.parser import _build_parser

    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help/--version, 2 for bad usage -> BIDS-Apps 64
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    setup_logging(args.verbose)
    try:
        cfg = build_config(args)
        return run(cfg)
    except BidsKetamineError as exc:
        print(f"bids-ketamine: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, EOFError, MemoryError) as exc:
        # what the readers and the writer did not map: a full disk, a read-only folder, memory (else a bug)
        from bids_ketamine.io.failures import describe

        output = args.output_dir.absolute()
        mapped = describe(exc, outputs=[output, (args.work_dir or output / ".bids_ketamine" / "work").absolute()],
                          who="the main process")
        if mapped is None:
            raise
        print(f"bids-ketamine: error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    except KeyboardInterrupt:
        print("bids-ketamine: interrupted; re-run to resume (finished participants are kept)", file=sys.stderr)
        return 130


def run(cfg) -> int:
    """Run a checked configuration: validation, discovery, plan, then the level."""
    from bids_ketamine.orchestrate import rebuild_reports, run_group_level, run_participant_level

    if cfg.reports_only:
        return rebuild_reports(cfg)
    started = time.time()
    code = run_participant_level(cfg) if cfg.level == "participant" else run_group_level(cfg)
    LOG.info("finished in %.0f s with exit code %d", time.time() - started, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
