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
    macromolecules: Literal["auto", "basis", "model", "none"] = Field(
        "auto",
        description="'auto': the basis's own macromolecule/lipid components when it has some, else the model of "
        "spectroscopy.macromolecules (LCModel's MM09-MM20 and Lip09-Lip20 Gaussians with its ratio priors); "
        "'basis': only the basis's own; 'model': the model (the basis's own are dropped); 'none': no macromolecules "
        "or lipids. They are fitted as their own line-shape groups and never enter metabolite sums.",
    )
    lipids: bool | Literal["auto"] = Field(
        "auto",
        description="With the basis's own macromolecules: add the lipid components of the model (Lip09, Lip13a/b, "
        "Lip20); 'auto' adds them when the 1.1-1.5 ppm magnitude peak exceeds lipid_threshold times the NAA "
        "(1.9-2.1 ppm) one. The model (macromolecules='model' or 'auto' without basis MM) always has them.",
    )
    lipid_threshold: float = Field(1.0, gt=0, description="Peak ratio above which lipids='auto' adds lipids.")
    ratio_priors: Literal["macromolecules", "lcmodel", "none"] = Field(
        "lcmodel",
        description="Soft constraints between amplitudes (LCModel's defaults, spectroscopy.macromolecules): "
        "'lcmodel' (default, as LCModel itself fits) = the MM and lipid ratios plus LCModel's priors on small "
        "metabolites (Asp, GABA, Glc, sI, Tau relative to tNAA+tCr+tCho) and GSH/(Gln+GSH) below TE 50 ms, which "
        "pull those weakly determined metabolites towards typical values (their CRLBs include that prior "
        "information and bound the error about the truth, not the spread of a biased estimate); "
        "'macromolecules' = the MM and lipid ratios only; 'none'. Chosen from measurement "
        "(docs/spectroscopy_basis_vs_lcmodel.md): on the real lcmodel_test_lcm spectrum it brings Glx/tCr from "
        "+14 % to +2 % and Gln/tCr from +29 % to +7 % of LCModel's, and it lowers our median error on simulated "
        "spectra for tNAA, tCr, tCho, Glu and Glx; it raises GABA's median error on planted spectra (0.146 to "
        "0.172), choose 'macromolecules' where GABA is the outcome.",
    )
    water_removal: bool = Field(
        True, description="Remove residual water before the fit: HLSVD components inside water_band_ppm."
    )
    water_band_ppm: tuple[float, float] = Field(
        (4.2, 5.2), description="Band (ppm) whose HLSVD components are removed as residual water; its lower edge "
        "follows a water peak that sits lower (0.15 ppm below it; the ISMRM 2016 spectrum sub-24 has water at 4.16 ppm)."
    )
    water_removal_threshold: float = Field(
        0.3, ge=0, description="Remove residual water only when the largest magnitude in water_band_ppm exceeds "
        "this fraction of the largest in the fit window: on a spectrum without water, HLSVD components of the band "
        "would take metabolite signal (myo-inositol, creatine CH2) with them. 0 = always."
    )
    water_components: int = Field(25, ge=4, le=100, description="Number of HLSVD components of the decomposition.")
    lineshape_groups: dict[str, tuple[str, ...]] | None = Field(
        None,
        description="Components sharing one shift and Lorentzian/Gaussian broadening; None = two groups, "
        "'metabolites', 'macromolecules' and 'lipids'. Components not listed join the first group.",
    )
    baseline: Literal["bspline", "polynomial", "none"] = Field(
        "bspline", description="Smooth complex baseline: penalised cubic B-spline, Legendre polynomial, or none."
    )
    baseline_knot_spacing_ppm: float = Field(
        0.15, gt=0, description="Knot spacing (ppm) of the B-spline baseline (LCModel's DKNTMN); its flexibility "
        "is then set by baseline_smoothness."
    )
    baseline_smoothness: float | Literal["auto"] = Field(
        "auto",
        description="Weight of the second-difference penalty on the B-spline coefficients, relative to the number "
        "of fitted points; 0 = unpenalised; 'auto' = chosen from the data among baseline_smoothness_grid by the "
        "Akaike criterion with the baseline's effective number of parameters and the residual's correlation (as "
        "LCModel and Osprey choose their regularised spline's stiffness from the data).",
    )
    baseline_smoothness_grid: tuple[float, ...] = Field(
        (1.0, 3.0, 10.0, 30.0, 100.0, 1000.0, 10000.0),
        description="Candidate smoothness weights of the 'auto' choice; the most flexible (1: about 2.5 effective "
        "parameters per ppm with 0.15 ppm knots) is the floor that keeps the baseline from taking over broad "
        "macromolecule signal, as LCModel's minimum knot spacing DKNTMN and its regularisation do."
    )
    baseline_order: int = Field(2, ge=0, le=10, description="Degree of the polynomial baseline.")
    max_shift_hz: float = Field(15.0, gt=0, description="Bound on the frequency shift of each line-shape group (Hz).")
    max_lorentzian_hz: float = Field(
        30.0, gt=0, description="Bound on the extra Lorentzian broadening (FWHM, Hz) of each group."
    )
    max_gaussian_hz: float = Field(
        30.0, gt=0, description="Bound on the extra Gaussian broadening (FWHM, Hz) of each group."
    )
    nuisance_max_gaussian_ppm: float = Field(
        0.1, gt=0, description="Bound on the extra Gaussian FWHM (ppm) of the macromolecule and lipid groups, on "
        "top of the metabolites' line shape, which they share."
    )
    nuisance_max_shift_ppm: float = Field(
        0.03, gt=0, description="Bound on the shift (ppm) of the macromolecule and lipid groups relative to the "
        "metabolites' shift (LCModel's position tolerance of its simulated MM and lipids is 0.005-0.03 ppm)."
    )
    metabolite_shift_sd_ppm: float = Field(
        0.0, ge=0, description="When > 0, each metabolite also gets its own small shift with a Gaussian prior of "
        "this SD (ppm; LCModel uses 0.004, 0.002 for NAA and NAAG) about its group's shift; 0 = one shift per "
        "group (default: on the real lcmodel_test_lcm spectrum the own shifts moved tNAA 4 % and Gln 25 % away "
        "from LCModel's values)."
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
    qc_max_reference_crlb_percent: float = Field(
        20.0, gt=0, description="QC: the fit fails when the CRLB of tNAA or tCr exceeds this (%)."
    )
    qc_max_fwhm_ppm: float = Field(0.1, gt=0, description="QC: the fit fails when the NAA/Cr linewidth exceeds this.")
    qc_min_snr: float = Field(5.0, ge=0, description="QC: the fit fails when the SNR (NAA singlet) is below this.")
    noise_ppm: tuple[float, float] | None = Field(
        None,
        description="Signal-free window (ppm) for the noise SD of SNR and CRLB; None = the fit residual in "
        "ppm_range (conservative: it includes model error).",
    )

    @model_validator(mode="after")
    def _ranges_increase(self) -> FitParams:
        for name in ("ppm_range", "snr_peak_ppm", "noise_ppm", "water_band_ppm"):
            lo_hi = getattr(self, name)
            if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
                raise ValueError(f"{name} must be (low, high) with low < high, got {lo_hi}")
        return self
