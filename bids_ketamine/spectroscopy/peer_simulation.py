"""Test spectra for comparisons with a peer fitter (LCModel): metabolites, macromolecules, lipids, residual water.

The truth of every comparison comes from here (planted concentrations), never from either fitter. A spectrum is the
sum of the basis metabolites at typical brain concentrations (+/- 20 %), LCModel's macromolecule and lipid
components (:mod:`.macromolecules`, amplitudes near the centres of its ratio priors), a residual water line of a
chosen height relative to the NAA peak, a common Lorentzian + Gaussian broadening, shift and zero-order phase, and
complex white noise at a chosen SNR (NAA peak height / noise SD of the spectrum's real part).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_ketamine.spectroscopy.basis import BasisSet, canonical_name, ppm_axis
from bids_ketamine.spectroscopy.fit import GAUSS_K, FitResult
from bids_ketamine.spectroscopy.fit_simulation import TYPICAL_BRAIN_MM
from bids_ketamine.spectroscopy.macromolecules import mm_lipid_basis

#: Compared outcomes: ratios to tCr, and tCr to tNAA.
TARGETS = ("tNAA", "tCr", "tCho", "mI", "Glu", "Glx")
_MEMBERS = {"tNAA": ("NAA", "NAAG"), "tCr": ("Cr", "PCr"), "tCho": ("GPC", "PCh"), "mI": ("mI",), "Glu": ("Glu",),
            "Glx": ("Glu", "Gln")}
_LCMODEL = {"tNAA": "NAA+NAAG", "tCr": "Cr+PCr", "tCho": "GPC+PCh", "mI": "Ins", "Glu": "Glu", "Glx": "Glu+Gln"}
#: Macromolecule and lipid amplitudes relative to MM09 / Lip13a (the centres of LCModel's priors).
_MM_RELATIVE = {"MM09": 1.0, "MM12": 0.3, "MM14": 0.75, "MM17": 0.375, "MM20": 1.5}
_LIP_RELATIVE = {"Lip13a": 0.5, "Lip13b": 0.5, "Lip09": 0.267, "Lip20": 0.15}


@dataclass(frozen=True)
class PeerSpectrum:
    fid: np.ndarray
    #: Planted amplitudes by canonical name (basis units), macromolecules and lipids included.
    concentrations: dict[str, float]
    naa_height: float
    n_points: int

    def noise_sd_for_snr(self, snr: float) -> float:
        """Time-domain noise SD (per real/imaginary part) that gives the spectrum this NAA SNR."""
        return self.naa_height / snr / np.sqrt(self.n_points)


def make_peer_spectrum(basis: BasisSet, rng: np.random.Generator, *, water_times_naa: float = 10.0,
                       snr: float | None = None) -> PeerSpectrum:
    """One random spectrum on ``basis``'s grid (NIfTI-MRS convention); ``snr`` None draws it from 20-40."""
    n, dt, cf = basis.n_points, basis.dwell_time, basis.central_frequency
    t = basis.time_axis()
    conc: dict[str, float] = {}
    fid = np.zeros(n, complex)
    for name, row in zip(basis.names, basis.fids):
        c = TYPICAL_BRAIN_MM.get(canonical_name(name), 0.5) * rng.uniform(0.8, 1.2)
        conc[canonical_name(name)] = c
        fid += c * row
    mm = mm_lipid_basis(n, dt, cf, ppm_reference=basis.ppm_reference)
    tcr = conc.get("Cr", 0) + conc.get("PCr", 0)
    mm09 = tcr * rng.uniform(0.7, 1.1)
    lip = tcr * rng.uniform(0.05, 0.3)
    for name, row in zip(mm.names, mm.fids):
        c = (mm09 * _MM_RELATIVE[name] if name in _MM_RELATIVE else lip * _LIP_RELATIVE[name]) * rng.uniform(0.85, 1.15)
        conc[name] = c
        fid += c * row
    lor, gau, shift = rng.uniform(2, 5), rng.uniform(2, 6), rng.uniform(-3, 3)
    phase = np.radians(rng.uniform(-30, 30))
    fid = fid * np.exp((2j * np.pi * shift - np.pi * lor) * t - GAUSS_K * gau**2 * t * t + 1j * phase)
    ppm = ppm_axis(n, dt, cf, basis.ppm_reference)
    spectrum = np.fft.fftshift(np.fft.fft(fid * np.exp(-1j * phase)))
    naa_height = float(spectrum.real[(ppm > 1.95) & (ppm < 2.07)].max())
    w_ppm, w_lw = 4.65 + rng.uniform(-0.05, 0.05), rng.uniform(5, 15)
    line = np.exp((2j * np.pi * (w_ppm - basis.ppm_reference) * cf - np.pi * w_lw) * t + 1j * rng.uniform(0, 6.28))
    fid = fid + water_times_naa * naa_height / np.abs(np.fft.fft(line)).max() * line
    out = PeerSpectrum(fid=fid, concentrations=conc, naa_height=naa_height, n_points=n)
    sd = out.noise_sd_for_snr(rng.uniform(20, 40) if snr is None else snr)
    noisy = fid + sd * (rng.standard_normal(n) + 1j * rng.standard_normal(n))
    return PeerSpectrum(fid=noisy, concentrations=conc, naa_height=naa_height, n_points=n)


def _sum(conc: dict[str, float], target: str) -> float:
    return float(sum(conc.get(m, 0.0) for m in _MEMBERS[target]))


def true_ratio(conc: dict[str, float], target: str) -> float:
    """Planted ratio: target / tCr (tCr / tNAA for tCr)."""
    den = "tNAA" if target == "tCr" else "tCr"
    return _sum(conc, target) / _sum(conc, den)


def our_ratio(res: FitResult, target: str) -> float:
    den = "tNAA" if target == "tCr" else "tCr"
    return res.concentration(target) / res.concentration(den)


def lcmodel_ratio(lcm, target: str) -> float:
    """The same ratio from LCModel's table (an :class:`~.lcmodel_peer.LCModelResult`)."""
    den = "tNAA" if target == "tCr" else "tCr"
    return lcm.concentration(_LCMODEL[target]) / lcm.concentration(_LCMODEL[den])
