"""Every documented parameter of the connectivity analysis: the participant level (``participant``) and the group
level (PCA and its shuffle null, dimensionality, gene correlation with spatial nulls), with published defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams


class ConnectivityParams(BaseModel):
    """``[connectivity]`` section of the config file (Moujaes, Ji et al. 2024 unless noted)."""

    model_config = ConfigDict(extra="forbid")

    participant: ConnectivityParticipantParams = Field(default_factory=ConnectivityParticipantParams,
                                                       description="participant-level settings")
    # ---- which maps
    drugs: list[str] | None = Field(None, description="drugs to analyse (labels of the desc-<drug>minusplacebo "
                                                      "tables); None: every drug found")
    min_subjects: int = Field(3, ge=3, description="a drug with fewer delta maps is skipped with a note")
    # ---- PCA and its null
    n_shuffles: int = Field(5000, ge=1, description="within-subject parcel shuffles of the PCA null (published: 5000)")
    significance_percentile: float = Field(95.0, gt=0, lt=100, description="a PC is significant when its explained "
                                           "variance exceeds this percentile of the shuffled ones at the same rank")
    shuffle_batch_size: int = Field(100, ge=1, description="shuffles evaluated together (memory: batch x subjects "
                                                           "x parcels x 8 bytes)")
    n_map_components: int = Field(5, ge=1, description="PC maps written as NIfTI images (at least every "
                                                       "significant PC; all PCs are in the tables)")
    # ---- dimensionality
    dimensionality_subsample_size: int | None = Field(None, ge=2, description="subjects per subsample for the "
                                                      "equal-n participation ratio; None: one below the smallest "
                                                      "drug group, so its subsamples differ (published: 22)")
    dimensionality_n_subsamples: int = Field(1000, ge=1, description="subsamples describing each drug (all of "
                                                                     "them, once each, when fewer exist)")
    dimensionality_n_permutations: int = Field(5000, ge=0, description="reassignments of subjects between two "
                                               "drugs' pools in the permutation test of their PR difference")
    dimensionality_test_subsamples: int = Field(200, ge=1, description="subsamples defining the equal-n PR "
                                                "inside the permutation test and the jackknife (recomputed for "
                                                "every permutation)")
    dimensionality_subsample_anova: bool = Field(False, description="also write the published one-way ANOVA and "
                                                 "t-tests over subsample PRs, labelled descriptive: subsamples "
                                                 "reuse subjects, so their p-values count subsamples, not "
                                                 "subjects, and are never the inference")
    # ---- genes
    gene_table: Path | None = Field(None, description="TSV: column 'parcel' (or 'name') with atlas parcel names, "
                                                      "one column per gene")
    ahba_dir: Path | None = Field(None, description="local Allen Human Brain Atlas microarray copy (abagen "
                                                    "layout) to compute the gene table with abagen; never "
                                                    "downloaded")
    genes: list[str] | None = Field(None, description="genes to test (None: every column of the gene table)")
    gene_components: list[int] = Field([1], description="PCs (1-based) whose maps are correlated with genes")
    gene_structures: list[Literal["cortex", "subcortex", "cerebellum", "brainstem"]] = Field(
        ["cortex"], description="parcels of these structures enter the gene analysis (published: cortex only)")
    n_surrogates: int = Field(10000, ge=1, description="spatial-autocorrelation surrogates per brain map "
                                                       "(published: 100,000)")
    n_naive_shuffles: int = Field(10000, ge=0, description="parcel shuffles of the naive null reported for "
                                                           "comparison (0: off)")
    surrogate_method: Literal["auto", "moran", "brainsmash", "spin", "spin_vasa", "spin_hungarian"] = Field(
        "auto", description="primary spatial null of the gene tests. 'auto': 'spin' on surface (fsLR) "
        "parcellations, 'moran' on volumetric atlases. 'spin': parcel centroids rotated on the fsLR sphere "
        "(Alexander-Bloch et al. 2018), each parcel taking the value of the nearest rotated parcel, the medial wall "
        "rotating along (parcels it lands on are left out of that spin); 'spin_vasa' / 'spin_hungarian': the same "
        "rotations with a one-to-one assignment (Vasa et al. 2018; Hungarian); 'moran': Moran spectral "
        "randomisation (geodesic distances on surfaces, Euclidean between volume centroids); 'brainsmash': "
        "variogram matching (Burt et al. 2020). Default from the calibration on real-shaped maps at 360 fsLR "
        "parcels (benchmarks/bench_surface_nulls.py: 500 pairs of unrelated smooth cortical maps per diffusion "
        "length 15, 30, 60 mm): 'spin' rejected at p < 0.05 in 4.8 % of pairs at each length (95 % CI 3.1-7.1 %), "
        "'spin_vasa' 10.2-12.0 %, 'spin_hungarian' 7.8-8.0 %, geodesic Moran 8.4-14.4 %, the naive shuffle "
        "35-74 %; on volumetric atlases Moran whole-brain at 3.9-6.1 %, brainsmash 4-11 %")
    gene_other_nulls: list[Literal["moran", "brainsmash", "spin", "spin_vasa", "spin_hungarian"]] | None = Field(
        None, description="nulls whose p-values the gene tables report beside the primary one (None: 'spin_vasa' "
                          "and 'moran' on surface parcellations, none on volumetric atlases)")
    surrogate_per_hemisphere: bool = Field(False, description="generate surrogates per hemisphere where every "
                                           "parcel is L or R (the published choice). Off by default: it loses the "
                                           "coupling between the hemispheres that smooth maps have, and rejected "
                                           "unrelated smooth maps more often (Moran 4.5-11.5 %, brainsmash "
                                           "6-20 %) "
                                           "than whole-brain surrogates; see the null-calibration table")
    surrogate_resample: bool = Field(True, description="brainsmash: surrogates take the map's own values (per "
                                                       "surrogate group), keeping the value distribution (Moran "
                                                       "surrogates keep the mean and sum of squares instead)")
    surrogate_deltas: list[float] = Field([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                                          description="brainsmash neighbourhood fractions tried for smoothing")
    surrogate_kernel: Literal["exp", "gaussian", "invdist", "uniform"] = Field("exp", description="brainsmash "
                                                                                 "smoothing kernel")
    surrogate_pv: int = Field(25, gt=0, le=100, description="brainsmash: percentile of distances in the variogram")
    surrogate_nh: int = Field(25, ge=3, description="brainsmash: number of variogram distance bins")
    fdr_alpha: float = Field(0.05, gt=0, lt=1, description="FDR level reported as significant across genes")
    # ---- null calibration (the report's evidence that the spatial null is calibrated)
    null_calibration_pairs: int = Field(500, ge=0, description="pairs of unrelated smooth maps on the atlas to "
                                                               "measure the spatial and the naive null's "
                                                               "false-positive rate, written as a table and a "
                                                               "figure (0: off); a few seconds with Moran "
                                                               "surrogates, cached in the work folder")
    null_calibration_n_null: int = Field(199, ge=19, description="surrogates / shuffles per calibration pair")
    null_calibration_both_modes: bool = Field(True, description="calibrate per-hemisphere and whole-brain "
                                                                "surrogates side by side (where the atlas allows)")
    null_calibration_other_methods: list[Literal["moran", "brainsmash", "spin", "spin_vasa",
                                                 "spin_hungarian"]] | None = Field(
        None, description="nulls calibrated next to the primary one (None: every cheap null offered for the "
                          "parcellation: spin, spin_vasa, spin_hungarian and moran on surfaces, moran on volumes; "
                          "brainsmash costs about 1 s per pair at 68 parcels and runs only when listed)")
    null_calibration_length_mm: float = Field(30.0, gt=0, description="smoothness of the calibration maps (mm): "
                                              "the Gaussian length scale of random fields on volume centroids, or "
                                              "the diffusion length of random fields on the fsLR cortex")
    # ---- imported maps
    parcel_aliases: Path | None = Field(None, description="TSV with columns 'alias' (a parcel name used in the "
                                        "delta maps) and 'parcel' (the atlas's name for it): maps whose parcels "
                                        "are named another way are translated before matching")

    @model_validator(mode="after")
    def _one_gene_source(self) -> "ConnectivityParams":
        if self.gene_table is not None and self.ahba_dir is not None:
            raise ValueError("give gene_table or ahba_dir, not both")
        if any(c < 1 for c in self.gene_components):
            raise ValueError("gene_components are 1-based PC numbers")
        if any(not 0 < d < 1 for d in self.surrogate_deltas):
            raise ValueError("surrogate_deltas must lie in (0, 1)")
        return self
