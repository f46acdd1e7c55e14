"""Find every input with pybids: raw T1w, BOLD and MRS, fMRIPrep/sMRIPrep, CAT12 and FreeSurfer derivatives.

Discovery turns the layout into ``ParticipantInputs`` records once; analyses never query pybids themselves. Label
and filter selection happens here, so that "participant not found" and "filter matched nothing" are reported before
any work, with the exit codes of the BIDS-Apps specification.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from bids_ketamine.errors import BadDataError, MissingInputError, NoMatchError, UsageError
from bids_ketamine.inputs import AnatInputs, BoldRun, MrsAcquisition, ParticipantInputs

LOG = logging.getLogger("bids_ketamine")
#: Keys accepted in --bids-filter-file, each a pybids query merged into that input's search.
FILTER_KEYS = ("t1w", "bold", "svs", "mrsref")
#: Preferred MNI templates, best first (fMRIPrep's default comes first).
MNI_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym", "MNI152NLin2009cSym", "MNI152Lin", "MNI152NLin6Sym")
_LABEL = re.compile(r"^[A-Za-z0-9]+$")


def clean_labels(values: list[str] | None, prefix: str, what: str) -> list[str] | None:
    """Strip ``sub-``/``ses-`` prefixes; a single existing file is read as one label per line; refuse bad labels."""
    if not values:
        return None
    items: list[str] = []
    for value in values:
        path = Path(value)
        if len(values) == 1 and path.is_file():
            items.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
        else:
            items.append(value)
    out = []
    for item in items:
        label = item.strip().removeprefix(prefix)
        if not _LABEL.match(label):
            raise UsageError(f"invalid {what} label {item!r}",
                             fix=f"give plain alphanumeric labels (e.g. {prefix}01 or 01); no '/', '..' or spaces")
        out.append(label)
    return list(dict.fromkeys(out))


def load_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise UsageError("BIDS filter file not found", path=path, fix="give an existing JSON file") from exc
    except json.JSONDecodeError as exc:
        raise UsageError(f"BIDS filter file is not valid JSON ({exc.msg}, line {exc.lineno})", path=path,
                         fix="correct the JSON syntax") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise UsageError("BIDS filter file must map input names to pybids queries", path=path,
                         fix='write e.g. {"t1w": {"acquisition": "mprage"}}')
    unknown = sorted(set(data) - set(FILTER_KEYS))
    if unknown:
        raise UsageError(f"unknown filter key {unknown[0]!r}", path=path, fix=f"use {', '.join(FILTER_KEYS)}")
    return data


def find_derivatives(bids_dir: Path, explicit: dict[str, Path], output_dir: Path) -> dict[str, Path]:
    """Named derivative datasets: those given with -d, else every folder of bids_dir/derivatives (except ours)."""
    if explicit:
        from bids_ketamine.annex import is_uninstalled_subdataset

        for name, path in explicit.items():
            if not Path(path).is_dir():
                raise MissingInputError(f"derivatives {name!r} not found", path=path,
                                        fix="check the path given with -d/--derivatives (and its container mount)")
            if is_uninstalled_subdataset(path):
                raise MissingInputError(f"derivatives {name!r} is an uninstalled DataLad subdataset (empty folder)",
                                        path=path, fix=f"install it with `datalad get -n {path}`, then re-run "
                                                       "with --dry-run to list the files to retrieve")
        return {name: Path(p).absolute() for name, p in explicit.items()}
    found = {}
    root = bids_dir / "derivatives"
    if root.is_dir():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            if folder.absolute() == output_dir.absolute():
                continue
            found[folder.name] = folder.absolute()
    return found


def _bids_derivatives(derivatives: dict[str, Path]) -> list[Path]:
    """Those derivative folders that pybids can index (BIDS ones with a valid dataset_description.json)."""
    out = []
    for name, path in derivatives.items():
        desc = path / "dataset_description.json"
        if not desc.exists():
            continue  # CAT12/FreeSurfer folders are read by file name, not by pybids
        try:
            info = json.loads(desc.read_text())
        except json.JSONDecodeError as exc:
            raise BadDataError(f"invalid JSON in derivatives {name!r}", path=desc,
                               fix="repair dataset_description.json") from exc
        if "GeneratedBy" not in info and "PipelineDescription" not in info:
            raise BadDataError(f"derivatives {name!r} have no GeneratedBy", path=desc,
                               fix='add "GeneratedBy": [{"Name": "<pipeline>"}] to dataset_description.json')
        out.append(path)
    return out


def build_layout(bids_dir: Path, derivatives: dict[str, Path], database_dir: Path | None = None):
    """A pybids layout of raw data plus BIDS derivatives; saved to/reloaded from ``database_dir`` when given."""
    from bids import BIDSLayout, BIDSLayoutIndexer

    def index(**kwargs: Any):
        try:
            return BIDSLayout(bids_dir, validate=False, derivatives=_bids_derivatives(derivatives) or False,
                              indexer=BIDSLayoutIndexer(validate=False, index_metadata=False), **kwargs)
        except (ValueError, OSError) as exc:
            raise BadDataError(f"pybids cannot index the dataset ({str(exc).splitlines()[0]})", path=bids_dir,
                               fix="check dataset_description.json files of the dataset and its derivatives") from exc

    if database_dir is None:
        return index()
    # Many participant jobs share one saved index: the first builds it under a lock, the others load it.
    from filelock import FileLock

    database_dir = Path(database_dir).absolute()
    database_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(database_dir) + ".lock", timeout=3600):
        return index(database_path=database_dir)


def _first(files: list, prefer: tuple[str, ...] = ()) -> Path | None:
    if not files:
        return None
    if prefer:
        rank = {s: i for i, s in enumerate(prefer)}
        files = sorted(files, key=lambda f: (rank.get(f.entities.get("space"), len(rank)), f.path))
    else:
        files = sorted(files, key=lambda f: f.path)
    return Path(files[0].path)


def _mni(space: str | None) -> bool:
    return bool(space) and space.startswith("MNI")


def _derivative_name(path: str) -> str:
    return Path(path).name


def _by_subject(files: list) -> dict[str, list]:
    grouped: dict[str, list] = {}
    for f in files:
        grouped.setdefault(f.entities.get("subject"), []).append(f)
    return grouped


def _cat12_maps(derivatives: dict[str, Path]) -> dict[str, Path]:
    """CAT12 modulated GM maps (``mwp1*.nii``) by subject, from one walk of each derivatives folder."""
    found: dict[str, Path] = {}
    for root in derivatives.values():
        for path in sorted(root.rglob("mwp1*.nii*")):
            match = re.search(r"sub-([A-Za-z0-9]+)", path.as_posix())
            if match:
                found.setdefault(match.group(1), path)
    return found


def anat_inputs(raw_t1w: list, deriv: list, subject: str, derivatives: dict[str, Path],
                cat12: dict[str, Path]) -> AnatInputs:
    probseg = [f for f in deriv if f.entities.get("suffix") == "probseg" and f.entities.get("label") == "GM"
               and _mni(f.entities.get("space"))]
    gm = _first(probseg, MNI_SPACES)
    space = None
    xfm = None
    if gm is not None:
        space = re.search(r"space-([A-Za-z0-9]+)", gm.name).group(1)  # type: ignore[union-attr]
        xfms = [f for f in deriv if f.entities.get("suffix") == "xfm" and f"from-T1w_to-{space}_" in f.filename]
        xfm = _first(xfms)
    masks = [f for f in deriv if f.entities.get("suffix") == "mask" and f.entities.get("desc") == "brain"
             and not f.entities.get("space") and f.entities.get("extension") in (".nii", ".nii.gz")]
    tissue = {}
    for label in ("GM", "WM", "CSF"):
        maps = [f for f in deriv if f.entities.get("suffix") == "probseg" and f.entities.get("label") == label
                and not f.entities.get("space") and f.entities.get("extension") in (".nii", ".nii.gz")]
        if maps:
            tissue[label.lower()] = _first(maps)
    freesurfer = None
    for root in derivatives.values():
        if (root / f"sub-{subject}" / "stats" / "aseg.stats").exists():
            freesurfer = root / f"sub-{subject}"
            break
    return AnatInputs(
        t1w=tuple(sorted(Path(f.path) for f in raw_t1w)), gm_probseg_mni=gm, t1w_to_mni_xfm=xfm,
        brain_mask_t1w=_first(masks), mni_space=space, cat12_mwp1=cat12.get(subject), freesurfer_dir=freesurfer,
        probseg_t1w=tissue if len(tissue) == 3 else {},
    )


def bold_inputs(layout, files: list, raw_bold: list, subject: str, conditions: dict[str, str]) -> tuple[BoldRun, ...]:
    preproc = [f for f in files if f.entities.get("suffix") == "bold" and f.entities.get("desc") == "preproc"
               and f.entities.get("extension") in (".nii.gz", ".nii") and _mni(f.entities.get("space"))]
    cifti = [f for f in files if f.entities.get("suffix") == "bold" and f.entities.get("extension") == ".dtseries.nii"
             and f.entities.get("space") == "fsLR"]
    runs: dict[tuple, Any] = {}
    for f in sorted(preproc, key=lambda f: f.path):
        key = (f.entities.get("session"), f.entities.get("task"), f.entities.get("run"), f.entities.get("acquisition"))
        best = runs.get(key)
        rank = MNI_SPACES.index(f.entities["space"]) if f.entities["space"] in MNI_SPACES else len(MNI_SPACES)
        if best is None or rank < best[0]:
            runs[key] = (rank, f)
    for f in cifti:
        key = (f.entities.get("session"), f.entities.get("task"), f.entities.get("run"), f.entities.get("acquisition"))
        runs.setdefault(key, (99, f))
    out = []
    for key, (_, f) in sorted(runs.items(), key=lambda kv: str(kv[0])):
        ent = f.entities
        same = {k: ent.get(k) for k in ("session", "task", "run", "acquisition") if ent.get(k) is not None}
        conf = [c for c in files if c.entities.get("desc") == "confounds" and c.entities.get("suffix") == "timeseries"
                and c.entities.get("extension") == ".tsv"
                and all(c.entities.get(k) == v for k, v in same.items())]
        masks = [m for m in files if m.entities.get("suffix") == "mask" and m.entities.get("desc") == "brain"
                 and m.entities.get("extension") in (".nii", ".nii.gz") and m.entities.get("space") == ent.get("space") and m.entities.get("res") == ent.get("res")
                 and all(m.entities.get(k) == v for k, v in same.items())]
        meta_path = Path(f.path[: -len(ent["extension"])] + ".json")
        tr = json.loads(meta_path.read_text()).get("RepetitionTime") if meta_path.exists() else None
        if tr is None:  # fMRIPrep copies it into the sidecar; else inherit it from the raw BOLD's metadata
            raw = [r for r in raw_bold if all(r.entities.get(k) == v for k, v in same.items())]
            if raw:
                tr = layout.get_metadata(raw[0].path).get("RepetitionTime")
        confounds = _first(conf)
        if confounds is None:
            LOG.warning("sub-%s: %s has no confounds file; skipped", subject, f.filename)
            continue
        out.append(BoldRun(bold=Path(f.path), confounds=confounds, mask=_first(masks), space=ent.get("space"),
                           session=ent.get("session"), run=None if ent.get("run") is None else str(ent.get("run")),
                           task=ent.get("task"), condition=conditions.get(ent.get("session") or ""),
                           repetition_time=tr))
    return tuple(out)


def mrs_inputs(svs: list, refs: list, events: list, task: str | None, pretreatments: dict[str, str],
               conditions: dict[str, str]) -> tuple[MrsAcquisition, ...]:
    if task:
        svs = [f for f in svs if f.entities.get("task") in (task, None)]
    out = []
    for f in sorted(svs, key=lambda f: f.path):
        ent = f.entities
        # a reference belongs to the acquisition of its session and volume of interest (a reference without voi-
        # serves every voxel of the session)
        same_ses = [r for r in refs if r.entities.get("session") == ent.get("session")
                    and r.entities.get("volume") in (None, ent.get("volume"))]
        references: dict[str, Path] = {}
        for ref in sorted(same_ses, key=lambda r: r.path):
            acq = ref.entities.get("acquisition")
            if acq in (None, ent.get("acquisition")):
                references.setdefault("water", Path(ref.path))
            else:
                references.setdefault(acq, Path(ref.path))
        ev = [e for e in events if e.entities.get("session") == ent.get("session")
              and e.entities.get("task") == ent.get("task") and e.entities.get("run") == ent.get("run")]
        ses = ent.get("session") or ""
        out.append(MrsAcquisition(svs=Path(f.path), references=references, events=_first(ev),
                                  session=ent.get("session"), acq=ent.get("acquisition"),
                                  run=None if ent.get("run") is None else str(ent.get("run")), task=ent.get("task"),
                                  voi=ent.get("volume"), pretreatment=pretreatments.get(ses),
                                  condition=conditions.get(ses)))
    return tuple(out)


def select_subjects(layout, requested: list[str] | None) -> list[str]:
    available = sorted(layout.get_subjects(scope="raw"))
    if not requested:
        if not available:
            raise NoMatchError("the dataset has no sub-* folders", path=layout.root,
                               fix="point bids_dir at the root of a BIDS dataset")
        return available
    missing = [s for s in requested if s not in available]
    if missing:
        shown = ", ".join(available[:10]) + (" ..." if len(available) > 10 else "")
        raise NoMatchError(f"participant(s) {', '.join('sub-' + m for m in missing)} not found (dataset has: {shown})",
                           path=layout.root, fix="check --participant-label and that bids_dir is mounted")
    return requested


def collect_inputs(layout, subjects: list[str], *, derivatives: dict[str, Path], sessions: list[str] | None,
                   task: str | None, filters: dict, sessions_table, phenotypes: dict[str, dict[str, str]]
                   ) -> dict[str, ParticipantInputs]:
    """Every participant's inputs from a handful of layout queries (not a handful per participant)."""
    base: dict[str, Any] = {"subject": subjects}
    if sessions:
        base["session"] = sessions
    nifti = [".nii", ".nii.gz"]
    t1w = _by_subject(layout.get(**base, datatype="anat", suffix="T1w", extension=nifti, scope="raw",
                                 **filters.get("t1w", {})))
    anat = _by_subject(layout.get(**base, datatype="anat", scope="derivatives", extension=[*nifti, ".h5"]))
    func_query = dict(base, datatype="func", scope="derivatives", **filters.get("bold", {}))
    if task:
        func_query["task"] = task
    func = _by_subject(layout.get(**func_query))
    raw_bold = _by_subject(layout.get(**dict(func_query, scope="raw"), suffix="bold", extension=nifti))
    mrs_query = dict(base, datatype="mrs", scope="raw", extension=nifti)
    svs = _by_subject(layout.get(**mrs_query, suffix="svs", **filters.get("svs", {})))
    refs = _by_subject(layout.get(**mrs_query, suffix="mrsref", **filters.get("mrsref", {})))
    events = _by_subject(layout.get(**base, datatype="mrs", suffix="events", extension=".tsv", scope="raw"))
    cat12 = _cat12_maps(derivatives)
    conditions_of: dict[str, dict[str, str]] = {}
    pretreatments_of: dict[str, dict[str, str]] = {}
    for row in sessions_table.to_dict("records"):
        if isinstance(row["condition"], str):
            conditions_of.setdefault(row["participant_id"], {})[row["session_id"]] = row["condition"]
        if isinstance(row["pretreatment"], str):
            pretreatments_of.setdefault(row["participant_id"], {})[row["session_id"]] = row["pretreatment"]
    out = {}
    for subject in subjects:
        conditions = conditions_of.get(subject, {})
        pretreatments = pretreatments_of.get(subject, {})
        out[subject] = ParticipantInputs(
            subject=subject,
            anat=anat_inputs(t1w.get(subject, []), anat.get(subject, []), subject, derivatives, cat12),
            bold=bold_inputs(layout, func.get(subject, []), raw_bold.get(subject, []), subject, conditions),
            mrs=mrs_inputs(svs.get(subject, []), refs.get(subject, []), events.get(subject, []), task,
                           pretreatments, conditions),
            phenotype=phenotypes.get(subject, {}),
        )
    return out
