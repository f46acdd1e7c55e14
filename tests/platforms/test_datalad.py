"""DataLad / git-annex datasets (how OpenNeuro data arrive): a real annexed dataset, one participant's T1w dropped.

The site-A dataset of ``t1w_consortium`` (conftest) is a git-annex clone; its participant level runs once with the
content of one T1w dropped, then again after ``git annex get``. Smaller cases below build their own repositories.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bids_ketamine.annex import content_missing, datalad_get_command, is_uninstalled_subdataset, missing_content

from .conftest import git, require_git_annex, run_cli


def _get_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.strip().startswith("datalad get")]


@pytest.mark.realdata
def test_dry_run_lists_exactly_the_dropped_path(t1w_consortium):
    c = t1w_consortium
    code, out, err = c.runs["A-dry"]
    assert code == 0, err
    commands = _get_lines(out.split("Input inventory")[-1].split("Content not retrieved")[-1])
    assert commands == [f"datalad get -d {shlex.quote(str(c.bids['A']))} {c.dropped}"], out
    subject = c.dropped.split("/")[0]
    inventory = out.split(f"  {subject}\n")[1].splitlines()[0]
    assert "[miss] structural" in inventory and "content not retrieved (git-annex)" in inventory
    assert f"datalad get -d {shlex.quote(str(c.bids['A']))} {c.dropped}" in inventory
    assert out.count("[run ] structural") == len(c.sites["A"]) - 1


@pytest.mark.realdata
def test_not_retrieved_participant_exits_66_and_the_others_finish(t1w_consortium):
    c = t1w_consortium
    code, out, err = c.runs["A-partial"]
    subject = c.dropped.split("/")[0].removeprefix("sub-")
    assert code == 66, err
    assert f"sub-{subject} structural: content not retrieved (git-annex) for sub-{subject}_T1w.nii.gz" in err
    assert "cannot read the T1w" not in err  # the analysis never started
    inventory = pd.read_csv(io.StringIO(c.partial_inventory), sep="\t")
    row = inventory.set_index("analysis").loc["structural"]
    assert str(row["runs"]) == "False" and row["detail"].startswith("content not retrieved (git-annex): datalad get")
    records = sorted((c.outputs["A"] / "logs").glob("run-*_participant_*.json"))
    jobs = json.loads(records[0].read_text())["jobs"]
    assert {j["subject"]: j["ok"] for j in jobs} == {s: s != subject for s in c.sites["A"]}
    assert [j["exit_code"] for j in jobs if not j["ok"]] == [66]
    # after `git annex get`, the re-run computes only that participant
    code, out, err = c.runs["A"]
    assert code == 0, err
    last = json.loads(sorted((c.outputs["A"] / "logs").glob("run-*_participant_*.json"))[-1].read_text())
    assert [(j["subject"], j["ok"]) for j in last["jobs"]] == [(subject, True)]
    assert len(list(c.outputs["A"].glob("sub-*/anat/*_morph.tsv"))) == len(c.sites["A"])
    now = pd.read_csv(c.outputs["A"] / f"sub-{subject}" / f"sub-{subject}_inventory.tsv", sep="\t")
    assert str(now.set_index("analysis").loc["structural", "runs"]) == "True"


@pytest.mark.realdata
def test_locked_annexed_inputs_are_read_and_left_untouched(t1w_consortium):
    c = t1w_consortium
    assert c.annex_after == c.annex_before  # no file, mode, link or annex object changed or added
    assert c.annex_status == ""  # git sees no change in the dataset
    locked = [Path(c.bids["A"]) / f"sub-{s}" / "anat" / f"sub-{s}_T1w.nii.gz" for s in c.sites["A"]]
    assert all(p.is_symlink() and ".git/annex/objects/" in os.readlink(p) for p in locked)
    annexed = [v for k, v in c.annex_before.items() if k.startswith(".git/annex/objects/") and v[0] == "file"]
    assert len(annexed) == len(c.sites["A"]) - 1 and all(mode.endswith("444") for _, mode, _ in annexed)


def _annex_repo(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    git(root, "init", "-q")
    git(root, "annex", "init", "-q", "test")
    git(root, "config", "annex.largefiles", "include=*.nii.gz")
    git(root, "annex", "add", "-q", ".")
    git(root, "commit", "-q", "-m", "files")
    return root


def test_content_missing_tells_dropped_from_broken_and_absent(tmp_path):
    require_git_annex()
    repo = _annex_repo(tmp_path / "ds", {"sub-01/anat/sub-01_T1w.nii.gz": b"x" * 100,
                                          "sub-02/anat/sub-02_T1w.nii.gz": b"y" * 100, "README": b"text"})
    git(repo, "annex", "drop", "-q", "--force", "sub-02/anat/sub-02_T1w.nii.gz")
    present, dropped = repo / "sub-01/anat/sub-01_T1w.nii.gz", repo / "sub-02/anat/sub-02_T1w.nii.gz"
    broken = repo / "broken.nii.gz"
    broken.symlink_to(repo / "nowhere.nii.gz")
    assert not dropped.exists() and dropped.is_symlink()
    assert [content_missing(p) for p in (present, dropped, broken, repo / "absent.nii.gz", repo / "README")] == [
        False, True, False, False, False]
    # an unlocked annexed file without content is a pointer file
    git(repo, "annex", "unlock", "sub-01/anat/sub-01_T1w.nii.gz")
    git(repo, "commit", "-q", "-m", "unlock")
    git(repo, "annex", "drop", "-q", "--force", "sub-01/anat/sub-01_T1w.nii.gz")
    assert not present.is_symlink() and present.read_bytes().startswith(b"/annex/objects/")
    assert content_missing(present)
    assert missing_content([present, dropped]) == [present, dropped]
    assert datalad_get_command([present, dropped]) == (
        f"datalad get -d {shlex.quote(str(repo))} sub-01/anat/sub-01_T1w.nii.gz sub-02/anat/sub-02_T1w.nii.gz")


def test_openneuro_derivatives_fmriprep_given_with_d(tmp_path):
    """An OpenNeuroDerivatives-style fMRIPrep dataset (its own git-annex dataset, with .datalad/ and an uninstalled
    sourcedata/freesurfer subdataset) given with -d fmriprep=PATH: discovery reads it, and a BOLD whose content was
    not retrieved is listed with the datalad get of that dataset."""
    require_git_annex()
    from bids_ketamine.synthetic.study import write_study

    study = tmp_path / "study"
    write_study(study, seed=3, size="small", parts=("bold",))
    fmriprep_src = study / "derivatives" / "fmriprep"
    subject = sorted(p.name for p in fmriprep_src.glob("sub-*") if p.is_dir())[0]
    fmriprep = tmp_path / "ds000000-fmriprep"
    shutil.copytree(fmriprep_src, fmriprep)
    shutil.rmtree(fmriprep_src)
    (fmriprep / ".datalad").mkdir()
    (fmriprep / ".datalad" / "config").write_text('[datalad "dataset"]\n\tid = 00000000-test\n')
    (fmriprep / "sourcedata" / "freesurfer").mkdir(parents=True)
    (fmriprep / ".gitmodules").write_text('[submodule "sourcedata/freesurfer"]\n\tpath = sourcedata/freesurfer\n'
                                          '\turl = https://github.com/OpenNeuroDerivatives/x-freesurfer.git\n')
    git(fmriprep, "init", "-q")
    git(fmriprep, "annex", "init", "-q", "test")
    git(fmriprep, "config", "annex.largefiles", "include=*.nii.gz")
    git(fmriprep, "annex", "add", "-q", ".")
    git(fmriprep, "commit", "-q", "-m", "fmriprep")
    bold = sorted(fmriprep.glob(f"{subject}/ses-*/func/*_desc-preproc_bold.nii.gz"))[0]
    git(fmriprep, "annex", "drop", "-q", "--force", str(bold.relative_to(fmriprep)))
    assert is_uninstalled_subdataset(fmriprep / "sourcedata" / "freesurfer")

    code, out, err = run_cli([study, tmp_path / "out", "participant", "-d", f"fmriprep={fmriprep}",
                              "--analyses", "connectivity", "--dry-run"])
    assert code == 0, err
    rel = bold.relative_to(fmriprep).as_posix()
    assert _get_lines(out.split("Content not retrieved")[-1]) == [
        f"datalad get -d {shlex.quote(str(fmriprep))} {rel}"]
    assert out.count("[run ] connectivity") >= 1  # the other participants' BOLD is read from the annex
    lines = out.split(f"  {subject}\n")[1].splitlines()
    assert lines[0].strip().startswith("[miss] connectivity") and rel in lines[0]
    # an uninstalled subdataset given as derivatives says so
    code, _, err = run_cli([study, tmp_path / "out2", "participant", "-d",
                            f"freesurfer={fmriprep / 'sourcedata' / 'freesurfer'}", "--dry-run"])
    assert code == 66 and "uninstalled DataLad subdataset" in err and "datalad get -n" in err
