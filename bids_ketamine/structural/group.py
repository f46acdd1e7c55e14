"""Structural analysis, group level: leakage-free prediction of response from regional grey-matter volumes.

Reads the participant-level tables (``sub-*/anat/sub-*_atlas-<name>_morph.tsv``), then
1. discovery cohort (ketamine arm, cohort ``discovery``): repeated nested CV of ComBat -> scaling -> [PCA] ->
   balanced linear SVM with C chosen in the inner loop; per-subject scores pooled over repeats; BAC, sensitivity,
   specificity, AUC with bootstrap CIs; permutation p from re-running the whole nested CV on permuted labels;
2. final model on the whole discovery cohort (C by CV on it) scoring the external ketamine cohort(s) and the saline
   cohort, each with its own metrics and permutation p (labels permuted against the frozen model's scores);
3. Haufe activation pattern of the final model per region (positive = more grey matter towards response) and as an
   MNI map painted into the atlas.
Everything is computed before the first file is written, so a failure leaves no partial group output.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.structural.calibration import Calibration, calibrate_out_of_fold
from bids_ketamine.structural.combat import UnseenSiteWarning
from bids_ketamine.structural.interpret import pipeline_pattern, region_map
from bids_ketamine.structural.metrics import balanced_accuracy, metrics_table_rows, permutation_p, roc_auc
from bids_ketamine.structural.model import ModelSpec, PreprocessorFactory, make_pipeline, model_frame
from bids_ketamine.structural.params import StructuralParams
from bids_ketamine.structural.validation import check_cohort, choose_c_by_cv, feasible_folds, fixed_c_oof_scores, \
    make_splits, nested_cv
from bids_ketamine.structural.wording import OutcomeWording, outcome_wording

DATATYPE = "structural"

PROBABILITY_COLUMNS = {
    "probability": {"Description": "Calibrated probability of the positive class: Platt map fitted on the "
                                   "discovery cohort's out-of-fold scores of the final model's recipe (its C); "
                                   "discovery subjects: their own out-of-fold score through a map fitted on the "
                                   "other calibration folds (cross-fitted).", "Units": "1"},
    "probability_low": {"Description": "Lower bound of the probability's bootstrap interval (calibration map "
                                       "refitted on resampled out-of-fold scores).", "Units": "1"},
    "probability_high": {"Description": "Upper bound of the probability's bootstrap interval.", "Units": "1"},
}


def prediction_columns(wording: OutcomeWording) -> dict[str, Any]:
    """Sidecar descriptions of the predictions table, in the design's outcome wording."""
    return {
        "participant_id": "BIDS participant label (sub-<label>).",
        "cohort": {"Description": "Cohort the subject was scored in.",
                   "Levels": {"discovery": "nested cross-validation (pooled outer-test scores)",
                              "external": "external ketamine cohort, scored by the final discovery model",
                              "saline": "saline/placebo arm, scored by the final discovery model",
                              "new": "participant outside those cohorts, scored by a saved model"}},
        "site": "Acquisition site (from the study design).",
        "outcome": {"Description": f"Observed outcome: {wording.phrase}.", "Levels": wording.levels()},
        "score": {"Description": f"Decision score, positive towards {wording.positive} (discovery: mean over CV "
                                 "repeats).", "Units": "arbitrary"},
        "score_sd": {"Description": "Standard deviation of the decision score over CV repeats (discovery only).",
                     "Units": "arbitrary"},
        **PROBABILITY_COLUMNS,
        "predicted": {"Description": "Predicted outcome (score > 0).", "Levels": wording.levels()},
    }


def metric_columns(wording: OutcomeWording) -> dict[str, Any]:
    return {
        "cohort": "Cohort the metric describes (discovery, external, saline).",
        "metric": {"Description": "Metric.", "Levels": {
            "bac": "balanced accuracy (mean of sensitivity and specificity)",
            "sensitivity": f"{wording.positive} called {wording.positive}",
            "specificity": f"{wording.negative} called {wording.negative}", "auc": "area under the ROC curve"}},
        "value": {"Description": "Metric value.", "Units": "1"},
        "ci_low": {"Description": "Lower bound of the bootstrap confidence interval (subjects resampled within "
                                  "class).", "Units": "1"},
        "ci_high": {"Description": "Upper bound of the bootstrap confidence interval.", "Units": "1"},
        "p_permutation": "Permutation p = (1 + #{permuted >= observed}) / (1 + N); discovery: whole nested CV "
                         "re-run per permutation; external/saline: labels permuted against the frozen model's "
                         "scores.",
        "n_permutations": "Number of permutations N.",
        "n_subjects": "Subjects in the cohort.",
        wording.count_column: f"Subjects of the positive class ({wording.positive}) in the cohort.",
    }


def weight_columns(wording: OutcomeWording) -> dict[str, Any]:
    return {
        "region": "Atlas region.",
        "weight": {"Description": "Linear SVM weight on the standardised regional volume (a filter: not "
                                  "interpretable on its own).", "Units": "score per SD"},
        "activation": {"Description": "Haufe activation pattern cov(X) w / var(score) on the harmonised, "
                                      f"standardised training data: positive = more grey matter towards "
                                      f"{wording.positive}.", "Units": "SD per unit score"},
        "activation_mm3": {"Description": "Haufe activation pattern in the regional volume's own units.",
                           "Units": "mm^3 per unit score"},
        "correlation": "Correlation of the standardised regional volume with the decision score (training data).",
        "rank": "Rank of |activation| (1 = largest).",
    }


CALIBRATION_COLUMNS = {
    "bin_low": {"Description": "Lower edge of the probability bin.", "Units": "1"},
    "bin_high": {"Description": "Upper edge of the probability bin.", "Units": "1"},
    "n": "Discovery subjects whose cross-fitted probability falls in the bin.",
    "mean_predicted": {"Description": "Mean cross-fitted probability in the bin.", "Units": "1"},
    "fraction_positive": {"Description": "Observed fraction of the positive class in the bin.", "Units": "1"},
}


@dataclass
class StructuralResults:
    """Everything the group level computed, ready to be written."""

    predictions: pd.DataFrame
    metrics: pd.DataFrame
    weights: pd.DataFrame
    null_bac: np.ndarray
    final_c: float
    chosen_c: np.ndarray
    notes: list[str] = field(default_factory=list)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    final_model: Any = None
    calibration: Calibration | None = None
    training_frame: pd.DataFrame | None = None
    training_table: pd.DataFrame | None = None
    calibration_scores: np.ndarray | None = None
    folds: tuple[int, int] = (0, 0)


def covariate_column(table: pd.DataFrame, name: str) -> pd.Series:
    """One numeric covariate for ComBat (sex: F 0 / M 1; tiv: ``tiv_mm3``); NaN where missing or absent."""
    if name == "sex":
        values = table["sex"].map({"F": 0.0, "M": 1.0}) if "sex" in table else None
    elif name == "tiv":
        values = table["tiv_mm3"] if "tiv_mm3" in table else None
    else:
        values = pd.to_numeric(table[name], errors="coerce") if name in table else None
    if values is None:
        return pd.Series(np.nan, index=table.index, dtype=float)
    return values.astype(float)


def _covariates(table: pd.DataFrame, names: tuple[str, ...]) -> tuple[pd.DataFrame, list[str]]:
    """Numeric covariates for ComBat; a covariate missing for everyone is dropped, with a note."""
    out, notes = {}, []
    for name in names:
        values = covariate_column(table, name)
        if values.isna().all():
            notes.append(f"covariate {name} is missing for every subject and was not used")
            continue
        if values.isna().any():
            notes.append(f"covariate {name} is missing for {int(values.isna().sum())} subject(s): set to the "
                         "training mean")
        out[name] = values.to_numpy()
    return pd.DataFrame(out, index=table.index), notes


def assign_cohorts(participants: pd.DataFrame) -> pd.Series:
    """discovery / external (ketamine arm by cohort) and saline (saline arm, any cohort); others NaN."""
    arm, cohort = participants["arm"], participants["cohort"]
    out = pd.Series(np.nan, index=participants.index, dtype=object)
    out[(arm == "ketamine") & (cohort == "discovery")] = "discovery"
    out[(arm == "ketamine") & (cohort == "external")] = "external"
    out[arm == "saline"] = "saline"
    return out


def analyse(features: pd.DataFrame, participants: pd.DataFrame, params: StructuralParams, *, seed: int,
            n_jobs: int = 1, source: str | Path | None = None,
            wording: OutcomeWording | None = None) -> StructuralResults:
    """The whole group analysis on in-memory tables (no file written).

    ``features``: one row per subject (index participant_id), one column per region. ``participants``: the
    standardised participants table plus ``tiv_mm3``.
    """
    wording = wording or outcome_wording(None)
    table = participants.set_index("participant_id")
    common = [s for s in features.index if s in table.index]
    notes = []
    if len(common) < len(features):
        notes.append(f"{len(features) - len(common)} subject(s) with features are not in participants.tsv")
    table = table.loc[common]
    cohorts = assign_cohorts(table.reset_index()).set_axis(table.index)
    has_outcome = table["outcome"].notna()
    disc = table.index[(cohorts == "discovery") & has_outcome]
    if len(disc) == 0:
        raise MissingInputError("no discovery-cohort subject (ketamine arm, cohort discovery) with an outcome and "
                                "grey-matter features", path=source,
                                fix="check design.participants (arm, cohort) and design.response")
    dropped = int(((cohorts == "discovery") & ~has_outcome).sum())
    if dropped:
        notes.append(f"{dropped} discovery subject(s) without an outcome were left out")
    y = table.loc[disc, "outcome"].to_numpy(dtype=int)
    from bids_ketamine.structural.predict import IMPLICIT_SITE_NOTE, site_unknown

    if "site_known" in table and site_unknown(table.loc[disc]).all():
        notes.append(IMPLICIT_SITE_NOTE)
    if params.cv == "stratified":
        check_cohort(y, 2, what="discovery cohort", path=source)
        outer_folds, inner_folds, fold_notes = feasible_folds(y, params.outer_folds, params.inner_folds,
                                                              explicit=params.model_fields_set, path=source)
        notes += fold_notes
    else:
        check_cohort(y, params.inner_folds, what="discovery cohort", path=source)
        outer_folds, inner_folds = params.outer_folds, params.inner_folds
    covariates, cov_notes = _covariates(table, params.covariates)
    notes += cov_notes
    spec = ModelSpec(covariates=tuple(covariates.columns), harmonize=params.harmonize,
                     pca_variance=params.voxel_pca_variance if params.feature_type == "voxel" else params.pca_variance,
                     min_unseen_site_size=params.min_unseen_site_size,
                     tol=params.solver_tol)
    frame = model_frame(features.loc[common].reset_index(drop=True), table["site"].to_numpy(),
                        covariates.reset_index(drop=True))
    frame.index = pd.Index(common, name="participant_id")
    if not np.all(np.isfinite(features.loc[common].to_numpy(dtype=float))):
        raise BadDataError(f"the {params.feature_type} grey-matter features have missing values", path=source,
                           fix="re-run the participant level for the subjects with n/a volumes")
    disc_frame = frame.loc[disc]
    sites = table.loc[disc, "site"].to_numpy()
    splits = make_splits(y, outer_folds=outer_folds, inner_folds=inner_folds, repeats=params.repeats,
                         seed=seed, scheme=params.cv, sites=sites)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnseenSiteWarning)
        cv = nested_cv(disc_frame, y, PreprocessorFactory(spec), c_grid=params.c_grid, splits=splits,
                       n_permutations=params.n_permutations, seed=seed, tol=params.solver_tol, n_jobs=n_jobs)
        final_c, _ = choose_c_by_cv(disc_frame, y, PreprocessorFactory(spec), c_grid=params.c_grid,
                                    folds=inner_folds, seed=seed, tol=params.solver_tol)
        final = make_pipeline(spec, final_c).fit(disc_frame, y)
        scored = {}
        for name in ("external", "saline"):
            ids = table.index[(cohorts == name) & has_outcome]
            if len(ids):
                scored[name] = (ids, final.decision_function(frame.loc[ids]))
        calibration_scores = fixed_c_oof_scores(disc_frame, y, PreprocessorFactory(spec), c=final_c,
                                                splits=splits, tol=params.solver_tol)
    notes += sorted({str(w.message) for w in caught if issubclass(w.category, UnseenSiteWarning)})
    pooled = cv.pooled
    calibration = calibrate_out_of_fold(calibration_scores, y, seed=seed, n_boot=params.calibration_bootstrap,
                                        n_folds=outer_folds)
    disc_lo, disc_hi = calibration.interval(calibration_scores, params.ci_level)
    rows = [{"participant_id": disc, "cohort": "discovery", "site": sites, "outcome": y, "score": pooled[:, 0],
             "score_sd": cv.scores[:, :, 0].std(axis=0, ddof=1) if cv.scores.shape[0] > 1 else np.nan,
             "probability": calibration.cross_fitted, "probability_low": disc_lo, "probability_high": disc_hi,
             "predicted": (pooled[:, 0] > 0).astype(int)}]
    metric_rows = []
    count = wording.count_column
    for row in metrics_table_rows(y, pooled[:, 0], null_scores=pooled[:, 1:] if params.n_permutations else None,
                                  null_labels=cv.label_sets[:, 1:] if params.n_permutations else None,
                                  n_boot=params.n_bootstrap, ci=params.ci_level, seed=seed):
        metric_rows.append({"cohort": "discovery", **row, "n_subjects": y.size, count: int(y.sum())})
    curves = {"discovery": (y, pooled[:, 0])}
    for name, (ids, scores) in scored.items():
        yc = table.loc[ids, "outcome"].to_numpy(dtype=int)
        lo, hi = calibration.interval(scores, params.ci_level)
        rows.append({"participant_id": ids, "cohort": name, "site": table.loc[ids, "site"].to_numpy(),
                     "outcome": yc, "score": scores, "score_sd": np.nan,
                     "probability": calibration.probability(scores), "probability_low": lo, "probability_high": hi,
                     "predicted": (scores > 0).astype(int)})
        if np.unique(yc).size < 2:
            notes.append(f"{name} cohort has a single outcome class: only sensitivity or specificity is defined")
        null_labels = np.stack([np.random.default_rng([seed, 104729, k]).permutation(yc)
                                for k in range(1, params.n_permutations + 1)], axis=1) \
            if params.n_permutations and np.unique(yc).size == 2 else None
        n_boot = params.n_bootstrap if np.unique(yc).size == 2 else 0
        for row in metrics_table_rows(yc, scores, null_labels=null_labels, n_boot=n_boot, ci=params.ci_level,
                                      seed=seed):
            metric_rows.append({"cohort": name, **row, "n_subjects": yc.size, count: int(yc.sum())})
        curves[name] = (yc, scores)
    predictions = pd.concat([pd.DataFrame(r) for r in rows], ignore_index=True)
    predictions["participant_id"] = "sub-" + predictions["participant_id"].astype(str)
    weights = pipeline_pattern(final, disc_frame)
    null_bac = balanced_accuracy(cv.label_sets[:, 1:], pooled[:, 1:]) if params.n_permutations else np.zeros(0)
    return StructuralResults(predictions=predictions, metrics=pd.DataFrame(metric_rows), weights=weights,
                             null_bac=null_bac, final_c=final_c, chosen_c=cv.chosen_c[:, :, 0], notes=notes,
                             curves=curves, final_model=final, calibration=calibration, training_frame=disc_frame,
                             training_table=table.loc[disc], folds=(outer_folds, inner_folds),
                             calibration_scores=calibration_scores)


def _atlas_for(params: StructuralParams, atlas_name: str, regions: list[str]):
    """The atlas the regional table was made with, when it can be found (for the MNI weight map)."""
    from bids_ketamine.atlas import load_atlas, load_default_atlas

    anat = params.anat
    atlas = load_atlas(anat.atlas_nifti, anat.atlas_labels) if anat.atlas_nifti else load_default_atlas()
    if not set(regions) <= set(atlas.names):
        return None
    return atlas


def run_group(output_dir: Path, *, participants: pd.DataFrame, sessions: pd.DataFrame, params: StructuralParams,
              design, writer, work_dir: Path, seed: int, n_jobs: int = 1) -> list[Path]:
    """Read the participant-level regional tables, run ``analyse`` and write tables, map, figures and the model
    bundle; with ``params.model_file``, apply that saved model instead of training (``structural.apply``)."""
    from bids_ketamine.structural.bundle import write_bundle
    from bids_ketamine.structural.card import build_bundle
    from bids_ketamine.structural.figures import calibration_figure, confusion_figure, permutation_figure, \
        roc_figure
    from bids_ketamine.structural.participant import load_regional_features, one_template_space

    output_dir = Path(output_dir)
    params = params if isinstance(params, StructuralParams) else StructuralParams.model_validate(params or {})
    wording = outcome_wording(design)
    if params.model_file is not None:
        from bids_ketamine.structural.apply import run_apply

        return run_apply(output_dir, participants=participants, params=params, wording=wording, writer=writer)
    atlas_name = params.anat.atlas_name
    features, info = load_regional_features(output_dir, atlas_name)
    paths = sorted(output_dir.glob("sub-*/anat/*_morph.tsv")) + sorted(output_dir.glob("sub-*/ses-*/anat/*_morph.tsv"))
    found = re.search(r"_atlas-([A-Za-z0-9]+)", paths[0].name) if paths else None
    atlas_name = atlas_name or (found.group(1) if found else "atlas")
    table = participants.merge(info[["tiv_mm3"]], left_on="participant_id", right_index=True, how="inner")
    if table.empty:
        raise MissingInputError("no participant with grey-matter features is in participants.tsv",
                                path=output_dir, fix="run the participant level for the subjects of participants.tsv")
    template_space = one_template_space(info.loc[table["participant_id"], "template_space"], output_dir)
    grid = None
    if params.feature_type == "voxel":
        from bids_ketamine.structural.voxel_features import load_voxel_features, mni_grid

        grid = mni_grid(params.voxel_size_mm)
        features = load_voxel_features(output_dir, table["participant_id"].tolist(), grid,
                                       fwhm_mm=params.voxel_fwhm_mm, sessions=info["session"].dropna().to_dict())
    results = analyse(features.loc[table["participant_id"]], table, params, seed=seed, n_jobs=n_jobs,
                      source=output_dir, wording=wording)
    feature_source = sorted({str(s) for s in info.loc[results.training_table.index, "feature_source"].dropna()})
    bundle = build_bundle(results, params=params, atlas=atlas_name, feature_source=feature_source,
                          wording=wording, seed=seed, grid=grid, template_space=template_space)

    # ----- everything computed: build figures and the map, then write
    base = {"atlas": atlas_name, "desc": "svm"} if grid is None else \
        {"res": f"{params.voxel_size_mm:g}mm".replace(".", "p"), "desc": "voxelsvm"}
    sources = [p for p in paths]
    parameters = {**params.model_dump(mode="json", exclude={"anat", "model_file"}), "random_seed": seed,
                  "final_model_C": results.final_c}
    figures = []
    for cohort, (labels, scores) in results.curves.items():
        if np.unique(labels).size == 2:
            auc = float(roc_auc(labels, scores)[0])
            figures.append((roc_figure(labels, scores, title=f"{cohort}: AUC {auc:.2f} (n = {labels.size})",
                                       n_boot=min(params.n_bootstrap, 1000), ci=params.ci_level, seed=seed),
                            {**base, "cohort": cohort}, "roc"))
        figures.append((confusion_figure(labels, scores, title=f"{cohort} (n = {labels.size})",
                                         positive=wording.positive, negative=wording.negative),
                        {**base, "cohort": cohort}, "confusion"))
    if results.null_bac.size:
        observed = float(results.metrics.query("cohort == 'discovery' and metric == 'bac'")["value"].iloc[0])
        figures.append((permutation_figure(observed, results.null_bac, permutation_p(observed, results.null_bac),
                                           metric="balanced accuracy", title="discovery: whole nested CV re-run "
                                                                             "on permuted labels"),
                        {**base, "cohort": "discovery"}, "null"))
    cal = results.calibration
    figures.append((calibration_figure(cal.curve, title=f"discovery, cross-fitted: Brier {cal.brier:.3f}, ECE "
                                                        f"{cal.ece:.3f} (n = {cal.cross_fitted.size})"),
                    {**base, "cohort": "discovery"}, "calibration"))
    if grid is not None:
        from bids_ketamine.structural.figures import voxel_pattern_figure
        from bids_ketamine.structural.voxel_features import pattern_image

        atlas = None
        weight_map = pattern_image(results.weights.set_index("region")["activation"], grid)
        figures.append((voxel_pattern_figure(weight_map, title=f"Haufe pattern, voxel-wise model "
                                                                f"({params.voxel_size_mm:g} mm, {grid.mask.sum()} "
                                                                "voxels, MNI)"), base, "haufe"))
    else:
        atlas = _atlas_for(params, atlas_name, results.weights["region"].tolist())
        weight_map = region_map(results.weights.set_index("region")["activation"], atlas) if atlas is not None \
            else None
    if atlas is None and grid is None:
        results.notes.append("the atlas of the regional tables was not found: no MNI weight map written")
    meta: dict[str, Any] = {"Notes": results.notes, "ChosenC_PerOuterFold": results.chosen_c.tolist(),
                            "FinalModelC": results.final_c, "Outcome": wording.phrase,
                            "Folds": {"outer": results.folds[0], "inner": results.folds[1]},
                            "SignConvention": f"positive scores and activations point towards {wording.positive}",
                            "FeatureType": params.feature_type}
    if grid is not None:
        meta["VoxelGrid"] = {**grid.describe(), "space": "MNI152 (nilearn template grid)",
                             "mask": "nilearn MNI152 GM template > 0.2", "fwhm_mm": params.voxel_fwhm_mm,
                             "pca_variance": params.voxel_pca_variance}
    outputs = [
        writer.write_table(results.predictions, entities=base, suffix="predictions", datatype=DATATYPE,
                           columns=prediction_columns(wording), sources=sources, parameters=parameters,
                           # the notes (folds lowered, subjects left out, unseen sites...) also as warnings, on this
                           # one table only, so that the report's warnings section lists each of them once
                           metadata={**meta, "Warnings": list(results.notes)}, float_format="%.12g",
                           description="Per-subject decision scores and calibrated probabilities of the structural "
                                       "classifier"),
        writer.write_table(results.metrics, entities=base, suffix="metrics", datatype=DATATYPE,
                           columns=metric_columns(wording), sources=sources, parameters=parameters, metadata=meta,
                           description="Performance of the structural classifier per cohort"),
        writer.write_table(results.weights, entities=base, suffix="weights", datatype=DATATYPE,
                           columns=weight_columns(wording), sources=sources, parameters=parameters, metadata=meta,
                           description="Final discovery model: SVM weights and Haufe activation per region, "
                                       "sorted by |activation|"),
        writer.write_table(cal.curve, entities={**base, "cohort": "discovery"}, suffix="calibration",
                           datatype=DATATYPE, columns=CALIBRATION_COLUMNS, sources=sources, parameters=parameters,
                           metadata={"BrierScore": cal.brier, "ExpectedCalibrationError": cal.ece,
                                     "PlattSlope": cal.map.slope, "PlattIntercept": cal.map.intercept},
                           description="Calibration curve of the cross-fitted probabilities (discovery cohort)"),
    ]
    if weight_map is not None:
        if grid is None:
            map_entities = {"atlas": atlas_name, "desc": "haufe"}
            map_meta = {"Description": "Haufe activation of the final model painted into the atlas regions (SD per "
                                       f"unit score; positive = more grey matter towards {wording.positive})",
                        "Atlas": atlas.source, "FeatureType": "regional"}
        else:
            map_entities = {"space": "MNI152", "res": base["res"], "desc": "voxelhaufe"}
            map_meta = {"Description": "Haufe activation of the final voxel-wise model per grid voxel (SD per unit "
                                       f"score; positive = more grey matter towards {wording.positive}); the SVM "
                                       "weights are mapped back through the training PCA",
                        "FeatureType": "voxel", "VoxelGrid": meta["VoxelGrid"]}
        outputs.append(writer.write_nifti(weight_map, entities=map_entities, suffix="weights", datatype=DATATYPE,
                                          sources=sources, parameters=parameters, metadata=map_meta))
    for fig, entities, suffix in figures:
        outputs.append(writer.write_figure(fig, entities=entities, suffix=suffix))
    outputs += write_bundle(bundle, writer.path(base, "model", ".skops", DATATYPE))
    return outputs
