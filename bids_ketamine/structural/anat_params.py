"""Parameters of the structural analysis' participant level (grey-matter features), with their defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FeatureSource = Literal["fmriprep", "cat12", "freesurfer", "builtin"]


class AnatFeatureParams(BaseModel):
    """Grey-matter features: which source to use, the atlas, and the built-in pipeline's settings."""

    model_config = ConfigDict(extra="forbid")

    sources: tuple[FeatureSource, ...] = Field(
        ("fmriprep", "cat12", "freesurfer", "builtin"),
        description="Feature sources in order of preference; the first one a participant has is used "
                    "(fmriprep = sMRIPrep/fMRIPrep GM probseg + T1w-to-MNI transform; cat12 = mwp1 map; "
                    "freesurfer = aseg/aparc stats; builtin = antspyx pipeline on the raw T1w).")
    atlas_nifti: Path | None = Field(None, description="User atlas: integer label NIfTI in MNI space (default: "
                                                       "Desikan-Killiany + cerebellum shipped with the install).")
    atlas_labels: Path | None = Field(None, description="User atlas: TSV with columns index, name "
                                                        "(optional hemisphere, structure).")
    atlas_name: str | None = Field(None, pattern=r"^[A-Za-z0-9]+$",
                                   description="Atlas label in output names (atlas-<name>); default from the file.")
    smoothing_fwhm_mm: float = Field(0.0, ge=0, le=20,
                                     description="Gaussian FWHM (mm) applied to the written modulated GM map "
                                                 "(regional volumes always use the unsmoothed map).")
    builtin_resolution_mm: Literal[1, 2] = Field(2, description="MNI grid (mm) of the built-in pipeline's outputs.")
    builtin_work_resolution_mm: float = Field(2.0, ge=0.8, le=3.0,
                                              description="Subject-space resolution (mm) of bias correction and "
                                                          "segmentation in the built-in pipeline.")
    builtin_syn_iterations: tuple[int, ...] = Field((40, 20, 0),
                                                    description="SyN iterations per level (coarse to fine) of "
                                                                "the built-in pipeline.")
    builtin_reproducible: bool = Field(True, description="Run the built-in pipeline's ANTs steps on one thread so "
                                                         "the same input and seed give identical outputs (about "
                                                         "25 s CPU per subject); False uses --omp-nthreads, "
                                                         "faster but reproducible only to ~1 %.")
    min_tiv_cm3: float = Field(900.0, gt=0, description="Smallest plausible TIV (cm^3): below it the input is "
                                                        "refused as not a (whole, adult) brain.")
    max_tiv_cm3: float = Field(2600.0, gt=0, description="Largest plausible TIV (cm^3).")
    min_template_correlation: float = Field(0.4, ge=0, le=1,
                                            description="Built-in pipeline: smallest correlation of the registered "
                                                        "T1w with the MNI template inside its brain mask; below "
                                                        "it the registration (or the input) is refused.")
    register_to_atlas_space: bool = Field(True, description="Register a GM map from another template (fMRIPrep's "
                                                            "MNI152NLin2009cAsym, CAT12's IXI549Space) to the "
                                                            "atlas' space before parcellation (affine, volume-"
                                                            "preserving); False lays the atlas on the map as given.")
    write_qc: bool = Field(True, description="Write the QC figure (GM map over the T1w/template).")

    @model_validator(mode="after")
    def _atlas_pair(self) -> AnatFeatureParams:
        if (self.atlas_nifti is None) != (self.atlas_labels is None):
            raise ValueError("give both atlas_nifti and atlas_labels, or neither (the default atlas)")
        if self.min_tiv_cm3 >= self.max_tiv_cm3:
            raise ValueError("min_tiv_cm3 must be below max_tiv_cm3")
        if not self.sources:
            raise ValueError("sources must name at least one feature source")
        return self


def anat_params_of(params: object) -> AnatFeatureParams:
    """The ``AnatFeatureParams`` of the structural parameters (its ``anat`` field), or the object itself."""
    if params is None:
        return AnatFeatureParams()
    if isinstance(params, AnatFeatureParams):
        return params
    anat = getattr(params, "anat", None)
    if isinstance(anat, AnatFeatureParams):
        return anat
    if isinstance(anat, dict):
        return AnatFeatureParams(**anat)
    raise TypeError(f"{type(params).__name__} has no 'anat: AnatFeatureParams' field")
