"""The command line: flag aliases, exit codes of the BIDS-Apps spec, label hygiene, validation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bids_ketamine.cli.parser import _build_parser, parse_memory_gb
from bids_ketamine.cli.run import main
from bids_ketamine.errors import (EXIT_INVALID_BIDS, EXIT_MISSING_INPUT, EXIT_NO_MATCH, EXIT_UNSUPPORTED_LEVEL,
                                  EXIT_USAGE)

from .helpers import make_tiny_bids

POSITIONAL = ["/data", "/out", "participant"]

ALIASES = [
    (["--participant-label", "01"], "participant_label", ["01"]),
    (["--participant_label", "01"], "participant_label", ["01"]),
    (["--session-label", "a"], "session_label", ["a"]),
    (["--session-id", "a"], "session_label", ["a"]),
    (["--session_label", "a"], "session_label", ["a"]),
    (["--session_id", "a"], "session_label", ["a"]),
    (["-t", "rest"], "task_id", "rest"),
    (["--task-id", "rest"], "task_id", "rest"),
    (["--task_id", "rest"], "task_id", "rest"),
    (["--bids-filter-file", "f.json"], "bids_filter_file", Path("f.json")),
    (["--bids_filter_file", "f.json"], "bids_filter_file", Path("f.json")),
    (["-d", "fmriprep=/d/fp"], "derivatives", [("fmriprep", Path("/d/fp"))]),
    (["--derivatives", "fmriprep=/d/fp"], "derivatives", [("fmriprep", Path("/d/fp"))]),
    (["--derivatives", "/d/smriprep"], "derivatives", [("smriprep", Path("/d/smriprep"))]),
    (["--skip-bids-validation"], "skip_bids_validation", True),
    (["--skip_bids_validation"], "skip_bids_validation", True),
    (["--bids-database-dir", "/db"], "bids_database_dir", Path("/db")),
    (["--bids_database_dir", "/db"], "bids_database_dir", Path("/db")),
    (["--nprocs", "3"], "nprocs", 3),
    (["--n-cpus", "3"], "nprocs", 3),
    (["--n_cpus", "3"], "nprocs", 3),
    (["--nthreads", "3"], "nprocs", 3),
    (["--omp-nthreads", "2"], "omp_nthreads", 2),
    (["--omp_nthreads", "2"], "omp_nthreads", 2),
    (["--mem", "8G"], "mem_gb", 8.0),
    (["--mem", "8192MB"], "mem_gb", 8.0),
    (["--mem", "8"], "mem_gb", 8.0),
    (["--mem-gb", "8"], "mem_gb", 8.0),
    (["--mem_gb", "8"], "mem_gb", 8.0),
    (["-w", "/work"], "work_dir", Path("/work")),
    (["--work-dir", "/work"], "work_dir", Path("/work")),
    (["--work_dir", "/work"], "work_dir", Path("/work")),
    (["--clean-workdir"], "clean_workdir", True),
    (["--clean_workdir"], "clean_workdir", True),
    (["--use-plugin", "p.yml"], "use_plugin", Path("p.yml")),
    (["--use_plugin", "p.yml"], "use_plugin", Path("p.yml")),
    (["--stop-on-first-crash"], "stop_on_first_crash", True),
    (["--config-file", "c.toml"], "config_file", Path("c.toml")),
    (["--config_file", "c.toml"], "config_file", Path("c.toml")),
    (["--random-seed", "7"], "random_seed", 7),
    (["--random_seed", "7"], "random_seed", 7),
    (["--seed", "7"], "random_seed", 7),
    (["--model", "m.skops"], "model", Path("m.skops")),
    (["--participant-outputs", "a", "b"], "participant_outputs", [Path("a"), Path("b")]),
    (["--participant_outputs", "a"], "participant_outputs", [Path("a")]),
    (["--dry-run"], "dry_run", True),
    (["--dry_run"], "dry_run", True),
    (["--reports-only"], "reports_only", True),
    (["--reports_only"], "reports_only", True),
    (["--rerun"], "rerun", True),
    (["--force"], "rerun", True),
    (["--analyses", "structural,spectroscopy"], "analyses", ["structural", "spectroscopy"]),
    (["--dask-scheduler", "tcp://127.0.0.1:8786"], "dask_scheduler", "tcp://127.0.0.1:8786"),
    (["-v"], "verbose", 1),
    (["-vv"], "verbose", 2),
    (["--verbose"], "verbose", 1),
]


@pytest.mark.parametrize(("flags", "dest", "expected"), ALIASES, ids=[" ".join(a[0]) for a in ALIASES])
def test_every_flag_alias_sets_its_destination(flags, dest, expected):
    args = _build_parser().parse_args([*POSITIONAL, *flags])
    assert getattr(args, dest) == expected


def test_every_long_option_of_the_parser_is_covered_by_the_alias_table():
    covered = {flag for flags, _, _ in ALIASES for flag in flags if flag.startswith("-")}
    options = {s for a in _build_parser()._actions for s in a.option_strings} - {"-h", "--help", "--version"}
    assert options <= covered, f"untested flags: {sorted(options - covered)}"


def test_memory_units():
    assert parse_memory_gb("512M") == pytest.approx(0.5)
    assert parse_memory_gb("1.5T") == pytest.approx(1536)
    with pytest.raises(Exception, match="invalid memory"):
        parse_memory_gb("lots")


def test_help_and_version_answer_fast_without_the_scientific_stack():
    code = ("import sys, time; t=time.perf_counter(); from bids_ketamine.cli.run import main; "
            "rc = main(['--version']); heavy = [m for m in ('sklearn','nilearn','nipype','bids','lmfit') "
            "if m in sys.modules]; print(heavy, time.perf_counter()-t); sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "bids-ketamine 0.1.0" in proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("[]"), proc.stdout


def test_output_equal_to_input_is_refused(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    assert main([str(bids), str(bids), "participant"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "output_dir is the BIDS folder itself" in err and len(err.strip().splitlines()) == 1


def test_output_inside_dataset_but_not_derivatives_is_refused(tmp_path):
    bids = make_tiny_bids(tmp_path / "bids")
    assert main([str(bids), str(bids / "sub-01" / "out"), "participant"]) == EXIT_USAGE


def test_work_dir_inside_dataset_is_refused(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(bids / "work")])
    assert code == EXIT_USAGE
    assert "work folder is inside the BIDS dataset" in capsys.readouterr().err


def test_unknown_level_exits_17(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    assert main([str(bids), str(tmp_path / "out"), "session"]) == EXIT_UNSUPPORTED_LEVEL
    assert "unsupported analysis level 'session'" in capsys.readouterr().err


def test_bad_usage_exits_64():
    assert main(["/data"]) == EXIT_USAGE
    assert main([*POSITIONAL, "--nprocs", "zero"]) == EXIT_USAGE
    assert main([*POSITIONAL, "--analyses", "tractography"]) == EXIT_USAGE


def test_missing_bids_dir_exits_66(tmp_path):
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "participant"]) == EXIT_MISSING_INPUT


@pytest.mark.parametrize("label", ["../01", "sub-01/../02", "a/b", "0 1", ".."])
def test_path_like_participant_labels_are_rejected(tmp_path, capsys, label):
    bids = make_tiny_bids(tmp_path / "bids")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", label,
                 "--skip-bids-validation"])
    assert code == EXIT_USAGE
    assert "invalid participant label" in capsys.readouterr().err


def test_sub_prefix_is_stripped_and_unknown_participant_exits_18(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "sub-01", "--dry-run",
                 "--skip-bids-validation"])
    captured = capsys.readouterr()
    assert "sub-01" in captured.out and "sub-02" not in captured.out
    assert code in (0, EXIT_NO_MATCH)  # 18 only while no analysis can use a T1w
    code = main([str(bids), str(out), "participant", "--participant-label", "sub-99", "--skip-bids-validation"])
    assert code == EXIT_NO_MATCH
    assert "sub-99 not found" in capsys.readouterr().err


def test_labels_from_a_file(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids", subjects=("01", "02", "03"))
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-02\n03\n")
    main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", str(labels), "--dry-run",
          "--skip-bids-validation"])
    out = capsys.readouterr().out
    assert "sub-02" in out and "sub-03" in out and "sub-01" not in out


def test_filter_that_matches_nothing_exits_18(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"t1w": {"acquisition": "doesnotexist"}}))
    code = main([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filt),
                 "--skip-bids-validation"])
    assert code == EXIT_NO_MATCH
    assert "no participant has the inputs" in capsys.readouterr().err


def test_bad_filter_file_is_a_usage_error(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    filt = tmp_path / "filter.json"
    filt.write_text("{not json")
    assert main([str(bids), str(tmp_path / "out"), "participant", "--bids-filter-file", str(filt)]) == EXIT_USAGE
    assert "filter.json" in capsys.readouterr().err


def test_missing_participants_column_named_in_config(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    config = tmp_path / "study.toml"
    config.write_text('[design.participants]\nsite = "scanner"\n')
    code = main([str(bids), str(tmp_path / "out"), "participant", "--config-file", str(config),
                 "--skip-bids-validation"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids-ketamine: error")]
    assert code == EXIT_MISSING_INPUT
    assert len(errors) == 1
    err = errors[0]
    assert "'scanner'" in err and "design.participants.site" in err and "participants.tsv" in err
    assert "Fix:" in err


def test_config_typo_names_the_field_and_file(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    config = tmp_path / "study.yaml"
    config.write_text("design:\n  response:\n    min_reduktion: 0.5\n")
    assert main([str(bids), str(tmp_path / "out"), "participant", "--config-file", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "design.response.min_reduktion" in err and "study.yaml" in err


def test_validation_failure_exits_16(tmp_path, capsys):
    bids = make_tiny_bids(tmp_path / "bids")
    (bids / "sub-01" / "anat" / "sub-01_notbids.txt").write_text("stray file")
    code = main([str(bids), str(tmp_path / "out"), "participant"])
    assert code == EXIT_INVALID_BIDS
    err = capsys.readouterr().err
    assert "not valid BIDS" in err and "--skip-bids-validation" in err


def test_valid_tiny_dataset_passes_validation(tmp_path):
    from bids_ketamine.validation import validation_errors

    assert validation_errors(make_tiny_bids(tmp_path / "bids")) == []


def test_console_script_help_latency():
    exe = Path(sys.executable).parent / "bids-ketamine"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    start = time.perf_counter()
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "Exit codes" in proc.stdout
    print(f"--help latency: {elapsed * 1000:.0f} ms")
