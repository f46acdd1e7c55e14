"""The one writer of every derivative: entity-based names, atomic files, described tables, staged participants.

Why one writer: parallel participant jobs share an output folder, so every file is written under a temporary name
and renamed into place, dataset-level files are updated under a file lock, and a participant's outputs for one
analysis are staged and moved into place only when the analysis succeeded (a failure leaves nothing partial).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import TemporaryFailure

#: Order of entities in file names (BIDS order, then the derivative entities we use).
ENTITY_ORDER = (
    "sub", "ses", "task", "acq", "nuc", "voi", "ce", "rec", "dir", "run", "echo", "space", "cohort", "res", "den", "atlas",
    "seg", "roi", "label", "hemi", "model", "stat", "contrast", "block", "desc",
)
#: Patterns of our result tables and files that the BIDS specification does not define (see .bidsignore).
#: Folders are written without a trailing slash: bids-validator-deno ignores patterns that end in "/".
BIDSIGNORE_PATTERNS = (
    "*_morph.tsv", "*_morph.json", "*_relmat.tsv", "*_relmat.json", "*_timeseries.tsv", "*_timeseries.json",
    "*_gbc.tsv", "*_gbc.json", "*_mrsfit.tsv", "*_mrsfit.json", "*_stats.tsv", "*_stats.json",
    "*_mrsdynamic.tsv", "*_mrsdynamic.json",
    "*_predictions.tsv", "*_predictions.json", "*_metrics.tsv", "*_metrics.json", "*_weights.tsv",
    "*_weights.json", "*_scores.tsv", "*_scores.json", "*_components.tsv", "*_components.json", "*_null.tsv",
    "*_null.json", "*_inventory.tsv", "*_inventory.json", "group", "logs", "figures", "*.html", "*.md",
    "*.svg", "*.png", ".bids_ketamine",
)
_STATE_DIR = ".bids_ketamine"
#: Names of our staging folders: sub-<label>_<analysis>_<8 hex digits>.
_STAGE_NAME = re.compile(r"^sub-[A-Za-z0-9]+_[a-z]+_[0-9a-f]{8}$")


def _lock_of(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _release(lock) -> None:
    """Delete a held lock's file, then release it (deleting while held: no other process can lock it meanwhile)."""
    try:
        Path(lock.lock_file).unlink(missing_ok=True)
    except OSError:
        pass
    lock.release()


def _check_label(value: str, key: str) -> str:
    value = str(value)
    if not value or not value.replace("+", "").isalnum():
        raise ValueError(f"entity {key}-{value!r} must be alphanumeric (BIDS labels allow no '_', '-', '/', '.')")
    return value


def bids_name(entities: Mapping[str, str | None], suffix: str, extension: str) -> str:
    """File name from entities in BIDS order, e.g. ``sub-01_ses-a_desc-gbc_relmat.tsv``."""
    unknown = set(entities) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}; known: {ENTITY_ORDER}")
    parts = [f"{k}-{_check_label(entities[k], k)}" for k in ENTITY_ORDER if entities.get(k) not in (None, "")]
    return "_".join([*parts, suffix]) + extension


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _temp_prefix(target: Path) -> str:
    """``.<name>.tmp-<host>-<pid>-``: whose temporary file it is, so a later run can tell a killed writer's."""
    return f".{target.name}.tmp-{_host()}-{os.getpid()}-"


_TEMP_NAME = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[^/]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(root: Path) -> list[str]:
    """Remove our atomic-write temporaries whose writer is dead (same host, no such process): what ``kill -9``
    during a write leaves. Temporaries of other hosts (a shared file system) and of live processes stay."""
    removed: list[str] = []
    host = _host()
    work = Path(root) / _STATE_DIR / "work"
    for path in sorted(Path(root).rglob(".*.tmp-*")):
        match = _TEMP_NAME.match(path.name)
        if not match or not path.is_file() or path.is_relative_to(work):
            continue
        if match.group("host") == host and not _alive(int(match.group("pid"))):
            path.unlink(missing_ok=True)
            removed.append(path.relative_to(root).as_posix())
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj: Any) -> str:
    """Stable JSON (sorted keys off to keep the reader's order, indent 2, trailing newline)."""
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class DerivativesWriter:
    """Writes BIDS-Derivatives into ``root``.

    ``dataset_links`` maps a name (``raw``, ``fmriprep``...) to a dataset root; source files under those roots are
    recorded as BIDS URIs (``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        dataset_links: Mapping[str, str | os.PathLike] | None = None,
        container: Mapping[str, str] | None = None,
        _write_root: Path | None = None,
    ):
        self.root = Path(root).absolute()
        self.dataset_links = {k: Path(v).absolute() for k, v in (dataset_links or {}).items()}
        self.container = dict(container or {})
        self._write_root = _write_root or self.root

    # ---------------------------------------------------------------- dataset-level files
    @property
    def state_dir(self) -> Path:
        return self.root / _STATE_DIR

    @contextmanager
    def dataset_lock(self, timeout: float = 600.0) -> Iterator[None]:
        """Exclusive lock for dataset-level files that parallel participant jobs share."""
        from filelock import FileLock, Timeout

        lock_dir = self.state_dir / "locks"
        from bids_ketamine.io.failures import writing

        with writing(self.root):
            lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(lock_dir / "dataset.lock"), timeout=timeout):
                yield
        except Timeout as exc:
            raise TemporaryFailure(f"timed out after {timeout:.0f} s waiting for the dataset lock",
                                   path=lock_dir / "dataset.lock",
                                   fix="re-run when the other jobs are done, or remove a stale lock") from exc

    def init_dataset(self) -> None:
        """Create (or update) ``dataset_description.json`` and ``.bidsignore``; safe for concurrent jobs."""
        from bids_ketamine.io.failures import writing

        with writing(self.root):  # read-only, full or forbidden: exit 73 naming the folder and its free space
            self.root.mkdir(parents=True, exist_ok=True)
        with writing(self.root), self.dataset_lock():
            desc_path = self.root / "dataset_description.json"
            description = self.dataset_description()
            if desc_path.exists():
                try:
                    old = json.loads(desc_path.read_text())
                except json.JSONDecodeError:
                    old = {}
                # keep source datasets of earlier runs (a participant job per dataset subset)
                known = {json.dumps(s, sort_keys=True) for s in description["SourceDatasets"]}
                for src in old.get("SourceDatasets", []):
                    if json.dumps(src, sort_keys=True) not in known:
                        description["SourceDatasets"].append(src)
                description["DatasetLinks"] = {**old.get("DatasetLinks", {}), **description["DatasetLinks"]}
            atomic_write_text(desc_path, dumps_json(description))
            ignore_path = self.root / ".bidsignore"
            existing = ignore_path.read_text().splitlines() if ignore_path.exists() else []
            lines = list(dict.fromkeys([*existing, *BIDSIGNORE_PATTERNS]))
            atomic_write_text(ignore_path, "\n".join(lines) + "\n")

    def dataset_description(self) -> dict[str, Any]:
        generated: dict[str, Any] = {
            "Name": "bids_ketamine",
            "Version": __version__,
            "CodeURL": "https://github.com/bids-ketamine/bids_ketamine",
            "Description": "Ketamine response: structural prediction, connectivity heterogeneity, fMRS",
        }
        if self.container:
            generated["Container"] = self.container
        return {
            "Name": "bids_ketamine outputs",
            "BIDSVersion": "1.10.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated],
            "SourceDatasets": [
                {"URL": f"file://{path}", "Version": "unknown"} for _, path in sorted(self.dataset_links.items())
            ],
            "DatasetLinks": {name: f"file://{path}" for name, path in sorted(self.dataset_links.items())},
        }

    # ---------------------------------------------------------------- names
    def relpath(self, entities: Mapping[str, str | None], suffix: str, extension: str,
                datatype: str | None = None) -> Path:
        """Path relative to the output root: ``sub-X/[ses-Y/]datatype/name`` or ``group/[datatype/]name``."""
        name = bids_name(entities, suffix, extension)
        if entities.get("sub"):
            folder = Path(f"sub-{entities['sub']}")
            if entities.get("ses"):
                folder /= f"ses-{entities['ses']}"
        else:
            folder = Path("group")
        if datatype:
            folder /= datatype
        return folder / name

    def path(self, entities: Mapping[str, str | None], suffix: str, extension: str,
             datatype: str | None = None) -> Path:
        """Final absolute path of a derivative (where it will be once committed)."""
        return self.root / self.relpath(entities, suffix, extension, datatype)

    def _target(self, rel: Path) -> Path:
        return self._write_root / rel

    def source_uri(self, path: str | os.PathLike) -> str:
        """BIDS URI of a source file (``bids:<dataset>:<relative path>``), or ``bids::`` for our own outputs."""
        path = Path(path).absolute()
        for name, root in sorted(self.dataset_links.items(), key=lambda kv: -len(str(kv[1]))):
            if path.is_relative_to(root):
                return f"bids:{name}:{path.relative_to(root).as_posix()}"
        if path.is_relative_to(self.root):
            return f"bids::{path.relative_to(self.root).as_posix()}"
        return path.as_uri()

    def _provenance(self, sources: Iterable[str | os.PathLike], parameters: Mapping[str, Any] | None) -> dict:
        meta: dict[str, Any] = {
            "Sources": [self.source_uri(s) for s in sources],
            "GeneratedBy": [{"Name": "bids_ketamine", "Version": __version__}],
        }
        if parameters:
            meta["Parameters"] = dict(parameters)
        return meta

    # ---------------------------------------------------------------- writers
    def write_table(
        self,
        table: Any,
        *,
        entities: Mapping[str, str | None],
        suffix: str,
        columns: Mapping[str, str | Mapping[str, Any]],
        sources: Iterable[str | os.PathLike] = (),
        datatype: str | None = None,
        description: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        float_format: str = "%.6g",
    ) -> Path:
        """Write a pandas DataFrame as TSV with a sidecar that describes every column.

        ``columns`` maps each column to a description string or a BIDS column object
        (``{"Description": ..., "Units": ..., "Levels": ...}``); a column without one is a programming error.
        """
        missing = [c for c in table.columns if c not in columns]
        if missing:
            raise ValueError(f"columns without a description: {missing}")
        rel = self.relpath(entities, suffix, ".tsv", datatype)
        text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format=float_format, lineterminator="\n")
        atomic_write_text(self._target(rel), text)
        sidecar: dict[str, Any] = {}
        if description:
            sidecar["Description"] = description
        for col in table.columns:
            spec = columns[col]
            sidecar[str(col)] = {"Description": spec} if isinstance(spec, str) else dict(spec)
        sidecar.update(self._provenance(sources, parameters))
        if metadata:
            sidecar.update(metadata)
        atomic_write_text(self._target(rel.with_suffix(".json")), dumps_json(sidecar))
        return self.root / rel

    def write_nifti(
        self,
        img: Any,
        *,
        entities: Mapping[str, str | None],
        suffix: str,
        sources: Iterable[str | os.PathLike] = (),
        datatype: str | None = None,
        parameters: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        extension: str = ".nii.gz",
    ) -> Path:
        """Write a nibabel image as ``.nii.gz`` (or ``extension``, e.g. ``.dscalar.nii`` for CIFTI) with a
        provenance sidecar."""
        rel = self.relpath(entities, suffix, extension, datatype)
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=extension, dir=target.parent)
        os.close(fd)
        try:
            img.to_filename(tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        sidecar = self._provenance(sources, parameters)
        if metadata:
            sidecar.update(metadata)
        atomic_write_text(target.with_name(target.name[: -len(extension)] + ".json"), dumps_json(sidecar))
        return self.root / rel

    def write_json(self, obj: Mapping[str, Any], *, entities: Mapping[str, str | None], suffix: str,
                   datatype: str | None = None) -> Path:
        rel = self.relpath(entities, suffix, ".json", datatype)
        atomic_write_text(self._target(rel), dumps_json(obj))
        return self.root / rel

    def write_figure(self, fig: Any, *, entities: Mapping[str, str | None], suffix: str,
                     extension: str = ".svg") -> Path:
        """Save a matplotlib figure under ``sub-X/figures/`` (or ``group/figures/``) and close it."""
        rel = self.relpath(entities, suffix, extension, "figures")
        if entities.get("ses"):  # figures live directly in sub-X/figures, as fMRIPrep's do
            rel = Path(f"sub-{entities['sub']}") / "figures" / rel.name
        target = self._target(rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=extension, dir=target.parent)
        os.close(fd)
        try:
            import matplotlib

            # a fixed salt for the SVG element ids (random per process otherwise): same figure, same bytes
            with matplotlib.rc_context({"svg.hashsalt": "bids_ketamine"}):
                fig.savefig(tmp, bbox_inches="tight", metadata={"Date": None} if extension == ".svg" else None)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        finally:
            import matplotlib.pyplot as plt

            plt.close(fig)
        return self.root / rel

    # ---------------------------------------------------------------- participant staging and resume
    def _done_marker(self, subject: str, analysis: str) -> Path:
        return self.state_dir / "done" / f"sub-{subject}_{analysis}.json"

    def is_done(self, subject: str, analysis: str) -> bool:
        """True when this participant's analysis finished in an earlier run (so a re-run can skip it)."""
        return self._done_marker(subject, analysis).exists()

    def forget(self, subject: str, analysis: str) -> None:
        self._done_marker(subject, analysis).unlink(missing_ok=True)

    @contextmanager
    def staged(self, subject: str, analysis: str) -> Iterator[DerivativesWriter]:
        """Stage one participant's outputs of one analysis; move them into place only if the block succeeds.

        On an exception the staging folder is removed and nothing of this participant's attempt remains. While
        the block runs, this process holds ``<staging folder>.lock``: a run killed with ``kill -9`` leaves its
        folder behind, unlocked, and the next run removes it (``remove_stale_staging``).
        """
        from filelock import FileLock

        from bids_ketamine.io.failures import writing

        stage = self.state_dir / "staging" / f"sub-{subject}_{analysis}_{uuid.uuid4().hex[:8]}"
        with writing(self.root):
            stage.parent.mkdir(parents=True, exist_ok=True)
            owner = FileLock(str(_lock_of(stage)), timeout=0)
            owner.acquire()  # before the folder exists: a folder without a held lock is always a leftover
            try:
                stage.mkdir()
            except BaseException:
                _release(owner)
                raise
        staged = DerivativesWriter(self.root, dataset_links=self.dataset_links, container=self.container,
                                   _write_root=stage)
        try:
            try:
                yield staged
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            moved = []
            with writing(self.root):
                for src in sorted(p for p in stage.rglob("*") if p.is_file()):
                    rel = src.relative_to(stage)
                    dst = self.root / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                    moved.append(rel.as_posix())
                shutil.rmtree(stage, ignore_errors=True)
                atomic_write_text(self._done_marker(subject, analysis), dumps_json({"outputs": moved}))
        finally:
            _release(owner)

    def remove_stale_staging(self) -> list[str]:
        """Remove the staging folders that killed runs left (ours by name, and only those no live job locks).

        Returns the removed folders (relative to the output folder), for the run summary.
        """
        from filelock import FileLock, Timeout

        folder = self.state_dir / "staging"
        removed: list[str] = []
        if not folder.is_dir():
            return removed
        names = {p.name[: -len(".lock")] if p.name.endswith(".lock") else p.name for p in folder.iterdir()}
        for name in sorted(n for n in names if _STAGE_NAME.match(n)):
            stage = folder / name
            lock = FileLock(str(_lock_of(stage)), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                continue  # a live job is writing there
            except OSError:
                continue  # cannot even lock it (read-only folder): leave it
            try:
                if stage.exists():
                    shutil.rmtree(stage, ignore_errors=True)
                    removed.append(stage.relative_to(self.root).as_posix())
            finally:
                _release(lock)
        return removed
