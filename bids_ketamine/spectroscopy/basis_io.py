"""Read basis sets that users bring: an LCModel ``.BASIS`` file, or a folder of per-metabolite text FIDs.

Both formats use LCModel's sign convention, the complex conjugate of NIfTI-MRS; the readers conjugate by default
so that the returned :class:`~bids_ketamine.spectroscopy.basis.BasisSet` is in the NIfTI-MRS convention (creatine
at 3.03 ppm, not at 6.3 ppm).

The ``.BASIS`` layout (LCModel manual, section on MAKEBASIS): a ``$SEQPAR`` namelist (``HZPPPM`` = spectrometer
frequency in MHz), a ``$BASIS1`` namelist (``BADELT`` = dwell time in s, ``NDATAB`` = number of complex points,
``FMTBAS`` = Fortran format of the numbers), then per metabolite an optional ``$NMUSED`` namelist, a ``$BASIS``
namelist (``METABO`` = name, ``ISHIFT`` = circular shift in points) and ``NDATAB`` complex numbers written as
interleaved real/imaginary pairs. Those numbers are the *spectrum* of the FID under the unitary discrete Fourier
transform (checked against the challenge's own text FIDs: ``fft(fid, 2n) / sqrt(2n)``). LCModel's MAKEBASIS
zero-fills the FID to twice its length, other writers (spant, Osprey) store the FID at its full length: the reader
inverts the transform and drops the second half only when it holds no signal (the zero filling), so a basis stored
at full length keeps every point.

The file's amplitude scale and its ppm reference are its own (a writer may normalise its FIDs, or centre them at
4.68 ppm); :func:`bids_ketamine.spectroscopy.basis.calibrate_basis` measures both on the basis's creatine.
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

import numpy as np

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.spectroscopy.basis import WATER_PPM, BasisSet

#: Fraction of the energy below which the second half of a basis FID counts as zero filling.
ZERO_FILL_ENERGY = 1e-8

_NAMELIST = re.compile(r"\$(\w+)(.*?)\$END", re.S | re.I)
_ASSIGN = re.compile(r"(\w+)\s*=\s*('(?:[^']|'')*'|[^=]*?)(?=,\s*\w+\s*=|,?\s*$)", re.S)


def _parse_namelist(body: str) -> dict[str, str]:
    """Key -> raw value text of one Fortran namelist body (strings without their quotes)."""
    out: dict[str, str] = {}
    for key, value in _ASSIGN.findall(body.strip()):
        value = value.strip().rstrip(",").strip()
        if value.startswith("'") and value.endswith("'"):
            value = value[1:-1].replace("''", "'")
        out[key.upper()] = value
    return out


def _float(nl: dict[str, str], key: str, path: Path, what: str) -> float:
    try:
        return float(nl[key].split()[0].replace("D", "E").replace("d", "e"))
    except (KeyError, ValueError, IndexError):
        raise BadDataError(
            f"LCModel basis file has no valid {key} ({what})", path=path, fix=f"write {key} in the file header"
        ) from None


def read_lcmodel_basis(
    path: str | PathLike, *, conjugate: bool = True, central_frequency: float | None = None
) -> BasisSet:
    """Read an LCModel ``.BASIS`` file into a :class:`BasisSet` (NIfTI-MRS convention unless ``conjugate=False``).

    ``central_frequency`` (MHz) overrides ``HZPPPM`` when the file's value is missing or not to be trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("LCModel basis file not found", path=path, fix="give the path of an existing .BASIS file")
    try:
        text = path.read_text(errors="strict")
    except (UnicodeDecodeError, OSError) as exc:
        raise BadDataError(f"cannot read LCModel basis file as text ({exc})", path=path,
                           fix="give an LCModel .BASIS text file") from None

    blocks = [(m.group(1).upper(), m.start(), m.end(), m.group(2)) for m in _NAMELIST.finditer(text)]
    header = {name: _parse_namelist(body) for name, _, _, body in blocks if name in ("SEQPAR", "BASIS1")}
    if "BASIS1" not in header:
        raise BadDataError("not an LCModel basis file: no $BASIS1 header", path=path,
                           fix="give a .BASIS file made by LCModel's MAKEBASIS")
    dwell = _float(header["BASIS1"], "BADELT", path, "dwell time")
    n_data = int(_float(header["BASIS1"], "NDATAB", path, "number of points"))
    if central_frequency is None:
        central_frequency = _float(header.get("SEQPAR", {}), "HZPPPM", path, "spectrometer frequency in MHz")
    if dwell <= 0 or n_data <= 0 or central_frequency <= 0:
        raise BadDataError(f"non-positive BADELT/NDATAB/HZPPPM ({dwell}, {n_data}, {central_frequency})", path=path,
                           fix="correct the basis file header")

    names: list[str] = []
    fids: list[np.ndarray] = []
    basis_blocks = [(s, e, body) for name, s, e, body in blocks if name == "BASIS"]
    if not basis_blocks:
        raise BadDataError("LCModel basis file holds no $BASIS metabolite block", path=path,
                           fix="give a complete .BASIS file")
    starts = [s for _, s, _, _ in blocks] + [len(text)]
    for s, e, body in basis_blocks:
        nl = _parse_namelist(body)
        name = nl.get("METABO") or nl.get("ID")
        if not name:
            raise BadDataError("a $BASIS block has no METABO name", path=path, fix="name every metabolite (METABO=)")
        nxt = min(x for x in starts if x >= e)
        numbers = text[e:nxt].replace("D", "E").replace("d", "e").split()
        try:
            values = np.array(numbers, dtype=float)
        except ValueError:
            raise BadDataError(f"non-numeric data in the block of {name}", path=path,
                               fix="regenerate the basis file") from None
        if values.size != 2 * n_data:
            raise BadDataError(
                f"metabolite {name} has {values.size // 2} complex points, header says NDATAB={n_data} "
                "(truncated file?)", path=path, fix="regenerate or re-download the basis file")
        spectrum = values[0::2] + 1j * values[1::2]
        shift = int(float(nl.get("ISHIFT", "0") or 0))
        if shift:
            spectrum = np.roll(spectrum, -shift)
        fid = np.fft.ifft(spectrum) * np.sqrt(n_data)
        fids.append(fid)
        names.append(name.strip())
    full = np.array(fids)
    half = n_data // 2
    tail = np.sum(np.abs(full[:, half:]) ** 2)
    if tail <= ZERO_FILL_ENERGY * np.sum(np.abs(full) ** 2):
        full = full[:, :half]
    fids = []
    for name, fid in zip(list(names), full):
        if not np.all(np.isfinite(fid)) or not np.any(fid):
            raise BadDataError(f"metabolite {name} has an all-zero or non-finite spectrum", path=path,
                               fix="regenerate the basis file")
        fids.append(np.conj(fid) if conjugate else fid)
    if len(set(names)) != len(names):
        raise BadDataError(f"metabolite names repeat in the basis file: {names}", path=path,
                           fix="keep one block per metabolite")
    return BasisSet(
        names=tuple(names),
        fids=np.array(fids),
        dwell_time=dwell,
        central_frequency=central_frequency,
        ppm_reference=WATER_PPM,
        metadata={"source": str(path), "format": "lcmodel-basis", "conjugated": conjugate,
                  "NDATAB": n_data, "PointsKept": int(fids[0].size), "BADELT": dwell, "HZPPPM": central_frequency},
    )


def read_text_fid(path: str | PathLike) -> np.ndarray:
    """One FID from a text file of two columns (real, imaginary), whitespace or comma separated."""
    path = Path(path)
    try:
        data = np.loadtxt(path, delimiter=None, ndmin=2, comments=("#", "%"))
    except ValueError:
        try:
            data = np.loadtxt(path, delimiter=",", ndmin=2, comments=("#", "%"))
        except ValueError as exc:
            raise BadDataError(f"FID text file is not two numeric columns ({exc})", path=path,
                               fix="write one 'real imaginary' pair per line") from None
    if data.shape[1] < 2 or data.shape[0] < 2:
        raise BadDataError(f"FID text file has shape {data.shape}, expected N x 2 (real, imaginary)", path=path,
                           fix="write one 'real imaginary' pair per line")
    fid = data[:, 0] + 1j * data[:, 1]
    if not np.all(np.isfinite(fid)):
        raise BadDataError("FID text file contains NaN or infinite values", path=path, fix="regenerate the FID")
    if not np.any(fid):
        raise BadDataError("FID text file is all zeros", path=path, fix="regenerate the FID")
    return fid


def read_fid_folder(
    folder: str | PathLike,
    *,
    dwell_time: float,
    central_frequency: float,
    conjugate: bool = True,
    pattern: str = "*.txt",
    names: tuple[str, ...] | None = None,
) -> BasisSet:
    """Read a folder with one text FID per metabolite (file stem = metabolite name) into a :class:`BasisSet`.

    Text FIDs carry no header, so the dwell time (s) and spectrometer frequency (MHz) are required. All files must
    have the same number of points. ``names`` restricts and orders the metabolites read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError("basis FID folder not found", path=folder, fix="give a folder of per-metabolite FIDs")
    files = {p.stem: p for p in sorted(folder.glob(pattern)) if p.is_file()}
    if names is not None:
        missing = [n for n in names if n not in files]
        if missing:
            raise MissingInputError(f"no FID file for {', '.join(missing)}", path=folder,
                                    fix=f"add {pattern} files named after the metabolites")
        files = {n: files[n] for n in names}
    if not files:
        raise MissingInputError(f"no {pattern} FID files", path=folder, fix="add one text FID per metabolite")
    fids = {}
    for name, p in files.items():
        fids[name] = read_text_fid(p)
    lengths = {n: f.size for n, f in fids.items()}
    if len(set(lengths.values())) != 1:
        raise BadDataError(f"FIDs differ in length: {lengths}", path=folder,
                           fix="give all metabolite FIDs the same number of points")
    arr = np.array(list(fids.values()))
    return BasisSet(
        names=tuple(fids),
        fids=np.conj(arr) if conjugate else arr,
        dwell_time=float(dwell_time),
        central_frequency=float(central_frequency),
        ppm_reference=WATER_PPM,
        metadata={"source": str(folder), "format": "text-fids", "conjugated": conjugate},
    )
