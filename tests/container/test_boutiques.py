"""boutiques.json and the real CLI parser cannot drift: every option is described, and every command line that
``bosh exec simulate`` builds from the descriptor parses with ``_build_parser()`` to the values it was given."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_ketamine.__about__ import __version__
from bids_ketamine.cli.parser import _build_parser

REPO = Path(__file__).resolve().parents[2]
DESCRIPTOR = REPO / "boutiques.json"
BOSH = Path(sys.executable).parent / "bosh"


def _bosh() -> str:
    exe = str(BOSH) if BOSH.exists() else shutil.which("bosh")
    if exe is None:
        pytest.skip("bosh (PyPI boutiques, a test dependency) is not installed")
    return exe


def _descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _parser_actions() -> dict[str, argparse.Action]:
    """Every user-facing parser action by ``dest`` (``--help`` and ``--version`` exit, so they are not inputs)."""
    return {a.dest: a for a in _build_parser()._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))}


def _simulate(invocation: dict | None, tmp_path: Path, complete: bool = False) -> list[str]:
    """Command line that ``bosh exec simulate`` builds, as argv after the program name."""
    cmd = [_bosh(), "exec", "simulate", str(DESCRIPTOR)]
    if invocation is not None:
        inv = tmp_path / "invocation.json"
        inv.write_text(json.dumps(invocation))
        cmd += ["-i", str(inv)]
    if complete:
        cmd.append("-c")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("bids-ketamine ")]
    assert len(lines) == 1, proc.stdout
    argv = shlex.split(lines[0])
    assert argv[0] == "bids-ketamine"
    return argv[1:]


def _parse(argv: list[str]) -> argparse.Namespace:
    """The real parser; argparse's exit on a usage error becomes a test failure with the command line."""
    parser = _build_parser()
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"the CLI rejects the simulated command line (exit {exc.code}): {shlex.join(argv)}")


def test_bosh_validate_passes():
    proc = subprocess.run([_bosh(), "validate", str(DESCRIPTOR)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_descriptor_names_the_package_version_and_image():
    desc = _descriptor()
    assert desc["tool-version"] == __version__
    assert desc["container-image"]["type"] == "docker"
    assert desc["container-image"]["image"] == f"bids_ketamine:{__version__}"
    assert desc["command-line"].split()[0] == "bids-ketamine"


def test_every_parser_option_is_in_the_descriptor_and_vice_versa():
    actions = _parser_actions()
    inputs = {i["id"]: i for i in _descriptor()["inputs"]}
    assert set(inputs) == set(actions), (
        f"only in the parser: {sorted(set(actions) - set(inputs))}; "
        f"only in boutiques.json: {sorted(set(inputs) - set(actions))}")
    command_line = _descriptor()["command-line"].split()
    for dest, action in actions.items():
        inp = inputs[dest]
        assert inp["value-key"] in command_line, f"{dest}: value-key missing from command-line"
        if not action.option_strings:  # positional: required, no flag
            assert "command-line-flag" not in inp and not inp.get("optional", False), dest
            continue
        assert inp.get("optional") is True, f"{dest}: every option is optional in the CLI"
        assert inp["command-line-flag"] in action.option_strings, (
            f"{dest}: descriptor flag {inp['command-line-flag']!r} is not one of {action.option_strings}")
        if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
            assert inp["type"] == "Flag", dest
        else:
            assert inp["type"] != "Flag", dest
            assert bool(inp.get("list")) == (action.nargs in ("+", "*") or dest == "analyses"), dest
        if getattr(action.type, "__name__", "") in ("int", "_positive_int"):
            assert inp["type"] == "Number" and inp.get("integer") is True, dest
    # positional order of the descriptor is the parser's
    positionals = [a.dest for a in actions.values() if not a.option_strings]
    keys = [inputs[d]["value-key"] for d in positionals]
    assert command_line[1:1 + len(keys)] == keys


FULL_PARTICIPANT = {
    "bids_dir": "/data", "output_dir": "/out", "analysis_level": "participant",
    "participant_label": ["sub-01", "02"], "session_label": ["ses-ketamine", "placebo"], "task_id": "rest",
    "bids_filter_file": "/code/filters.json", "derivatives": ["fmriprep=/data/derivatives/fmriprep"],
    "analyses": ["structural", "spectroscopy"], "skip_bids_validation": True, "bids_database_dir": "/work/bidsdb",
    "nprocs": 2, "omp_nthreads": 1, "mem_gb": 16, "work_dir": "/scratch/work", "clean_workdir": True,
    "use_plugin": "/code/slurm.yml", "stop_on_first_crash": True, "dask_scheduler": "tcp://10.0.0.1:8786",
    "config_file": "/code/study.toml", "random_seed": 7, "dry_run": True, "reports_only": True, "rerun": True,
    "verbose": True,
}
EXPECTED_FULL = {
    "bids_dir": Path("/data"), "output_dir": Path("/out"), "analysis_level": "participant",
    "participant_label": ["sub-01", "02"], "session_label": ["ses-ketamine", "placebo"], "task_id": "rest",
    "bids_filter_file": Path("/code/filters.json"), "derivatives": [("fmriprep", Path("/data/derivatives/fmriprep"))],
    "analyses": ["structural", "spectroscopy"], "skip_bids_validation": True, "bids_database_dir": Path("/work/bidsdb"),
    "nprocs": 2, "omp_nthreads": 1, "mem_gb": 16.0, "work_dir": Path("/scratch/work"), "clean_workdir": True,
    "use_plugin": Path("/code/slurm.yml"), "stop_on_first_crash": True, "dask_scheduler": "tcp://10.0.0.1:8786",
    "config_file": Path("/code/study.toml"), "random_seed": 7, "dry_run": True, "reports_only": True, "rerun": True,
    "verbose": 1,
}


@pytest.mark.parametrize("invocation, expected", [
    pytest.param({"bids_dir": "/data", "output_dir": "/out", "analysis_level": "group"},
                 {"analysis_level": "group", "participant_label": None, "analyses": None, "verbose": 0,
                  "skip_bids_validation": False, "mem_gb": None}, id="minimal-group"),
    pytest.param(FULL_PARTICIPANT, EXPECTED_FULL, id="every-option"),
    pytest.param({"bids_dir": "/data", "output_dir": "/data/derivatives/bids_ketamine",
                  "analysis_level": "participant", "participant_label": ["01"], "analyses": ["connectivity"],
                  "derivatives": ["/data/derivatives/fmriprep"], "mem_gb": 7.5, "nprocs": 1},
                 {"participant_label": ["01"], "analyses": ["connectivity"], "mem_gb": 7.5, "nprocs": 1,
                  "derivatives": [("fmriprep", Path("/data/derivatives/fmriprep"))]}, id="slurm-array-job"),
])
def test_simulated_invocations_parse_to_the_given_values(invocation, expected, tmp_path):
    args = _parse(_simulate(invocation, tmp_path))
    for dest, value in expected.items():
        assert getattr(args, dest) == value, dest
    # every input the invocation set reached the parser (not silently dropped by the descriptor)
    defaults = _build_parser().parse_args(["/d", "/o", "group"])
    for dest in invocation:
        if dest in _parser_actions() and _parser_actions()[dest].option_strings:
            assert getattr(args, dest) != getattr(defaults, dest), f"{dest} did not reach the parser"


@pytest.mark.parametrize("round_", range(4))
def test_random_complete_simulations_parse(round_, tmp_path):
    """bosh's own random values for every input (``-c``): whatever the descriptor allows, the CLI accepts."""
    argv = _simulate(None, tmp_path, complete=True)
    args = _parse(argv)
    assert args.analysis_level in ("participant", "group")
    for dest, action in _parser_actions().items():
        if action.option_strings and not isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)):
            assert getattr(args, dest) is not None, f"{dest} missing from a complete simulation: {argv}"
