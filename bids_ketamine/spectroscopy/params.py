"""Documented parameters of the spectroscopy analysis (``[spectroscopy]`` in the config file)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from bids_ketamine.spectroscopy.dynamic_params import DynamicFitParams
from bids_ketamine.spectroscopy.fit_params import FitParams
from bids_ketamine.spectroscopy.quantify import QuantParams, TissueFractions


class PreprocessParams(BaseModel):
    """Coil combination, eddy-current correction, alignment and rejection of transients."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    align: bool = Field(True, description="Frequency and phase alignment of transients (spectral registration).")
    align_ppm_range: tuple[float, float] = Field((0.2, 4.2), description="ppm window the alignment compares.")
    reject: bool = Field(True, description="Reject outlier transients before averaging.")
    reject_threshold: float = Field(3.5, gt=0, description="Robust z-score above which a transient is rejected.")
    eddy_current_correction: bool | Literal["auto"] = Field(
        "auto", description="Klose correction of eddy currents: 'auto' = only with a dedicated eddy-current reference "
        "(acq-ecc mrsref), as LCModel and FSL-MRS default; True = also with the plain water reference; False = never. "
        "On the real Philips PRESS data of lcmodel_test_lcm (already corrected on the scanner) a correction with "
        "the water reference moves LCModel's own Glx/tCr by -21 %.")
    conjugate: Literal["auto", "yes", "no"] = Field(
        "auto", description="Complex-conjugate the data (some converters store the opposite sign); auto = detect "
        "from the mirrored NAA/Cr/Cho peaks.")


class BasisParams(BaseModel):
    """Where the basis set comes from: simulated for the acquisition (default), an LCModel .BASIS, or a folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["simulate", "lcmodel", "fid_folder"] = Field("simulate", description="Basis set source.")
    path: Path | None = Field(None, description="LCModel .BASIS file or folder of text FIDs (source != simulate).")
    sequence: Literal["auto", "PRESS", "STEAM", "sLASER"] = Field(
        "auto", description="Sequence to simulate; auto = PulseSequenceType of the sidecar, else PRESS.")
    mixing_time: float | None = Field(None, ge=0, description="STEAM mixing time TM (s); None = sidecar or 0.")
    metabolites: tuple[str, ...] | None = Field(
        None, description="Metabolites of the simulated basis; None = simulate.DEFAULT_METABOLITES, LCModel's 17 of "
        "its recommended brain basis (NAA, NAAG, Cr, PCr, GPC, PCh, mI, sI, Glu, Gln, GABA, GSH, Lac, Asp, Tau, Ala, "
        "Glc); PE, Gly and Asc are available (e.g. add them for a region or condition where they are expected).")
    press_te1: float | None = Field(
        None, gt=0, description="PRESS first echo time TE1 (s) of the simulation; None = min(11 ms, TE/2), as real "
        "PRESS sequences are asymmetric (NIfTI-MRS has no sidecar key for it; set it when the protocol states it). "
        "Recorded in the sidecar (Basis.PressTE1) and the methods.")


class SpectroscopyParams(BaseModel):
    """Every documented setting of analysis C (fMRS), with defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: PreprocessParams = PreprocessParams()
    basis: BasisParams = BasisParams()
    fit: FitParams = FitParams()
    blocks: bool = Field(True, description="fMRS: fit one spectrum per block of transients when events.tsv has "
                         "the infusion row; otherwise (or False) one average per acquisition.")
    water_scaling: bool = Field(True, description="Water-scaled molal/molar concentrations when a water reference "
                                "(acq-quant preferred, else the plain mrsref) is present.")
    quant: QuantParams = QuantParams()
    tissue_fractions: TissueFractions | None = Field(
        None, description="GM/WM/CSF volume fractions of the voxel; None = measured in the voxel from the T1w-space "
        "GM/WM/CSF probsegs (fMRIPrep/sMRIPrep) when present, else the stated defaults of quantify.py with a warning.")
    ratio_denominators: tuple[str, ...] = Field(("tCr", "tNAA"), description="Ratios reported in the table.")
    max_crlb_percent: float = Field(50.0, gt=0, description="QC: concentrations with a larger CRLB % are flagged.")
    group_metabolites: tuple[str, ...] | None = Field(
        None, description="Ratios modelled at group level; None = Glx/tNAA first, then every metabolite / tNAA "
        "(macromolecule and lipid components left out).")
    model_from_minute: float = Field(0.0, description="Group model uses blocks whose centre is at or after this "
                                     "many minutes from the infusion onset.")
    time_fit: Literal["dynamic", "blockwise"] = Field(
        "dynamic", description="First-level estimate of the time course that the group's pretreatment x time model "
        "uses: 'dynamic' = all blocks of a session fitted jointly (spectroscopy.dynamic), each session's time-model "
        "level and slope with their SEs in an inverse-variance weighted mixed model (about half the slope SD of "
        "block-wise fitting on simulated sessions); 'blockwise' = every block fitted on its own and the block "
        "values in the mixed model of Jelen et al. 2025 (the dynamic fit is then not run). Block fits and their "
        "mixed model are written either way.")
    dynamic: DynamicFitParams = DynamicFitParams()
    figures: bool = Field(True, description="Write a fit figure per spectrum and group time-course figures.")
