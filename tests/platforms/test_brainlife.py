"""The brainlife.io app (platforms/brainlife): ``main`` with a config.json in the exact shape brainlife writes.

Run as brainlife runs it: ``main`` in a fresh working directory, the inputs in ``../<task_id>/<subdir>/``, with
``bids-ketamine`` on PATH (the container path, singularity, is the same command inside the image, which the
container tests cover).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bids_ketamine.__about__ import __version__
from bids_ketamine.platforms.brainlife import PARAMETERS, build_bids_view, product, read_job

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "platforms" / "brainlife"
T1W_DATATYPE = "58c33bcee13a50849b25879a"  # neuro/anat/t1w (../shared/data/brainlife/README.md)
COARSE = "[structural.anat]\nbuiltin_work_resolution_mm = 3.0\nbuiltin_syn_iterations = [20, 0, 0]\n"


def _stage(instance: Path, task: str, subdir: str, files: dict[str, Path | bytes]) -> None:
    """A brainlife input dataset: its files in ``instance/<task>/<subdir>/`` (symlinks to the real data)."""
    folder = instance / task / subdir
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        if isinstance(source, bytes):
            (folder / name).write_bytes(source)
        else:
            (folder / name).symlink_to(source)


def _entry(key: str, task: str, subdir: str, meta: dict, datatype: str = T1W_DATATYPE) -> dict:
    return {"id": key, "datatype": datatype, "datatype_tags": [], "task_id": task, "subdir": subdir,
            "keys": [key], "meta": meta, "tags": []}


def run_main(job: Path, config: dict) -> tuple[int, dict, str]:
    """``main`` in ``job`` with ``bids-ketamine`` on PATH: (exit code, product.json, stderr)."""
    job.mkdir(parents=True, exist_ok=True)
    (job / "config.json").write_text(json.dumps(config, indent=2))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([str(APP / "main")], cwd=job, env=env, capture_output=True, text=True, timeout=1200)
    raw = (job / "product.json").read_text()
    assert len(raw.encode()) < 10_000, len(raw)
    return proc.returncode, json.loads(raw), proc.stderr


def _messages(prod: dict, kind: str | None = None) -> list[str]:
    return [i["msg"] for i in prod["brainlife"] if "msg" in i and (kind is None or i["type"] == kind)]


def _graphs(prod: dict) -> list[dict]:
    return [i for i in prod["brainlife"] if i.get("type") == "plotly"]


def _check_plotly(graph: dict) -> None:
    """The parts of plotly's figure format brainlife draws: named traces with data arrays of one length."""
    assert graph["name"] and isinstance(graph["layout"], dict) and graph["data"]
    for trace in graph["data"]:
        assert trace["type"] in ("bar", "scatter", "heatmap")
        if trace["type"] == "heatmap":
            assert len(trace["z"]) == len(trace["y"]) and all(len(r) == len(trace["x"]) for r in trace["z"])
        else:
            assert len(trace["x"]) == len(trace["y"]) > 0


@pytest.mark.realdata
def test_two_t1w_run_through_main(shared_data, tmp_path):
    t1w = shared_data / "ds002748_t1w"
    instance = tmp_path / "instance"
    _stage(instance, "60a1t1w", "t1", {"t1.nii.gz": t1w / "sub-01" / "anat" / "sub-01_T1w.nii.gz"})
    _stage(instance, "60a2t1w", "t1", {"t1.nii.gz": t1w / "sub-52" / "anat" / "sub-52_T1w.nii.gz"})
    config = {"t1": ["../60a1t1w/t1/t1.nii.gz", "../60a2t1w/t1/t1.nii.gz"], "config": COARSE, "nprocs": 2,
              "_inputs": [_entry("t1", "60a1t1w", "t1", {"subject": "01", "session": "pre", "age": 39, "sex": "m"}),
                          _entry("t1", "60a2t1w", "t1", {"subject": "52", "age": 29, "sex": "f"})]}
    job = instance / "job"
    code, prod, err = run_main(job, config)
    assert code == 0, err
    morph = sorted(p.relative_to(job / "output").as_posix() for p in (job / "output").rglob("*_morph.tsv"))
    # structural features are a participant's (its T1w of every session), as on any BIDS input
    assert morph == ["sub-01/anat/sub-01_atlas-DKcereb_morph.tsv", "sub-52/anat/sub-52_atlas-DKcereb_morph.tsv"]
    assert json.loads((job / "output" / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    # the BIDS view links the inputs (no copy) and keeps brainlife's meta in participants.tsv
    view = job / "bids" / "sub-01" / "ses-pre" / "anat" / "sub-01_ses-pre_T1w.nii.gz"
    assert view.is_symlink() and Path(os.readlink(view)) == instance / "60a1t1w" / "t1" / "t1.nii.gz"
    assert (job / "bids" / "participants.tsv").read_text() == "participant_id\tage\tsex\nsub-01\t39\tm\nsub-52\t29\tf\n"
    assert not (job / "work").exists()  # clean_workdir defaults to true
    assert _messages(prod, "success") and "participant level: structural for 2 participant(s)" in _messages(prod)
    graphs = _graphs(prod)
    assert len(graphs) == 1 and "Regional GM" in graphs[0]["name"]
    _check_plotly(graphs[0])
    assert [t["name"] for t in graphs[0]["data"]] == ["sub-01", "sub-52"]
    assert len(graphs[0]["data"][0]["x"]) > 60  # one bar per atlas region


@pytest.mark.realdata
def test_spectroscopy_raw_dataset_runs_through_main(shared_data, tmp_path):
    mrs = shared_data / "lcmodel_test_lcm" / "sub-01" / "mrs"
    instance = tmp_path / "instance"
    _stage(instance, "60b1raw", "raw", {p.name: p for p in mrs.iterdir()})
    config = {"mrs": "../60b1raw/raw", "_inputs": [_entry("mrs", "60b1raw", "raw", {"subject": "p-01"},
                                                          datatype="raw")]}
    code, prod, err = run_main(instance / "job", config)
    assert code == 0, err
    out = instance / "job" / "output" / "sub-p01" / "mrs" / "sub-p01_mrsfit.tsv"
    assert out.is_file()
    graphs = _graphs(prod)
    assert len(graphs) == 1 and graphs[0]["name"].startswith("Glx/tNAA")
    _check_plotly(graphs[0])
    # each failed QC is its own warning line (CRLB above the limit), named by the table
    warnings = _messages(prod, "warning")
    assert any(m.startswith("sub-p01_mrsfit.tsv:") and "failed QC" in m for m in warnings)


def test_missing_file_exits_non_zero_with_the_error_in_product_json(tmp_path):
    config = {"t1": "../60c1t1w/t1/t1.nii.gz", "_inputs": [_entry("t1", "60c1t1w", "t1", {"subject": "01"})]}
    code, prod, _ = run_main(tmp_path / "job", config)
    assert code == 66
    errors = _messages(prod, "error")
    assert len(errors) == 1 and "input t1 #1 (60c1t1w) (key t1, sub-01): file not found" in errors[0]
    assert str(tmp_path / "60c1t1w" / "t1" / "t1.nii.gz") in errors[0]


def test_corrupt_file_exits_non_zero_with_the_error_in_product_json(tmp_path):
    _stage(tmp_path, "60d1t1w", "t1", {"t1.nii.gz": b"this is not a NIfTI image" * 20})
    config = {"t1": "../60d1t1w/t1/t1.nii.gz", "_inputs": [_entry("t1", "60d1t1w", "t1", {"subject": "01"})]}
    code, prod, _ = run_main(tmp_path / "job", config)
    assert code != 0
    errors = _messages(prod, "error")
    assert errors and "sub-01_T1w.nii.gz" in errors[0]
    assert re.search(r"NIFTI_HEADER_UNREADABLE|cannot read the T1w", errors[0])


def test_bold_inputs_make_an_fmriprep_view_with_sessions(tmp_path):
    """fMRIPrep BOLD, confounds and mask of two sessions (arrays, meta with session and condition)."""
    for task in ("t1", "t2"):
        _stage(tmp_path, task, "fmriprep", {"bold.nii.gz": b"b", "regressors.tsv": b"c", "mask.nii.gz": b"m"})
    entries = [dict(_entry("bold", task, "fmriprep", {"subject": "07", "session": ses, "condition": cond,
                                                      "RepetitionTime": 2.0}, datatype="fmriprep"),
                    keys=["bold", "confounds", "mask"])
               for task, ses, cond in (("t1", "pla", "placebo"), ("t2", "ket", "ketamine"))]
    config = {"bold": ["../t2/fmriprep/bold.nii.gz", "../t1/fmriprep/bold.nii.gz"],
              "confounds": ["../t1/fmriprep/regressors.tsv", "../t2/fmriprep/regressors.tsv"],
              "mask": ["../t1/fmriprep/mask.nii.gz", "../t2/fmriprep/mask.nii.gz"], "_inputs": entries}
    job = tmp_path / "job"
    job.mkdir()
    (job / "config.json").write_text(json.dumps(config))
    root, derivatives = build_bids_view(read_job(job), job / "bids")
    func = derivatives["fmriprep"] / "sub-07" / "ses-ket" / "func"
    bold = func / "sub-07_ses-ket_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    assert Path(os.readlink(bold)) == tmp_path / "t2" / "fmriprep" / "bold.nii.gz"  # matched by path, not order
    assert Path(os.readlink(func / "sub-07_ses-ket_task-rest_desc-confounds_timeseries.tsv")) == \
        tmp_path / "t2" / "fmriprep" / "regressors.tsv"
    assert json.loads(bold.with_name(bold.name.replace(".nii.gz", ".json")).read_text()) == {"RepetitionTime": 2.0}
    assert (root / "sub-07" / "sub-07_sessions.tsv").read_text() == \
        "session_id\tcondition\nses-ket\tketamine\nses-pla\tplacebo\n"
    desc = json.loads((derivatives["fmriprep"] / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "fMRIPrep"


def test_app_files_document_every_parameter_and_name_this_version():
    readme = (APP / "README.md").read_text()
    sample = json.loads((APP / "config.json.sample").read_text())
    for name, (default, description) in PARAMETERS.items():
        assert f"| `{name}` | `{json.dumps(default)}` | {description} |" in readme, name
        assert sample[name] == default, name
    assert os.access(APP / "main", os.X_OK)
    assert f"docker://bids_ketamine:{__version__}" in (APP / "main").read_text()
    job = read_job_from_sample(sample)
    assert [i.subject for i in job.inputs] == ["01", "02"] and job.params["analysis_level"] == "participant"


def read_job_from_sample(sample: dict):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(sample))
        return read_job(tmp)


def test_product_json_graphs_of_every_analysis_on_the_demo(small_demo):
    """On the demo's outputs (participant and group level of the three analyses): one graph per analysis, valid
    plotly traces, and the whole product.json under 10 kB even with many messages."""
    root, code = small_demo
    assert code == 0
    messages = [{"type": "warning", "msg": f"message {i} " + "x" * 200} for i in range(60)]
    body = product([{"type": "error", "msg": "the one failure"}, *messages], root / "outputs")
    assert len(json.dumps(body)) < 10_000
    graphs = _graphs(body)
    names = [g["name"] for g in graphs]
    assert len(graphs) == 3, names
    assert names[0].startswith("Regional GM z-scores") and names[1].startswith("PC1 of delta-GBC") and \
        names[2].startswith("Glx/tNAA")
    for graph in graphs:
        _check_plotly(graph)
    kept = _messages(body)
    assert kept[0] == "the one failure" and kept[-1].endswith("more message(s): see output/logs and the reports")



def test_an_unwritable_job_folder_is_exit_73_in_product_json(tmp_path):
    """An OS failure while building the job (a file stands where the BIDS view's folder goes) is mapped, not a
    traceback: exit 73 and its one line in product.json."""
    _stage(tmp_path, "60e1t1w", "t1", {"t1.nii.gz": b"x"})
    job = tmp_path / "job"
    job.mkdir()
    (job / "bids").write_text("a file where the BIDS view must be a folder")
    config = {"t1": "../60e1t1w/t1/t1.nii.gz", "_inputs": [_entry("t1", "60e1t1w", "t1", {"subject": "01"})]}
    code, prod, err = run_main(job, config)
    assert code == 73, err
    errors = _messages(prod, "error")
    assert len(errors) == 1 and f"{job}: cannot write here" in errors[0], errors
    assert "Traceback" not in err
