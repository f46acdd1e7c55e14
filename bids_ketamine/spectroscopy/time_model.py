"""Design matrices of the dynamic (fMRS) fit: how a parameter may change from block to block.

Every parameter of the joint fit of a session's blocks has a design ``D`` (blocks x columns): its value in block
``b`` is ``D[b] @ gamma``. Concentrations follow a time model of the infusion (default: constant before the
onset, linear after it, the hinge ``[1, max(t, 0)]`` with ``t`` in minutes from the onset) or are free per block;
line shape, shift, phase and baseline are shared (one column of ones), free per block (identity) or linear in time.
A user may give any other concentration design as a TSV (one row per block), as FSL-MRS ``fsl_dynmrs`` takes one.

Rows are the mean of the design over the block's transients (the blocks are averages of transients), so a model that
is linear within a block is exact for the block average.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError

#: Column names of the default concentration time model.
LEVEL, SLOPE = "level", "slope_per_min"


@dataclass(frozen=True)
class TimeDesign:
    """A design matrix with named columns; ``matrix`` is (blocks, columns)."""

    matrix: np.ndarray
    columns: tuple[str, ...]
    #: how it was made ("hinge", "per_block", "shared", "linear", or the user's file)
    kind: str

    @property
    def n_columns(self) -> int:
        return self.matrix.shape[1]

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, float)
        if m.ndim != 2 or m.shape[1] != len(self.columns):
            raise ValueError(f"design matrix {m.shape} does not match its {len(self.columns)} column names")
        if not np.all(np.isfinite(m)):
            raise ValueError("design matrix has non-finite entries")
        object.__setattr__(self, "matrix", m)

    def has_full_rank(self) -> bool:
        return int(np.linalg.matrix_rank(self.matrix)) == self.n_columns


def _block_means(values: np.ndarray, block_index: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([values[block_index == b].mean(axis=0) for b in labels])


def hinge_design(transient_minutes: np.ndarray, block_index: np.ndarray, labels: np.ndarray) -> TimeDesign:
    """Constant before the infusion onset, linear after it: columns ``level`` (the pre-infusion value) and
    ``slope_per_min`` (change per minute after the onset)."""
    t = np.asarray(transient_minutes, float)
    x = np.stack([np.ones_like(t), np.clip(t, 0.0, None)], axis=1)
    return TimeDesign(_block_means(x, block_index, labels), (LEVEL, SLOPE), "hinge")


def per_block_design(labels: np.ndarray) -> TimeDesign:
    """One free value per block (columns ``block_<label>``)."""
    return TimeDesign(np.eye(len(labels)), tuple(f"block_{int(b)}" for b in labels), "per_block")


def shared_design(n_blocks: int) -> TimeDesign:
    """One value for all blocks."""
    return TimeDesign(np.ones((n_blocks, 1)), ("shared",), "shared")


def linear_design(block_minutes: np.ndarray) -> TimeDesign:
    """A value at the session's mean block time plus a linear change per minute (slow drift)."""
    t = np.asarray(block_minutes, float)
    return TimeDesign(np.stack([np.ones_like(t), t - t.mean()], axis=1), ("mean", "per_min"), "linear")


def nuisance_design(kind: str, block_minutes: np.ndarray, labels: np.ndarray) -> TimeDesign:
    """Design of a nuisance parameter (line shape, shift, phase, baseline): shared, per_block or linear."""
    if kind == "shared":
        return shared_design(len(labels))
    if kind == "per_block":
        return per_block_design(labels)
    if kind == "linear":
        return linear_design(block_minutes) if len(labels) > 1 else shared_design(len(labels))
    raise ValueError(f"unknown nuisance design {kind!r}")


def read_design_tsv(path: str | Path, labels: np.ndarray) -> TimeDesign:
    """A user's concentration design: a TSV with one row per block and one named column per regressor.

    A ``block`` column (block numbers as in the ``_mrsfit.tsv``) matches rows to blocks; without it the rows are the
    blocks in time order. Raises :class:`BadDataError` naming the file when rows are missing, values are not
    numbers, or the columns are not linearly independent.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise BadDataError(f"the dynamic-fit design cannot be read ({exc})", path=path,
                           fix="give a tab-separated table with one row per fMRS block") from exc
    if "block" in frame:
        frame = frame.set_index("block")
        missing = [int(b) for b in labels if int(b) not in frame.index]
        if missing:
            raise BadDataError(f"the design has no row for blocks {missing}", path=path,
                               fix="add one row per block of the acquisition (block numbers as in _mrsfit.tsv)")
        frame = frame.loc[[int(b) for b in labels]]
    elif len(frame) != len(labels):
        raise BadDataError(f"the design has {len(frame)} rows but the acquisition has {len(labels)} blocks",
                           path=path, fix="give one row per block, or a 'block' column")
    if frame.shape[1] == 0:
        raise BadDataError("the design has no regressor column", path=path, fix="add at least one column")
    try:
        matrix = frame.to_numpy(dtype=float)
    except ValueError as exc:
        raise BadDataError("the design has non-numeric entries", path=path, fix="use numbers only") from exc
    if not np.all(np.isfinite(matrix)):
        raise BadDataError("the design has empty or non-finite entries", path=path, fix="fill every cell")
    design = TimeDesign(matrix, tuple(str(c) for c in frame.columns), f"file:{path.name}")
    if not design.has_full_rank():
        raise BadDataError(f"the design's columns {list(design.columns)} are not linearly independent over the "
                           f"{len(labels)} blocks", path=path, fix="drop or change redundant columns")
    return design


def projection(design: TimeDesign, weights: np.ndarray | None = None) -> np.ndarray:
    """``L = (X^T W X)^-1 X^T W``: maps per-block values to the design's coefficients (weighted least squares)."""
    x = design.matrix
    w = np.ones(x.shape[0]) if weights is None else np.asarray(weights, float)
    xtw = x.T * w[None, :]
    return np.linalg.solve(xtw @ x, xtw)
