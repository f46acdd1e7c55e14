"""Operating-system and resource failures map to documented exit codes (io.failures), and every place of the
package that touches files is covered by one of the nets that apply that mapping."""

from __future__ import annotations

import ast
import errno
import gzip
import json
import pickle
from pathlib import Path

import pytest

from bids_ketamine.errors import (EXIT_BAD_DATA, EXIT_CANNOT_CREATE_OUTPUT, EXIT_MISSING_INPUT, EXIT_TEMPORARY,
                                  BadDataError)
from bids_ketamine.io.failures import describe, find_broken_input, free_space, input_paths

PACKAGE = Path(__file__).resolve().parents[2] / "bids_ketamine"


def test_output_failures_name_the_folder_and_its_free_space(tmp_path):
    out, work = tmp_path / "out", tmp_path / "scratch"
    out.mkdir()
    cases = [
        (OSError(errno.ENOSPC, "No space left on device"), out),  # write(): no file name
        (OSError(errno.EDQUOT, "Disk quota exceeded", str(out / "sub-01" / "x.tsv")), out),
        (OSError(errno.EROFS, "Read-only file system", str(out / "logs")), out),
        (PermissionError(errno.EACCES, "Permission denied", str(work / "sub-01")), work),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", str(work / "a")), work),
    ]
    for exc, folder in cases:
        error = describe(exc, outputs=[out, work])
        assert error is not None and error.exit_code == EXIT_CANNOT_CREATE_OUTPUT, exc
        text = str(error)
        assert text.startswith(f"{folder}: cannot write here ({exc.strerror}; ") and " free on its file system" in text
        assert "Fix:" in text and "\n" not in text
        assert ("work folder (-w/--work-dir)" in text) == (folder == work)
    assert "quota" in str(describe(cases[1][0], outputs=[out]))
    assert "read-only" in str(describe(cases[2][0], outputs=[out]))
    assert free_space(tmp_path / "does" / "not" / "exist").endswith(" free")


def test_input_failures_name_the_file(tmp_path):
    out = tmp_path / "out"
    data = tmp_path / "bids" / "sub-01_T1w.nii.gz"
    error = describe(PermissionError(errno.EACCES, "Permission denied", str(data)), outputs=[out])
    assert error.exit_code == EXIT_BAD_DATA and str(error).startswith(f"{data}: cannot read the file")
    error = describe(FileNotFoundError(errno.ENOENT, "No such file", str(data)), outputs=[out])
    assert error.exit_code == EXIT_MISSING_INPUT


def test_a_truncated_input_is_found_when_the_error_names_no_file(tmp_path):
    good = tmp_path / "good.tsv.gz"
    good.write_bytes(gzip.compress(b"a\tb\n" * 1000))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(b"x" * 100_000)[:300])
    assert find_broken_input([good]) is None
    error = describe(EOFError("Compressed file ended before the end-of-stream marker was reached"),
                     outputs=[tmp_path / "out"], inputs=[good, cut])
    assert isinstance(error, BadDataError) and str(error).startswith(f"{cut}: cannot read the file (")
    assert "truncated" in str(error)


def test_memory_and_bugs():
    error = describe(MemoryError(), outputs=[Path("/o")], who="sub-01 structural")
    assert error.exit_code == EXIT_TEMPORARY and "out of memory in sub-01 structural" in str(error)
    assert "--mem" in str(error) and "--nprocs" in str(error)
    assert describe(ValueError("a bug"), outputs=[Path("/o")]) is None
    assert describe(KeyError("a bug"), outputs=[Path("/o")]) is None
    assert describe(EOFError("no file to blame"), outputs=[Path("/o")], inputs=[]) is None


def test_input_paths_walk_the_participant_record():
    from bids_ketamine.inputs import AnatInputs, BoldRun, MrsAcquisition, ParticipantInputs

    record = ParticipantInputs(
        subject="01", anat=AnatInputs(t1w=(Path("/t1.nii.gz"),), probseg_t1w={"gm": Path("/gm.nii.gz")}),
        bold=(BoldRun(bold=Path("/b.nii.gz"), confounds=Path("/c.tsv"), mask=None, space="MNI", session=None,
                      run=None, task="rest", condition=None),),
        mrs=(MrsAcquisition(svs=Path("/s.nii.gz"), references={"water": Path("/w.nii.gz")}),))
    assert input_paths(record) == [Path(p) for p in ("/t1.nii.gz", "/gm.nii.gz", "/b.nii.gz", "/c.tsv",
                                                     "/s.nii.gz", "/w.nii.gz")]


# ------------------------------------------------------------------------------------------------ the nets
def _state(tmp_path, monkeypatch, raise_exc):
    """A participant job whose analysis raises ``raise_exc`` (fault injection at the analysis boundary)."""
    import types

    from bids_ketamine.analyses import ANALYSES
    from bids_ketamine.config import RunConfig
    from bids_ketamine.inputs import AnatInputs, ParticipantInputs

    cut = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(gzip.compress(b"\0" * 50_000)[:200])

    def run_participant(inputs, **kwargs):
        raise raise_exc

    fake = types.SimpleNamespace(run_participant=run_participant)
    monkeypatch.setattr(type(ANALYSES["structural"]), "module", lambda self, level: fake)
    cfg = RunConfig(bids_dir=tmp_path / "bids", output_dir=tmp_path / "out", level="participant",
                    work_dir=tmp_path / "out" / ".bids_ketamine" / "work")
    state = tmp_path / "state.pkl"
    record = ParticipantInputs(subject="01", anat=AnatInputs(t1w=(cut,)))
    state.write_bytes(pickle.dumps({"config": cfg, "inputs": {"01": record}, "dataset_links": {}, "container": {}}))
    return state


@pytest.mark.parametrize("exc, code, words", [
    (OSError(errno.ENOSPC, "No space left on device"), EXIT_CANNOT_CREATE_OUTPUT, ["out: cannot write here"]),
    (EOFError("Compressed file ended"), EXIT_BAD_DATA, ["sub-01_T1w.nii.gz: cannot read the file"]),
    (MemoryError(), EXIT_TEMPORARY, ["out of memory in sub-01 structural", "--mem"]),
    (ZeroDivisionError("a bug"), 1, ["unexpected error ZeroDivisionError", "crash.txt"]),
])
def test_net_of_the_participant_job(tmp_path, monkeypatch, exc, code, words):
    """run_one: whatever an analysis raises becomes a status with the documented code (a bug stays 'unexpected',
    with its traceback in logs/)."""
    from bids_ketamine.workflows.participant import run_one

    status = run_one(str(_state(tmp_path, monkeypatch, exc)), "01", "structural")
    assert not status["ok"] and status["exit_code"] == code
    assert all(w in status["message"] for w in words), status["message"]
    assert not list((tmp_path / "out" / ".bids_ketamine" / "staging").glob("sub-*")), "staging left behind"


def test_net_of_the_main_process(tmp_path, capsys):
    """The CLI: an OSError of the main process (here the work folder cannot be created) is one line, exit 73."""
    from bids_ketamine.cli.run import main

    from .helpers import make_tiny_bids

    bids = make_tiny_bids(tmp_path / "bids", subjects=("01",))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--skip-bids-validation", "--nprocs", "1",
                 "-w", str(blocker / "work")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bids-ketamine:")]
    assert code == EXIT_CANNOT_CREATE_OUTPUT and len(err) == 1, err
    assert err[0].startswith(f"bids-ketamine: error: {blocker / 'work'}: cannot write here (Not a directory")
    assert "a file stands where a folder must be" in err[0]


#: Where the package touches files, and the net that maps an OSError raised there. A module not listed here that
#: touches files fails test_every_file_access_is_covered_by_a_net until its net is named (and tested above or in
#: test_reliability.py).
NETS = {
    # participant jobs: run_one maps with io.failures.describe (test_net_of_the_participant_job)
    "structural/": "participant job or group analysis", "connectivity/": "participant job or group analysis",
    "spectroscopy/": "participant job or group analysis", "atlas.py": "participant job or group analysis",
    # fsLR meshes and surface parcellations: read by connectivity's participant jobs and group analysis only
    "surface.py": "participant job or group analysis", "surface_atlas.py": "participant job or group analysis",
    "workflows/": "participant job", "io/": "writer (io.failures.writing) and participant job",
    # main process: the CLI maps with io.failures.describe (test_net_of_the_main_process); group analyses are
    # mapped per analysis by orchestrate._run_group_analyses; reports never fail a run (build_reports_safely)
    "orchestrate.py": "main process", "discovery.py": "main process", "design.py": "tables (read_table)",
    "tables.py": "tables (read_table)", "config.py": "main process", "validation.py": "main process",
    "cli/": "main process", "reports/": "reports (build_reports_safely)", "logs.py": "main process",
    "progress.py": "main process", "analyses.py": "main process",
    # DataLad state (read by discovery and orchestrate) and the consortium steps (export CLI, the group level's
    # pooling) run in the main process; the brainlife job maps in platforms.brainlife.run_job
    # (tests/platforms: test_an_unwritable_job_folder_is_exit_73_in_product_json, test_export_*_exit_73)
    "annex.py": "main process", "consortium/": "main process (group level or export CLI)",
    "platforms/": "brainlife job (run_job)",
    # the demo's study writer: cli/demo.py wraps it in io.failures.writing
    "synthetic/": "demo (io.failures.writing)",
}
FILE_CALLS = {"load", "read_csv", "loadtxt", "read_text", "read_bytes", "write_text", "write_bytes", "mkdir",
              "open", "to_filename", "savefig", "File", "mkstemp", "replace", "unlink", "rmtree", "copy2",
              "copytree", "fdopen", "glob", "rglob", "iterdir", "stat", "load_image", "read_table", "savez",
              "save", "dump", "makedirs", "touch"}


def _file_access_sites() -> list[tuple[str, int, str]]:
    sites = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) \
                    else None
                if name in FILE_CALLS:
                    sites.append((path.relative_to(PACKAGE).as_posix(), node.lineno, name))
    return sites


def test_every_file_access_is_covered_by_a_net():
    sites = _file_access_sites()
    assert len(sites) > 100  # the scan finds the package's file accesses
    uncovered = [f"{module}:{line} {name}()" for module, line, name in sites
                 if not any(module == prefix or module.startswith(prefix) for prefix in NETS)]
    assert not uncovered, f"file accesses in modules without a named net: {uncovered[:10]}"
    by_net: dict[str, int] = {}
    for module, _, _ in sites:
        net = next(v for k, v in NETS.items() if module == k or module.startswith(k))
        by_net[net] = by_net.get(net, 0) + 1
    print(json.dumps(by_net, indent=1))
