"""Motion scrubbing as published (Power et al. 2012 criteria, as used by Moujaes, Ji et al. 2024).

A frame is *flagged* when its framewise displacement exceeds ``fd_threshold`` (0.5 mm) or its normalised intensity
change exceeds ``dvars_ratio`` (1.6) times the run's median change; flagged frames and ``neighbours`` (1) frames on
each side are *censored* (left out of the nuisance regression and of the correlations). A session whose censored
fraction exceeds ``max_scrubbed_fraction`` (0.5) is excluded.

Normalised intensity change (a DVARS normalised twice, so it is unitless and scanner independent)::

    d[t] = sqrt(mean over brain-mask voxels v of (x[v, t] - x[v, t-1])**2) / mean over mask voxels and frames of x
    d[0] = 0  (no previous frame; frame 0 can only be censored as a neighbour or by its FD)
    ratio[t] = d[t] / median(d[1:])

The division by the mean intensity makes ``d`` a fraction of the signal; the published criterion then compares each
frame with the median of the same run, so only the ratio matters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Radius (mm) of the sphere on which rotations become displacements in Power's FD (fMRIPrep's default).
FD_HEAD_RADIUS_MM = 50.0


def framewise_displacement(motion: np.ndarray, head_radius_mm: float = FD_HEAD_RADIUS_MM) -> np.ndarray:
    """Power FD from ``motion`` (frames x 6: trans_x, trans_y, trans_z in mm, rot_x, rot_y, rot_z in radians).

    Used when a confounds file lacks ``framewise_displacement``; frame 0 is 0 (fMRIPrep writes n/a there).
    """
    motion = np.asarray(motion, dtype=float)
    if motion.ndim != 2 or motion.shape[1] != 6:
        raise ValueError(f"motion must be frames x 6, got {motion.shape}")
    step = np.abs(np.diff(motion, axis=0))
    step[:, 3:] *= head_radius_mm
    return np.concatenate([[0.0], step.sum(axis=1)])


def intensity_change_from_sums(sum_sq_diff: np.ndarray, n_voxels: int, mean_intensity: float) -> np.ndarray:
    """``d[t]`` from the per-frame sum over mask voxels of squared backward differences (frame 0: 0).

    Split out so a streaming reader can accumulate the sums volume by volume.
    """
    sum_sq_diff = np.asarray(sum_sq_diff, dtype=float).copy()
    sum_sq_diff[0] = 0.0
    if n_voxels < 1 or not np.isfinite(mean_intensity) or mean_intensity == 0:
        raise ValueError("normalised intensity change needs a non-empty mask with a non-zero mean intensity")
    return np.sqrt(sum_sq_diff / n_voxels) / abs(mean_intensity)


def normalised_intensity_change(data: np.ndarray) -> np.ndarray:
    """``d[t]`` of a voxels x frames array of brain-mask voxels (see the module docstring)."""
    data = np.asarray(data, dtype=float)
    diff = np.diff(data, axis=1)
    sums = np.concatenate([[0.0], np.einsum("vt,vt->t", diff, diff)])
    return intensity_change_from_sums(sums, data.shape[0], float(data.mean()))


def intensity_change_ratio(change: np.ndarray) -> np.ndarray:
    """``d[t] / median(d[1:])``; frame 0 gets 0."""
    change = np.asarray(change, dtype=float)
    if change.size < 3:
        raise ValueError("a run needs at least 3 frames to scrub")
    median = float(np.median(change[1:]))
    if median <= 0:
        raise ValueError("the median intensity change is 0: the BOLD series is constant")
    ratio = change / median
    ratio[0] = 0.0
    return ratio


@dataclass(frozen=True)
class Censoring:
    """Which frames survive scrubbing, and why the others did not."""

    keep: np.ndarray          # bool, frames used
    flagged_fd: np.ndarray    # bool, FD above threshold
    flagged_dvars: np.ndarray  # bool, intensity-change ratio above threshold

    @property
    def n_frames(self) -> int:
        return int(self.keep.size)

    @property
    def n_censored(self) -> int:
        return int((~self.keep).sum())

    @property
    def censored_fraction(self) -> float:
        return self.n_censored / self.n_frames


def censor_frames(fd: np.ndarray, intensity_ratio: np.ndarray, *, fd_threshold: float = 0.5,
                  dvars_ratio: float = 1.6, neighbours: int = 1) -> Censoring:
    """Flag frames by FD or intensity-change ratio and censor them with ``neighbours`` frames on each side.

    A missing FD (NaN, as fMRIPrep writes for frame 0) counts as 0.
    """
    fd = np.nan_to_num(np.asarray(fd, dtype=float), nan=0.0)
    intensity_ratio = np.nan_to_num(np.asarray(intensity_ratio, dtype=float), nan=0.0)
    if fd.shape != intensity_ratio.shape or fd.ndim != 1:
        raise ValueError(f"FD {fd.shape} and intensity ratio {intensity_ratio.shape} must be equal-length vectors")
    flagged_fd = fd > fd_threshold
    flagged_dvars = intensity_ratio > dvars_ratio
    flagged = flagged_fd | flagged_dvars
    censored = flagged.copy()
    for shift in range(1, neighbours + 1):
        censored[shift:] |= flagged[:-shift]
        censored[:-shift] |= flagged[shift:]
    return Censoring(keep=~censored, flagged_fd=flagged_fd, flagged_dvars=flagged_dvars)


def session_censored_fraction(censorings: list[Censoring]) -> float:
    """Censored frames over all frames of a session's runs (the exclusion criterion)."""
    total = sum(c.n_frames for c in censorings)
    return sum(c.n_censored for c in censorings) / total if total else 1.0
