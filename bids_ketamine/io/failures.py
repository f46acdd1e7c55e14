"""Operating-system and resource failures as documented exit codes, each one line naming the file or folder.

Why one place: a full disk, a read-only or over-quota output folder, a file the user cannot read, a truncated input
or an exhausted memory surface as ``OSError``/``EOFError``/``MemoryError`` anywhere in the code. The readers at the
door and the writer map what they can; this module maps what escapes them, from the error and from where it
points (``describe``), so that "unexpected error" remains only for true bugs:

- cannot create or write an output or work file (no space, quota, read-only, permission): 73, naming the folder
  and the space left on its file system;
- an input that cannot be read or is truncated: 65 naming the file (66 when it vanished); when the error does not
  say which file (a decompressor's ``EOFError``), the participant's inputs are checked to find it;
- out of memory (``MemoryError``, or a worker process killed, as the kernel's OOM killer does): 75 with the
  participant and the ``--mem``/``--nprocs`` advice.
"""

from __future__ import annotations

import errno
import gzip
import os
import shutil
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from bids_ketamine.errors import (BadDataError, BidsKetamineError, CannotCreateOutputError, MissingInputError,
                                  TemporaryFailure)

#: errno values that mean "this folder cannot take the file" whatever the file is.
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
#: errno values that mean "not allowed" (an output when the path is ours, else an unreadable input).
PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
#: Advice for memory failures (one place, so every message gives the same).
MEMORY_FIX = ("give the job more memory (--mem, and the container's or scheduler's limit) or run fewer analyses "
              "at once (--nprocs, --omp-nthreads), then re-run: finished participants are kept")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_space(folder: str | Path) -> str:
    """Space left on the file system of ``folder`` (or of its nearest existing parent), for messages."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return f"{human_bytes(shutil.disk_usage(path).free)} free"
    except OSError:
        return "free space unknown"


def _fix_for(code: int | None, what: str) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"free space (or raise the quota) on that file system, or choose another {what}, then re-run: "
                "finished participants are kept")
    if code == errno.EROFS:
        return f"the file system is read-only: choose a writable {what}"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"a file stands where a folder must be: remove it or choose another {what}"
    if code in PERMISSION_ERRNOS:
        return f"make the folder writable for this user (uid {os.getuid()}) or choose another {what}"
    return f"check the {what} (disk, mount, permissions), then re-run: finished participants are kept"


def output_error(exc: OSError, folder: str | Path, what: str = "output_dir") -> CannotCreateOutputError:
    """Exit 73 for an OSError while creating or writing files under ``folder``."""
    folder = Path(folder)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return CannotCreateOutputError(f"cannot write here ({reason}; {free_space(folder)} on its file system)",
                                   path=folder, fix=_fix_for(exc.errno, what))


@contextmanager
def writing(folder: str | Path, what: str = "output_dir") -> Iterator[None]:
    """Turn an OSError while writing under ``folder`` into exit 73 naming it and its free space."""
    try:
        yield
    except BidsKetamineError:
        raise
    except OSError as exc:
        raise output_error(exc, folder, what) from exc


def _under(path: Path, roots: Iterable[Path]) -> Path | None:
    path = Path(path).absolute()
    for root in roots:
        root = Path(root).absolute()
        if path == root or path.is_relative_to(root):
            return root
    return None


def input_paths(record: Any) -> list[Path]:
    """Every file path in a ParticipantInputs record (nested dataclasses, tuples and dicts), in a stable order."""
    found: list[Path] = []

    def walk(value: Any) -> None:
        if isinstance(value, Path):
            found.append(value)
        elif is_dataclass(value) and not isinstance(value, type):
            for f in fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(record)
    return list(dict.fromkeys(found))


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read in full (None when it can): unreadable, truncated gzip, short NIfTI."""
    try:
        if path.is_dir():
            return None
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                while handle.read(1 << 22):
                    pass
        else:
            with open(path, "rb") as handle:
                while handle.read(1 << 22):
                    pass
        if path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib
            import numpy as np

            img = nib.load(str(path))
            np.asanyarray(img.dataobj[..., :1] if len(img.shape) > 3 else img.dataobj)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
    except Exception as exc:  # nibabel's ImageFileError and relatives
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
    return None


def find_broken_input(paths: Iterable[Path]) -> tuple[Path, str] | None:
    """The first input that cannot be read in full, with the reason; None when all read."""
    for path in paths:
        if Path(path).exists():
            problem = _file_problem(Path(path))
            if problem:
                return Path(path), problem
    return None


def describe(exc: BaseException, *, outputs: Iterable[Path], inputs: Iterable[Path] = (),
             who: str = "") -> BidsKetamineError | None:
    """The documented error for an OS or resource failure, or None when ``exc`` is not one (a bug).

    ``outputs``: folders we write (output and work folders); ``inputs``: files the failing step reads (checked
    when the error does not name its file); ``who``: e.g. ``sub-01 structural`` for memory messages.
    """
    outputs = [Path(p) for p in outputs]

    def root_error(error: OSError, root: Path | None) -> CannotCreateOutputError:
        root = root or (outputs[0] if outputs else Path.cwd())
        what = "output_dir" if not outputs or root == outputs[0] else "work folder (-w/--work-dir)"
        return output_error(error, root, what)

    if isinstance(exc, BidsKetamineError):
        return exc
    if isinstance(exc, MemoryError):
        return TemporaryFailure(f"out of memory{' in ' + who if who else ''}", fix=MEMORY_FIX)
    if isinstance(exc, OSError):
        filename = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else None
        path = Path(filename).absolute() if filename else None
        ours = _under(path, outputs) if path is not None else None
        if ours is not None or (exc.errno in OUTPUT_ERRNOS and path is None):
            return root_error(exc, ours)
        if exc.errno in OUTPUT_ERRNOS:  # a write outside our folders (a cache under $HOME...)
            return output_error(exc, path.parent, "location (a writable HOME or cache folder, e.g. via "
                                                  "environment variables)")
        if path is not None:
            if exc.errno == errno.ENOENT:
                return MissingInputError("file not found (it vanished during the run?)", path=path,
                                         fix="check the dataset and its mounts, then re-run")
            reason = exc.strerror or str(exc)
            return BadDataError(f"cannot read the file ({reason})", path=path,
                                fix="check that it is readable (permissions, mount) or copy it again")
    if isinstance(exc, (OSError, EOFError, zlib.error)):
        broken = find_broken_input(inputs)
        if broken is not None:
            return BadDataError(f"cannot read the file ({broken[1]}); it is truncated or corrupt", path=broken[0],
                                fix="copy the file again, or re-run the tool that wrote it")
    return None


def killed_worker_error(who: str, exitcode: int | None) -> TemporaryFailure:
    """Exit 75 for a worker process that died without a status (the OOM killer sends SIGKILL)."""
    import signal

    how = "was killed"
    if exitcode is not None and exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    elif exitcode:
        how = f"ended with exit code {exitcode}"
    return TemporaryFailure(f"the process running {who} {how} before it finished (out of memory?)", fix=MEMORY_FIX)
