"""Macromolecule and lipid model for any basis set, and the soft ratio constraints that keep it honest.

A short-TE brain spectrum carries broad macromolecule (MM) and lipid signals under the metabolites; a fit whose basis
has none pushes them into Glu, Gln and the baseline. LCModel's answer (Provencher, LCModel manual, "simulated lipid
and macromolecule signals") is a fixed set of Gaussian components with published positions, widths and proton
counts, plus soft constraints (ratio priors) between them so that they cannot absorb metabolite signal freely. This
module holds those published values as data and builds the components on any time grid; the fit adds them as their
own line-shape groups and adds one penalty row per prior (a Gaussian prior ``a / b ~ N(r, s^2)`` on the amplitudes,
linearised at the start values as LCModel does).

The positions, widths and amplitudes below are the LCModel 6.3 defaults for fields below 4.5 T (above, LCModel and
this module use its sharper set); the ratio priors are LCModel's defaults (``CHRATO``), including those on small
metabolites relative to ``Big3`` (tNAA + tCr + tCho) and GSH/(Gln + GSH).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_ketamine.spectroscopy.basis import WATER_PPM, BasisSet, canonical_name

#: One Gaussian line: (ppm, FWHM in ppm, amplitude in protons).
Line = tuple[float, float, float]

#: LCModel's simulated macromolecule and lipid components below 4.5 T: name -> lines.
MM_LIPID_LINES_3T: dict[str, tuple[Line, ...]] = {
    "MM09": ((0.91, 0.14, 3.0),),
    "MM12": ((1.21, 0.15, 2.0),),
    "MM14": ((1.43, 0.17, 2.0),),
    "MM17": ((1.67, 0.15, 2.0),),
    "MM20": ((2.08, 0.15, 1.33), (2.25, 0.20, 0.33), (1.95, 0.15, 0.33), (3.00, 0.20, 0.40)),
    "Lip09": ((0.89, 0.14, 3.0),),
    "Lip13a": ((1.28, 0.15, 2.0),),
    "Lip13b": ((1.28, 0.089, 2.0),),
    "Lip20": ((2.04, 0.15, 1.33), (2.25, 0.15, 0.67), (2.80, 0.20, 0.87)),
}

#: The sharper set LCModel uses at high field (spectrometer frequency above 190 MHz).
MM_LIPID_LINES_7T: dict[str, tuple[Line, ...]] = {
    "MM09": ((0.91, 0.05, 3.0),),
    "MM12": ((1.21, 0.05, 2.0),),
    "MM14": ((1.43, 0.06, 2.0),),
    "MM17": ((1.67, 0.05, 2.0),),
    "MM20": ((2.08, 0.05, 1.33), (2.25, 0.07, 0.33), (1.95, 0.05, 0.33), (3.00, 0.07, 0.40)),
    "Lip09": ((0.89, 0.05, 3.0),),
    "Lip13a": ((1.28, 0.05, 2.0),),
    "Lip13b": ((1.28, 0.029, 2.0),),
    "Lip20": ((2.04, 0.05, 1.33), (2.25, 0.05, 0.67), (2.80, 0.07, 0.87)),
}

#: Spectrometer frequency (MHz) above which the sharper set applies (LCModel's HIFMM).
HIGH_FIELD_MHZ = 190.0


@dataclass(frozen=True)
class RatioPrior:
    """Soft constraint ``sum(numerator) / sum(denominator) = ratio +- sd`` on fitted amplitudes (canonical names)."""

    numerator: tuple[str, ...]
    denominator: tuple[str, ...]
    ratio: float
    sd: float

    @property
    def label(self) -> str:
        return f"{'+'.join(self.numerator)}/{'+'.join(self.denominator)} = {self.ratio:g} +- {self.sd:g}"


_BIG3 = ("NAA", "NAAG", "Cr", "PCr", "GPC", "PCh")

#: LCModel's default ratio priors (its CHRATO list); members missing from a fit are dropped, and a prior whose
#: numerator or denominator is then empty is not used.
DEFAULT_RATIO_PRIORS: tuple[RatioPrior, ...] = (
    RatioPrior(("Lip09",), ("Lip13a", "Lip13b"), 0.267, 0.1),
    RatioPrior(("Lip20",), ("Lip13a", "Lip13b"), 0.15, 0.07),
    RatioPrior(("MM20",), ("MM09",), 1.5, 0.375),
    RatioPrior(("MM12",), ("MM09",), 0.3, 0.1),
    RatioPrior(("MM14",), ("MM09",), 0.75, 0.45),
    RatioPrior(("MM17",), ("MM09",), 0.375, 0.3),
    RatioPrior(("Asp",), _BIG3, 0.05, 0.05),
    RatioPrior(("GABA",), _BIG3, 0.03, 0.03),
    RatioPrior(("Glc",), _BIG3, 0.03, 0.03),
    RatioPrior(("sI",), _BIG3, 0.01, 0.01),
    RatioPrior(("Tau",), _BIG3, 0.05, 0.05),
    RatioPrior(("GSH",), ("Gln", "GSH"), 0.286, 0.126),
)

#: LCModel's prior SD (ppm) of a metabolite's own shift where it differs from the default (``ALSDSH``).
OWN_SHIFT_SD_PPM: dict[str, float] = {"NAA": 0.002, "NAAG": 0.002}

#: Priors that need an echo time below 50 ms (LCModel drops GSH/(Gln+GSH) at long TE).
SHORT_TE_ONLY = ("GSH",)


def mm_lipid_lines(central_frequency: float) -> dict[str, tuple[Line, ...]]:
    """The component set for a field: the broad set below :data:`HIGH_FIELD_MHZ`, the sharp one above."""
    return MM_LIPID_LINES_7T if central_frequency > HIGH_FIELD_MHZ else MM_LIPID_LINES_3T


def gaussian_lines_fid(lines: tuple[Line, ...], time: np.ndarray, central_frequency: float,
                       ppm_reference: float = WATER_PPM) -> np.ndarray:
    """FID of a sum of Gaussian lines (amplitude = protons at t = 0), NIfTI-MRS sign convention."""
    fid = np.zeros(time.size, complex)
    for ppm, fwhm_ppm, amp in lines:
        f = (ppm - ppm_reference) * central_frequency
        w = fwhm_ppm * central_frequency
        fid += amp * np.exp(2j * np.pi * f * time - (np.pi * w * time) ** 2 / (4 * np.log(2)))
    return fid


def mm_lipid_basis(n_points: int, dwell_time: float, central_frequency: float, *,
                   ppm_reference: float = WATER_PPM, proton_unit: float = 1.0,
                   names: tuple[str, ...] | None = None) -> BasisSet:
    """The macromolecule and lipid components as basis FIDs, ``proton_unit`` per proton at t = 0.

    ``proton_unit`` is the basis set's own amplitude of one proton at unit concentration
    (:func:`bids_ketamine.spectroscopy.basis.proton_scale`), so a fitted MM amplitude is on the same
    concentration scale as the metabolites (and the ratio priors mean what LCModel's mean).
    """
    lines = mm_lipid_lines(central_frequency)
    chosen = tuple(lines) if names is None else tuple(n for n in lines if n in names)
    t = np.arange(n_points) * dwell_time
    fids = np.array([proton_unit * gaussian_lines_fid(lines[n], t, central_frequency, ppm_reference)
                     for n in chosen])
    return BasisSet(names=chosen, fids=fids, dwell_time=dwell_time, central_frequency=central_frequency,
                    ppm_reference=ppm_reference,
                    metadata={"source": "bids_ketamine.spectroscopy.macromolecules (LCModel default set)"})


def priors_for(names: tuple[str, ...], *, echo_time: float | None = None,
               priors: tuple[RatioPrior, ...] = DEFAULT_RATIO_PRIORS) -> list[tuple[RatioPrior, np.ndarray, np.ndarray]]:
    """Priors that apply to a fit of ``names``: (prior, numerator weights, denominator weights) over ``names``."""
    canon = [canonical_name(n) for n in names]
    out = []
    for p in priors:
        if echo_time is not None and echo_time > 0.049 and p.numerator[0] in SHORT_TE_ONLY:
            continue
        num = np.array([1.0 if c in p.numerator else 0.0 for c in canon])
        den = np.array([1.0 if c in p.denominator else 0.0 for c in canon])
        if num.any() and den.any():
            out.append((p, num, den))
    return out
