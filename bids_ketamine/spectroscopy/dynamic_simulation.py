"""Simulated fMRS sessions with a planted Glx/tNAA slope: the ground truth that validates the dynamic fit.

Each session is drawn by the synthetic generator (:class:`bids_ketamine.synthetic.mrs.FmrsSimulator`: raw coil x
transient data with frequency drift, phase noise, eddy currents and coil noise), preprocessed by the participant
level's own chain (coil combination, eddy-current correction, alignment, rejection) and averaged into the blocks of
the infusion; then fitted twice, both ways the app can:

- dynamic: :func:`.dynamic_fit.fit_dynamic` on all blocks at once, slope of Glx/tNAA with its SE from the joint
  covariance;
- block-wise: :func:`.fit.fit_spectrum` on every block, then a per-session weighted regression of the block ratios
  on the same time model (the same design, weights = transients), SE from the block CRLBs (delta method).

Benchmarks and tests compare the two on the same sessions (common random numbers), so the precision ratio is not
confounded by different noise draws.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bids_ketamine.spectroscopy.time_model import LEVEL, SLOPE, hinge_design, projection


@dataclass(frozen=True)
class SimulatedSession:
    """Block-averaged FIDs of one session and what was planted."""

    block_fids: np.ndarray
    block_labels: np.ndarray
    block_minutes: np.ndarray
    n_transients: np.ndarray
    #: transient times (min from onset) and their block labels (for the exact hinge design)
    transient_minutes: np.ndarray
    transient_blocks: np.ndarray
    planted_level: float
    planted_slope: float
    dwell_time: float
    central_frequency: float


@dataclass(frozen=True)
class SessionEstimates:
    """Glx/tNAA level and slope per minute, each way, with SEs, and the seconds each fit took."""

    dynamic: np.ndarray
    dynamic_se: np.ndarray
    blockwise: np.ndarray
    blockwise_se: np.ndarray
    dynamic_seconds: float
    blockwise_seconds: float


def simulate_session(sim, rng: np.random.Generator, slope: float, *, block_seconds: float | None = None,
                     subject=None) -> SimulatedSession:
    """One session from ``sim`` (an :class:`~bids_ketamine.synthetic.mrs.FmrsSimulator`), preprocessed and averaged
    into blocks timed from the infusion onset, as the participant level does. ``subject`` (from ``sim.subject``)
    gives two sessions of one subject the same baseline and line shape; None draws a new subject."""
    from bids_ketamine.spectroscopy import preprocess as pp
    from bids_ketamine.synthetic import mrs

    block_seconds = block_seconds or mrs.BLOCK_SECONDS
    water_amp = sim.water_amplitude({"gm": 0.6, "wm": 0.3, "csf": 0.1})
    subject = sim.subject(rng) if subject is None else subject
    data, ref, r0 = sim.session(rng, subject, slope, water_amp)
    pre = pp.preprocess_svs(data, dwell_time=mrs.DWELL, spectrometer_frequency=mrs.SPECTROMETER_MHZ, water=ref)
    blocks = pp.fmrs_blocks(data.shape[1], sim.repetition_time, sim.onset_seconds, block_seconds)
    avgs, counts = pp.block_averages(pre.transients, pre.keep, blocks)
    minutes = np.array([sim.minutes[blocks.index == b].mean() for b in blocks.labels])
    return SimulatedSession(avgs, blocks.labels, minutes, counts, sim.minutes, blocks.index, float(r0), float(slope),
                            mrs.DWELL, mrs.SPECTROMETER_MHZ)


def blockwise_time_model(ratios: np.ndarray, ratio_se: np.ndarray, design, n_transients: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of ``design`` from block ratios (weighted least squares, weights = transients) and their SEs
    from the block SEs (independent blocks)."""
    lmat = projection(design, np.asarray(n_transients, float))
    return lmat @ ratios, np.sqrt(np.diag(lmat @ np.diag(np.asarray(ratio_se) ** 2) @ lmat.T))


def estimate_session(session: SimulatedSession, basis, *, fit_params=None, dynamic=None, blockwise: bool = True
                     ) -> SessionEstimates:
    """Fit one simulated session dynamically and (unless ``blockwise`` is False: NaN) block by block; Glx/tNAA
    (level, slope) both ways."""
    from bids_ketamine.spectroscopy.dynamic_fit import fit_dynamic
    from bids_ketamine.spectroscopy.fit import fit_spectrum

    design = hinge_design(session.transient_minutes, session.transient_blocks, session.block_labels)
    per_block = dynamic is not None and dynamic.concentrations == "per_block"
    t0 = time.perf_counter()
    res = fit_dynamic(session.block_fids, session.dwell_time, session.central_frequency, basis,
                      block_labels=session.block_labels, block_minutes=session.block_minutes,
                      n_transients=session.n_transients, design=None if per_block else design, params=fit_params,
                      dynamic=dynamic)
    est, cov = res.ratio_time_model("Glx", "tNAA", design)
    t1 = time.perf_counter()
    ratios, ses = [], []
    for fid in session.block_fids if blockwise else []:
        fit = fit_spectrum(fid, session.dwell_time, session.central_frequency, basis, fit_params)
        glx, tnaa = fit.concentration("Glx"), fit.concentration("tNAA")
        w = fit._weights("Glx") / tnaa - fit._weights("tNAA") * glx / tnaa**2  # d(ratio)/d(concentrations)
        ratios.append(glx / tnaa)
        ses.append(float(np.sqrt(max(w @ fit.covariance @ w, 0.0))))
    t2 = time.perf_counter()
    if blockwise:
        bw, bw_se = blockwise_time_model(np.array(ratios), np.array(ses), design, session.n_transients)
    else:
        bw = bw_se = np.full(design.n_columns, np.nan)
    order = [design.columns.index(LEVEL), design.columns.index(SLOPE)]
    return SessionEstimates(est[order], np.sqrt(np.diag(cov))[order], bw[order], bw_se[order], t1 - t0, t2 - t1)
