"""Documented settings of the dynamic (joint multi-block) fMRS fit (``[spectroscopy.dynamic]`` in the config)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Nuisance = Literal["shared", "per_block", "linear"]


class DynamicFitParams(BaseModel):
    """How the blocks of one session are fitted together (see :mod:`bids_ketamine.spectroscopy.dynamic_fit`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    concentrations: Literal["time_model", "per_block"] = Field(
        "time_model",
        description="'time_model': every concentration is constant before the infusion onset and linear after it "
        "(or follows design_file); 'per_block': free in every block (the time model is then fitted to the implied "
        "block values).")
    design_file: Path | None = Field(
        None, description="TSV with one row per block (optional 'block' column) and one column per regressor: a "
        "user's concentration design instead of the default time model (as in FSL-MRS fsl_dynmrs).")
    time_varying: tuple[str, ...] | None = Field(
        None, description="Components (synonyms accepted) whose concentrations follow the design; every other "
        "metabolite is one amplitude for the whole session. None = all metabolites.")
    nuisance_concentrations: Literal["time_model", "shared"] = Field(
        "shared", description="Macromolecule and lipid components: one amplitude for the whole session (default: "
        "they do not change over minutes, and a block's macromolecules under Glx are what trades off most with its "
        "Glx; sharing them halves the slope's SD on simulated sessions), or follow the concentration design.")
    lineshape: Nuisance = Field("shared", description="Lorentzian and Gaussian broadening of each line-shape group "
                                "across blocks: shared, free per block, or linear in time.")
    shift: Nuisance = Field("shared", description="Frequency shift of each line-shape group across blocks.")
    phase: Nuisance = Field(
        "per_block", description="Zero- and first-order phase across blocks. Default per block: the preprocessed "
        "block averages differ in phase, and one phase for the session biased the Glx/tNAA slope low by 1.6 SE on "
        "simulated sessions (docs/fmrs_dynamic_validation.md).")
    baseline: Nuisance = Field("shared", description="Smooth baseline across blocks: one for the session, one per "
                               "block, or a baseline plus a linear change in time.")
    max_nfev: int = Field(300, ge=5, description="Cap on model evaluations of the joint refinement.")
