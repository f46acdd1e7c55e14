"""Scoring new participants with a frozen model: score, calibrated probability with interval, class, and flags.

A model can only be trusted for a patient who resembles the patients it was trained on. Before scoring, the
features must be the same kind (same atlas and regions, same feature source): otherwise the model is refused with
the reason. Each scored participant is then checked against the training reference and flagged (never silently
scored) when
- ``ood_age`` / ``ood_tiv``: age or total intracranial volume outside the training range;
- ``ood_features``: the harmonised, standardised feature vector is farther from the training centre (Mahalanobis
  distance under a Ledoit-Wolf covariance) than every training subject was;
- ``site_unknown``: participants.tsv has no site column, so the site is not known: never matched to a training
  site (even one of the default name ``site1``), scored un-harmonised;
- a model trained without a site column (one implicit site) removes no site effect; a participant without a site
  column is then one of that same implicit site, as the external cohort of the training run was: scored the same
  way (un-harmonised, identical scores), neither ``site_unknown``-flagged nor ``unseen_site``
  (``site_rule_of`` decides it for both paths);
- ``unseen_site``: the site was not in training. The subjects of such a site in the scored batch are harmonised
  from their own features when there are at least ``min_unseen_site_size`` of them, else left un-harmonised; the
  ``harmonisation`` column says which.

Scoring batches: ComBat estimates an unseen site from the subjects scored together, so participants are scored in
batches of their cohort (``external``, ``saline``, ``discovery``; participants outside those: one ``new`` batch).
This reproduces exactly how the group level scores the external and saline cohorts in the training run.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.covariance import LedoitWolf

from bids_ketamine.errors import BadDataError
from bids_ketamine.structural.calibration import PlattMap, probability_interval
from bids_ketamine.structural.model import SITE_COLUMN, model_frame

FLAG_COLUMNS = ("ood_age", "ood_tiv", "ood_features", "site_unknown", "unseen_site")
#: Harmonisation of a participant whose site is unknown.
SITE_UNKNOWN_HARMONISATION = "site unknown: not harmonised"
#: Harmonisation by a model that removes no site effect (one training site, or harmonisation off).
NO_SITE_EFFECT_HARMONISATION = "none: the model removes no site effect (one training site or harmonisation off)"
#: Harmonisation of a participant without a site column scored by a model trained without one.
IMPLICIT_SITE_HARMONISATION = ("none: no site column here nor in training (one implicit site, as in the training "
                               "run)")

#: The training run's note for a participants.tsv without a site column (the rule of ``site_rule_of``).
IMPLICIT_SITE_NOTE = ("participants.tsv has no site column: every participant is one implicit site, so there is "
                      "no site effect to harmonise; a saved model scores participants without a site column the "
                      "same way (identical scores), and flags them only when it was trained on known sites")


def model_removes_site_effects(pipeline) -> bool:
    """Whether the pipeline's ComBat step removes any site effect: off, or fitted on one site, it passes features
    through unchanged (``combat.apply_combat``), whatever site a participant is given."""
    combat = dict(pipeline.steps).get("combat")
    model = getattr(combat, "model_", None)
    return bool(model is not None and model.sites)


def site_unknown(table: pd.DataFrame) -> np.ndarray:
    """True for each participant whose site is not known (``site_known`` False; a table without that column, or a
    missing value in it, counts as known): the one reading of the column for training, scoring and the group."""
    if "site_known" not in table:
        return np.zeros(len(table), dtype=bool)
    return ~table["site_known"].fillna(True).astype(bool).to_numpy()


def site_rule_of(reference: dict, site_known) -> np.ndarray:
    """The one rule for participants without a site column, shared by the training run and ``group --model``:
    True where the participant is of the model's own implicit site (the model was trained without a site column
    and this participant has none either). Such participants are scored as the training run scored its external
    cohort -- one site with the training subjects -- and are not flagged; elsewhere an unknown site is flagged.
    Bundles written before ``site_known`` was recorded count as trained on known sites."""
    unknown = ~pd.Series(site_known).fillna(True).astype(bool).to_numpy()
    return unknown & (not reference.get("site_known", True))


def scoring_sites(table: pd.DataFrame) -> np.ndarray:
    """The site labels a frozen model sees: the participants' sites, except that a participant whose site is not
    known (``site_known`` False) gets a label of its own that no training site has, so it is neither matched to a
    training site nor pooled with others into one guessed site."""
    sites = table["site"].astype(object).where(table["site"].notna(), "n/a").astype(str).to_numpy()
    if "site_known" in table:
        unknown = site_unknown(table)
        ids = np.asarray(table.index if "participant_id" not in table else table["participant_id"], dtype=str)
        sites = np.where(unknown, np.char.add("unknown site of sub-", ids), sites)
    return sites


def _preprocess(pipeline, frame: pd.DataFrame) -> np.ndarray:
    """The pipeline's input to the SVM (harmonised, scaled, [PCA])."""
    return np.asarray(pipeline[:-1].transform(frame), dtype=np.float64)


def training_reference(pipeline, frame: pd.DataFrame, table: pd.DataFrame, *, oof_scores, labels,
                       atlas: str, feature_source: list[str], min_unseen_site_size: int) -> dict:
    """What a new patient is compared with: feature names, atlas, source, sites, ranges, the training
    distribution of the preprocessed features, and the out-of-fold scores of each class (for the report)."""
    z = _preprocess(pipeline, frame)
    cov = LedoitWolf().fit(z)
    distances = out_of_fold_distances(z, np.asarray(labels, dtype=int))
    sites, counts = np.unique(frame[SITE_COLUMN].astype(str), return_counts=True)
    site_known = not bool(site_unknown(table).any())

    def _range(column):
        values = pd.to_numeric(table[column], errors="coerce").dropna() if column in table else pd.Series([])
        return [float(values.min()), float(values.max())] if len(values) else []

    return {"feature_names": [c for c in frame.columns if not c.startswith("__")],
            "covariates": [c for c in frame.columns if c.startswith("__cov_")],
            "atlas": atlas, "feature_source": list(feature_source),
            "sites": {str(s): int(n) for s, n in zip(sites, counts)}, "site_known": site_known,
            "age_range": _range("age"), "tiv_range": _range("tiv_mm3"),
            "ood_location": cov.location_, "ood_precision": cov.precision_,
            "ood_threshold": float(distances.max()), "min_unseen_site_size": int(min_unseen_site_size),
            "oof_scores": np.asarray(oof_scores, dtype=np.float64), "oof_labels": np.asarray(labels, dtype=int)}


def out_of_fold_distances(z: np.ndarray, labels: np.ndarray, n_folds: int = 5) -> np.ndarray:
    """Each training subject's Mahalanobis distance under a Ledoit-Wolf fit on the *other* folds.

    Why out of fold: a subject's distance from a covariance fitted with it is too small (by far, with as many
    regions as subjects), so the in-sample maximum would flag a large share of new subjects from the very same
    distribution. The largest out-of-fold distance is the threshold a new subject is compared with.
    """
    from sklearn.model_selection import StratifiedKFold

    k = int(max(2, min(n_folds, np.bincount(labels, minlength=2).min())))
    out = np.empty(z.shape[0])
    for train, test in StratifiedKFold(k, shuffle=True, random_state=0).split(z, labels):
        fit = LedoitWolf().fit(z[train])
        out[test] = _mahalanobis(z[test], fit.location_, fit.precision_)
    return out


def _mahalanobis(z: np.ndarray, location: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = z - location
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, precision, d), 0.0))


def check_compatible(reference: dict, *, atlas: str, regions: list[str], feature_source: list[str],
                     path=None) -> None:
    """Refuse features of another type (voxel vs regional), atlas, other regions or another feature source than
    the model's training."""
    from bids_ketamine.structural.voxel_features import check_feature_type

    check_feature_type(reference.get("feature_type", "regional"), regions, path=path)
    if atlas != reference["atlas"] or list(regions) != list(reference["feature_names"]):
        missing = sorted(set(reference["feature_names"]) - set(regions))
        raise BadDataError(f"the regional tables use atlas {atlas!r} ({len(regions)} regions), the model was trained "
                           f"on atlas {reference['atlas']!r} ({len(reference['feature_names'])} regions"
                           + (f"; missing e.g. {missing[0]}" if missing else "") + ")", path=path,
                           fix="run the participant level with the model's atlas (see the model card)")
    trained = {s for s in reference["feature_source"] if s}
    new = {s for s in feature_source if s}
    if trained and new and not new <= trained:
        raise BadDataError(f"feature source {', '.join(sorted(new - trained))} differs from the model's "
                           f"({', '.join(sorted(trained))})", path=path,
                           fix="extract grey-matter features with the source named in the model card")


def score_frame(bundle, frame: pd.DataFrame, *, ci: float = 0.95) -> pd.DataFrame:
    """Score one batch (a ``model_frame``) with the frozen model: score, probability, interval, class, flags."""
    import warnings

    from bids_ketamine.structural.combat import UnseenSiteWarning

    ref = bundle.reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenSiteWarning)  # reported per subject in the flags below
        scores = np.asarray(bundle.pipeline.decision_function(frame), dtype=np.float64)
        z = _preprocess(bundle.pipeline, frame)
    cal = bundle.calibration
    lo, hi = probability_interval(scores, np.asarray(cal["boot_slopes"]), np.asarray(cal["boot_intercepts"]), ci) \
        if len(cal["boot_slopes"]) else (np.full(scores.size, np.nan),) * 2
    sites = frame[SITE_COLUMN].astype(str).to_numpy()
    unseen = ~np.isin(sites, list(ref["sites"]))
    site_n = pd.Series(sites).map(pd.Series(sites).value_counts()).to_numpy()
    harmonised_alone = unseen & (site_n >= ref["min_unseen_site_size"])
    harmonises = model_removes_site_effects(bundle.pipeline)
    distance = _mahalanobis(z, np.asarray(ref["ood_location"]), np.asarray(ref["ood_precision"]))
    return pd.DataFrame({
        "score": scores,
        "probability": PlattMap(cal["slope"], cal["intercept"])(scores),
        "probability_low": lo, "probability_high": hi,
        "predicted": (scores > 0).astype(int),
        "feature_distance": distance,
        "ood_features": distance > ref["ood_threshold"],
        "unseen_site": unseen,
        "harmonisation": np.where(~unseen, "training site", np.where(
            harmonised_alone, "unseen site: estimated from its own subjects in this batch",
            f"unseen site with fewer than {ref['min_unseen_site_size']} subjects: not harmonised"))
        if harmonises else NO_SITE_EFFECT_HARMONISATION,
    }, index=frame.index)


def outside(values, bounds) -> np.ndarray:
    """True where a value lies outside [low, high] (missing values and missing bounds: False)."""
    v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float)
    if not bounds:
        return np.zeros(v.size, dtype=bool)
    with np.errstate(invalid="ignore"):
        return (v < bounds[0]) | (v > bounds[1])


def flag_reasons(row: pd.Series, reference: dict) -> str:
    """One readable line of the flags set for a participant (empty when none)."""
    out = []
    if row.get("ood_age"):
        out.append(f"age {row['age']:.4g} outside the training range {reference['age_range'][0]:.4g}-"
                   f"{reference['age_range'][1]:.4g}")
    if row.get("ood_tiv"):
        out.append(f"TIV {row['tiv_mm3']:.6g} mm3 outside the training range {reference['tiv_range'][0]:.6g}-"
                   f"{reference['tiv_range'][1]:.6g}")
    if row.get("ood_features"):
        out.append(f"feature vector farther from the training centre ({row['feature_distance']:.3g}) than any "
                   f"training subject ({reference['ood_threshold']:.3g})")
    if row.get("site_unknown") and reference.get("site_known", True):
        out.append("site unknown (participants.tsv has no site column): not matched to a training site, "
                   "not harmonised")
    elif row.get("unseen_site"):
        out.append(f"site {row['site']!r} not in training ({row['harmonisation']})")
    return "; ".join(out)


def score_participants(bundle, features: pd.DataFrame, table: pd.DataFrame, covariates: pd.DataFrame,
                       *, ci: float = 0.95) -> pd.DataFrame:
    """Score every participant of ``features`` (index participant_id) in cohort batches; ``table``: standardised
    participants (index participant_id) with ``tiv_mm3``; ``covariates``: the model's covariates, same index."""
    from bids_ketamine.structural.group import assign_cohorts

    ref = bundle.reference
    names = [c.removeprefix("__cov_").removesuffix("__") for c in ref["covariates"]]
    cohorts = assign_cohorts(table.reset_index()).set_axis(table.index).fillna("new")
    frame = model_frame(features.reset_index(drop=True), scoring_sites(table),
                        covariates[names].reset_index(drop=True) if names else None)
    frame.index = features.index
    parts = []
    for cohort in sorted(cohorts.unique()):
        ids = cohorts.index[cohorts == cohort]
        scored = score_frame(bundle, frame.loc[ids], ci=ci)
        scored.insert(0, "cohort", cohort)
        parts.append(scored)
    out = pd.concat(parts).loc[features.index]
    out.insert(1, "site", table["site"].to_numpy())
    out.insert(2, "outcome", table["outcome"].to_numpy())
    out["ood_age"] = outside(table["age"], ref["age_range"]) if "age" in table else False
    out["ood_tiv"] = outside(table["tiv_mm3"], ref["tiv_range"])
    out["site_unknown"] = site_unknown(table)
    implicit = site_rule_of(ref, ~out["site_unknown"].to_numpy())
    out.loc[out["site_unknown"], "harmonisation"] = SITE_UNKNOWN_HARMONISATION
    out.loc[implicit, "harmonisation"] = IMPLICIT_SITE_HARMONISATION
    out.loc[implicit, "unseen_site"] = False
    out.loc[out["site_unknown"], "site"] = "n/a"
    merged = out.join(table[[c for c in ("age", "tiv_mm3") if c in table]])
    out["flags"] = [flag_reasons(row, ref) for _, row in merged.iterrows()]
    out.index.name = "participant_id"
    return out
