"""Single-voxel preprocessing: coil combination, eddy-current correction, alignment, rejection, (block) averaging.

Each step is a pure function on complex FID arrays (last axis = time) so it can be tested on planted distortions.
The order follows the consensus (Near et al. 2020): combine coils, correct eddy currents with the water reference,
align transients in frequency and phase, reject outliers, then average (for fMRS, per block of transients).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_ketamine.errors import BadDataError, MissingInputError

#: Fraction of the FID tail used to estimate each coil's noise (its signal has decayed there).
NOISE_TAIL_FRACTION = 0.2


def coil_noise_sd(fid: np.ndarray) -> np.ndarray:
    """Noise SD per coil from the FID tail; ``fid`` is (n_coils, ..., n_points)."""
    n = fid.shape[-1]
    tail = fid[..., int(n * (1 - NOISE_TAIL_FRACTION)):]
    tail = tail.reshape(fid.shape[0], -1)
    tail = tail - tail.mean(axis=1, keepdims=True)
    sd = np.sqrt(np.mean(np.abs(tail) ** 2, axis=1) / 2)
    return np.where(sd > 0, sd, np.max(sd) if np.max(sd) > 0 else 1.0)


def wsvd_coil_weights(reference: np.ndarray, noise_sd: np.ndarray | None = None,
                      n_points: int | None = None) -> np.ndarray:
    """Complex coil weights by whitened SVD of a reference (Rodgers & Robson 2010).

    ``reference`` is (n_coils, n_points), e.g. the averaged water reference or metabolite FID. After dividing each
    coil by its noise SD, the first right singular vector of the (time x coil) matrix is the combination of
    maximal signal-to-noise; weights are phased so the combined first point is real and positive, and scaled so the
    combined first point equals the mean coil magnitude there.
    """
    ref = np.asarray(reference, dtype=complex)
    if ref.ndim != 2:
        raise ValueError("reference must be (n_coils, n_points)")
    sd = coil_noise_sd(ref) if noise_sd is None else np.asarray(noise_sd, float)
    m = (ref / sd[:, None])[:, :n_points].T  # time x coil, whitened
    _, _, vh = np.linalg.svd(m, full_matrices=False)
    v = np.conj(vh[0]) / sd  # undo whitening: weight applies to raw coil data
    combined0 = ref[:, 0] @ v
    if combined0 == 0:
        return v / np.sum(np.abs(v))
    # phase the combination real-positive at t=0 and scale it to the mean coil amplitude there
    return v / combined0 * np.mean(np.abs(ref[:, 0]))


def combine_coils(fid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted sum over the first axis (coils): (n_coils, ..., n_points) -> (..., n_points)."""
    return np.tensordot(np.asarray(weights), np.asarray(fid), axes=(0, 0))


def eddy_current_correct(fid: np.ndarray, water_reference: np.ndarray) -> np.ndarray:
    """Klose (1990): remove the time-dependent phase of the (combined, averaged) water reference from ``fid``."""
    ref = np.asarray(water_reference)
    phase = np.unwrap(np.angle(ref))
    return np.asarray(fid) * np.exp(-1j * phase)


def apply_shift_phase(fid: np.ndarray, time: np.ndarray, shift_hz: np.ndarray | float,
                      phase_rad: np.ndarray | float) -> np.ndarray:
    """Multiply each FID by ``exp(i (2 pi shift t + phase))`` (a frequency shift and zero-order phase)."""
    shift = np.asarray(shift_hz, float)[..., None]
    phase = np.asarray(phase_rad, float)[..., None]
    return fid * np.exp(1j * (2 * np.pi * shift * time + phase))


def _window(n_points: int, dwell_time: float, sf: float, ppm_range: tuple[float, float]) -> np.ndarray:
    ppm = 4.65 + np.fft.fftshift(np.fft.fftfreq(n_points, dwell_time)) / sf
    return (ppm >= ppm_range[0]) & (ppm <= ppm_range[1])


@dataclass(frozen=True)
class Alignment:
    """Per-transient frequency shift (Hz) and phase (rad) that bring it onto the target."""

    shift_hz: np.ndarray
    phase_rad: np.ndarray


def spectral_registration(transients: np.ndarray, target: np.ndarray, *, dwell_time: float,
                          spectrometer_frequency: float, ppm_range: tuple[float, float] = (0.2, 4.2),
                          max_shift_hz: float = 20.0, iterations: int = 30) -> Alignment:
    """Frequency and phase of each transient that best match ``target`` (Near et al. 2015).

    The least-squares match uses the spectrum inside ``ppm_range`` (so residual water and lipids outside do not
    drive it); each transient starts from the integer-point shift that maximises its cross-correlation with the
    target, then damped Gauss-Newton steps (analytic derivatives, all transients at once) refine shift and phase.
    """
    x = np.atleast_2d(np.asarray(transients, complex))
    n = x.shape[-1]
    t = np.arange(n) * dwell_time
    win = _window(n, dwell_time, spectrometer_frequency, ppm_range)
    tgt = np.fft.fftshift(np.fft.fft(target))[win]
    hz_per_point = 1.0 / (n * dwell_time)
    max_lag = int(np.ceil(max_shift_hz / hz_per_point))
    specs = np.fft.fftshift(np.fft.fft(x, axis=-1), axes=-1)
    # coarse start: the integer lag of largest cross-correlation magnitude over the window, all transients at once
    lags = np.arange(-max_lag, max_lag + 1)
    idx = np.flatnonzero(win)
    score = np.stack([np.abs(specs[:, (idx - lag) % n] @ np.conj(tgt)) for lag in lags], axis=1)
    best = lags[np.argmax(score, axis=1)]
    shifts = best * hz_per_point
    rolled = specs[np.arange(len(x))[:, None], (idx[None, :] - best[:, None]) % n]
    phases = np.angle(rolled @ np.conj(tgt))
    # refine by damped Gauss-Newton on (shift, phase), vectorised over transients
    damping = 1e-6
    for _ in range(iterations):
        y = x * np.exp(1j * (2 * np.pi * shifts[:, None] * t + phases[:, None]))
        spec = np.fft.fftshift(np.fft.fft(y, axis=-1), axes=-1)[:, win]
        d_f = np.fft.fftshift(np.fft.fft(2j * np.pi * t * y, axis=-1), axes=-1)[:, win]
        d_p = 1j * spec
        r = spec - tgt
        a11 = np.sum(np.abs(d_f) ** 2, axis=1)
        a22 = np.sum(np.abs(d_p) ** 2, axis=1)
        a12 = np.sum((np.conj(d_f) * d_p).real, axis=1)
        g1 = np.sum((np.conj(d_f) * r).real, axis=1)
        g2 = np.sum((np.conj(d_p) * r).real, axis=1)
        a11 = a11 * (1 + damping)
        a22 = a22 * (1 + damping)
        det = a11 * a22 - a12**2
        ok = det > 0
        step_f = np.where(ok, (a22 * g1 - a12 * g2) / np.where(ok, det, 1), 0.0)
        step_p = np.where(ok, (a11 * g2 - a12 * g1) / np.where(ok, det, 1), 0.0)
        shifts = shifts - np.clip(step_f, -hz_per_point, hz_per_point)
        phases = phases - np.clip(step_p, -0.5, 0.5)
        if np.all(np.abs(step_f) < 1e-3) and np.all(np.abs(step_p) < 1e-4):  # Hz, rad: far below any effect
            break
    return Alignment(shifts, np.angle(np.exp(1j * phases)))


def align_transients(transients: np.ndarray, *, dwell_time: float, spectrometer_frequency: float,
                     ppm_range: tuple[float, float] = (0.2, 4.2), iterations: int = 2) -> tuple[np.ndarray, Alignment]:
    """Align every transient to the (re-estimated) mean of all; returns aligned FIDs and the total correction."""
    x = np.asarray(transients, complex)
    t = np.arange(x.shape[-1]) * dwell_time
    shift = np.zeros(len(x))
    phase = np.zeros(len(x))
    aligned = x
    target = np.median(x.real, axis=0) + 1j * np.median(x.imag, axis=0)
    for _ in range(iterations):
        al = spectral_registration(x, target, dwell_time=dwell_time, spectrometer_frequency=spectrometer_frequency,
                                   ppm_range=ppm_range)
        shift, phase = al.shift_hz, al.phase_rad
        aligned = apply_shift_phase(x, t, shift, phase)
        target = aligned.mean(axis=0)
    return aligned, Alignment(shift, phase)


def reject_outlier_transients(aligned: np.ndarray, *, dwell_time: float, spectrometer_frequency: float,
                              ppm_range: tuple[float, float] = (0.2, 4.2), threshold: float = 3.5,
                              max_fraction: float = 0.5) -> np.ndarray:
    """Boolean mask of transients to keep: robust z-score of the distance to the median spectrum < threshold.

    The distance is the RMS difference inside ``ppm_range``; z uses the median and 1.4826 x MAD of the distances.
    At most ``max_fraction`` of the transients are dropped (the worst ones), so a noisy series is never emptied.
    """
    x = np.asarray(aligned, complex)
    if len(x) < 4:
        return np.ones(len(x), bool)
    win = _window(x.shape[-1], dwell_time, spectrometer_frequency, ppm_range)
    specs = np.fft.fftshift(np.fft.fft(x, axis=-1), axes=-1)[:, win]
    med = np.median(specs.real, axis=0) + 1j * np.median(specs.imag, axis=0)
    dist = np.sqrt(np.mean(np.abs(specs - med) ** 2, axis=1))
    mad = 1.4826 * np.median(np.abs(dist - np.median(dist)))
    if mad <= 0:
        return np.ones(len(x), bool)
    z = (dist - np.median(dist)) / mad
    keep = z < threshold
    max_drop = int(np.floor(max_fraction * len(x)))
    if (~keep).sum() > max_drop:
        order = np.argsort(z)[::-1]
        keep = np.ones(len(x), bool)
        keep[order[:max_drop]] = False
    return keep


# ---------------------------------------------------------------------------------------------------- fMRS timing
def infusion_onset(events_tsv: str | Path, trial_type: str = "infusion") -> float:
    """Onset (s, from the start of the acquisition) of the events.tsv row whose trial_type starts the infusion."""
    import pandas as pd

    path = Path(events_tsv)
    if not path.is_file():
        raise MissingInputError("events.tsv not found", path=path, fix="add the fMRS events.tsv with an infusion row")
    table = pd.read_csv(path, sep="\t", na_values=["n/a"])
    if "onset" not in table.columns or "trial_type" not in table.columns:
        raise BadDataError("events.tsv needs 'onset' and 'trial_type' columns", path=path,
                           fix="add the columns (BIDS events format)")
    rows = table[table["trial_type"].astype(str) == trial_type]
    if rows.empty:
        raise BadDataError(f"no row with trial_type {trial_type!r}", path=path,
                           fix="add the infusion row or set design.fmrs.infusion_trial_type")
    return float(rows["onset"].iloc[0])


@dataclass(frozen=True)
class Blocks:
    """Which block each transient belongs to, and the block start relative to the infusion onset."""

    index: np.ndarray  #: block number per transient (0 = first block at or after the infusion; negative = before)
    labels: np.ndarray  #: distinct block numbers, increasing
    start_minutes: np.ndarray  #: block start relative to infusion onset (minutes), per label
    mid_minutes: np.ndarray  #: block centre relative to infusion onset (minutes), per label


def fmrs_blocks(n_transients: int, repetition_time: float, onset_seconds: float, block_seconds: float) -> Blocks:
    """Group transients into blocks of ``block_seconds`` relative to the infusion onset (transient k at k x TR)."""
    if repetition_time <= 0 or block_seconds <= 0:
        raise ValueError("repetition_time and block_seconds must be positive")
    if block_seconds < repetition_time:
        raise BadDataError(f"block length {block_seconds} s is shorter than one TR ({repetition_time} s)",
                           fix="set design.fmrs.block_seconds to several repetition times")
    t = np.arange(n_transients) * repetition_time - onset_seconds
    idx = np.floor(t / block_seconds + 1e-9).astype(int)
    labels = np.unique(idx)
    start = labels * block_seconds / 60.0
    return Blocks(idx, labels, start, start + block_seconds / 120.0)


def block_averages(aligned: np.ndarray, keep: np.ndarray, blocks: Blocks) -> tuple[np.ndarray, np.ndarray]:
    """Mean FID of the kept transients of each block, and how many were kept (n_blocks, n_points), (n_blocks,)."""
    out = np.zeros((len(blocks.labels), aligned.shape[-1]), complex)
    counts = np.zeros(len(blocks.labels), int)
    for i, b in enumerate(blocks.labels):
        sel = (blocks.index == b) & keep
        if not sel.any():  # all rejected: fall back to every transient of the block rather than drop the block
            sel = blocks.index == b
        out[i] = aligned[sel].mean(axis=0)
        counts[i] = int(sel.sum())
    return out, counts


# ---------------------------------------------------------------------------------------------------- pipeline
@dataclass(frozen=True)
class Preprocessed:
    """Result of :func:`preprocess_svs`: aligned transients, their keep mask and the averaged FID."""

    transients: np.ndarray  #: (n_transients, n_points) coil-combined, eddy-current corrected, aligned
    keep: np.ndarray
    average: np.ndarray  #: mean of kept transients
    water: np.ndarray | None  #: combined, averaged, eddy-current corrected water reference (for water scaling)
    alignment: Alignment
    coil_weights: np.ndarray
    conjugated: bool = False  #: the inputs were conjugated to the NIfTI-MRS sign convention
    #: The decision and its evidence (:mod:`bids_ketamine.spectroscopy.sign_convention`), for the sidecar.
    sign: object = None
    #: Which reference corrected eddy currents ("dedicated eddy-current reference", "water reference") or None.
    eddy_current_reference: str | None = None
    aligned: bool = False  #: transients were aligned by spectral registration (more than one transient)
    rejection: bool = False  #: the outlier screen of transients ran (it needs at least four transients)


def preprocess_svs(fid: np.ndarray, *, dwell_time: float, spectrometer_frequency: float,
                   water: np.ndarray | None = None, ecc: np.ndarray | None = None,
                   ppm_range: tuple[float, float] = (0.2, 4.2), align: bool = True,
                   reject: bool = True, reject_threshold: float = 3.5, phase_to_peak_ppm: float | None = 3.03,
                   conjugate: bool | None = None, ecc_from_water: bool = True) -> Preprocessed:
    """The standard single-voxel chain on (n_coils, n_transients, n_points) data.

    ``water`` (n_coils, n_w, n_points) gives the coil weights and, averaged, the water reference; ``ecc`` (same
    layout) is a dedicated eddy-current reference that is used instead of ``water`` for the correction when given;
    ``ecc_from_water=False`` corrects only with such a dedicated reference.
    Without any reference the weights come from the mean metabolite FID and no eddy-current correction is done.
    ``phase_to_peak_ppm`` phases the average so that the largest peak near that ppm (creatine) is real positive.
    ``conjugate``: take the complex conjugate of all inputs (None: detect). Either way the decision is made here,
    once, by :func:`bids_ketamine.spectroscopy.sign_convention.decide`, and recorded in ``Preprocessed.sign``.
    """
    fid = np.asarray(fid, complex)
    if fid.ndim != 3:
        raise ValueError("fid must be (n_coils, n_transients, n_points)")
    source = water if water is not None else fid
    weights = wsvd_coil_weights(np.asarray(source).mean(axis=1))
    comb = combine_coils(fid, weights)  # (n_transients, n_points)
    from bids_ketamine.spectroscopy.sign_convention import decide

    sign = decide(comb, dwell_time, spectrometer_frequency, configured=conjugate)
    conjugate = sign.conjugate
    if conjugate:
        fid, comb, weights = np.conj(fid), np.conj(comb), np.conj(weights)
        water = None if water is None else np.conj(water)
        ecc = None if ecc is None else np.conj(ecc)
    water_comb = combine_coils(np.asarray(water), weights).mean(axis=0) if water is not None else None
    ecc_comb, ecc_used = None, None
    if ecc is not None:
        e = np.asarray(ecc)
        ecc_comb = combine_coils(e, wsvd_coil_weights(e.mean(axis=1))).mean(axis=0)
        ecc_used = "dedicated eddy-current reference"
    elif water_comb is not None and ecc_from_water:
        ecc_comb, ecc_used = water_comb, "water reference"
    if ecc_comb is not None:
        comb = eddy_current_correct(comb, ecc_comb)
        if water_comb is not None:
            water_comb = eddy_current_correct(water_comb, ecc_comb)
    if align and comb.shape[0] > 1:
        aligned, alignment = align_transients(comb, dwell_time=dwell_time,
                                              spectrometer_frequency=spectrometer_frequency, ppm_range=ppm_range)
    else:
        aligned, alignment = comb, Alignment(np.zeros(len(comb)), np.zeros(len(comb)))
    keep = (reject_outlier_transients(aligned, dwell_time=dwell_time, spectrometer_frequency=spectrometer_frequency,
                                      ppm_range=ppm_range, threshold=reject_threshold)
            if reject else np.ones(len(aligned), bool))
    average = aligned[keep].mean(axis=0)
    if phase_to_peak_ppm is not None:
        phase = peak_phase(average, dwell_time, spectrometer_frequency, phase_to_peak_ppm)
        average = average * np.exp(-1j * phase)
        aligned = aligned * np.exp(-1j * phase)
    return Preprocessed(aligned, keep, average, water_comb, alignment, weights, bool(conjugate), sign,
                        eddy_current_reference=ecc_used, aligned=bool(align and comb.shape[0] > 1),
                        rejection=bool(reject and comb.shape[0] >= 4))


def peak_phase(fid: np.ndarray, dwell_time: float, spectrometer_frequency: float, ppm: float,
               half_width_ppm: float = 0.1) -> float:
    """Phase (rad) of the spectrum at its magnitude maximum within ``ppm +/- half_width_ppm``."""
    n = fid.shape[-1]
    spec = np.fft.fftshift(np.fft.fft(fid))
    win = _window(n, dwell_time, spectrometer_frequency, (ppm - half_width_ppm, ppm + half_width_ppm))
    idx = np.flatnonzero(win)
    return float(np.angle(spec[idx[np.argmax(np.abs(spec[idx]))]]))
