"""Functional connectivity and global brain connectivity (GBC).

Connectivity is the Pearson correlation between parcel time series, Fisher z-transformed (z = artanh r); the GBC of
a parcel is the mean z with all *other* parcels (the diagonal is excluded). The delta map of a subject is
GBC(drug) - GBC(placebo), parcel by parcel.
"""

from __future__ import annotations

import numpy as np

#: |r| is clipped below 1 by this margin before artanh, so two identical parcels give a large finite z.
R_CLIP = 1e-7


def check_parcel_signals(timeseries: np.ndarray, names: list[str]) -> None:
    """Raise ValueError naming the first parcel that is constant or not finite (its correlations are undefined)."""
    timeseries = np.asarray(timeseries, dtype=float)
    bad_finite = ~np.isfinite(timeseries).all(axis=0)
    if bad_finite.any():
        raise ValueError(f"parcel {names[int(np.argmax(bad_finite))]!r} has NaN or infinite values")
    sd = timeseries.std(axis=0)
    scale = np.abs(timeseries).max(axis=0)
    constant = sd <= 1e-10 * np.maximum(scale, 1e-30)
    if constant.any():
        raise ValueError(f"parcel {names[int(np.argmax(constant))]!r} is constant over time")


def pearson_matrix(timeseries: np.ndarray) -> np.ndarray:
    """Pearson correlation between columns of a frames x parcels array (parcels x parcels)."""
    x = np.asarray(timeseries, dtype=float)
    x = x - x.mean(axis=0)
    norm = np.sqrt(np.einsum("tp,tp->p", x, x))
    if (norm == 0).any():
        raise ValueError("a parcel is constant over time; its correlations are undefined")
    x = x / norm
    r = x.T @ x
    np.fill_diagonal(r, 1.0)
    return np.clip(r, -1.0, 1.0)


def fisher_z(r: np.ndarray) -> np.ndarray:
    """artanh(r) with the diagonal set to NaN (self-connections carry no information)."""
    r = np.asarray(r, dtype=float)
    z = np.arctanh(np.clip(r, -1 + R_CLIP, 1 - R_CLIP))
    if z.ndim == 2 and z.shape[0] == z.shape[1]:
        z = z.copy()
        np.fill_diagonal(z, np.nan)
    return z


def global_brain_connectivity(z: np.ndarray) -> np.ndarray:
    """GBC(p) = mean over q != p of z[p, q] (the NaN diagonal is skipped)."""
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[0] != z.shape[1] or z.shape[0] < 2:
        raise ValueError(f"GBC needs a square matrix of at least 2 parcels, got {z.shape}")
    off = ~np.eye(z.shape[0], dtype=bool)
    return np.where(off, z, 0.0).sum(axis=1) / (z.shape[0] - 1)


def gbc_from_timeseries(timeseries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Fisher-z matrix, GBC vector) of a frames x parcels array with no missing frames."""
    z = fisher_z(pearson_matrix(timeseries))
    return z, global_brain_connectivity(z)


def analytic_gbc(correlation: np.ndarray) -> np.ndarray:
    """GBC implied by a population correlation matrix: mean over q != p of artanh(R[p, q])."""
    return global_brain_connectivity(fisher_z(correlation))
