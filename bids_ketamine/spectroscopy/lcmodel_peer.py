"""LCModel as a peer: write any spectrum as an LCModel ``.RAW`` file with a control file, run the binary, read back.

Used by the tests and benchmarks that compare this package's fit with LCModel 6.3 on the same spectra (the binary
and its runner script ship with the real-data folder ``lcmodel_test_lcm/code/lcmodel``; the analysis itself never
needs LCModel). Formats, from the LCModel manual: a ``.RAW`` file is a ``$NMID`` namelist (``FMTDAT``, ``TRAMP``,
``VOLUME``) followed by the complex time-domain points in LCModel's sign convention (the complex conjugate of
NIfTI-MRS); the control file is a ``$LCMODL`` namelist. ``LCSV`` writes the concentration table as CSV and
``LCOORD`` the coordinate file with the fitted spectrum and baseline.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LCModelResult:
    """LCModel's concentration table (one row per metabolite and sum) and the run time."""

    table: pd.DataFrame  # columns: metabolite, concentration, sd_percent, ratio_tCr
    seconds: float
    coord: dict

    def ratio(self, name: str) -> float:
        row = self.table[self.table["metabolite"] == name]
        return float(row["ratio_tCr"].iloc[0]) if len(row) else float("nan")

    def concentration(self, name: str) -> float:
        row = self.table[self.table["metabolite"] == name]
        return float(row["concentration"].iloc[0]) if len(row) else float("nan")

    def sd_percent(self, name: str) -> float:
        row = self.table[self.table["metabolite"] == name]
        return float(row["sd_percent"].iloc[0]) if len(row) else float("nan")


def write_raw(path: Path, fid: np.ndarray, *, conjugate: bool = True) -> None:
    """An LCModel ``.RAW`` file of one FID (NIfTI-MRS convention in; LCModel's conjugate written by default)."""
    data = np.conj(fid) if conjugate else np.asarray(fid)
    lines = [" $NMID", " ID='bids_ketamine', FMTDAT='(2E16.6)'", " VOLUME=1", " TRAMP=1", " $END"]
    lines += [f"{z.real:16.6E}{z.imag:16.6E}" for z in data]
    Path(path).write_text("\n".join(lines) + "\n")


def write_control(path: Path, *, n_points: int, dwell_time: float, central_frequency: float, basis: str,
                  raw: str = "data.raw", echo_time_ms: float | None = None, extra: dict | None = None) -> None:
    """A ``$LCMODL`` control file: table as CSV (``out.csv``), coordinates (``out.coord``), no PostScript."""
    items = {"key": 210387309, "nunfil": n_points, "deltat": f"{dwell_time:.6e}", "hzpppm": f"{central_frequency:.6f}",
             "filbas": f"'{basis}'", "filraw": f"'{raw}'", "lcsv": 11, "filcsv": "'out.csv'", "lcoord": 9,
             "filcoo": "'out.coord'", "lps": 0, "neach": 99}
    if echo_time_ms is not None:
        items["echot"] = f"{echo_time_ms:g}"
    items.update(extra or {})
    body = "\n".join(f"{k}={v}" for k, v in items.items())
    Path(path).write_text(f"$LCMODL\n{body}\n$END\n")


def read_csv_table(path: Path) -> pd.DataFrame:
    """LCModel's ``LCSV`` table (one row: ``Row, Col, <name>, <name> %SD, <name>/Cr+PCr, ...``) as long rows."""
    raw = pd.read_csv(path, skipinitialspace=True)
    raw.columns = [c.strip() for c in raw.columns]
    row = raw.iloc[0]
    out = []
    for col in raw.columns:
        if col in ("Row", "Col") or col.endswith("%SD") or "/" in col:
            continue
        ratio_col = next((c for c in raw.columns if c.startswith(col + "/")), None)
        out.append({"metabolite": col, "concentration": float(row[col]),
                    "sd_percent": float(row.get(col + " %SD", np.nan)),
                    "ratio_tCr": float(row[ratio_col]) if ratio_col else np.nan})
    return pd.DataFrame(out)


def read_coord(path: Path) -> dict:
    """ppm axis, data, fit and baseline of an LCModel coordinate file (``LCOORD``)."""
    text = Path(path).read_text().split("\n")
    out, key, values, n = {}, None, [], None
    names = {"points on ppm-axis": "ppm", "phased data points": "data", "points of the fit": "fit",
             "background values": "baseline"}
    for line in text:
        low = line.lower()
        hit = next((v for k, v in names.items() if k in low), None)
        if hit is not None:
            if key is not None:
                out[key] = np.array(values[:n])
            key, values = hit, []
            if n is None:
                try:
                    n = int(line.split()[0])
                except (ValueError, IndexError):
                    n = None
            continue
        if key is not None:
            try:
                values.extend(float(v) for v in line.split())
            except ValueError:
                out[key] = np.array(values[:n])
                key, values = None, []
    if key is not None:
        out[key] = np.array(values[:n])
    return out


def run_lcmodel(runner: Path, fid: np.ndarray, *, dwell_time: float, central_frequency: float, basis_file: Path,
                echo_time_ms: float | None = None, workdir: Path | None = None, extra: dict | None = None,
                timeout: float = 120.0) -> LCModelResult:
    """Fit one FID (NIfTI-MRS convention) with LCModel through its runner script; returns its table."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        (tmp / "basis.basis").symlink_to(Path(basis_file).resolve())
        write_raw(tmp / "data.raw", fid)
        write_control(tmp / "control.file", n_points=fid.size, dwell_time=dwell_time,
                      central_frequency=central_frequency, basis="basis.basis", echo_time_ms=echo_time_ms,
                      extra=extra)
        start = time.perf_counter()
        proc = subprocess.run(["bash", str(runner), "control.file"], cwd=tmp, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not (tmp / "out.csv").is_file():
            raise RuntimeError(f"LCModel failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        table = read_csv_table(tmp / "out.csv")
        coord = read_coord(tmp / "out.coord") if (tmp / "out.coord").is_file() else {}
    return LCModelResult(table=table, seconds=seconds, coord=coord)
