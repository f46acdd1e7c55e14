"""The brainlife.io app: ``config.json`` in, a BIDS view, the BIDS-App run, BIDS-Derivatives and ``product.json`` out.

brainlife runs the app's ``main`` (``platforms/brainlife/main``) in a fresh working directory holding
``config.json``: the file keys chosen at registration map to paths (a list when several datasets of one kind are
given), ``_inputs[]`` describes each dataset (``id``, ``datatype``, ``task_id``, ``subdir``, ``keys``, ``meta``
with ``subject``/``session``...). This module

1. reads that config (``read_job``): the app's parameters (``PARAMETERS``, each with a default and a description)
   and the inputs, each tied to its ``_inputs`` entry (by the ``../<task_id>/<subdir>/`` of its path, else by
   order) for its subject and session;
2. builds a BIDS view of symlinks (no copy) in ``bids/``: raw T1w (``t1``), BIDS ``mrs/`` files (``mrs``, a raw
   folder) and fMRIPrep BOLD with confounds and mask (``bold``, ``confounds``, ``mask``) under
   ``bids/derivatives/fmriprep``; ``participants.tsv`` and ``sessions.tsv`` from the entries' meta;
3. runs the participant level (and, with ``analysis_level = group``, the group level) into ``output/``;
4. writes ``product.json``: brainlife's message list (each failure and each failed QC as its one line) and one
   small plotly graph per analysis that ran. A failure exits non-zero with its message in ``product.json``.

Why symlinks and a generated ``participants.tsv``: brainlife datasets are not BIDS (files are named ``t1.nii.gz``,
facts live in ``meta``), and brainlife's own inputs must not be copied or modified.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import (EXIT_OK, EXIT_USAGE, BadDataError, BidsKetamineError, MissingInputError,
                                  UsageError)

LOG = logging.getLogger("bids_ketamine")

#: config.json parameters of the app: name -> (default, description). The README and config.json.sample of
#: platforms/brainlife list exactly these (a test checks it); register each as a brainlife config parameter.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "analysis_level": ("participant", "participant: features of every input subject; group: the participant "
                                      "level and then the group statistics over all input subjects"),
    "analyses": ("", "comma-separated subset of structural, connectivity, spectroscopy; empty: every analysis "
                     "whose inputs are given"),
    "config": ("", "study design and analysis parameters: the text of a bids-ketamine config file (TOML; JSON "
                   "when it starts with '{'); empty: the defaults"),
    "random_seed": (20240601, "seed of every random step (same inputs and seed give identical tables)"),
    "task_id": ("rest", "BIDS task label of BOLD inputs whose meta has no task"),
    "bold_space": ("MNI152NLin2009cAsym", "template space of the fMRIPrep BOLD inputs whose meta has no space"),
    "nprocs": (0, "processes to use; 0: every core the job has"),
    "omp_nthreads": (1, "threads per process for numerical libraries"),
    "mem": ("", "memory limit with a unit (e.g. 16G); empty: no limit"),
    "skip_bids_validation": (False, "do not run bids-validator-deno on the BIDS view of the inputs"),
    "stop_on_first_crash": (False, "stop at the first participant that fails"),
    "clean_workdir": (True, "delete the work folder after a successful run"),
    "verbose": (0, "more log output (1 or 2)"),
}
#: Input file keys (mapped at registration): what each is and where it goes in the BIDS view.
INPUT_KEYS = {
    "t1": "raw T1w image (neuro/anat/t1w, t1.nii.gz)",
    "bold": "fMRIPrep preprocessed resting BOLD in MNI space (desc-preproc_bold.nii.gz)",
    "confounds": "fMRIPrep confounds of that BOLD (desc-confounds_timeseries.tsv)",
    "mask": "fMRIPrep brain mask of that BOLD (desc-brain_mask.nii.gz), optional",
    "mrs": "a raw dataset holding BIDS mrs/ files (*_svs.nii.gz, *_mrsref.nii.gz, sidecars, events.tsv)",
}
#: meta fields that are entities or facts of a session, not of the participant.
ENTITY_META = {"subject", "session", "run", "task", "acquisition", "space", "echo", "direction", "datatype"}
SESSION_META = ("condition", "pretreatment", "period")
PRODUCT_LIMIT_BYTES = 10_000
_BOLD_KEYS = ("bold", "confounds", "mask")


@dataclass
class JobInput:
    """One file (or folder) of the job with the meta of its brainlife dataset."""

    key: str
    path: Path
    meta: dict[str, Any]
    dataset: str  # the _inputs entry's id and task, for messages

    @property
    def subject(self) -> str:
        return bids_label(self.meta.get("subject"), f"meta.subject of input {self.dataset}")

    @property
    def session(self) -> str | None:
        value = self.meta.get("session")
        return None if value in (None, "") else bids_label(value, f"meta.session of input {self.dataset}")


@dataclass
class Job:
    workdir: Path
    params: dict[str, Any]
    inputs: list[JobInput] = field(default_factory=list)


def bids_label(value: Any, what: str) -> str:
    """A BIDS label from a brainlife meta value (``sub-``/``ses-`` dropped, then only letters and digits kept:
    ``sub_01`` -> ``sub01``, ``ses-pre`` -> ``pre``)."""
    text = "" if value is None else str(value)
    text = text[4:] if text.startswith(("sub-", "ses-")) else text
    label = re.sub(r"[^A-Za-z0-9]", "", text)
    if not label:
        raise UsageError(f"{what} is missing or has no letter or digit ({value!r})",
                         fix="set the subject (and session) of the dataset on brainlife")
    return label


def _coerce(name: str, value: Any) -> Any:
    default = PARAMETERS[name][0]
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.strip().lower() in ("true", "yes", "1"):
                return True
            if value.strip().lower() in ("false", "no", "0", ""):
                return False
        if isinstance(value, bool):
            return value
        raise UsageError(f"config.json: parameter {name} must be true or false, not {value!r}")
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise UsageError(f"config.json: parameter {name} must be a whole number, not {value!r}") from None
    return "" if value is None else str(value)


def read_job(workdir: str | Path) -> Job:
    """The job described by ``workdir/config.json`` (parameters with defaults, inputs with their meta)."""
    workdir = Path(workdir).absolute()
    path = workdir / "config.json"
    if not path.is_file():
        raise MissingInputError("config.json not found in the working directory", path=workdir,
                                fix="run main in the brainlife job's working directory")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"config.json is not valid JSON ({exc})", path=path) from exc
    if not isinstance(config, dict):
        raise UsageError("config.json must hold an object", path=path)
    params = {name: _coerce(name, config[name]) if name in config else default
              for name, (default, _) in PARAMETERS.items()}
    if params["analysis_level"] not in ("participant", "group"):
        raise UsageError(f"config.json: analysis_level must be participant or group, not "
                         f"{params['analysis_level']!r}", path=path)
    entries = [e for e in config.get("_inputs") or [] if isinstance(e, dict)]
    job = Job(workdir=workdir, params=params)
    for key in INPUT_KEYS:
        if key not in config:
            continue
        values = config[key] if isinstance(config[key], list) else [config[key]]
        owners = [e for e in entries if key in (e.get("keys") or [])]
        for index, value in enumerate(values):
            file = Path(os.path.normpath(workdir / str(value)))
            entry = _entry_of(file, owners, index)
            name = f"{entry.get('id', key)} #{index + 1} ({entry.get('task_id', '?')})" if entry else f"{key} " \
                                                                                                    f"#{index + 1}"
            job.inputs.append(JobInput(key=key, path=file, meta=dict(entry.get("meta") or {}) if entry else {},
                                       dataset=name))
    if not job.inputs:
        raise MissingInputError(f"config.json maps none of the input keys {', '.join(INPUT_KEYS)}", path=path,
                                fix="register the app's inputs with these file keys (see the app's README)")
    return job


def _entry_of(file: Path, owners: list[dict], index: int) -> dict | None:
    """The ``_inputs`` entry a file belongs to: the one whose ``../<task_id>/<subdir>`` holds it, else by order."""
    for entry in owners:
        parts = [str(entry.get("task_id") or ""), str(entry.get("subdir") or "")]
        marker = "/" + "/".join(p for p in parts if p) + "/"
        if marker != "//" and marker in file.as_posix():
            return entry
    return owners[index] if index < len(owners) else (owners[0] if len(owners) == 1 else None)


# ---------------------------------------------------------------------------------------------- the BIDS view
def _check_exists(item: JobInput, directory: bool = False) -> None:
    ok = item.path.is_dir() if directory else item.path.is_file()
    if not ok:
        kind = "folder" if directory else "file"
        raise MissingInputError(f"input {item.dataset} (key {item.key}, sub-{item.subject}): {kind} not found",
                                path=item.path, fix="check the input datasets of the brainlife job (their files "
                                                    "must be staged in the job's instance folder)")


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(link):
        raise BadDataError(f"two inputs give the same BIDS file {link.name}", path=target,
                           fix="give each subject/session (and run) once, or set run/acquisition in meta")
    os.symlink(os.path.abspath(target), link)


def _sidecar_from_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """BIDS sidecar fields that brainlife keeps in meta (CamelCase keys such as RepetitionTime)."""
    return {k: v for k, v in meta.items() if k[:1].isupper() and isinstance(v, (str, int, float, bool, list))}


def _prefix(subject: str, session: str | None) -> tuple[Path, str]:
    folder = Path(f"sub-{subject}") / (f"ses-{session}" if session else "")
    return folder, f"sub-{subject}" + (f"_ses-{session}" if session else "")


def _tsv_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return "n/a"
    return re.sub(r"\s+", " ", str(value)).strip() or "n/a"


def build_bids_view(job: Job, root: Path) -> tuple[Path, dict[str, Path]]:
    """The BIDS dataset (symlinks) of the job's inputs; returns its root and its derivatives by name."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "brainlife.io job inputs (BIDS view built by bids_ketamine)", "BIDSVersion": "1.10.0",
        "DatasetType": "raw", "GeneratedBy": [{"Name": "bids_ketamine", "Version": __version__,
                                               "Description": "symlinks to the brainlife job's input datasets"}]},
        indent=2) + "\n")
    (root / "README").write_text("BIDS view of a brainlife.io job's inputs (symlinks; tables from meta).\n")
    derivatives: dict[str, Path] = {}
    participants: dict[str, dict[str, Any]] = {}
    sessions: dict[str, dict[str, dict[str, Any]]] = {}
    for item in job.inputs:
        subject, session = item.subject, item.session
        row = participants.setdefault(subject, {})
        for key, value in item.meta.items():
            if key in ENTITY_META or key[:1].isupper() or not isinstance(value, (str, int, float, bool)):
                continue
            if key in SESSION_META and session:
                sessions.setdefault(subject, {}).setdefault(session, {}).setdefault(key, value)
            else:
                row.setdefault(key, value)
        if session:
            sessions.setdefault(subject, {}).setdefault(session, {})
        folder, stem = _prefix(subject, session)
        if item.key == "t1":
            _check_exists(item)
            name = stem + _entities(item.meta, ("acquisition", "run")) + "_T1w.nii.gz"
            _link(item.path, root / folder / "anat" / name)
            sidecar = _sidecar_from_meta(item.meta)
            if sidecar:
                (root / folder / "anat" / name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar, indent=2))
        elif item.key == "mrs":
            _check_exists(item, directory=True)
            _link_mrs_folder(item, root / folder / "mrs", stem)
        elif item.key in _BOLD_KEYS:
            _check_exists(item)
            fmriprep = root / "derivatives" / "fmriprep"
            derivatives["fmriprep"] = fmriprep
            task = bids_label(item.meta.get("task") or job.params["task_id"], f"task of input {item.dataset}")
            space = bids_label(item.meta.get("space") or job.params["bold_space"], f"space of input {item.dataset}")
            base = stem + f"_task-{task}" + _entities(item.meta, ("acquisition", "run"))
            name = {"bold": f"{base}_space-{space}_desc-preproc_bold.nii.gz",
                    "confounds": f"{base}_desc-confounds_timeseries.tsv",
                    "mask": f"{base}_space-{space}_desc-brain_mask.nii.gz"}[item.key]
            _link(item.path, fmriprep / folder / "func" / name)
            sidecar = _sidecar_from_meta(item.meta)
            if item.key == "bold" and sidecar:
                (fmriprep / folder / "func" / name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    if "fmriprep" in derivatives:
        (derivatives["fmriprep"] / "dataset_description.json").write_text(json.dumps({
            "Name": "fMRIPrep outputs given to the brainlife job", "BIDSVersion": "1.10.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}, indent=2) + "\n")
    _write_tables(root, participants, sessions)
    return root, derivatives


def _entities(meta: dict[str, Any], keys: tuple[str, ...]) -> str:
    short = {"acquisition": "acq", "run": "run"}
    return "".join(f"_{short[k]}-{bids_label(meta[k], k)}" for k in keys if meta.get(k) not in (None, ""))


_MRS_FILE = re.compile(r"^(?:sub-[A-Za-z0-9]+_)?(?:ses-[A-Za-z0-9]+_)?(?P<rest>(?:[a-z]+-[A-Za-z0-9]+_)*"
                       r"(?:svs|mrsref|events|unloc|mrsi)\.(?:nii\.gz|nii|json|tsv))$")


def _link_mrs_folder(item: JobInput, target: Path, stem: str) -> None:
    """BIDS ``mrs/`` files of a raw dataset, renamed to this subject and session (their other entities kept)."""
    source = item.path / "mrs" if (item.path / "mrs").is_dir() else item.path
    found = 0
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        match = _MRS_FILE.match(path.name)
        if match is None:
            continue
        _link(path, target / f"{stem}_{match.group('rest')}")
        found += match.group("rest").endswith(("svs.nii.gz", "svs.nii"))
    if not found:
        raise MissingInputError(f"input {item.dataset} (key mrs): no BIDS *_svs.nii[.gz] file in the folder",
                                path=item.path, fix="give a raw dataset holding the BIDS mrs/ files (spec2nii output)")


def _write_tables(root: Path, participants: dict[str, dict[str, Any]],
                  sessions: dict[str, dict[str, dict[str, Any]]]) -> None:
    columns = sorted({k for row in participants.values() for k in row})
    lines = ["\t".join(["participant_id", *columns])]
    for subject in sorted(participants):
        row = participants[subject]
        values = [_tsv_value(_participant_value(c, row.get(c))) for c in columns]
        lines.append("\t".join([f"sub-{subject}", *values]))
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    described = {"participant_id": {"Description": "brainlife meta.subject, as a BIDS label"}}
    described.update({c: {"Description": f"brainlife meta.{c} of the subject's datasets"} for c in columns})
    (root / "participants.json").write_text(json.dumps(described, indent=2) + "\n")
    for subject, by_session in sessions.items():
        cols = sorted({k for row in by_session.values() for k in row})
        rows = ["\t".join(["session_id", *cols])]
        rows += ["\t".join([f"ses-{s}", *(_tsv_value(by_session[s].get(c)) for c in cols)])
                 for s in sorted(by_session)]
        (root / f"sub-{subject}").mkdir(exist_ok=True)  # a subject with only fMRIPrep inputs has no raw file
        (root / f"sub-{subject}" / f"sub-{subject}_sessions.tsv").write_text("\n".join(rows) + "\n")


def _participant_value(column: str, value: Any) -> Any:
    """participants.tsv values the BIDS validator accepts: a numeric age or n/a."""
    if column == "age":
        try:
            return float(value) if float(value) != int(float(value)) else int(float(value))
        except (TypeError, ValueError):
            return None
    return value


# ---------------------------------------------------------------------------------------------- running
def cli_arguments(job: Job, bids_dir: Path, output_dir: Path, work_dir: Path, level: str,
                  derivatives: dict[str, Path], config_file: Path | None) -> list[str]:
    """The ``bids-ketamine`` command line of one level of the job (every option from a job parameter)."""
    p = job.params
    argv = [str(bids_dir), str(output_dir), level, "-w", str(work_dir), "--random-seed", str(p["random_seed"]),
            "--omp-nthreads", str(p["omp_nthreads"])]
    argv += ["--derivatives", *[f"{n}={d}" for n, d in derivatives.items()]] if derivatives else []
    argv += ["--analyses", p["analyses"]] if p["analyses"].strip() else []
    argv += ["--nprocs", str(p["nprocs"])] if p["nprocs"] > 0 else []
    argv += ["--mem", p["mem"]] if p["mem"].strip() else []
    argv += ["--config-file", str(config_file)] if config_file else []
    argv += ["--skip-bids-validation"] if p["skip_bids_validation"] else []
    argv += ["--stop-on-first-crash"] if p["stop_on_first_crash"] else []
    argv += ["--clean-workdir"] if p["clean_workdir"] and level == ("group" if p["analysis_level"] == "group"
                                                                    else "participant") else []
    argv += ["-v"] * int(p["verbose"])
    return argv


def _config_file(job: Job) -> Path | None:
    text = job.params["config"].strip()
    if not text:
        return None
    path = job.workdir / ("bids_ketamine_config.json" if text.startswith("{") else "bids_ketamine_config.toml")
    path.write_text(text + "\n", encoding="utf-8")
    return path


class _Collect(logging.Handler):
    """Warnings of the run (in this process) for product.json."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run_level(argv: list[str]) -> int:
    """One level through the app's own CLI functions (errors raised, not printed, so product.json gets them)."""
    from bids_ketamine.cli.parser import _build_parser
    from bids_ketamine.cli.run import build_config, run

    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as exc:
        raise UsageError(f"the app rejected its command line ({' '.join(argv)})") from exc
    return run(build_config(args))


def run_job(workdir: str | Path) -> tuple[int, list[dict[str, Any]], Path | None]:
    """Everything ``main`` does except writing product.json: (exit code, messages, output folder)."""
    from bids_ketamine.logs import setup_logging

    messages: list[dict[str, Any]] = []
    output_dir: Path | None = None
    collect = _Collect()
    code = EXIT_OK
    try:
        job = read_job(workdir)
        setup_logging(int(job.params["verbose"]))
        logging.getLogger("bids_ketamine").addHandler(collect)
        bids_dir, derivatives = build_bids_view(job, job.workdir / "bids")
        output_dir, work_dir = job.workdir / "output", job.workdir / "work"
        config_file = _config_file(job)
        levels = ["participant"] + (["group"] if job.params["analysis_level"] == "group" else [])
        for level in levels:
            level_code = run_level(cli_arguments(job, bids_dir, output_dir, work_dir, level, derivatives,
                                                 config_file))
            code = code or level_code  # the first failure's code is the job's
            if level_code != EXIT_OK and level == "participant" and len(levels) > 1:
                messages.append({"type": "warning", "msg": f"participant level ended with exit code {level_code}; the "
                                                           "group level runs on the participants that finished"})
    except BidsKetamineError as exc:
        code = exc.exit_code
        messages.append({"type": "error", "msg": str(exc)})
    except (OSError, EOFError, MemoryError) as exc:  # what the app did not map (a full disk, a blocked folder)
        from bids_ketamine.io.failures import describe

        mapped = describe(exc, outputs=[Path(workdir).absolute()], who="the brainlife job")
        if mapped is None:
            raise
        code = mapped.exit_code
        messages.append({"type": "error", "msg": str(mapped)})
    finally:
        logging.getLogger("bids_ketamine").removeHandler(collect)
    if output_dir is not None and (output_dir / "logs").is_dir():
        messages += outcome_messages(output_dir)  # also after a level that stopped: its recorded failures
    seen = {m["msg"] for m in messages}
    for text in dict.fromkeys(collect.messages):
        if text not in seen and not any(text in m["msg"] for m in messages):
            messages.append({"type": "warning", "msg": text})
    if code == EXIT_OK and not any(m["type"] == "error" for m in messages):
        messages.insert(0, {"type": "success", "msg": f"bids_ketamine {__version__} finished; BIDS-Derivatives "
                                                      "in output/"})
    elif code != EXIT_OK and not any(m["type"] == "error" for m in messages):
        messages.insert(0, {"type": "error", "msg": f"bids_ketamine ended with exit code {code}"})
    return code, messages, output_dir


def outcome_messages(output_dir: Path) -> list[dict[str, Any]]:
    """Failures of the run records and failed QC of the tables, each one line."""
    out: list[dict[str, Any]] = []
    from bids_ketamine.reports.collect import OutputFolder

    folder = OutputFolder.read(output_dir)
    for (subject, analysis), status in sorted(folder.participant_statuses().items()):
        if not status.get("ok"):
            out.append({"type": "error", "msg": f"sub-{subject} {analysis} failed: {status.get('message')}"})
    for analysis, status in sorted(folder.group_statuses().items()):
        if not status.get("ok"):
            out.append({"type": "error", "msg": f"group {analysis} failed: {status.get('message')}"})
    out += qc_messages(output_dir)
    ran = sorted({a for (_, a), s in folder.participant_statuses().items() if s.get("ok")})
    if ran:
        subjects = sorted({s for (s, _), st in folder.participant_statuses().items() if st.get("ok")})
        out.append({"type": "info", "msg": f"participant level: {', '.join(ran)} for {len(subjects)} participant(s)"})
    return out


def qc_messages(output_dir: Path) -> list[dict[str, Any]]:
    """One warning per failed QC: flagged MRS estimates (CRLB), excluded connectivity sessions."""
    import pandas as pd

    out = []
    for path in sorted(output_dir.glob("sub-*/**/*_mrsfit.tsv")):
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        if "qc_pass" not in table:
            continue
        bad = table[~table["qc_pass"].astype(str).str.lower().eq("true")]
        if len(bad):
            names = ", ".join(dict.fromkeys(bad["metabolite"].astype(str)))
            out.append({"type": "warning", "msg": f"{path.name}: {len(bad)} estimate(s) failed QC (CRLB above the "
                                                  f"limit or not finite): {names}"})
    for path in sorted(output_dir.glob("sub-*/**/*_stats.json")):
        try:
            notes = json.loads(path.read_text()).get("Notes") or []
        except (OSError, json.JSONDecodeError):
            continue
        out += [{"type": "warning", "msg": f"{path.name}: {note}"} for note in notes if isinstance(note, str)]
    return out


# ---------------------------------------------------------------------------------------------- product.json
def _short(values, digits: int = 3) -> list:
    return [None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), digits)
            for v in values]


def structural_graph(output_dir: Path) -> dict[str, Any] | None:
    """Regional GM volume (fraction of TIV) z-scored across the job's participants (>= 3), else the fractions."""
    import pandas as pd

    paths = sorted(output_dir.glob("sub-*/anat/*_morph.tsv")) + sorted(output_dir.glob("sub-*/ses-*/anat/*_morph.tsv"))
    if not paths:
        return None
    tables = {}
    for path in paths:
        subject = re.match(r"sub-([A-Za-z0-9]+)", path.name).group(1)
        table = pd.read_csv(path, sep="\t")
        tables.setdefault(subject, table.set_index("region")["gm_fraction_tiv"])
    frame = pd.DataFrame(tables).T  # participants x regions
    regions = list(frame.columns)
    if len(frame) >= 3:
        z = (frame - frame.mean()) / frame.std(ddof=1).replace(0, float("nan"))
        shown = z.abs().max(axis=1).sort_values(ascending=False).index[:4]
        data = [{"type": "heatmap", "z": [_short(z.loc[s], 1) for s in shown], "x": regions,
                 "y": [f"sub-{s}" for s in shown], "colorscale": "RdBu", "zmid": 0}]
        name = f"Regional GM z-scores across the {len(frame)} participants (largest deviations first)"
        layout = {"xaxis": {"showticklabels": False, "title": "atlas region"}, "height": 320}
    else:
        data = [{"type": "bar", "name": f"sub-{s}", "x": regions, "y": _short(frame.loc[s] * 100, 3)}
                for s in frame.index]
        name = "Regional GM volume (% of TIV); z-scores need at least 3 participants"
        layout = {"xaxis": {"showticklabels": False, "title": "atlas region"}, "yaxis": {"title": "% of TIV"},
                  "barmode": "group", "height": 320}
    return {"type": "plotly", "name": name, "data": data, "layout": layout}


def spectroscopy_graph(output_dir: Path) -> dict[str, Any] | None:
    """Glx/tNAA per block time (one point per session when the spectra were averaged), with CRLB error bars."""
    import pandas as pd

    paths = sorted(output_dir.glob("sub-*/**/*_mrsfit.tsv"))
    if not paths:
        return None
    traces = []
    for path in paths[:6]:
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        glx = table[table["metabolite"] == "Glx"]
        if glx.empty:
            continue
        x = glx["block_time_min"].fillna(0).tolist() if "block_time_min" in glx else [0] * len(glx)
        y = glx["ratio_tNAA"].astype(float)
        err = (y * glx["crlb_percent"].astype(float) / 100).tolist()
        label = re.sub(r"_mrsfit\.tsv$", "", path.name)
        traces.append({"type": "scatter", "mode": "lines+markers", "name": label, "x": _short(x, 2),
                       "y": _short(y, 3), "error_y": {"type": "data", "array": _short(err, 3)}})
    if not traces:
        return None
    return {"type": "plotly", "name": "Glx/tNAA time course (minutes from the infusion onset; 0: one average)",
            "data": traces, "layout": {"xaxis": {"title": "minutes"}, "yaxis": {"title": "Glx / tNAA"},
                                       "height": 320}}


def connectivity_graph(output_dir: Path) -> dict[str, Any] | None:
    """PC1 of the delta-GBC maps (group level), else the participants' delta-GBC maps (up to 3)."""
    import pandas as pd

    components = sorted((output_dir / "group").glob("*_desc-*pca_components.tsv"))
    if components:
        table = pd.read_csv(components[0], sep="\t")
        drug = re.search(r"desc-([A-Za-z0-9]+)pca", components[0].name).group(1)
        return {"type": "plotly", "name": f"PC1 of delta-GBC ({drug} minus placebo), z-scored across parcels",
                "data": [{"type": "bar", "x": table["parcel"].tolist(), "y": _short(table["pc1"], 2)}],
                "layout": {"xaxis": {"showticklabels": False, "title": "parcel"}, "height": 320}}
    deltas = sorted(output_dir.glob("sub-*/**/*minusplacebo_gbc.tsv"))[:3]
    if not deltas:
        return None
    data = []
    for path in deltas:
        table = pd.read_csv(path, sep="\t")
        data.append({"type": "bar", "name": path.name.split("_")[0], "x": table["parcel"].tolist(),
                     "y": _short(table["delta_gbc"], 3)})
    return {"type": "plotly", "name": "Delta-GBC per parcel (drug minus placebo); PC1 needs the group level",
            "data": data, "layout": {"xaxis": {"showticklabels": False, "title": "parcel"}, "barmode": "group",
                                     "height": 320}}


def product(messages: list[dict[str, Any]], output_dir: Path | None) -> dict[str, Any]:
    """brainlife's product.json: messages then one graph per analysis that ran, kept under 10 kB."""
    graphs = []
    if output_dir is not None and output_dir.is_dir():
        for build in (structural_graph, connectivity_graph, spectroscopy_graph):
            try:
                graph = build(output_dir)
            except Exception as exc:  # a graph is a view; its failure must not hide the run's messages
                LOG.warning("product.json: %s not drawn (%s)", build.__name__, exc)
                continue
            if graph is not None:
                graphs.append(graph)
    order = {"error": 0, "danger": 0, "warning": 1, "info": 2, "success": 3}
    items = sorted(({"type": m["type"], "msg": m["msg"][:400]} for m in messages), key=lambda m: order[m["type"]])

    def body(kept: list[dict[str, Any]]) -> dict[str, Any]:
        dropped = len(items) - len(kept)
        note = [{"type": "info", "msg": f"{dropped} more message(s): see output/logs and the reports"}] \
            if dropped else []
        return {"brainlife": kept + note + graphs}

    kept = list(items)
    while len(json.dumps(body(kept))) > PRODUCT_LIMIT_BYTES - 100:
        if len(kept) > 5:  # the least important messages go first (errors come first in the list)
            kept.pop()
        elif graphs:
            graphs.pop()
        elif kept:
            kept.pop()
        else:
            break
    return body(kept)


def write_product(workdir: Path, messages: list[dict[str, Any]], output_dir: Path | None) -> Path:
    path = Path(workdir) / "product.json"
    path.write_text(json.dumps(product(messages, output_dir), separators=(",", ":")) + "\n", encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    """``bids-ketamine brainlife [WORKDIR]`` (what ``main`` calls): run the job, write product.json, exit."""
    if argv and argv[0] in ("-h", "--help"):
        print("usage: bids-ketamine brainlife [WORKDIR]\n\nRun the brainlife.io job whose config.json is in WORKDIR "
              "(default: the current directory); see platforms/brainlife/README.md.")
        return EXIT_OK
    if len(argv) > 1:
        print("bids-ketamine brainlife: error: give at most one working directory", file=sys.stderr)
        return EXIT_USAGE
    workdir = Path(argv[0] if argv else ".").absolute()
    if workdir.name == "config.json":
        workdir = workdir.parent
    code, messages, output_dir = run_job(workdir)
    write_product(workdir, messages, output_dir)
    for message in messages:
        if message["type"] in ("error", "danger"):
            print(f"bids-ketamine: error: {message['msg']}", file=sys.stderr)
    return code
