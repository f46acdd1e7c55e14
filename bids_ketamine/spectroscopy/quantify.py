"""From fitted amplitudes to concentrations: ratios to tCr/tNAA and water-scaled molal and molar concentrations.

Water scaling follows the formulation recommended by the MRS consensus on quantification (Near et al. 2021,
NMR Biomed 34:e4257, building on Gasparovic et al. 2006, Magn Reson Med 55:1219): the metabolite signal is
divided by the unsuppressed water signal and multiplied by the water concentration, with the water signal of each
tissue compartment and the metabolite signal corrected for T1 and T2 relaxation,

    attenuation R = exp(-TE / T2) * (1 - exp(-TR / T1)).

Amplitudes are in basis units: a basis FID has amplitude 1 per proton per mM at t = 0, so a fitted amplitude ``c``
of a metabolite is already "signal per proton" and the water signal is divided by its 2 protons.

* molar (mmol per litre of voxel):  c * n_W / A_W * [H2O] * sum_t f_t a_t R_W,t / R_M
* molal (mmol per kg tissue water):  c * n_W / A_W * [H2O] * sum_t w_t R_W,t / ((1 - w_CSF) R_M)

with volume fractions ``f_t``, water contents ``a_t`` (g/ml), water fractions ``w_t = f_t a_t / sum f a``,
``[H2O]`` = 55 510 mM (pure water, 1 mol / 18.015 g at 1 g/ml) and ``n_W`` = 2.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import least_squares

from bids_ketamine.errors import BadDataError
from bids_ketamine.spectroscopy.basis import canonical_name
from bids_ketamine.spectroscopy.fit import FitResult

log = logging.getLogger(__name__)

#: Pure water: 1 mol / 18.015 g at 1 g/ml, in mmol/l (equal to mmol/kg).
PURE_WATER_MM = 1000.0 / 18.015 * 1000.0
WATER_PROTONS = 2


class TissueFractions(BaseModel):
    """Volume fractions of grey matter, white matter and CSF in the voxel (they must add up to 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gm: float = Field(ge=0, le=1)
    wm: float = Field(ge=0, le=1)
    csf: float = Field(ge=0, le=1)
    #: Where the fractions come from ("segmentation" or "default").
    source: str = "given"

    @model_validator(mode="after")
    def _sum_to_one(self) -> TissueFractions:
        total = self.gm + self.wm + self.csf
        if not np.isclose(total, 1.0, atol=0.02):
            raise ValueError(f"tissue fractions add up to {total:.3f}, not 1")
        return self


#: Stated default when no segmentation of the voxel is available (a typical cortical voxel without CSF).
DEFAULT_FRACTIONS = TissueFractions(gm=0.6, wm=0.4, csf=0.0, source="default")


class RelaxationTimes(BaseModel):
    """T1/T2 (s) of water per tissue and of metabolites, at one field strength."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    field_tesla: float
    water_t1: dict[str, float]  # keys gm, wm, csf
    water_t2: dict[str, float]
    metabolite_t1: dict[str, float]
    metabolite_t2: dict[str, float]
    default_metabolite_t1: float
    default_metabolite_t2: float

    def metabolite(self, name: str) -> tuple[float, float]:
        key = canonical_name(name)
        return (self.metabolite_t1.get(key, self.default_metabolite_t1),
                self.metabolite_t2.get(key, self.default_metabolite_t2))


#: Approximate literature values at 3T. Water: GM/WM T1 1.33/0.83 s and T2 0.110/0.080 s (Wansapura et al. 1999,
#: J Magn Reson Imaging 9:531); CSF T1 4.2 s, T2 0.50 s (approximate). Metabolites: T1 of NAA/Cr/Cho about
#: 1.4 s (Mlynarik et al. 2001, NMR Biomed 14:325); T2 NAA 0.247, Cr 0.162, Cho 0.207 s (Traber et al. 2004,
#: J Magn Reson Imaging 19:537); others take the defaults. Override them with study-specific values when known.
RELAXATION_3T = RelaxationTimes(
    field_tesla=3.0,
    water_t1={"gm": 1.331, "wm": 0.832, "csf": 4.2},
    water_t2={"gm": 0.110, "wm": 0.080, "csf": 0.50},
    metabolite_t1={"NAA": 1.47, "NAAG": 1.47, "Cr": 1.46, "PCr": 1.46, "GPC": 1.30, "PCh": 1.30},
    metabolite_t2={"NAA": 0.247, "NAAG": 0.247, "Cr": 0.162, "PCr": 0.162, "GPC": 0.207, "PCh": 0.207},
    default_metabolite_t1=1.3,
    default_metabolite_t2=0.160,
)

#: Approximate literature values at 7T: water GM/WM T1 2.13/1.22 s (Rooney et al. 2007, Magn Reson Med 57:308),
#: water T2 about 0.050/0.045 s and CSF T1 4.4 s, T2 0.3 s (approximate); metabolite T1 about 1.6 s and T2 about
#: 0.11 s (short T2 at high field; approximate). Override them with study-specific values when known.
RELAXATION_7T = RelaxationTimes(
    field_tesla=7.0,
    water_t1={"gm": 2.13, "wm": 1.22, "csf": 4.4},
    water_t2={"gm": 0.050, "wm": 0.045, "csf": 0.30},
    metabolite_t1={},
    metabolite_t2={},
    default_metabolite_t1=1.6,
    default_metabolite_t2=0.110,
)


def relaxation_times_for_field(field_tesla: float) -> RelaxationTimes:
    """The stated relaxation table nearest to the field strength (3T below 5T, else 7T)."""
    return RELAXATION_3T if field_tesla < 5.0 else RELAXATION_7T


class QuantParams(BaseModel):
    """Documented constants of water scaling."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    water_content: dict[str, float] = Field(
        {"gm": 0.78, "wm": 0.65, "csf": 0.97}, description="Water content (g/ml) of each tissue compartment."
    )
    pure_water_mm: float = Field(PURE_WATER_MM, description="Concentration of pure water (mM = mmol/kg).")
    water_protons: int = Field(WATER_PROTONS, description="Protons per water molecule.")
    correct_t1: bool = Field(True, description="Apply the T1 saturation factor 1 - exp(-TR/T1).")


def attenuation(te: float, tr: float | None, t1: float, t2: float, *, correct_t1: bool = True) -> float:
    """Fraction of the fully relaxed signal that remains: ``exp(-TE/T2) (1 - exp(-TR/T1))``."""
    r = float(np.exp(-te / t2))
    if correct_t1 and tr is not None and np.isfinite(tr):
        r *= float(1 - np.exp(-tr / t1))
    return r


@dataclass(frozen=True)
class WaterFit:
    """A single Voigt line fitted to the unsuppressed water FID; ``area`` is its amplitude at t = 0."""

    area: float
    frequency_hz: float
    lorentzian_hz: float
    gaussian_hz: float
    phase_deg: float
    residual_fraction: float


def fit_water_reference(fid: np.ndarray, dwell_time: float) -> WaterFit:
    """Area of the water reference from a fit of one Voigt line in the time domain (first quarter of the FID).

    The area of a line equals its FID amplitude at t = 0; fitting the decay from the second sample on and
    extrapolating to t = 0 (rather than reading the first sample) makes it robust to noise and to a first point
    that some converters halve.
    """
    fid = np.asarray(fid, complex).ravel()
    if fid.size < 16 or not np.all(np.isfinite(fid)) or not np.any(fid):
        raise BadDataError("the water reference FID is empty, all zero or not finite", fix="check the mrsref file")
    n = max(16, fid.size // 4)
    y = fid[1:n]
    t = np.arange(1, n) * dwell_time
    spec = np.fft.fftshift(np.fft.fft(fid))
    freqs = np.fft.fftshift(np.fft.fftfreq(fid.size, dwell_time))
    f0 = float(freqs[np.argmax(np.abs(spec))])
    a0 = float(np.abs(y[:4]).mean())

    def model(p):
        amp, phase, f, lor, gau2 = p
        return amp * np.exp(1j * phase + (2j * np.pi * f - np.pi * lor) * t - (np.pi**2 / (4 * np.log(2))) * gau2 * t * t)

    def resid(p):
        r = y - model(p)
        return np.concatenate([r.real, r.imag]) / max(a0, 1e-300)

    p0 = [a0, float(np.angle(y[1])), f0, 5.0, 0.0]
    sol = least_squares(resid, p0, bounds=([0, -np.inf, -np.inf, 0, 0], [np.inf, np.inf, np.inf, 500, 500**2]),
                        x_scale="jac")
    amp, phase, f, lor, gau2 = sol.x
    frac = float(np.linalg.norm(y - model(sol.x)) / np.linalg.norm(y))
    return WaterFit(area=float(amp), frequency_hz=float(f), lorentzian_hz=float(lor), gaussian_hz=float(np.sqrt(gau2)),
                    phase_deg=float(np.degrees(phase)), residual_fraction=frac)


def ratios(result: FitResult, references: tuple[str, ...] = ("tCr", "tNAA")) -> pd.DataFrame:
    """Concentration ratios of every component and sum to each reference (e.g. Glx/tCr), with CRLB-based SDs.

    The SD of a ratio uses the covariance of numerator and denominator (first-order error propagation).
    """
    names = list(result.names) + list(result.sums)
    rows = []
    for ref in references:
        try:
            w_ref = result._weights(ref)
        except KeyError:
            continue
        c_ref = float(w_ref @ result.concentrations)
        for name in names:
            w = result._weights(name)
            c = float(w @ result.concentrations)
            if c_ref <= 0:
                value, sd = float("nan"), float("nan")
            else:
                value = c / c_ref
                # d(c/r) = dc / r - c dr / r^2
                g = w / c_ref - w_ref * c / c_ref**2
                sd = float(np.sqrt(max(g @ result.covariance @ g, 0.0)))
            rows.append({"metabolite": name, "reference": ref, "ratio": value, "ratio_sd": sd})
    return pd.DataFrame(rows)


def water_scaled(result: FitResult, water_area: float, *, te: float, tr: float | None,
                 fractions: TissueFractions | None = None, relaxation: RelaxationTimes | None = None,
                 field_tesla: float = 3.0, params: QuantParams | None = None) -> pd.DataFrame:
    """Molal and molar concentrations (mM) of every component and sum, with CRLBs on the same scale.

    ``te``/``tr`` in seconds. Without ``fractions`` the stated :data:`DEFAULT_FRACTIONS` are used and a warning
    says so.
    """
    params = params or QuantParams()
    if fractions is None:
        fractions = DEFAULT_FRACTIONS
        msg = (f"no tissue segmentation for the voxel: using default fractions GM {fractions.gm}, WM {fractions.wm}, "
               f"CSF {fractions.csf}")
        warnings.warn(msg, stacklevel=2)
        log.warning(msg)
    relaxation = relaxation or relaxation_times_for_field(field_tesla)
    if not water_area > 0:
        raise BadDataError(f"water reference area is {water_area}", fix="check the water reference (mrsref) file")
    vol = {"gm": fractions.gm, "wm": fractions.wm, "csf": fractions.csf}
    a = params.water_content
    water_signal = {t: vol[t] * a[t] * attenuation(te, tr, relaxation.water_t1[t], relaxation.water_t2[t],
                                                   correct_t1=params.correct_t1) for t in vol}
    total_water = sum(vol[t] * a[t] for t in vol)
    molar_water = params.pure_water_mm * sum(water_signal.values())  # visible water per litre of voxel
    molal_water = params.pure_water_mm * sum(water_signal.values()) / total_water
    wcsf = vol["csf"] * a["csf"] / total_water
    rows = []
    for name in list(result.names) + list(result.sums):
        members = result.sums.get(name, (name,))
        # A sum is corrected member by member (members may relax differently).
        w = result._weights(name)
        per_member = np.zeros_like(w)
        for m in members:
            t1, t2 = relaxation.metabolite(m)
            r_m = attenuation(te, tr, t1, t2, correct_t1=params.correct_t1)
            per_member[result._weights(m) > 0] = 1.0 / r_m
        g = w * per_member * params.water_protons / water_area
        value = float(g @ result.concentrations)
        sd = float(np.sqrt(max(g @ result.covariance @ g, 0.0)))
        rows.append({"metabolite": name,
                     "molar_mM": value * molar_water, "molar_crlb_mM": sd * molar_water,
                     "molal_mM": value * molal_water / (1 - wcsf), "molal_crlb_mM": sd * molal_water / (1 - wcsf),
                     "fractions_source": fractions.source})
    return pd.DataFrame(rows)


def water_scaled_simple(amplitude: float, water_area: float, *, water_concentration_mm: float,
                        metabolite_correction: float, water_protons: int = WATER_PROTONS) -> float:
    """The one-line water scaling of the ISMRM 2016 fitting challenge README, for checking against it.

    concentration = (relaxation-corrected water concentration) x (metabolite relaxation correction)
                    x (metabolite signal per proton) / (water signal per proton).
    """
    return water_concentration_mm * metabolite_correction * amplitude * water_protons / water_area
