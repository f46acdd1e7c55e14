"""Spectra with known truth, made from a basis set: the ground truth that validates the fit and its CRLBs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import brentq

from bids_ketamine.spectroscopy.basis import BasisSet, canonical_name, is_macromolecule, to_spectrum
from bids_ketamine.spectroscopy.fit import GAUSS_K

#: Typical healthy adult brain concentrations (mM) used to draw test spectra: round values inside the ranges
#: tabulated in the literature (e.g. Govindaraju et al. 2000, NMR Biomed 13:129).
TYPICAL_BRAIN_MM: dict[str, float] = {
    "NAA": 11.0, "NAAG": 1.5, "Cr": 4.5, "PCr": 4.0, "GPC": 1.0, "PCh": 0.5, "mI": 6.0, "sI": 0.3,
    "Glu": 10.0, "Gln": 3.0, "GABA": 1.5, "GSH": 2.0, "Tau": 1.5, "Asp": 2.5, "Lac": 0.8, "PE": 1.5,
    "Gly": 1.0, "Glc": 1.0, "Asc": 1.0, "Ala": 0.4, "Ace": 0.3,
}

#: Amplitude of the measured macromolecule baseline (``Mac`` of the ISMRM 2016 challenge basis) over tNAA, both in
#: basis units: the range this fit finds in the 23 challenge spectra that contain MM (0.62-0.91, median 0.78), so
#: test spectra carry as much MM under GABA, Glu/Gln and NAA as the challenge's in-vivo-derived data do.
MM_PER_TNAA: tuple[float, float] = (0.6, 0.9)


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
    #: FWHM (Hz) of the NAA singlet in the spectrum (basis width plus the extra broadening).
    fwhm_hz: float = float("nan")


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
    """Maximum of the real spectrum in the NAA window (of the NAA singlet alone, for the fit's SNR definition)."""
    spec = to_spectrum(fid_noiseless_phased).real
    ppm = basis.ppm_axis()
    return float(spec[(ppm >= window[0]) & (ppm <= window[1])].max())


def singlet_fwhm_hz(basis: BasisSet, lorentzian_hz: float, gaussian_hz: float, name: str = "NAA",
                    centre_ppm: float = 2.01, zero_fill: int = 8) -> float:
    """FWHM (Hz) of a basis singlet after extra Lorentzian/Gaussian broadening: the line width a reader measures.

    The basis has its own intrinsic width (about 2 Hz for the ISMRM 2016 challenge basis), so the width of the
    spectrum is not the added broadening; this measures it on a zero-filled grid, as ``FitResult.fwhm_hz`` does.
    """
    t = basis.time_axis()
    fid = basis.fid(basis.names[basis.index(name)]) * np.exp(-np.pi * lorentzian_hz * t
                                                             - GAUSS_K * gaussian_hz**2 * t * t)
    n = fid.size * zero_fill
    spec = np.fft.fftshift(np.fft.fft(fid, n=n)).real
    f = np.fft.fftshift(np.fft.fftfreq(n, basis.dwell_time))
    ppm = basis.ppm_reference + f / basis.central_frequency
    sel = np.flatnonzero(np.abs(ppm - centre_ppm) < 0.15)
    seg, fs = spec[sel], f[sel]
    top = int(np.argmax(seg))
    half = seg[top] / 2
    left = int(np.flatnonzero(seg[:top] <= half)[-1])
    right = top + int(np.flatnonzero(seg[top:] <= half)[0])
    fl = np.interp(half, [seg[left], seg[left + 1]], [fs[left], fs[left + 1]])
    fr = np.interp(half, [seg[right], seg[right - 1]], [fs[right], fs[right - 1]])
    return float(fr - fl)


def broadening_for_fwhm(basis: BasisSet, fwhm_hz: float, gaussian_share: float) -> tuple[float, float]:
    """Extra (Lorentzian, Gaussian) FWHM, Gaussian = ``gaussian_share`` x Lorentzian, that give an NAA singlet of
    ``fwhm_hz``; (0, 0) when the basis is already at least that wide."""
    if singlet_fwhm_hz(basis, 0.0, 0.0) >= fwhm_hz:
        return 0.0, 0.0

    def excess(lor: float) -> float:
        return singlet_fwhm_hz(basis, lor, gaussian_share * lor) - fwhm_hz

    lor = float(brentq(excess, 0.0, 2.0 * fwhm_hz, xtol=1e-4))
    return lor, gaussian_share * lor


def simulate_spectrum(basis: BasisSet, rng: np.random.Generator, *, snr: float,
                      fwhm_hz: tuple[float, float] = (3.0, 10.0), max_gaussian_share: float = 0.5,
                      max_shift_hz: float = 5.0, max_phase_deg: float = 30.0, max_tau: float = 1e-4,
                      spread: float = 0.2, mm_per_tnaa: tuple[float, float] = MM_PER_TNAA,
                      mm_range: tuple[float, float] | None = None,
                      snr_signal: Literal["spectrum", "NAA"] = "NAA",
                      concentrations: dict[str, float] | None = None) -> SimulatedSpectrum:
    """One random test spectrum: typical concentrations +/- ``spread``, random line width, shift, phases, MM.

    ``fwhm_hz`` is the range of the line width as MRS reports it, the FWHM of the NAA singlet in the simulated
    spectrum (basis width included), reached by an extra Voigt broadening whose Gaussian part is a random share
    (up to ``max_gaussian_share``) of its Lorentzian part. Each macromolecule component's amplitude (basis units) is
    drawn from ``mm_range`` when given, else as a share ``mm_per_tnaa`` of the planted tNAA (see ``MM_PER_TNAA``).
    ``snr`` is the height of the NAA singlet alone over the SD of the real spectrum noise (``snr_signal="NAA"``,
    the consensus definition that ``FitResult.snr`` reports), or of the whole real spectrum in 1.9-2.1 ppm, NAAG,
    MM and multiplets under NAA included (``"spectrum"``: about 1.7 times the NAA singlet at the default MM level,
    so the same number means noisier data).
    """
    canon = {canonical_name(n): n for n in basis.names}
    if concentrations is None:
        concentrations = {}
        for name, value in TYPICAL_BRAIN_MM.items():
            if name in canon:
                concentrations[canon[name]] = value * (1 + spread * rng.uniform(-1, 1))
        tnaa = sum(v for k, v in concentrations.items() if canonical_name(k) in ("NAA", "NAAG"))
        for mm in basis.macromolecule_names():
            concentrations[mm] = float(rng.uniform(*mm_range) if mm_range is not None
                                       else tnaa * rng.uniform(*mm_per_tnaa))
    width = float(rng.uniform(*fwhm_hz))
    share = float(rng.uniform(0, max_gaussian_share))
    lw, gw = broadening_for_fwhm(basis, width, share) if basis.has("NAA") else (width, share * width)
    shift = float(rng.uniform(-max_shift_hz, max_shift_hz))
    phase0 = float(np.radians(rng.uniform(-max_phase_deg, max_phase_deg)))
    tau = float(rng.uniform(-max_tau, max_tau))
    clean = noiseless_fid(basis, concentrations, lorentzian_hz=lw, gaussian_hz=gw, shift_hz=shift,
                          mm_lorentzian_hz=lw)
    if snr_signal == "NAA":
        naa = {k: v for k, v in concentrations.items() if canonical_name(k) == "NAA"}
        signal = noiseless_fid(basis, naa, lorentzian_hz=lw, gaussian_hz=gw, shift_hz=shift) if naa else clean
    else:
        signal = clean
    peak = naa_peak_height(signal, basis)
    # Spectral noise SD (real part) of white time-domain noise with per-component SD s is s * sqrt(N).
    noise_sd = peak / snr / np.sqrt(basis.n_points)
    noisy = clean + noise_sd * (rng.standard_normal(basis.n_points) + 1j * rng.standard_normal(basis.n_points))
    f = np.fft.fftfreq(basis.n_points, basis.dwell_time)
    fid = np.fft.ifft(np.fft.fft(noisy) * np.exp(1j * (phase0 + 2 * np.pi * f * tau)))
    return SimulatedSpectrum(fid=fid, concentrations=concentrations, noise_sd=noise_sd, lorentzian_hz=lw,
                             gaussian_hz=gw, shift_hz=shift, phase0=phase0, tau=tau, fwhm_hz=width)
