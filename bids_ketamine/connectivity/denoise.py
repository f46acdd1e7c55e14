"""Nuisance regression with a cosine high-pass, fitted on the frames that survive scrubbing.

One least-squares regression per run removes, from every parcel time series at once: an intercept, a discrete
cosine (DCT-II) basis of all frequencies below ``high_pass_hz`` (0.008 Hz: the published high-pass), the six
rigid-body motion parameters, the CSF and white-matter signals, the global signal (switchable) and the first
temporal derivative of each nuisance signal.

How censored frames enter: they do not. The cosine basis and the derivatives are built on the full, uncensored time
axis (so frequencies and differences keep their meaning), then the rows of censored frames are dropped from the
design and from the data before the fit; the residuals of the kept frames are the cleaned signal, censored frames
are returned as NaN. Fitting on kept frames only stops motion spikes from steering the regression weights.

Why parcel level: the regression is linear and the same design applies to every voxel, so cleaning the parcel mean
time series gives exactly the parcel mean of cleaned voxels, at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MOTION_COLUMNS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
TISSUE_COLUMNS = ("csf", "white_matter")
GLOBAL_COLUMN = "global_signal"


def cosine_basis(n_frames: int, repetition_time: float, cutoff_hz: float) -> np.ndarray:
    """DCT-II regressors cos(pi k (t + 1/2) / N) for k = 1 .. K with k / (2 N TR) < cutoff (frames x K).

    Frequency of regressor k is k / (2 N TR); the constant (k = 0) is left to the intercept.
    """
    if n_frames < 1 or repetition_time <= 0:
        raise ValueError("cosine basis needs n_frames >= 1 and a positive repetition time")
    k_max = int(np.ceil(2 * n_frames * repetition_time * cutoff_hz)) - 1
    k = np.arange(1, max(k_max, 0) + 1)
    t = np.arange(n_frames)
    return np.cos(np.pi * np.outer(t + 0.5, k) / n_frames) * np.sqrt(2.0 / n_frames)


def nuisance_names(*, motion: bool = True, tissue: bool = True, global_signal: bool = True) -> list[str]:
    """fMRIPrep confound columns regressed out (derivatives are added by :func:`nuisance_design`)."""
    names: list[str] = []
    if motion:
        names += MOTION_COLUMNS
    if tissue:
        names += TISSUE_COLUMNS
    if global_signal:
        names.append(GLOBAL_COLUMN)
    return names


def nuisance_design(confounds: pd.DataFrame, names: list[str], *, derivatives: bool = True) -> tuple[np.ndarray, list[str]]:
    """Nuisance regressors (frames x k) from an fMRIPrep confounds table, with first derivatives.

    A derivative is fMRIPrep's ``<name>_derivative1`` column when present, otherwise the backward difference;
    its first frame (n/a in fMRIPrep) is 0. Raises KeyError naming the first absent column.
    """
    missing = [n for n in names if n not in confounds.columns]
    if missing:
        raise KeyError(missing[0])
    columns, labels = [], []
    for name in names:
        values = pd.to_numeric(confounds[name], errors="coerce").to_numpy(dtype=float)
        if np.isnan(values[1:]).any():
            raise ValueError(f"confound column {name!r} has n/a values after the first frame")
        values = np.nan_to_num(values, nan=float(np.nanmean(values)) if np.isfinite(values).any() else 0.0)
        columns.append(values)
        labels.append(name)
        if derivatives:
            deriv_name = f"{name}_derivative1"
            if deriv_name in confounds.columns:
                deriv = pd.to_numeric(confounds[deriv_name], errors="coerce").to_numpy(dtype=float)
            else:
                deriv = np.concatenate([[0.0], np.diff(values)])
            columns.append(np.nan_to_num(deriv, nan=0.0))
            labels.append(deriv_name)
    if not columns:
        return np.zeros((len(confounds), 0)), []
    return np.column_stack(columns), labels


def regress_out(timeseries: np.ndarray, design: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Residuals of ``timeseries`` (frames x parcels) on ``[1, design]`` fitted on ``keep`` frames; censored = NaN.

    Regressors are standardised on the kept frames before the fit (numerical conditioning only; the residuals do not
    depend on it). Raises ValueError when fewer kept frames than regressors + 3 remain.
    """
    timeseries = np.asarray(timeseries, dtype=float)
    keep = np.asarray(keep, dtype=bool)
    if timeseries.shape[0] != keep.size or design.shape[0] != keep.size:
        raise ValueError(f"time series ({timeseries.shape[0]}), design ({design.shape[0]}) and keep ({keep.size}) "
                         "must have the same number of frames")
    x = design[keep]
    sd = x.std(axis=0)
    x = (x[:, sd > 0] - x[:, sd > 0].mean(axis=0)) / sd[sd > 0]
    x = np.column_stack([np.ones(int(keep.sum())), x])
    if keep.sum() < x.shape[1] + 3:
        raise ValueError(f"{int(keep.sum())} frames left after scrubbing for {x.shape[1]} regressors")
    y = timeseries[keep]
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    out = np.full(timeseries.shape, np.nan)
    out[keep] = y - x @ beta
    return out


def full_design(confounds: pd.DataFrame, names: list[str], *, repetition_time: float, high_pass_hz: float | None,
                derivatives: bool = True) -> tuple[np.ndarray, list[str]]:
    """Nuisance regressors plus the cosine high-pass basis (frames x k) and their labels."""
    nuisance, labels = nuisance_design(confounds, names, derivatives=derivatives)
    if high_pass_hz:
        cosine = cosine_basis(len(confounds), repetition_time, high_pass_hz)
        nuisance = np.column_stack([nuisance, cosine])
        labels = labels + [f"cosine{k:02d}" for k in range(cosine.shape[1])]
    return nuisance, labels
