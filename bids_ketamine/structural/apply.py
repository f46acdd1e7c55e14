"""Applying a saved structural model to the participants of a dataset (``group --model FILE``), without training.

Thin on purpose: it loads and checks the bundle (``bundle.load_bundle``), refuses features of another atlas or
source (``predict.check_compatible``), scores every participant with regional features -- with or without an
outcome -- in cohort batches (``predict.score_participants``), and writes one group table plus, per participant, a
JSON summary and a figure for the participant report. Everything is computed before the first file is written.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError

LOG = logging.getLogger("bids_ketamine")
DATATYPE = "structural"

APPLIED_COLUMNS = {
    "feature_distance": "Mahalanobis distance of the harmonised, standardised features from the training centre "
                        "(Ledoit-Wolf covariance of the training subjects).",
    "ood_features": "True: feature_distance above every training subject's (out of distribution).",
    "ood_age": "True: age outside the training range.",
    "ood_tiv": "True: total intracranial volume outside the training range.",
    "site_unknown": "True: participants.tsv has no site column; never matched to a training site, not harmonised.",
    "unseen_site": "True: the site was not in the training data (or is unknown).",
    "harmonisation": "How the participant's site was harmonised.",
    "flags": "Readable list of the flags set (empty: none).",
}


#: Cohort label of scored participants that the design would call "discovery" (they are not the training cohort).
APPLIED_COHORT = "applied"


def model_feature_type(reference: dict, params) -> str:
    """The feature type to read (voxel or regional): the model's own, never the config's default. A
    ``structural.feature_type`` the config sets explicitly and that differs is refused with one line, as the atlas."""
    trained = reference.get("feature_type", "regional")
    if "feature_type" in params.model_fields_set and params.feature_type != trained:
        raise BadDataError(f"structural.feature_type = {params.feature_type!r} but the model was trained on "
                           f"{trained} features", path=params.model_file,
                           fix=f"remove structural.feature_type or set it to {trained!r} to apply this model")
    return trained


def model_atlas(reference: dict, output_dir: Path, *, configured: str | None, model_file=None) -> str:
    """The atlas to read: the model's own (never the config's). A configured ``structural.anat.atlas_name`` that
    differs, or participant tables without the model's atlas, are refused with one line."""
    from bids_ketamine.errors import BadDataError

    trained = reference["atlas"]
    if configured and configured != trained:
        raise BadDataError(f"structural.anat.atlas_name = {configured!r} but the model was trained on atlas "
                           f"{trained!r}", path=model_file,
                           fix=f"remove structural.anat.atlas_name or set it to {trained!r} to apply this model")
    from bids_ketamine.structural.participant import morph_tables

    found = morph_tables(output_dir)
    if not found:
        raise MissingInputError("no participant-level structural tables (sub-*/anat/*_morph.tsv)", path=output_dir,
                                fix="run the participant level first")
    present = sorted({m.group(1) for p in found if (m := re.search(r"_atlas-([A-Za-z0-9]+)", p.name))})
    if trained not in present:
        raise BadDataError(f"the regional tables use atlas {', '.join(map(repr, present))}, the model was trained "
                           f"on atlas {trained!r}", path=found[0],
                           fix="run the participant level with the model's atlas (see the model card)")
    return trained


def run_apply(output_dir: Path, *, participants: pd.DataFrame, params, wording, writer) -> list[Path]:
    from bids_ketamine.structural.bundle import load_bundle
    from bids_ketamine.structural.figures import patient_figure
    from bids_ketamine.structural.group import PROBABILITY_COLUMNS, covariate_column, prediction_columns
    from bids_ketamine.structural.interpret import score_contributions
    from bids_ketamine.structural.model import model_frame
    from bids_ketamine.structural.participant import load_regional_features, morph_tables, one_template_space
    from bids_ketamine.structural.predict import check_compatible, score_participants, scoring_sites

    bundle = load_bundle(params.model_file)
    ref = bundle.reference
    model_feature_type(ref, params)  # refuse a configured feature type that is not the model's, before reading
    atlas = model_atlas(ref, output_dir, configured=params.anat.atlas_name, model_file=params.model_file)
    features, info = load_regional_features(output_dir, atlas)
    paths = morph_tables(output_dir, atlas)
    if model_feature_type(ref, params) == "voxel":
        from bids_ketamine.structural.voxel_features import grid_from_columns, load_voxel_features, mni_grid

        vgrid = ref.get("voxel_grid")
        grid = grid_from_columns(ref["feature_names"], vgrid["affine"], vgrid["shape"]) if vgrid \
            else mni_grid(params.voxel_size_mm)
        fwhm = vgrid["fwhm_mm"] if vgrid else params.voxel_fwhm_mm
        features = load_voxel_features(output_dir, list(features.index), grid, fwhm_mm=fwhm,
                                       sessions=info["session"].dropna().to_dict())
    check_compatible(ref, atlas=atlas, regions=list(features.columns),
                     feature_source=[str(s) for s in info["feature_source"].dropna()], path=paths[0])
    space = one_template_space(info["template_space"], paths[0])
    trained_space = ref.get("template_space")
    if trained_space and space and space != trained_space:
        raise BadDataError(f"the grey-matter maps are in template space {space}, the model was trained on maps in "
                           f"{trained_space}", path=paths[0],
                           fix="extract the features with the model's source (see the model card)")
    table = participants.merge(info[["tiv_mm3"]], left_on="participant_id", right_index=True, how="inner")
    if table.empty:
        raise MissingInputError("no participant with grey-matter features is in participants.tsv",
                                path=output_dir, fix="run the participant level for the subjects of participants.tsv")
    table = table.set_index("participant_id")
    features = features.loc[table.index]
    names = [c.removeprefix("__cov_").removesuffix("__") for c in ref["covariates"]]
    covariates = pd.DataFrame({n: covariate_column(table, n) for n in names}, index=table.index)
    scored = score_participants(bundle, features, table, covariates, ci=params.ci_level)
    frame = model_frame(features.reset_index(drop=True), scoring_sites(table),
                        covariates.reset_index(drop=True) if names else None)
    frame.index = features.index
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unseen sites: already in the flags
        contributions = score_contributions(bundle.pipeline, frame)
    cal, card = bundle.calibration, bundle.card

    table_out = scored.reset_index()
    # the batch stays as scored (one batch per cohort, as in the training run); only the name changes: a
    # participant of the dataset being scored is not part of the model's discovery (training) cohort
    table_out["cohort"] = table_out["cohort"].replace({"discovery": APPLIED_COHORT})
    table_out["participant_id"] = "sub-" + table_out["participant_id"].astype(str)
    columns = {**{k: v for k, v in prediction_columns(wording).items() if k != "score_sd"}, **PROBABILITY_COLUMNS,
               **APPLIED_COLUMNS}
    base = {"atlas": atlas, "desc": "applied"}
    per_subject = []
    for subject, row in scored.iterrows():
        order = contributions.loc[subject].abs().sort_values(ascending=False).index
        top = contributions.loc[subject, order]
        summary = {
            "participant_id": f"sub-{subject}", "model": card["model"]["name"],
            "model_checksum": card["checksum"]["value"], "outcome": wording.phrase,
            "score": float(row["score"]), "probability": float(row["probability"]),
            "probability_interval": [float(row["probability_low"]), float(row["probability_high"]),
                                     params.ci_level],
            "predicted": wording.positive if row["predicted"] else wording.negative,
            "flags": row["flags"], "harmonisation": row["harmonisation"],
            "top_regions": [{"region": r, "contribution": float(v)} for r, v in top.head(10).items()],
            "training_cohort": card["training_cohort"], "metrics": card["metrics"],
            "limitations": card["limitations"],
        }
        if row["flags"]:  # read into the reports' warnings sections (participant and group)
            summary["Warnings"] = [f"model prediction flagged: {row['flags']}"]
        figure_args = dict(score=float(row["score"]), probability=float(row["probability"]),
                             interval=(float(row["probability_low"]), float(row["probability_high"])),
                             slope=cal["slope"], intercept=cal["intercept"], boot_slopes=np.asarray(cal["boot_slopes"]),
                             boot_intercepts=np.asarray(cal["boot_intercepts"]), oof_scores=ref["oof_scores"],
                             oof_labels=ref["oof_labels"], contributions=top, positive=wording.positive,
                             negative=wording.negative,
                             title=f"sub-{subject}: P({wording.positive}) = {row['probability']:.2f} "
                                   f"[{row['probability_low']:.2f}, {row['probability_high']:.2f}]"
                                   + (f"  FLAGGED: {row['flags']}" if row["flags"] else ""))
        per_subject.append((subject, summary, figure_args))

    outputs = [writer.write_table(table_out, entities=base, suffix="predictions", datatype=DATATYPE,
                                  columns=columns, sources=[params.model_file, *paths], float_format="%.12g",
                                  metadata={"ModelCard": card["model"], "ModelChecksum": card["checksum"],
                                            "Outcome": wording.phrase,
                                            "Warnings": [f"model training: {note}"
                                                         for note in card.get("training_notes", [])]},
                                  description="Participants scored by a saved structural model (no training)")]
    for subject, summary, figure_args in per_subject:
        entities = {"sub": subject, "atlas": atlas, "desc": "model"}
        outputs.append(writer.write_json(summary, entities=entities, suffix="prediction", datatype="anat"))
        # drawn here, one at a time (a plot of numbers already computed), so open figures do not pile up
        outputs.append(writer.write_figure(patient_figure(**figure_args), entities=entities, suffix="prediction"))
        if summary["flags"]:
            LOG.warning("sub-%s: model prediction flagged (%s): %s", subject, outputs[-2], summary["flags"])
    return outputs
