"""Parameters of the structural analysis (config section ``[structural]``), with their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bids_ketamine.structural.anat_params import AnatFeatureParams


class StructuralParams(BaseModel):
    """Grey-matter features (``anat``) and the group-level classifier and its validation."""

    model_config = ConfigDict(extra="forbid")

    anat: AnatFeatureParams = Field(default_factory=AnatFeatureParams,
                                    description="Participant level: grey-matter feature sources, atlas, pipeline.")
    cv: Literal["stratified", "leave-site-out"] = Field(
        "stratified", description="Outer cross-validation: stratified k-fold on the outcome (repeated), or one "
                                  "site held out per fold (not repeated).")
    outer_folds: int = Field(5, ge=2, le=50, description="Outer folds (stratified scheme).")
    inner_folds: int = Field(5, ge=2, le=50, description="Inner folds that choose C.")
    repeats: int = Field(10, ge=1, le=1000, description="Outer CV repeats with new random partitions; a subject's "
                                                        "decision scores are averaged over repeats.")
    c_grid: tuple[float, ...] = Field((0.01, 0.1, 1.0), min_length=1,
                                      description="SVM C values tried in the inner CV (features are standardised "
                                                  "and divided by sqrt(number of features), so C is comparable "
                                                  "across atlases).")
    pca_variance: float | None = Field(None, gt=0, lt=1, description="Keep PCA components explaining this "
                                                                      "fraction of the training variance; none: "
                                                                      "no PCA.")
    feature_type: Literal["regional", "voxel"] = Field(
        "regional", description="Features of the classifier: regional GM volumes of the atlas (default), or "
                                "voxel-wise modulated GM (the participant level's MNI maps, masked with the MNI152 "
                                "GM template, averaged onto an isotropic voxel_size_mm grid, optionally smoothed; "
                                "PCA inside the training folds).")
    voxel_size_mm: float = Field(4.0, ge=1.0, le=12.0, description="Voxel-wise features: isotropic grid spacing "
                                                                   "(mm) in MNI space.")
    voxel_fwhm_mm: float = Field(0.0, ge=0.0, le=20.0, description="Voxel-wise features: Gaussian smoothing FWHM "
                                                                   "(mm) before resampling; 0: none.")
    voxel_pca_variance: float = Field(0.8, gt=0, lt=1, description="Voxel-wise features: PCA keeps components "
                                                                   "explaining this fraction of the training "
                                                                   "variance (fitted in every training fold).")
    harmonize: bool = Field(True, description="ComBat site harmonisation (fitted on training folds only).")
    covariates: tuple[Literal["age", "sex", "tiv"], ...] = Field(
        ("age", "sex", "tiv"), description="Effects ComBat keeps (never the outcome).")
    min_unseen_site_size: int = Field(5, ge=2, description="A site not in the training data is harmonised from its "
                                                           "own subjects when it has at least this many; otherwise "
                                                           "left un-harmonised with a warning.")
    n_permutations: int = Field(1000, ge=0, le=100000, description="Label permutations; each re-runs the whole "
                                                                    "nested CV (and scores external cohorts).")
    n_bootstrap: int = Field(2000, ge=0, le=100000, description="Bootstrap resamples for confidence intervals.")
    calibration_bootstrap: int = Field(1000, ge=0, le=100000,
                                       description="Bootstrap refits of the calibration map (Platt, on out-of-fold "
                                                   "scores) behind each subject's probability interval.")
    model_file: Path | None = Field(None, description="Apply this saved model bundle (group/structural/"
                                                      "*_model.skops) to every participant instead of training; "
                                                      "also set by --model.")
    ci_level: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of the intervals.")
    solver_tol: float = Field(1e-2, gt=0, le=0.1, description="Stopping tolerance of the SVM dual solver: "
                                                               "largest coordinate step x Q_ii in the last sweep "
                                                               "(liblinear's default for this solver is 0.1).")

    @field_validator("c_grid")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(c <= 0 for c in value):
            raise ValueError("every C must be positive")
        return tuple(sorted(set(value)))
