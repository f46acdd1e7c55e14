"""What goes into a frozen model's bundle and card, from the group level's results (no file written here).

The card is what a site reads before trusting the model with a patient: versions, the features and their atlas and
source, how sites were harmonised and what happens to an unseen site, who the model was trained on, how well it
did (nested CV with CIs and permutation p, external and saline cohorts), how its probabilities are calibrated, its
decision threshold, its intended use and its limitations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.__about__ import __version__
from bids_ketamine.structural.bundle import ModelBundle, library_versions
from bids_ketamine.structural.predict import IMPLICIT_SITE_NOTE, model_removes_site_effects, training_reference

LIMITATIONS = (
    "Trained on one discovery cohort; performance outside its sites, scanners, age and TIV range is unknown.",
    "A probability is calibrated to the discovery cohort's outcome rate; a clinic with another base rate should "
    "read it as relative, not absolute.",
    "Regional grey-matter volumes from one atlas and one feature source: other atlases or sources are refused.",
    "A site the model has not seen is harmonised from its own subjects only when there are enough of them; a "
    "single new patient from a new site is scored un-harmonised and flagged.",
    "Research use: not a medical device, not validated for clinical decisions.",
)


def intended_use(wording, *, voxelwise: bool) -> str:
    """The card's intended use: a response model reads a pre-treatment image; a model of another outcome column
    (depression vs control) is not tied to a treatment, so its card does not say "pre-treatment"."""
    features = "voxel-wise modulated grey matter" if voxelwise else "regional grey-matter volumes"
    image = "a pre-treatment T1w image" if wording.is_response else "a T1w image"
    return (f"Research estimate of the probability of {wording.phrase} for an adult scanned like the training "
            f"cohort, from {features} of {image}.")


def _metric_rows(metrics: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for row in metrics.to_dict(orient="records"):
        rows.append({k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()})
    return rows


def build_bundle(results, *, params, atlas: str, feature_source: list[str], wording, seed: int,
                 grid=None, template_space: str | None = None) -> ModelBundle:
    """The bundle of the final discovery model: pipeline, calibration, training reference and card."""
    table = results.training_table
    frame = results.training_frame
    y = table["outcome"].to_numpy(dtype=int)
    oof = results.calibration_scores
    reference = training_reference(results.final_model, frame, table, oof_scores=oof, labels=y, atlas=atlas,
                                   feature_source=feature_source, min_unseen_site_size=params.min_unseen_site_size)
    feature_type = "voxel" if grid is not None else "regional"
    reference["feature_type"] = feature_type
    reference["template_space"] = template_space
    if grid is not None:
        reference["voxel_grid"] = {**grid.describe(), "fwhm_mm": params.voxel_fwhm_mm}
    pca = params.voxel_pca_variance if grid is not None else params.pca_variance
    cal = results.calibration
    calibration = {"method": "platt", "slope": cal.map.slope, "intercept": cal.map.intercept,
                   "boot_slopes": cal.boot_slopes, "boot_intercepts": cal.boot_intercepts}
    sexes = table["sex"].value_counts().to_dict() if "sex" in table else {}
    card = {
        "model": {"name": f"bids_ketamine structural SVM ({atlas})", "kind": "ComBat -> standard scaling -> "
                  + (f"PCA ({pca:g} of the training variance, fitted in the training folds) -> " if pca else "")
                  + "balanced linear SVM", "feature_type": feature_type,
                  "C": results.final_c, "covariates": [c.removeprefix("__cov_").removesuffix("__")
                                                       for c in reference["covariates"]],
                  "random_seed": seed, "parameters": params.model_dump(mode="json", exclude={"anat", "model_file"})},
        "app": {"name": "bids_ketamine", "version": __version__, "libraries": library_versions()},
        "intended_use": intended_use(wording, voxelwise=grid is not None),
        "outcome": {"phrase": wording.phrase, "positive": wording.positive, "negative": wording.negative},
        "features": {"source": sorted({s for s in feature_source if s}), "atlas": atlas,
                     "template_space": template_space,
                     "type": feature_type, "names": reference["feature_names"],
                     "units": "grey-matter volume, mm^3" + (" per grid voxel" if grid is not None else ""),
                     **({"voxel_grid": reference["voxel_grid"]} if grid is not None else {})},
        "harmonisation": {
            "method": "ComBat (empirical Bayes, fitted on the training subjects; covariates kept: "
                      + (", ".join(reference["covariates"]) or "none") + ")" if params.harmonize else "none",
            "sites": reference["sites"], "site_known": reference["site_known"],
            "removes_site_effects": model_removes_site_effects(results.final_model),
            **({"no_site_column": IMPLICIT_SITE_NOTE} if not reference["site_known"] else {}),
            "unseen_site": f"estimated from its own subjects in the scored batch when it has at least "
                           f"{params.min_unseen_site_size}; otherwise left un-harmonised and flagged"},
        "training_cohort": {"n": int(y.size), "n_positive": int(y.sum()), "sites": reference["sites"],
                            "ranges": {"age": reference["age_range"], "tiv_mm3": reference["tiv_range"]},
                            "sex": {str(k): int(v) for k, v in sexes.items()}},
        "validation": {"scheme": params.cv, "outer_folds": results.folds[0], "inner_folds": results.folds[1],
                       "repeats": params.repeats, "n_permutations": params.n_permutations},
        "metrics": _metric_rows(results.metrics),
        # what the training run warned about (folds lowered, subjects left out, unseen sites...): a run that applies
        # the model repeats them, so its report shows the caveats of the model it used
        "training_notes": list(results.notes),
        "calibration": {"method": "Platt sigmoid fitted on the discovery cohort's out-of-fold scores of the final "
                                  "model's recipe (C fixed, outer folds of the nested CV, mean over repeats); "
                                  "Brier score and ECE on cross-fitted probabilities",
                        "slope": cal.map.slope, "intercept": cal.map.intercept, "brier": cal.brier, "ece": cal.ece,
                        "n_bins": cal.n_bins, "n_bootstrap": int(cal.boot_slopes.size),
                        "curve": cal.curve.to_dict(orient="records")},
        "decision_threshold": {"rule": f"score > 0 predicts {wording.positive}",
                               "probability_at_threshold": float(cal.map(0.0))},
        "out_of_distribution": {"age_range": reference["age_range"], "tiv_range": reference["tiv_range"],
                                "feature_distance_threshold": reference["ood_threshold"]},
        "limitations": list(LIMITATIONS) if grid is None else [
            "Voxel-wise modulated grey matter on one MNI grid from one feature source: regional input, another "
            "grid or another source is refused." if item.startswith("Regional") else item for item in LIMITATIONS],
    }
    return ModelBundle(pipeline=results.final_model, calibration=calibration, reference=reference, card=card)
