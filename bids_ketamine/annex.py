"""DataLad / git-annex datasets (how OpenNeuro data arrive): tell a file whose content was not retrieved from a
broken file, and say which ``datalad get`` retrieves exactly what a run needs.

Why a module of its own: an OpenNeuro dataset installed with ``datalad install`` (or cloned by ``openneuro-py``
with annex pointers) holds every file name, but only the content a user asked for. A locked annexed file is a
symlink into ``.git/annex/objects/``; without content the link does not resolve. An unlocked file without content
is a small pointer file that holds ``/annex/objects/<key>``. Both look like unreadable NIfTI files to nibabel, so
without this check the analysis would start and fail with "cannot read the image" (exit 65) instead of saying,
before any work, that the content is simply not here and how to get it (exit 66).

Nothing here runs git, git-annex or datalad: the state is read from the file system only (the symlink target or
the pointer file), so no lock is taken and nothing is written into the input dataset.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: git-annex pointer files (unlocked files without content) start with this and are this small at most.
_POINTER_PREFIX = b"/annex/objects/"
_POINTER_MAX_BYTES = 32 * 1024
CONTENT_NOT_RETRIEVED = "content not retrieved (git-annex)"


def _annex_target(target: str) -> bool:
    parts = Path(target).parts
    return any(parts[i:i + 3] == (".git", "annex", "objects") for i in range(len(parts))) or \
        "/annex/objects/" in target.replace(os.sep, "/")


def content_missing(path: str | os.PathLike) -> bool:
    """True when ``path`` is a git-annex file whose content is not in this clone (locked or unlocked).

    A broken symlink that does not point into an annex, or a missing file, is not "content missing": those are
    other problems and are reported as such by the analysis that reads them.
    """
    path = Path(path)
    if path.is_symlink():
        if path.exists():
            return False
        try:
            return _annex_target(os.readlink(path))
        except OSError:
            return False
    try:
        if not path.is_file() or path.stat().st_size > _POINTER_MAX_BYTES:
            return False
        with open(path, "rb") as handle:
            return handle.read(len(_POINTER_PREFIX)) == _POINTER_PREFIX
    except OSError:
        return False


def repository_root(path: str | os.PathLike) -> Path | None:
    """The closest folder above ``path`` that holds ``.git`` (a git-annex / DataLad dataset), if any."""
    folder = Path(os.path.abspath(path)).parent
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def is_uninstalled_subdataset(path: str | os.PathLike) -> bool:
    """True for an empty folder that a parent dataset lists as a git submodule: a DataLad subdataset that was not
    installed (``datalad install`` does not install subdatasets such as ``derivatives/fmriprep``)."""
    path = Path(path)
    if not path.is_dir() or any(path.iterdir()):
        return False
    for parent in Path(os.path.abspath(path)).parents:
        modules = parent / ".gitmodules"
        if modules.is_file():
            rel = os.path.relpath(os.path.abspath(path), parent)
            return any(line.split("=", 1)[1].strip() == rel for line in modules.read_text().splitlines()
                       if line.strip().startswith("path") and "=" in line)
    return False


def with_sidecars(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The files and their JSON sidecars (which can be annexed too), in order, each once."""
    out: dict[Path, None] = {}
    for path in paths:
        path = Path(path)
        out[path] = None
        name = path.name
        for ext in (".nii.gz", ".nii", ".tsv", ".h5"):
            if name.endswith(ext):
                sidecar = path.with_name(name[: -len(ext)] + ".json")
                if os.path.lexists(sidecar):
                    out[sidecar] = None
                break
    return list(out)


def missing_content(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Those of ``paths`` (and their sidecars) whose annexed content is not retrieved."""
    return [p for p in with_sidecars(paths) if content_missing(p)]


def datalad_get_commands(paths: Iterable[str | os.PathLike]) -> list[str]:
    """One ``datalad get -d DATASET PATH...`` per dataset holding ``paths`` (paths relative to the dataset)."""
    by_root: dict[Path | None, list[str]] = {}
    for path in paths:
        root = repository_root(path)
        rel = os.path.relpath(os.path.abspath(path), root) if root else os.path.abspath(path)
        by_root.setdefault(root, [])
        if rel not in by_root[root]:
            by_root[root].append(rel)
    commands = []
    for root, rels in by_root.items():
        head = ["datalad", "get"] + (["-d", str(root)] if root else [])
        commands.append(shlex.join(head + rels))
    return commands


def datalad_get_command(paths: Iterable[str | os.PathLike]) -> str:
    """The ``datalad get`` command line(s) for ``paths``, joined with ``&&`` when they span several datasets."""
    return " && ".join(datalad_get_commands(paths))


# ---------------------------------------------------------------------------------------------- what runs need
def analysis_files(analysis: str, inputs: Any, params: Any) -> list[Path]:
    """The input files one analysis reads for one participant (``ParticipantInputs``), so that exactly those are
    retrieved. Structural: the files of the feature source it chose (the choice is the analysis' own)."""
    if analysis == "structural":
        from bids_ketamine.structural.anat_params import anat_params_of
        from bids_ketamine.structural.participant import choose_source

        anat = inputs.anat
        source, _ = choose_source(anat, anat_params_of(params))
        if source == "fmriprep":
            return [p for p in (anat.gm_probseg_mni, anat.t1w_to_mni_xfm, anat.brain_mask_t1w) if p is not None]
        if source == "cat12":
            return [anat.cat12_mwp1]
        if source == "freesurfer":
            stats = Path(anat.freesurfer_dir) / "stats"
            return [stats / name for name in ("aseg.stats", "lh.aparc.stats", "rh.aparc.stats")]
        if source == "builtin":
            return [anat.t1w[0]]
        return []
    if analysis == "connectivity":
        return [p for run in inputs.bold for p in (run.bold, run.confounds, run.mask) if p is not None]
    if analysis == "spectroscopy":
        files: list[Path] = []
        for acq in inputs.mrs:
            files += [acq.svs, *acq.references.values()] + ([acq.events] if acq.events is not None else [])
        if inputs.mrs:  # tissue fractions of the voxel and its figure read the T1w-space segmentation and T1w
            files += list(inputs.anat.probseg_t1w.values()) + list(inputs.anat.t1w[:1])
        return files
    return []


def not_retrieved(cfg: Any, inputs: dict, plan: Any) -> dict[tuple[str, str], list[Path]]:
    """``(participant, analysis) -> files without content`` for every job of ``plan`` that would run."""
    from bids_ketamine.errors import NotBuiltError

    found: dict[tuple[str, str], list[Path]] = {}
    for row in plan[plan["runs"]].itertuples():
        try:
            params = cfg.params(row.analysis)
        except NotBuiltError:
            continue
        missing = missing_content(analysis_files(row.analysis, inputs[row.participant], params))
        if missing:
            found[(row.participant, row.analysis)] = missing
    return found


def not_retrieved_error(subject: str, analysis: str, paths: list[Path]):
    """The one-line failure of a job whose inputs are not retrieved (exit 66: missing input)."""
    from bids_ketamine.errors import MissingInputError

    names = ", ".join(Path(p).name for p in paths)
    return MissingInputError(f"sub-{subject} {analysis}: {CONTENT_NOT_RETRIEVED} for {names}",
                             fix=f"run `{datalad_get_command(paths)}`, then re-run")
