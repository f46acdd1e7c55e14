"""Spectra with known truth, made from a basis set: the ground truth that validates the fit and its CRLBs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_ketamine.spectroscopy.basis import BasisSet, canonical_name, is_macromolecule, to_spectrum
from bids_ketamine.spectroscopy.fit import GAUSS_K

#: Typical healthy adult brain concentrations (mM) used to draw test spectra: round values inside the ranges
#: tabulated in the literature (e.g. Govindaraju et al. 2000, NMR Biomed 13:129).
TYPICAL_BRAIN_MM: dict[str, float] = {
    "NAA": 11.0, "NAAG": 1.5, "Cr": 4.5, "PCr": 4.0, "GPC": 1.0, "PCh": 0.5, "mI": 6.0, "sI": 0.3,
    "Glu": 10.0, "Gln": 3.0, "GABA": 1.5, "GSH": 2.0, "Tau": 1.5, "Asp": 2.5, "Lac": 0.8, "PE": 1.5,
    "Gly": 1.0, "Glc": 1.0, "Asc": 1.0, "Ala": 0.4, "Ace": 0.3,
}


@dataclass(frozen=True)
class SimulatedSpectrum:
    fid: np.ndarray
    concentrations: dict[str, float]
    noise_sd: float  # per real/imaginary component of each time-domain point
    lorentzian_hz: float
    gaussian_hz: float
    shift_hz: float
    phase0: float
    tau: float


def noiseless_fid(basis: BasisSet, concentrations: dict[str, float], *, lorentzian_hz: float, gaussian_hz: float,
                  shift_hz: float, phase0: float = 0.0, tau: float = 0.0, mm_lorentzian_hz: float | None = None,
                  ) -> np.ndarray:
    """Sum of basis FIDs scaled by ``concentrations`` and broadened/shifted/phased as the fit model does."""
    t = basis.time_axis()
    fid = np.zeros(basis.n_points, complex)
    for name, c in concentrations.items():
        i = basis.index(name)
        lw = mm_lorentzian_hz if (mm_lorentzian_hz is not None and is_macromolecule(basis.names[i])) else lorentzian_hz
        mod = np.exp((2j * np.pi * shift_hz - np.pi * lw) * t - GAUSS_K * gaussian_hz**2 * t * t)
        fid += c * basis.fids[i] * mod
    # A first-order phase exp(2 pi i f tau) in the frequency domain is a circular time shift by tau: apply it in
    # the frequency domain so it matches the model exactly.
    f = np.fft.fftfreq(basis.n_points, basis.dwell_time)
    return np.fft.ifft(np.fft.fft(fid) * np.exp(1j * (phase0 + 2 * np.pi * f * tau)))


def naa_peak_height(fid_noiseless_phased: np.ndarray, basis: BasisSet, window: tuple[float, float] = (1.9, 2.1)
                    ) -> float:
    """Maximum of the real spectrum in the NAA window: the signal of the SNR definition used by the fit."""
    spec = to_spectrum(fid_noiseless_phased).real
    ppm = basis.ppm_axis()
    return float(spec[(ppm >= window[0]) & (ppm <= window[1])].max())


def simulate_spectrum(basis: BasisSet, rng: np.random.Generator, *, snr: float,
                      lorentzian_hz: tuple[float, float] = (3.0, 10.0), max_shift_hz: float = 5.0,
                      max_phase_deg: float = 30.0, max_tau: float = 1e-4, spread: float = 0.2,
                      concentrations: dict[str, float] | None = None) -> SimulatedSpectrum:
    """One random test spectrum: typical concentrations +/- ``spread``, random line width, shift, phases, MM.

    ``snr`` is the NAA peak height over the SD of the real spectrum noise, as ``FitResult.snr`` defines it.
    """
    canon = {canonical_name(n): n for n in basis.names}
    if concentrations is None:
        concentrations = {}
        for name, value in TYPICAL_BRAIN_MM.items():
            if name in canon:
                concentrations[canon[name]] = value * (1 + spread * rng.uniform(-1, 1))
        for mm in basis.macromolecule_names():
            concentrations[mm] = float(rng.uniform(0.5, 1.5))
    lw = float(rng.uniform(*lorentzian_hz))
    gw = float(rng.uniform(0, 0.5 * lw))
    shift = float(rng.uniform(-max_shift_hz, max_shift_hz))
    phase0 = float(np.radians(rng.uniform(-max_phase_deg, max_phase_deg)))
    tau = float(rng.uniform(-max_tau, max_tau))
    clean = noiseless_fid(basis, concentrations, lorentzian_hz=lw, gaussian_hz=gw, shift_hz=shift,
                          mm_lorentzian_hz=lw)
    peak = naa_peak_height(clean, basis)
    # Spectral noise SD (real part) of white time-domain noise with per-component SD s is s * sqrt(N).
    noise_sd = peak / snr / np.sqrt(basis.n_points)
    noisy = clean + noise_sd * (rng.standard_normal(basis.n_points) + 1j * rng.standard_normal(basis.n_points))
    f = np.fft.fftfreq(basis.n_points, basis.dwell_time)
    fid = np.fft.ifft(np.fft.fft(noisy) * np.exp(1j * (phase0 + 2 * np.pi * f * tau)))
    return SimulatedSpectrum(fid=fid, concentrations=concentrations, noise_sd=noise_sd, lorentzian_hz=lw,
                             gaussian_hz=gw, shift_hz=shift, phase0=phase0, tau=tau)
