"""A site's export: what may leave the site that scanned the images, with a manifest of checksums.

What goes in: per participant, the tables the group level reads and the QC tables (``EXPORTED_SUFFIXES``), each
with its JSON sidecar stripped of identifying fields and paths (``sanitize``); the site's participant-level run
records (``logs/``), stripped the same way; a ``dataset_description.json`` and ``.bidsignore`` (the export is a
BIDS-Derivatives dataset that ``bids-validator-deno`` accepts); and ``export_manifest.json`` with the SHA-256 and
size of every file, the site's name and the participants and analyses it holds.

What stays: every image (modulated GM maps, BOLD-derived maps), figures and reports, connectivity matrices and
parcel time series (not needed to pool, and closer to the data), the inventory (it names the site's files) and
the site's participants.tsv (the coordinating site keeps the design in its own participants.tsv).

The export is deterministic: the same participant outputs give byte-identical files and manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.__about__ import __version__
from bids_ketamine.consortium.sanitize import sanitize
from bids_ketamine.errors import CannotCreateOutputError, MissingInputError, NoMatchError, UsageError

MANIFEST = "export_manifest.json"
EXPORT_FORMAT = "bids_ketamine site export"
FORMAT_VERSION = 1
#: Table suffixes that leave the site: features the group level pools, and participant QC tables.
EXPORTED_SUFFIXES = {"morph": "structural", "gbc": "connectivity", "mrsfit": "spectroscopy", "stats": "connectivity"}
TABLE_NAME = re.compile(r"^sub-([A-Za-z0-9]+)_.*_([A-Za-z0-9]+)\.tsv$")
#: The tables the group level pools (their settings are compared before pooling; QC tables travel along).
POOLED_FEATURE = re.compile(r"(_morph|_desc-[0-9a-zA-Z]+minus[0-9a-zA-Z]+_gbc|_mrsfit)\.tsv$")
_SITE = re.compile(r"^[A-Za-z0-9]+$")
#: Files an export adds to the derivative layout; the validator must ignore them.
EXPORT_BIDSIGNORE = (MANIFEST, "logs", "*_morph.tsv", "*_morph.json", "*_gbc.tsv", "*_gbc.json", "*_mrsfit.tsv",
                     "*_mrsfit.json", "*_stats.tsv", "*_stats.json")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ExportResult:
    """Where the export went and what it holds."""

    root: Path
    manifest: Path
    participants: list[str]
    analyses: dict[str, list[str]]
    removed_fields: list[str] = field(default_factory=list)
    bytes: int = 0


def exported_tables(output_dir: Path, participants: list[str] | None = None,
                    analyses: list[str] | None = None) -> list[tuple[str, str, Path]]:
    """``(participant, analysis, table)`` for every table of the participant outputs that may leave the site."""
    found = []
    for path in sorted(Path(output_dir).glob("sub-*/**/*.tsv")):
        match = TABLE_NAME.match(path.name)
        if not match or match.group(2) not in EXPORTED_SUFFIXES:
            continue
        subject, analysis = match.group(1), EXPORTED_SUFFIXES[match.group(2)]
        if path.relative_to(output_dir).parts[0] != f"sub-{subject}":
            continue
        if participants and subject not in participants or analyses and analysis not in analyses:
            continue
        found.append((subject, analysis, path))
    return found


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        from bids_ketamine.errors import BadDataError

        raise BadDataError(f"unreadable JSON ({exc})", path=path, fix="re-run the participant level that wrote it") \
            from exc


def export_site(output_dir: str | Path, export_dir: str | Path, site: str, *, participants: list[str] | None = None,
                analyses: list[str] | None = None) -> ExportResult:
    """Pack a site's participant-level outputs (``output_dir``) into ``export_dir`` (created; must be new or an
    earlier export of the same site, which is replaced)."""
    output_dir, export_dir = Path(output_dir).absolute(), Path(export_dir).absolute()
    if not _SITE.match(site or ""):
        raise UsageError(f"invalid site name {site!r}", fix="give --site a plain alphanumeric name (e.g. siteA)")
    if not (output_dir / "dataset_description.json").is_file():
        raise MissingInputError("not a bids_ketamine output folder (no dataset_description.json)", path=output_dir,
                                fix="give the OUTPUT_DIR of the site's participant level")
    if export_dir == output_dir or export_dir.is_relative_to(output_dir) or output_dir.is_relative_to(export_dir):
        raise UsageError("the export folder must lie outside the output folder (and not contain it)",
                         path=export_dir, fix="choose a separate folder for the export")
    if export_dir.exists() and any(export_dir.iterdir()) and not (export_dir / MANIFEST).is_file():
        raise UsageError("the export folder exists and is not an earlier export", path=export_dir,
                         fix="give a new or empty folder")
    tables = exported_tables(output_dir, participants, analyses)
    if not tables:
        raise NoMatchError("no participant feature table to export (sub-*/**/*_morph|gbc|mrsfit|stats.tsv)",
                           path=output_dir, fix="run the participant level first, or check --participant-label "
                                                "and --analyses")
    if participants:
        absent = sorted(set(participants) - {s for s, _, _ in tables})
        if absent:
            raise NoMatchError(f"no exported table for {', '.join('sub-' + s for s in absent)}", path=output_dir,
                               fix="check --participant-label (the participant level must have finished for them)")
    removed: set[str] = set()
    files: dict[str, bytes] = {}
    for _, _, table in tables:
        rel = table.relative_to(output_dir).as_posix()
        files[rel] = table.read_bytes()
        sidecar = table.with_suffix(".json")
        if sidecar.is_file():
            files[sidecar.relative_to(output_dir).as_posix()] = _json_bytes(sanitize(_read_json(sidecar), removed))
    for record in sorted((output_dir / "logs").glob("run-*_participant_*.json")):
        files[f"logs/{record.name}"] = _json_bytes(sanitize(_read_json(record), removed))
    description = _read_json(output_dir / "dataset_description.json")
    description = sanitize({k: v for k, v in description.items() if k not in ("SourceDatasets", "DatasetLinks")},
                           removed)
    description["Name"] = f"bids_ketamine features exported by site {site}"
    files["dataset_description.json"] = _json_bytes(description)
    files[".bidsignore"] = ("\n".join(EXPORT_BIDSIGNORE) + "\n").encode()

    subjects = sorted({s for s, _, _ in tables})
    by_analysis: dict[str, set[str]] = {}
    for subject, analysis, _ in tables:
        by_analysis.setdefault(analysis, set()).add(subject)
    manifest = {
        "ExportFormat": EXPORT_FORMAT, "FormatVersion": FORMAT_VERSION, "Site": site,
        "GeneratedBy": {"Name": "bids_ketamine", "Version": __version__},
        "Participants": subjects,
        "Analyses": {a: sorted(s) for a, s in sorted(by_analysis.items())},
        "RemovedFields": sorted(removed),
        "Files": {rel: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for rel, data in sorted(files.items())},
    }
    _write_export(export_dir, files, _json_bytes(manifest))
    return ExportResult(root=export_dir, manifest=export_dir / MANIFEST, participants=subjects,
                        analyses=manifest["Analyses"], removed_fields=sorted(removed),
                        bytes=sum(len(d) for d in files.values()) + len(_json_bytes(manifest)))


def _write_export(export_dir: Path, files: dict[str, bytes], manifest: bytes) -> None:
    """All files into a temporary sibling folder, then swapped into place: an interrupted export leaves none."""
    staging = export_dir.with_name(f".{export_dir.name}.partial")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (staging / MANIFEST).write_bytes(manifest)
        if export_dir.exists():
            shutil.rmtree(export_dir)
        staging.rename(export_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise CannotCreateOutputError(f"cannot write the export ({exc.strerror or exc})", path=export_dir,
                                      fix="choose a writable folder with enough space") from exc


def describe(result: ExportResult) -> str:
    """One line for the terminal."""
    counts = ", ".join(f"{a} {len(s)}" for a, s in result.analyses.items())
    removed = f"; removed identifying fields: {', '.join(result.removed_fields)}" if result.removed_fields else ""
    return (f"export: {len(result.participants)} participants ({counts}), {result.bytes / 1024:.0f} kB in "
            f"{result.root}{removed}")
