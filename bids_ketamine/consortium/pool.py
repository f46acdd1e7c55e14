"""The coordinating site: pool several site exports into one output folder, then run the usual group level there.

Order, each step before anything is copied: every export's manifest is read and every file's SHA-256 verified
(a changed byte is refused, naming the export and the file); site names and participant labels must be unique
across exports; the settings that made the features must agree (``compat``); then BIDS validation of what the
group level really reads: each export (a BIDS-Derivatives dataset) and the coordinating BIDS folder's tables
(``participants.tsv``, ``phenotype/``, ``sessions.tsv``) in a view where every pooled participant has its folder,
since its data are the exported features, not images. Only then are the files copied into ``OUTPUT_DIR`` (the
tables as they are, the sites' run records under ``logs/sites/<site>/``) and ``logs/pooled_exports.json`` records
the sites, their participants, their manifests' checksums and the accepted differences, for the methods.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.consortium.compat import PoolingParams, TableSettings, check_compatible, table_fields
from bids_ketamine.consortium.export import (EXPORT_FORMAT, EXPORTED_SUFFIXES, MANIFEST, POOLED_FEATURE, TABLE_NAME,
                                             sha256_of)
from bids_ketamine.errors import BadDataError, InvalidBidsError, MissingInputError, UsageError

LOG = logging.getLogger("bids_ketamine")
POOL_RECORD = "pooled_exports.json"
#: Files of the coordinating BIDS folder that the group level reads (besides sub-*/sub-*_sessions.tsv).
COORDINATOR_FILES = ("dataset_description.json", "participants.tsv", "participants.json", "README", "README.md",
                     "README.rst", "README.txt", "CHANGES", "LICENSE", ".bidsignore")


@dataclass
class SiteExport:
    """One site's export, read and (after ``verify``) checked against its manifest."""

    root: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    site: str = ""
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def participants(self) -> list[str]:
        return list(self.manifest.get("Participants") or [])


def read_export(root: str | Path) -> SiteExport:
    root = Path(root).absolute()
    path = root / MANIFEST
    if not path.is_file():
        raise MissingInputError(f"not a site export ({MANIFEST} is missing)", path=root,
                                fix="give folders written by `bids-ketamine export` to --participant-outputs")
    raw = path.read_bytes()
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadDataError(f"the export manifest is not valid JSON ({exc})", path=path,
                           fix="copy the export again from the site") from exc
    if not isinstance(manifest, dict) or manifest.get("ExportFormat") != EXPORT_FORMAT or \
            not isinstance(manifest.get("Files"), dict) or not manifest.get("Site"):
        raise BadDataError("not a bids_ketamine site export manifest", path=path,
                           fix="give folders written by `bids-ketamine export`")
    return SiteExport(root=root, manifest=manifest, manifest_sha256=hashlib.sha256(raw).hexdigest(),
                      site=str(manifest["Site"]), files=dict(manifest["Files"]))


def verify(export: SiteExport) -> None:
    """Every file of the manifest present with its size and SHA-256 (``BadDataError`` naming the first that is not)."""
    for rel, entry in sorted(export.files.items()):
        path = export.root / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            raise BadDataError(f"site {export.site}: the manifest names a file outside the export ({rel})",
                               path=export.root / MANIFEST, fix="copy the export again from the site")
        if not path.is_file():
            raise MissingInputError(f"site {export.site}: a file of the export is missing ({rel})", path=path,
                                    fix="copy the whole export folder again from the site")
        if path.stat().st_size != entry.get("bytes") or sha256_of(path) != entry.get("sha256"):
            raise BadDataError(f"site {export.site}: checksum mismatch, the file changed after the export", path=path,
                               fix="copy the export again from the site (or ask the site to export again)")


def table_settings(export: SiteExport) -> list[TableSettings]:
    """The settings of every pooled feature table of the export, read from its (verified) sidecar."""
    found = []
    for rel in sorted(export.files):
        match = TABLE_NAME.match(Path(rel).name)
        if not rel.startswith("sub-") or not match or not POOLED_FEATURE.search(rel):
            continue
        table = export.root / rel
        sidecar_path = table.with_suffix(".json")
        verified = sidecar_path.relative_to(export.root).as_posix() in export.files
        sidecar = json.loads(sidecar_path.read_text()) if verified else {}
        analysis = EXPORTED_SUFFIXES[match.group(2)]
        found.append(TableSettings(site=export.site, participant=match.group(1), analysis=analysis, table=str(table),
                                   fields=table_fields(analysis, table, sidecar)))
    return found


def pooling_params(cfg) -> PoolingParams:
    from bids_ketamine.config import build_model

    return build_model(PoolingParams, cfg.analysis_sections.get("pooling", {}) or {}, "pooling",
                       cfg.config_path)  # type: ignore[return-value]


def read_exports(paths: list[Path]) -> list[SiteExport]:
    """Read, verify and cross-check the exports (unique sites and participants)."""
    if len({Path(p).absolute() for p in paths}) < len(paths):
        raise UsageError("the same export is given twice to --participant-outputs", fix="give each export once")
    exports = [read_export(p) for p in paths]
    sites: dict[str, Path] = {}
    owner: dict[str, str] = {}
    for export in exports:
        if export.site in sites:
            raise UsageError(f"two exports are from site {export.site}", path=export.root,
                             fix=f"give one export per site (the other is {sites[export.site]})")
        sites[export.site] = export.root
        verify(export)
        for subject in export.participants:
            if subject in owner:
                raise BadDataError(f"participant sub-{subject} is in the exports of sites {owner[subject]} and "
                                   f"{export.site}; labels must be unique across sites", path=export.root,
                                   fix="give the participants of one site other labels (BIDS) and re-export")
            owner[subject] = export.site
    return exports


# ------------------------------------------------------------------------------------------------- validation
def coordinator_view(bids_dir: Path, subjects: list[str], view: Path) -> Path:
    """Symlinks to what the group level reads from ``bids_dir``, with a folder for every pooled participant."""
    view.mkdir(parents=True, exist_ok=True)
    for name in COORDINATOR_FILES:
        if (bids_dir / name).is_file():
            os.symlink(bids_dir / name, view / name)
    if (bids_dir / "phenotype").is_dir():
        os.symlink(bids_dir / "phenotype", view / "phenotype")
    present = {p.name.removeprefix("sub-") for p in bids_dir.glob("sub-*") if p.is_dir()}
    for subject in sorted(set(subjects) | present):
        folder = view / f"sub-{subject}"
        folder.mkdir()
        for table in (bids_dir / f"sub-{subject}").glob(f"sub-{subject}_sessions.*"):
            os.symlink(table, folder / table.name)
    return view


def validate_pooled_inputs(bids_dir: Path, exports: list[SiteExport], work_dir: Path) -> None:
    """bids-validator-deno on every export and on the coordinator's tables with the pooled participants."""
    from bids_ketamine.validation import validate_dataset, validation_errors

    for export in exports:
        LOG.info("validating the export of site %s with bids-validator-deno", export.site)
        validate_dataset(export.root)
    subjects = sorted({s for e in exports for s in e.participants})
    work_dir.mkdir(parents=True, exist_ok=True)
    view = Path(tempfile.mkdtemp(prefix="pooled_bids_view_", dir=work_dir))
    try:
        LOG.info("validating %s (participants.tsv and the tables the group level reads) with %d pooled "
                 "participants", bids_dir, len(subjects))
        errors = validation_errors(coordinator_view(bids_dir, subjects, view))
    finally:
        shutil.rmtree(view, ignore_errors=True)
    if errors:
        first = errors[0]
        codes = sorted({e.get("code", "?") for e in errors})
        hint = (" (participants.tsv must list exactly the pooled participants and the sub-* folders of BIDS_DIR)"
                if "PARTICIPANT_ID_MISMATCH" in codes else "")
        raise InvalidBidsError(f"not valid BIDS with the pooled participants: {len(errors)} error(s) "
                               f"({', '.join(codes[:4])}); first: {first.get('code')} at "
                               f"{first.get('location', '?')}{hint}", path=bids_dir,
                               fix="correct participants.tsv (and its JSON) or the exports given")


# ------------------------------------------------------------------------------------------------- copying
def _foreign_outputs(output_dir: Path, incoming: set[str]) -> list[str]:
    """Participant files already in ``output_dir`` that no export brings (they would be pooled unchecked)."""
    found = []
    for path in sorted(output_dir.glob("sub-*/**/*")):
        rel = path.relative_to(output_dir).as_posix()
        if path.is_file() and rel not in incoming:
            found.append(rel)
    return found


def copy_exports(exports: list[SiteExport], output_dir: Path, accepted: dict[str, Any]) -> Path:
    """Copy the verified files into ``output_dir``; write ``logs/pooled_exports.json``; return its path."""
    from bids_ketamine.io.derivatives import atomic_write_bytes, atomic_write_text, dumps_json

    incoming = {rel for e in exports for rel in e.files if rel.startswith("sub-")}
    foreign = _foreign_outputs(output_dir, incoming) if output_dir.is_dir() else []
    if foreign:
        raise UsageError(f"the output folder already holds participant outputs that no export brings ({foreign[0]}"
                         f"{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}): pooled and unchecked "
                         "features would mix", path=output_dir, fix="pool into a new, empty output folder")
    sites = []
    for export in exports:
        records = []
        for rel in sorted(export.files):
            data = (export.root / rel).read_bytes()
            if rel.startswith("sub-"):
                atomic_write_bytes(output_dir / rel, data)
            elif rel.startswith("logs/"):
                name = Path(rel).name
                atomic_write_bytes(output_dir / "logs" / "sites" / export.site / name, data)
                records.append(name)
        atomic_write_bytes(output_dir / "logs" / "sites" / export.site / MANIFEST,
                           (export.root / MANIFEST).read_bytes())
        sites.append({"site": export.site, "export": export.root.name, "manifest_sha256": export.manifest_sha256,
                      "participants": export.participants, "analyses": export.manifest.get("Analyses", {}),
                      "generated_by": export.manifest.get("GeneratedBy", {}), "run_records": records})
    record = {"sites": sites, "accepted_differences": accepted}
    path = output_dir / "logs" / POOL_RECORD
    atomic_write_text(path, dumps_json(record))
    return path


def pool_into_output(cfg) -> Path:
    """``group --participant-outputs EXPORT...``: everything before the group analyses (see the module docstring)."""
    params = pooling_params(cfg)
    exports = read_exports(list(cfg.participant_outputs))
    settings = [s for e in exports for s in table_settings(e)]
    accepted = check_compatible(settings, params.accept_differences)
    for name, sites in accepted.items():
        LOG.warning("pooling: accepted difference in %s: %s", name,
                    "; ".join(f"site {s}: {', '.join(v)}" for s, v in sites.items()))
    if cfg.skip_bids_validation:
        LOG.info("BIDS validation skipped (--skip-bids-validation)")
    else:
        validate_pooled_inputs(cfg.bids_dir, exports, cfg.work_dir)
    path = copy_exports(exports, cfg.output_dir, accepted)
    LOG.info("pooled %d participants from %d site exports (%s) into %s",
             sum(len(e.participants) for e in exports), len(exports), ", ".join(e.site for e in exports),
             cfg.output_dir)
    return path
