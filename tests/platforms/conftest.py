"""Shared, expensive set-ups of the platform tests, built once per session.

``t1w_consortium``: the 24 real T1w of ds002748 split into three sites (A, B, C; 8 each). Site A is a real
git-annex dataset (how OpenNeuro data arrive through DataLad) cloned from an "origin" with all content, then one
participant's T1w dropped: the participant level runs on it (exit 66, the others finish), the content is retrieved
and the participant level resumes; its output folder is exported. Sites B and C are plain BIDS folders. The
reference the pooled group level must reproduce is one output folder over all 24 followed by its group level: site
A's participant outputs (copied, done markers included) and one participant run over sites B and C; sites B and C
export their members from it. (Running site A's 8 images a second time there would only test that the built-in
pipeline is deterministic, which the re-run tests check; it cost about 135 s of a 2-core CI run.) The built-in
pipeline runs at a coarse setting (3 mm subject space, one SyN level) to keep the session short; the comparison does
not depend on the setting.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from participant_outputs import copy_finished_participants

COARSE_CONFIG = """\
random_seed = 11

[design.participants]
site = "site"
sex = "gender"
arm = ""
cohort = ""

[design.response]
kind = "column"
column = "group"
positive = ["depr"]

[structural]
n_permutations = 20
n_bootstrap = 100
repeats = 2

[structural.anat]
builtin_work_resolution_mm = 3.0
builtin_syn_iterations = [20, 0, 0]
write_qc = false
"""
GIT_ENV = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@example.org"}


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``bids-ketamine ARGV`` in this process: (exit code, stdout, stderr)."""
    from bids_ketamine.cli.run import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def require_git_annex() -> None:
    if shutil.which("git-annex") is None:
        pytest.skip("git-annex is not installed (Debian package git-annex; .ci/run installs it)")


def fixed_participants_json(shared: Path) -> str:
    """ds002748's participants.json declares gender levels M/F while the table holds m/f (the validator refuses
    it); the fix a user would make."""
    data = json.loads((shared / "participants.json").read_text())
    data["gender"]["Levels"] = {"m": "male", "f": "female"}
    data["site"] = {"Description": "acquisition site of the consortium"}
    return json.dumps(data, indent=2)


def write_bids(root: Path, shared: Path, subjects: list[str], site_of: dict[str, str], *, copy: bool,
               with_images: bool = True) -> Path:
    """A BIDS folder with ``subjects`` of ds002748 (copied or symlinked T1w), participants.tsv with a site column."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text((shared / "dataset_description.json").read_text())
    (root / "README").write_text("ds002748 T1w (CC0), split into consortium sites for the tests\n")
    lines = (shared / "participants.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line for line in lines[1:] if line.split("\t")[0].removeprefix("sub-") in subjects]
    (root / "participants.tsv").write_text("\n".join(["\t".join([*header, "site"])] + [
        f"{row}\t{site_of[row.split(chr(9))[0].removeprefix('sub-')]}" for row in rows]) + "\n")
    (root / "participants.json").write_text(fixed_participants_json(shared))
    if with_images:
        for subject in subjects:
            source = shared / f"sub-{subject}" / "anat" / f"sub-{subject}_T1w.nii.gz"
            target = root / f"sub-{subject}" / "anat" / source.name
            target.parent.mkdir(parents=True)
            if copy:
                shutil.copy2(source, target)
            else:
                target.symlink_to(source)
    return root


def tree_state(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` (``.git`` included) with its kind, mode, symlink target and content digest."""
    import hashlib

    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
            state[rel] = ("link", os.readlink(path), digest)
        elif path.is_file():
            if rel.startswith(".git/") and not rel.startswith(".git/annex/objects/"):
                continue  # git's own bookkeeping (index stat cache) may be refreshed by a read-only git status
            state[rel] = ("file", oct(path.stat().st_mode), hashlib.sha256(path.read_bytes()).hexdigest())
    return state


@dataclass
class Consortium:
    root: Path
    config: Path
    sites: dict[str, list[str]]
    bids: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    exports: dict[str, Path] = field(default_factory=dict)
    coordinator: Path | None = None
    reference: Path | None = None
    pooled: Path | None = None
    dropped: str = ""
    runs: dict[str, tuple[int, str, str]] = field(default_factory=dict)
    annex_before: dict = field(default_factory=dict)
    annex_after: dict = field(default_factory=dict)
    annex_status: str = ""
    partial_inventory: str = ""  # the dropped participant's inventory.tsv after the partial run (a re-run rewrites it)


@pytest.fixture(scope="session")
def t1w_consortium(shared_data, tmp_path_factory) -> Consortium:
    require_git_annex()
    shared = shared_data / "ds002748_t1w"
    subjects = sorted(p.name.removeprefix("sub-") for p in shared.glob("sub-*") if p.is_dir())
    assert len(subjects) == 24
    names = ("A", "B", "C")
    sites = {name: subjects[i::3] for i, name in enumerate(names)}
    site_of = {s: name for name, members in sites.items() for s in members}
    root = tmp_path_factory.mktemp("consortium")
    config = root / "study.toml"
    config.write_text(COARSE_CONFIG)
    c = Consortium(root=root, config=config, sites=sites)
    nprocs = ["--nprocs", "2"]

    # site A: a DataLad-style dataset: origin with all content, a clone that retrieved it, one T1w dropped
    origin = write_bids(root / "origin_A", shared, sites["A"], site_of, copy=True)
    git(origin, "init", "-q")
    git(origin, "annex", "init", "-q", "origin")
    git(origin, "config", "annex.largefiles", "include=*.nii.gz")
    git(origin, "annex", "add", "-q", ".")
    git(origin, "commit", "-q", "-m", "ds002748 site A")
    site_a = root / "site_A"
    git(root, "clone", "-q", str(origin), str(site_a))
    git(site_a, "annex", "init", "-q", "site A")
    git(site_a, "annex", "get", "-q", ".")
    c.dropped = f"sub-{sites['A'][1]}/anat/sub-{sites['A'][1]}_T1w.nii.gz"
    git(site_a, "annex", "drop", "-q", c.dropped)
    c.bids["A"] = site_a
    c.bids["B"] = write_bids(root / "site_B", shared, sites["B"], site_of, copy=False)
    c.bids["C"] = write_bids(root / "site_C", shared, sites["C"], site_of, copy=False)
    for name in names:
        c.outputs[name] = root / f"out_{name}"

    c.runs["A-dry"] = run_cli([site_a, c.outputs["A"], "participant", "--config-file", config, "--dry-run"])
    c.annex_before = tree_state(site_a)
    c.runs["A-partial"] = run_cli([site_a, c.outputs["A"], "participant", "--config-file", config, *nprocs])
    c.annex_after = tree_state(site_a)
    c.annex_status = git(site_a, "status", "--porcelain")
    dropped_subject = c.dropped.split("/")[0]
    c.partial_inventory = (c.outputs["A"] / dropped_subject / f"{dropped_subject}_inventory.tsv").read_text()
    git(site_a, "annex", "get", "-q", c.dropped)
    c.runs["A"] = run_cli([site_a, c.outputs["A"], "participant", "--config-file", config, *nprocs])

    # the reference: site A's outputs plus one participant run over B and C (A's are done, so skipped), then its
    # group level. Sites B and C export their members from this run (``export --participant-label``) instead of
    # running the built-in pipeline a second time on the same 16 images; site A exports its own folder, so the
    # pooled group level still joins participant levels that ran apart.
    all24 = write_bids(root / "all24", shared, subjects, site_of, copy=False)
    c.reference = root / "out_all24"
    copy_finished_participants(c.outputs["A"], sites["A"], c.reference)
    c.runs["all24"] = run_cli([all24, c.reference, "participant", "--config-file", config, *nprocs])
    c.runs["all24-group"] = run_cli([all24, c.reference, "group", "--config-file", config])
    c.outputs["B"] = c.outputs["C"] = c.reference
    for name in names:
        c.exports[name] = root / f"export_{name}"
        members = [] if name == "A" else ["--participant-label", *sites[name]]
        c.runs[f"export-{name}"] = run_cli(["export", c.outputs[name], c.exports[name], "--site", name, *members])

    # the coordinating site: participants.tsv (with the site column) and no image
    c.coordinator = write_bids(root / "coordinator", shared, subjects, site_of, copy=False, with_images=False)
    c.pooled = root / "out_pooled"
    c.runs["pooled"] = run_cli([c.coordinator, c.pooled, "group", "--config-file", config,
                                "--participant-outputs", *[c.exports[n] for n in names]])
    return c
