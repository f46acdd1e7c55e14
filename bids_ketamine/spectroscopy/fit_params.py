"""Documented parameters of the linear-combination fit (and of the quantification that follows it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FitParams(BaseModel):
    """Every setting of :func:`bids_ketamine.spectroscopy.fit.fit_spectrum`, with the defaults used in reports."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ppm_range: tuple[float, float] = Field(
        (0.2, 4.2), description="Chemical-shift window (ppm) in which the model is compared with the data."
    )
    include: tuple[str, ...] | None = Field(
        None, description="Basis components to fit (synonyms accepted); None = all components of the basis."
    )
    exclude: tuple[str, ...] = Field((), description="Basis components left out of the fit (e.g. ('Ace', 'Ala')).")
    macromolecules: Literal["basis", "none"] = Field(
        "basis",
        description="'basis': macromolecule/lipid components of the basis are fitted as their own line-shape group; "
        "'none': they are dropped.",
    )
    lipids: bool | Literal["auto"] = Field(
        "auto",
        description="Add broad lipid components (Lip09, Lip13, Lip20; LCModel's published positions and widths) "
        "as their own line-shape group; 'auto' adds them when the 1.1-1.5 ppm magnitude peak exceeds "
        "lipid_threshold times the NAA (1.9-2.1 ppm) one (scalp lipid or lactate/lipid-rich spectra).",
    )
    lipid_threshold: float = Field(1.0, gt=0, description="Peak ratio above which lipids='auto' adds lipids.")
    residual_water_ppm: tuple[float, float] | None = Field(
        (4.0, 5.3),
        description="Band (ppm) where strong residual water is modelled by HSVD lines with free complex amplitudes "
        "added to the baseline (see residual_water_threshold); None = never.",
    )
    residual_water_threshold: float = Field(
        1.5,
        gt=0,
        description="Model residual water only when the largest magnitude in residual_water_ppm exceeds this "
        "multiple of the largest one elsewhere in ppm_range.",
    )
    conjugate: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Complex-conjugate the data before fitting: 'yes' for LCModel-convention data, 'auto' to "
        "decide from where the signal lies (the metabolite window versus its mirror image about water).",
    )
    lineshape_groups: dict[str, tuple[str, ...]] | None = Field(
        None,
        description="Components sharing one shift and Lorentzian/Gaussian broadening; None = two groups, "
        "'metabolites' and 'macromolecules'. Components not listed join the first group.",
    )
    baseline: Literal["bspline", "polynomial", "none"] = Field(
        "bspline", description="Smooth complex baseline: penalised cubic B-spline, Legendre polynomial, or none."
    )
    baseline_knot_spacing_ppm: float = Field(
        0.5, gt=0, description="Knot spacing (ppm) of the B-spline baseline; smaller = more flexible."
    )
    baseline_smoothness: float = Field(
        1.0,
        ge=0,
        description="Weight of the second-difference penalty on the B-spline coefficients, relative to the number "
        "of fitted points; 0 = unpenalised.",
    )
    baseline_order: int = Field(2, ge=0, le=10, description="Degree of the polynomial baseline.")
    max_shift_hz: float = Field(15.0, gt=0, description="Bound on the frequency shift of each line-shape group (Hz).")
    max_lorentzian_hz: float = Field(
        30.0, gt=0, description="Bound on the extra Lorentzian broadening (FWHM, Hz) of each group."
    )
    max_gaussian_hz: float = Field(
        30.0, gt=0, description="Bound on the extra Gaussian broadening (FWHM, Hz) of each group."
    )
    first_order_phase: bool = Field(True, description="Fit a first-order phase (a receiver delay), not only zero-order.")
    start_shift_step_hz: float = Field(
        1.0, gt=0, description="Step of the start grid over the frequency shift (Hz), rounded to whole frequency bins."
    )
    start_phase_steps: int = Field(16, ge=4, description="Number of zero-order phases in the start grid.")
    start_linewidths_hz: tuple[float, ...] = Field(
        (2.0, 5.0, 9.0), description="Extra Lorentzian broadenings (Hz) tried in the start grid."
    )
    max_nfev: int = Field(200, ge=5, description="Cap on model evaluations of the nonlinear refinement.")
    snr_peak_ppm: tuple[float, float] = Field(
        (1.9, 2.1), description="Window (ppm) of the SNR signal: the height of the fitted NAA singlet (the "
        "whole fitted metabolite spectrum where the basis has no NAA)."
    )
    noise_ppm: tuple[float, float] | None = Field(
        None,
        description="Signal-free window (ppm) for the noise SD of SNR and CRLB; None = the fit residual in "
        "ppm_range (conservative: it includes model error).",
    )

    @model_validator(mode="after")
    def _ranges_increase(self) -> FitParams:
        for name in ("ppm_range", "snr_peak_ppm", "noise_ppm"):
            lo_hi = getattr(self, name)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{name} must be (low, high) with low < high, got {lo_hi}")
        return self
