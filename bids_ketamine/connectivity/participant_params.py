"""Every documented parameter of the connectivity participant level, with the published defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ConnectivityParticipantParams(BaseModel):
    """Scrubbing, denoising and parcellation settings (Moujaes, Ji et al. 2024 unless noted)."""

    model_config = ConfigDict(extra="forbid")

    fd_threshold: float = Field(0.5, gt=0, description="framewise displacement (mm, fMRIPrep's Power FD) above "
                                                        "which a frame is censored")
    dvars_ratio: float = Field(1.6, gt=1, description="a frame is censored when its normalised intensity change "
                                                      "exceeds this multiple of the run's median change")
    neighbours: int = Field(1, ge=0, description="frames censored on each side of a flagged frame")
    max_scrubbed_fraction: float = Field(0.5, gt=0, le=1, description="a session with a larger fraction of "
                                                                      "censored frames is excluded")
    high_pass_hz: float | None = Field(0.008, ge=0, description="cut-off of the cosine (DCT) high-pass basis "
                                                                "fitted in the nuisance regression; None: off")
    global_signal_regression: bool = Field(True, description="regress the global signal (and its derivative)")
    motion_regressors: bool = Field(True, description="regress the six rigid-body parameters and derivatives")
    tissue_regressors: bool = Field(True, description="regress CSF and white-matter signals and derivatives")
    derivatives: bool = Field(True, description="add the first temporal derivative of every nuisance signal")
    atlas_nifti: Path | None = Field(None, description="user atlas (integer NIfTI in MNI space); None: the "
                                                       "default atlas shipped with the install")
    atlas_labels: Path | None = Field(None, description="labels TSV of the user atlas (columns index, name)")
    cifti_dlabel: Path | None = Field(None, description="surface parcellation on the fsLR grayordinates: a CIFTI "
                                                        ".dlabel.nii, or a built-in one ('Glasser': HCP MMP 1.0, "
                                                        "360 parcels; 'CABNP': Cole-Anticevic network partition, "
                                                        "718 parcels); needed for space-fsLR dtseries BOLD, and read "
                                                        "by the group level")
    gifti_labels: list[Path] | None = Field(None, min_length=2, max_length=2,
                                            description="surface parcellation as a pair of fsLR 32k .label.gii "
                                                        "files [left, right] (instead of cifti_dlabel)")
    space: Literal["MNI", "fsLR"] = Field("MNI", description="which fMRIPrep output to parcellate: volumetric "
                                                              "MNI BOLD, or CIFTI fsLR (needs cifti_dlabel)")
    min_parcel_voxels: int = Field(1, ge=1, description="a parcel with fewer voxels inside the brain mask is an "
                                                        "error (parcels must match across subjects)")
    chunk_volumes: int = Field(8, ge=1, description="volumes read at a time from the BOLD file (memory bound; "
                                                   "8 keeps each piece under the allocator's 32 MB mmap "
                                                   "threshold at 2 mm, so memory is reused, not re-faulted)")

    @model_validator(mode="after")
    def _atlas_pair(self) -> "ConnectivityParticipantParams":
        if (self.atlas_nifti is None) != (self.atlas_labels is None):
            raise ValueError("give atlas_nifti and atlas_labels together (or neither for the default atlas)")
        if self.space == "fsLR" and self.cifti_dlabel is None and not self.gifti_labels:
            raise ValueError("space 'fsLR' needs cifti_dlabel (a .dlabel.nii on the fsLR grayordinates, or 'Glasser' "
                             "/ 'CABNP') or gifti_labels")
        if self.cifti_dlabel is not None and self.gifti_labels:
            raise ValueError("give cifti_dlabel or gifti_labels, not both")
        return self
