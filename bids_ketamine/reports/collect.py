"""Read what a run left in the output folder: run records, statuses, completion records, files and sidecars.

Nothing here recomputes a result: the reports are built from these files only, so ``--reports-only`` is cheap and
a report always shows what is on disk.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANALYSIS_NAMES = ("structural", "connectivity", "spectroscopy")
_STATE_DIR = ".bids_ketamine"
FIGURE_EXTENSIONS = (".svg", ".png")
#: Files the reports themselves write into the output folder (not analysis outputs, so never shown as one).
REPORT_WRITTEN_FILES = frozenset({"group/findings.json"})
_RUN_STAMP = re.compile(r"run-(\d{8}-\d{6})_(participant|group)_pid(\d+)\.json$")


@dataclass
class RunRecord:
    """One ``logs/run-*.json`` written by the orchestrator."""

    path: Path
    level: str
    stamp: str
    data: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        return dict((self.data.get("config") or {}).get("parameters") or {})

    @property
    def analyses(self) -> list[str] | None:
        chosen = (self.data.get("config") or {}).get("analyses")
        return list(chosen) if chosen else None

    def outcomes(self) -> list[tuple[str, bool]]:
        """``(analysis, succeeded)`` for every participant job or group analysis this run recorded (skipped,
        already finished participants are not recorded)."""
        if self.level == "participant":
            return [(str(s.get("analysis")), bool(s.get("ok"))) for s in self.data.get("jobs") or []]
        if self.level == "group":
            return [(str(name), bool(s.get("ok"))) for name, s in (self.data.get("group") or {}).items()]
        return []

    def computed(self, analysis: str | None = None) -> bool:
        """Whether this run produced results (for ``analysis``, or for any): a re-run that skipped every finished
        participant, or whose analyses all failed, describes nothing on disk."""
        return any(ok and analysis in (None, name) for name, ok in self.outcomes())


@dataclass
class OutputFolder:
    """Everything the reports need from one output folder, read once."""

    root: Path
    runs: list[RunRecord] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    @classmethod
    def read(cls, root: str | Path) -> OutputFolder:
        root = Path(root).absolute()
        folder = cls(root)
        for path in sorted((root / "logs").glob("run-*.json")):
            match = _RUN_STAMP.search(path.name)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                folder.unreadable.append((path, f"run record unreadable: {exc}"))
                continue
            level = data.get("level") or (match.group(2) if match else "unknown")
            stamp = match.group(1) if match else path.stem
            folder.runs.append(RunRecord(path, level, f"{stamp}-{match.group(3) if match else 0}", data))
        folder.runs.sort(key=lambda r: r.stamp)
        return folder

    # ------------------------------------------------------------------ run records
    def latest(self, level: str) -> RunRecord | None:
        runs = [r for r in self.runs if r.level == level]
        return runs[-1] if runs else None

    def participant_statuses(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Latest status per (subject, analysis) over every participant-level run (later runs win)."""
        statuses: dict[tuple[str, str], dict[str, Any]] = {}
        for run in self.runs:
            if run.level != "participant":
                continue
            for status in run.data.get("jobs") or []:
                key = (str(status.get("subject")), str(status.get("analysis")))
                statuses[key] = {**status, "run": run.path.name}
        return statuses

    def group_statuses(self) -> dict[str, dict[str, Any]]:
        """Latest status per analysis over every group-level run."""
        statuses: dict[str, dict[str, Any]] = {}
        for run in self.runs:
            if run.level != "group":
                continue
            for name, status in (run.data.get("group") or {}).items():
                statuses[str(name)] = {**status, "run": run.path.name}
        return statuses

    def productive_runs(self) -> list[RunRecord]:
        """The runs that produced results, oldest first; all runs when none did (nothing else describes the folder)."""
        return [r for r in self.runs if r.computed()] or list(self.runs)

    def parameters(self) -> dict[str, dict[str, Any]]:
        """Parameters per analysis from the latest run that computed it, group level over participant level.

        A later run that computed nothing for an analysis (a re-run, perhaps with other options, that skipped every
        finished participant) does not change what the results were made with.
        """
        computed: dict[str, dict[str, Any]] = {}
        fallback: dict[str, dict[str, Any]] = {}
        for run in sorted(self.runs, key=lambda r: (r.level == "group", r.stamp)):
            for name, values in run.parameters.items():
                fallback[name] = values
                if run.computed(name):
                    computed[name] = values
        return {**fallback, **computed}

    # ------------------------------------------------------------------ files
    def subjects(self) -> list[str]:
        return sorted(p.name[4:] for p in self.root.glob("sub-*") if p.is_dir())

    def done_outputs(self, subject: str) -> dict[str, str]:
        """relative path -> analysis, from the writer's completion records of this participant."""
        owner: dict[str, str] = {}
        for marker in sorted((self.root / _STATE_DIR / "done").glob(f"sub-{subject}_*.json")):
            analysis = marker.stem[len(f"sub-{subject}_"):]
            try:
                outputs = json.loads(marker.read_text(encoding="utf-8")).get("outputs", [])
            except (OSError, json.JSONDecodeError):
                continue
            for rel in outputs:
                owner[str(rel)] = analysis
        return owner

    def group_outputs(self) -> dict[str, str]:
        """relative path -> analysis, from the outputs each group analysis returned in the run records."""
        owner: dict[str, str] = {}
        for name, status in self.group_statuses().items():
            for out in status.get("outputs") or []:
                rel = self.relative_output(out)
                if rel:
                    owner[rel] = name
        return owner

    def relative_output(self, recorded: str) -> str | None:
        """A recorded output path relative to this folder, also when the folder was moved since the run."""
        path = Path(recorded)
        if not path.is_absolute():
            return path.as_posix()
        if path.is_relative_to(self.root):
            return path.relative_to(self.root).as_posix()
        parts = path.parts
        for index, part in enumerate(parts):
            if part == "group" or part.startswith("sub-"):
                return Path(*parts[index:]).as_posix()
        return None

    def files(self, folder: Path) -> list[Path]:
        """Figures, TSV tables and NIfTI images under ``folder`` (hidden and staging files left out)."""
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(self.root).parts):
                continue
            if path.suffix in FIGURE_EXTENSIONS or path.suffix == ".tsv" or path.name.endswith(".nii.gz"):
                found.append(path)
            elif path.suffix == ".json" and not _is_sidecar(path) and \
                    self.rel(path) not in REPORT_WRITTEN_FILES:
                found.append(path)  # a standalone summary an analysis wrote with write_json
        return found

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def _is_sidecar(path: Path) -> bool:
    stem = path.name[: -len(".json")]
    return any(path.with_name(stem + ext).exists() for ext in (".tsv", ".nii.gz", ".nii", ".svg", ".png"))


def sidecar_of(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".tsv", ".svg", ".png"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def read_sidecar(path: Path) -> tuple[dict[str, Any], str | None]:
    """The JSON sidecar of an output (empty when it has none) and a problem message when it is unreadable."""
    sidecar = sidecar_of(path)
    if not sidecar.exists():
        return {}, None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return {}, f"{sidecar.name}: unreadable sidecar ({exc})"
    return (data if isinstance(data, dict) else {}), None


def exclusion_notes(sidecar: dict[str, Any]) -> list[str]:
    """Exclusion and warning notes an analysis put in a sidecar (any key naming an exclusion or a warning)."""
    notes: list[str] = []
    for key, value in sidecar.items():
        if not re.search(r"exclu|reject|warning|dropped|skipped", str(key), flags=re.IGNORECASE):
            continue
        if isinstance(value, dict) and "Description" in value:  # a column description, not a note
            continue
        if value in (None, "", [], {}, False):
            continue
        if isinstance(value, (list, tuple)):
            notes.extend(f"{key}: {_short(v)}" for v in value)
        elif isinstance(value, dict):
            notes.extend(f"{key} {k}: {_short(v)}" for k, v in value.items())
        else:
            notes.append(f"{key}: {_short(value)}")
    return notes


_TRUE = {"true", "1", "yes", "y"}


def table_exclusions(path: Path) -> list[str]:
    """Rows a table marks as excluded (a column named like ``*excluded*`` is true), with the row's reason.

    Analyses record exclusions as table rows too (e.g. a session censored beyond the limit); each such row becomes
    one note naming its identifying columns (session, run, block...) and its reason column when there is one.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    if len(lines) < 2:
        return []
    header = lines[0].split("\t")
    flags = [i for i, c in enumerate(header) if re.search(r"exclu", c, flags=re.IGNORECASE)]
    if not flags:
        return []
    reasons = [i for i, c in enumerate(header) if re.search(r"reason|why|note", c, flags=re.IGNORECASE)]
    ids = [i for i, c in enumerate(header) if re.search(r"^(participant|session|ses|run|block|acq|task|"
                                                         r"condition|cohort)(_id|_label)?$", c, flags=re.IGNORECASE)]
    notes: list[str] = []
    seen: set[str] = set()
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) != len(header) or not any(cells[i].strip().lower() in _TRUE for i in flags):
            continue
        where = ", ".join(f"{header[i]} {cells[i]}" for i in ids if cells[i] not in ("", "n/a"))
        why = "; ".join(cells[i] for i in reasons if cells[i] not in ("", "n/a"))
        note = f"excluded ({where})" if where else "excluded"
        note += f": {why}" if why else ""
        if note not in seen:
            seen.add(note)
            notes.append(note)
    return notes


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
