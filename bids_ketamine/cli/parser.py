"""The command line: a pure ``_build_parser()`` (cheap imports only) that tests and boutiques checks can call."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from bids_ketamine.__about__ import __version__

ANALYSES = ("structural", "connectivity", "spectroscopy")
LEVELS = ("participant", "group")
_MEM_UNITS = {"": 1.0, "b": 1 / 1024**3, "k": 1 / 1024**2, "kb": 1 / 1024**2, "m": 1 / 1024, "mb": 1 / 1024,
              "g": 1.0, "gb": 1.0, "t": 1024.0, "tb": 1024.0}


def parse_memory_gb(value: str) -> float:
    """``--mem``: a number with a unit (``8G``, ``8000MB``, ``16GB``); a bare number means GB."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    if not match or match.group(2).lower() not in _MEM_UNITS:
        raise argparse.ArgumentTypeError(f"invalid memory {value!r}: use e.g. 16G, 16000M or 16 (= GB)")
    return float(match.group(1)) * _MEM_UNITS[match.group(2).lower()]


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from exc
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _derivative(value: str) -> tuple[str, Path]:
    if "=" in value:
        name, path = value.split("=", 1)
        return name.strip(), Path(path)
    return Path(value).name, Path(value)


def _analysis_list(value: str) -> list[str]:
    items = [v.strip().lower() for v in re.split(r"[,\s]+", value) if v.strip()]
    bad = [v for v in items if v not in ANALYSES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown analysis {bad[0]!r}; choose from {', '.join(ANALYSES)}")
    return items


def _build_parser() -> argparse.ArgumentParser:
    """The ``bids-ketamine`` parser (BIDS-Apps positional arguments; fMRIPrep/MRIQC/XCP-D flag spellings)."""
    parser = argparse.ArgumentParser(
        prog="bids-ketamine",
        description="Predict and explain ketamine response from BIDS MRI: structural prediction (T1w), "
                    "connectivity heterogeneity (fMRIPrep BOLD) and glutamate spectroscopy (NIfTI-MRS). "
                    "Run `bids-ketamine demo OUTDIR` for a complete example on synthetic data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Exit codes: 0 ok; 1 a participant failed; 16 invalid BIDS; 17 unsupported level; 18 filters "
               "matched nothing; 64 usage error; 65 bad data; 66 missing input; 73 cannot create output; "
               "75 temporary failure (retry).",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the BIDS dataset")
    parser.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives go (not inside bids_dir's data)")
    parser.add_argument("analysis_level", help="'participant' (features per subject) or 'group' (statistics)")
    parser.add_argument("--version", action="version", version=f"bids-ketamine {__version__}")

    sel = parser.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                     metavar="LABEL", help="participants to process (with or without 'sub-'), or a file with one "
                                           "label per line; default: all")
    sel.add_argument("--session-label", "--session-id", "--session_label", "--session_id", dest="session_label",
                     nargs="+", metavar="LABEL", help="sessions to process (with or without 'ses-')")
    sel.add_argument("-t", "--task-id", "--task_id", dest="task_id", metavar="TASK",
                     help="BOLD/fMRS task to use (e.g. rest)")
    sel.add_argument("--bids-filter-file", "--bids_filter_file", dest="bids_filter_file", type=Path,
                     metavar="FILE", help="JSON of pybids filters per input, e.g. {\"t1w\": {\"acquisition\": \"mprage\"}}")
    sel.add_argument("-d", "--derivatives", dest="derivatives", nargs="+", type=_derivative, metavar="NAME=PATH",
                     help="derivatives to use, e.g. fmriprep=/data/derivatives/fmriprep; default: every folder "
                          "under bids_dir/derivatives")
    sel.add_argument("--analyses", type=_analysis_list, metavar="LIST",
                     help=f"comma-separated subset of {', '.join(ANALYSES)}; default: every analysis whose inputs "
                          "exist")
    sel.add_argument("--skip-bids-validation", "--skip_bids_validation", dest="skip_bids_validation",
                     action="store_true", help="do not run bids-validator-deno on the input")
    sel.add_argument("--participant-outputs", "--participant_outputs", dest="participant_outputs", nargs="+",
                     type=Path, metavar="EXPORT", help="group level of a consortium: pool these site exports "
                                                       "(`bids-ketamine export`) instead of participant outputs "
                                                       "made in output_dir; bids_dir needs only participants.tsv")
    sel.add_argument("--bids-database-dir", "--bids_database_dir", dest="bids_database_dir", type=Path,
                     metavar="DIR", help="saved pybids index to reuse (created if absent); share it across jobs")

    perf = parser.add_argument_group("resources")
    perf.add_argument("--nprocs", "--n-cpus", "--n_cpus", "--nthreads", dest="nprocs", type=_positive_int,
                      metavar="N", help="processes to use; default: all available cores")
    perf.add_argument("--omp-nthreads", "--omp_nthreads", dest="omp_nthreads", type=_positive_int, metavar="N",
                      help="threads per process for numerical libraries; default 1")
    perf.add_argument("--mem", "--mem-gb", "--mem_gb", dest="mem_gb", type=parse_memory_gb, metavar="MEM",
                      help="memory limit with a unit (16G, 16000M); a bare number means GB")
    perf.add_argument("-w", "--work-dir", "--work_dir", dest="work_dir", type=Path, metavar="DIR",
                      help="scratch folder for intermediate files (default: OUTPUT_DIR/../work-bids_ketamine... "
                           "see README); must not be inside bids_dir")
    perf.add_argument("--clean-workdir", "--clean_workdir", dest="clean_workdir", action="store_true",
                      help="delete the work folder after a successful run")
    perf.add_argument("--use-plugin", "--use_plugin", dest="use_plugin", type=Path, metavar="FILE",
                      help="nipype plugin settings (YAML), e.g. for SLURM/SGE/PBS")
    perf.add_argument("--stop-on-first-crash", dest="stop_on_first_crash", action="store_true",
                      help="stop at the first participant that fails instead of continuing with the others")
    perf.add_argument("--dask-scheduler", dest="dask_scheduler", metavar="ADDRESS",
                      help="run group-level resampling on an existing dask.distributed scheduler")

    other = parser.add_argument_group("configuration and behaviour")
    other.add_argument("--config-file", "--config_file", dest="config_file", type=Path, metavar="FILE",
                       help="study design and analysis parameters (TOML, YAML or JSON); see README")
    other.add_argument("--model", dest="model", type=Path, metavar="FILE",
                       help="group level: apply this saved structural model bundle (group/structural/"
                            "*_model.skops, with its .json card beside it) to every participant instead of training")
    other.add_argument("--random-seed", "--random_seed", "--seed", dest="random_seed", type=int, metavar="SEED",
                       help="seed for every random step (default 20240601 or the config file's)")
    other.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                       help="discover inputs and print the plan, then stop")
    other.add_argument("--reports-only", "--reports_only", dest="reports_only", action="store_true",
                       help="rebuild the HTML reports from existing outputs without recomputing")
    other.add_argument("--rerun", "--force", dest="rerun", action="store_true",
                       help="recompute participants that finished in an earlier run (default: skip them)")
    other.add_argument("-v", "--verbose", dest="verbose", action="count", default=0,
                       help="more log output (-v, -vv)")
    return parser


def _build_demo_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bids-ketamine demo",
        description="Write the synthetic demo study, run participant then group level on it, and print where the "
                    "results and reports are.",
    )
    parser.add_argument("output_dir", type=Path, help="folder for the demo (created; holds bids/ and derivatives/)")
    parser.add_argument("--random-seed", "--seed", dest="random_seed", type=int, default=20240601)
    parser.add_argument("--nprocs", "--n-cpus", dest="nprocs", type=_positive_int, default=None)
    parser.add_argument("--size", choices=("demo", "small"), default="demo",
                        help="'small' writes a reduced study (used by the tests)")
    parser.add_argument("--version", action="version", version=f"bids-ketamine {__version__}")
    return parser
