"""Connectivity group level: individual delta-GBC maps -> per-drug PCA with its shuffle null, PC maps, subject
scores and mean map; participation ratio across drugs; PC maps against gene expression with spatial nulls.

Inputs are the participant level's ``sub-<label>/**/sub-<label>_desc-<drug>minusplacebo_gbc.tsv`` tables (columns
``parcel`` and ``delta_gbc``, see docs/connectivity_tables.md), or maps computed elsewhere in that format. Parcels
are matched BY NAME: a table with missing, extra or repeated parcels is refused naming the table. When the parcel
names are those of the configured atlas (``participant.atlas_nifti``/``atlas_labels``, or the default atlas) the
atlas order is used and PC maps are also written as NIfTI images; otherwise the sorted names are used, images are
skipped (noted in the summary) and the gene analysis, which needs parcel centroids, is refused.

Subjects: when the participants table lists subjects, only their maps are used (others are noted as left out).

Outputs under ``group/`` (every table with a sidecar describing its columns):
``atlas-<a>_desc-<drug>pca_stats.tsv`` (per PC: explained variance, null threshold, p, significance),
``..._desc-<drug>pca_components.tsv`` (z-scored PC maps, parcels x PCs), ``..._desc-<drug>pca_scores.tsv``
(r of each subject's map with each PC map), ``..._desc-<drug>pcaprojection_scores.tsv`` (the published projection
scores), ``..._desc-<drug>pca_null.tsv`` (shuffled explained variances),
``..._desc-<drug>mean_gbc.tsv`` (mean delta map), ``..._stat-z_desc-<drug>pc<k>_statmap.nii.gz`` and
``..._stat-mean_desc-<drug>deltagbc_statmap.nii.gz``, ``figures/..._desc-<drug>scree_pca.svg``,
``figures/..._desc-subjectscores_pca.png`` (subject scores per PC, by drug) and
``figures/desc-participationratio_dimensionality.png``;
``desc-dimensionality*_stats.tsv``; ``..._desc-<drug>pc<k>genes_stats.tsv``; ``desc-nullcalibration_stats.tsv``;
``desc-connectivity_summary.json``; ``figures/..._desc-<drug>pc<k>genes_null.svg`` (observed r against the
surrogate and naive nulls) and ``figures/..._desc-genenullcalibration_fpr.svg`` (false-positive rates).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.connectivity import dimensionality as dim
from bids_ketamine.connectivity import genes as gn
from bids_ketamine.connectivity.pca import DeltaPCA, delta_pca_frame
from bids_ketamine.connectivity.params import ConnectivityParams
from bids_ketamine.errors import BadDataError, MissingInputError, UsageError

LOG = logging.getLogger(__name__)

DELTA_GLOB = "sub-*/**/sub-*_desc-*minusplacebo_gbc.tsv"
_DELTA_NAME = re.compile(r"^sub-(?P<sub>[0-9a-zA-Z]+)_(?:.*_)?desc-(?P<drug>[0-9a-zA-Z]+)minusplacebo_gbc\.tsv$")
KEY_COLUMN = "parcel"
VALUE_COLUMN = "delta_gbc"


# --------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class DeltaMap:
    """One subject's delta-GBC map for one drug, keyed by parcel name."""

    subject: str
    drug: str
    path: Path
    values: pd.Series               # indexed by parcel name
    parcel_info: pd.DataFrame       # hemisphere / structure columns when the table has them


def find_delta_tables(output_dir: str | Path) -> list[Path]:
    """Every delta-GBC table under ``output_dir`` (sorted, so the reading order never depends on the file system)."""
    return sorted(p for p in Path(output_dir).glob(DELTA_GLOB) if _DELTA_NAME.match(p.name))


def read_delta_table(path: str | Path) -> DeltaMap:
    """Read and check one delta table; BadDataError names the file and the fix."""
    path = Path(path)
    match = _DELTA_NAME.match(path.name)
    if not match:
        raise BadDataError("not a delta-GBC table name", path=path,
                           fix="name it sub-<label>_desc-<drug>minusplacebo_gbc.tsv")
    try:
        table = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True)
    except Exception as exc:  # pandas raises several types for unreadable text
        raise BadDataError(f"cannot read the table ({exc})", path=path, fix="write a tab-separated table") from exc
    missing = [c for c in (KEY_COLUMN, VALUE_COLUMN) if c not in table.columns]
    if missing:
        raise BadDataError(f"table lacks column(s) {', '.join(missing)}", path=path,
                           fix=f"give columns '{KEY_COLUMN}' (parcel name) and '{VALUE_COLUMN}' "
                               "(see docs/connectivity_tables.md)")
    names = table[KEY_COLUMN].astype(str)
    if names.duplicated().any():
        raise BadDataError(f"parcel {names[names.duplicated()].iloc[0]!r} appears twice", path=path,
                           fix="give one row per parcel")
    values = pd.to_numeric(table[VALUE_COLUMN], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(dtype=float))
    if bad.any():
        raise BadDataError(f"parcel {names[bad].iloc[0]!r} has no finite {VALUE_COLUMN} value", path=path,
                           fix="recompute the map (a constant or empty parcel cannot enter the group analysis)")
    info_cols = [c for c in ("hemisphere", "structure") if c in table.columns]
    info = table[info_cols].set_axis(names.to_list()) if info_cols else pd.DataFrame(index=names.to_list())
    return DeltaMap(subject=match["sub"], drug=match["drug"].lower(), path=path,
                    values=pd.Series(values.to_numpy(dtype=float), index=names.to_list(), name=match["sub"]),
                    parcel_info=info)


def delta_matrix(maps: list[DeltaMap], parcel_order: list[str]) -> pd.DataFrame:
    """Subjects x parcels frame in ``parcel_order``, matched by name; refuses a table whose parcels differ."""
    wanted = set(parcel_order)
    rows = {}
    for m in maps:
        have = set(m.values.index)
        if have != wanted:
            missing = sorted(wanted - have)
            extra = sorted(have - wanted)
            raise BadDataError(
                f"parcels differ from the other maps: missing {missing[:3]}{'...' if len(missing) > 3 else ''} "
                f"({len(missing)}), extra {extra[:3]}{'...' if len(extra) > 3 else ''} ({len(extra)})", path=m.path,
                fix="compute every map with the same atlas (parcels are matched by name), or remove this table")
        if m.subject in rows:
            raise BadDataError(f"a second {m.drug} map for sub-{m.subject}", path=m.path,
                               fix="keep one desc-<drug>minusplacebo table per subject and drug")
        rows[m.subject] = m.values.loc[parcel_order]
    return pd.DataFrame(rows).T.sort_index()


# --------------------------------------------------------------------------------------------- helpers
def _seed_for(seed: int, *labels: str) -> int:
    """A seed for one labelled step: independent of the other steps, stable across runs."""
    digest = hashlib.sha256("/".join(labels).encode()).digest()
    return int(np.random.SeedSequence([int(seed), int.from_bytes(digest[:4], "little")]).generate_state(1)[0])


def _load_atlas(params: ConnectivityParams):
    """The configured volumetric atlas (or the default one)."""
    from bids_ketamine.atlas import load_atlas, load_default_atlas

    part = params.participant
    if getattr(part, "atlas_nifti", None) is not None:
        return load_atlas(part.atlas_nifti, part.atlas_labels)
    return load_default_atlas()


def configured_surface_atlas(params: ConnectivityParams):
    """The surface parcellation the configuration names (``participant.cifti_dlabel``: a .dlabel.nii or a built-in
    name; ``participant.gifti_labels``: a left/right .label.gii pair), or None."""
    from bids_ketamine.surface_atlas import load_surface_atlas

    part = params.participant
    if getattr(part, "gifti_labels", None):
        return load_surface_atlas(list(part.gifti_labels))
    if getattr(part, "cifti_dlabel", None) is not None:
        return load_surface_atlas(str(part.cifti_dlabel))
    return None


def resolve_atlas(params: ConnectivityParams, names: set[str], notes: list[str], example: str = "the maps"):
    """The parcellation whose parcel names are exactly the maps' ``names``, tried in this order: the configured
    surface parcellation, the configured (or default) volumetric atlas, the built-in surface parcellations
    (Glasser, CABNP). None (with a note naming what was tried) when none matches."""
    from bids_ketamine.surface_atlas import BUILTIN, builtin_surface_atlas

    tried = []
    surface = configured_surface_atlas(params)
    candidates = [lambda: surface] if surface is not None else []
    candidates.append(lambda: _load_atlas(params))
    candidates += [lambda b=b: builtin_surface_atlas(b) for b in BUILTIN.values()]
    for make in candidates:
        atlas = make()
        if set(atlas.names) == names:
            if tried and surface is None and getattr(atlas, "kind", "") == "surface":
                notes.append(f"parcel names are those of the built-in surface parcellation {atlas.name}: used it")
                LOG.info(notes[-1])
            return atlas
        tried.append(f"{atlas.name} ({len(set(atlas.names) & names)} of {len(names)} names shared)")
    notes.append(f"WARNING: the parcel names of the delta maps (e.g. {example}) match no known atlas (tried "
                 + ", ".join(tried) + "): PC images, "
                 "surface figures, the gene analysis and the null calibration were not made; configure the atlas "
                 "the maps were computed with (connectivity.participant.cifti_dlabel, gifti_labels or atlas_nifti/"
                 "atlas_labels), or map the names with connectivity.parcel_aliases")
    LOG.warning(notes[-1])
    return None


def read_parcel_aliases(path: str | Path) -> dict[str, str]:
    """{name used in the maps: atlas parcel name} from a TSV with columns ``alias`` and ``parcel``."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("parcel alias table not found", path=path,
                                fix="give a TSV with columns 'alias' (name in the maps) and 'parcel' (atlas name)")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in ("alias", "parcel") if c not in table.columns]
    if missing:
        raise BadDataError(f"alias table lacks column(s) {', '.join(missing)}", path=path,
                           fix="give columns 'alias' (name in the maps) and 'parcel' (atlas parcel name)")
    dup = table["alias"][table["alias"].duplicated()]
    if len(dup):
        raise BadDataError(f"alias {dup.iloc[0]!r} appears twice", path=path, fix="give each alias one row")
    return dict(zip(table["alias"].str.strip(), table["parcel"].str.strip()))


def apply_aliases(m: DeltaMap, aliases: dict[str, str]) -> DeltaMap:
    """The map with its parcel names translated by ``aliases`` (names not in the table are kept)."""
    if not aliases:
        return m
    renamed = [aliases.get(n, n) for n in m.values.index]
    seen: dict[str, str] = {}
    for old, new in zip(m.values.index, renamed):
        if new in seen:
            raise BadDataError(f"parcels {seen[new]!r} and {old!r} both become {new!r} through the alias table",
                               path=m.path, fix="map every parcel to a different atlas name (connectivity."
                                                "parcel_aliases)")
        seen[new] = old
    values = m.values.set_axis(renamed)
    info = m.parcel_info.set_axis([aliases.get(n, n) for n in m.parcel_info.index])
    return DeltaMap(subject=m.subject, drug=m.drug, path=m.path, values=values, parcel_info=info)


def _parcel_frame(names: list[str], info: pd.DataFrame) -> pd.DataFrame:
    frame = pd.DataFrame({"parcel": names})
    for col in ("hemisphere", "structure"):
        if col in info.columns:
            frame[col] = info.loc[names, col].to_numpy()
    return frame


PARCEL_COLUMNS = {
    "parcel": "parcel (region) name of the atlas",
    "hemisphere": {"Description": "hemisphere of the parcel", "Levels": {"L": "left", "R": "right", "B": "both"}},
    "structure": "cortex, subcortex, cerebellum or brainstem",
}


def _params_record(params: ConnectivityParams) -> dict[str, Any]:
    return params.model_dump(mode="json", exclude={"participant"})


# --------------------------------------------------------------------------------------------- writing
def pca_tables(result: DeltaPCA, info: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The per-drug result tables (stats, components, scores, null, mean) as DataFrames."""
    k = result.explained_variance_ratio.size
    sig = result.significance
    counted = np.arange(k) < result.n_significant
    stats = pd.DataFrame({
        "component": np.arange(1, k + 1),
        "eigenvalue": result.eigenvalues,
        "explained_variance_ratio": result.explained_variance_ratio,
        "cumulative_explained_variance_ratio": np.cumsum(result.explained_variance_ratio),
        "null_mean": result.null.mean(axis=0),
        "null_threshold": sig.threshold,
        "p_value": sig.p_values,
        "exceeds_null": sig.significant,
        "significant": counted,
    })
    comps = _parcel_frame(result.parcels, info)
    for i in range(k):
        comps[f"pc{i + 1}"] = result.maps_z[i]
    scores = pd.DataFrame({"participant_id": result.subjects})
    for i in range(k):
        scores[f"pc{i + 1}"] = result.scores[:, i]
    projections = pd.DataFrame({"participant_id": result.subjects})
    for i in range(k):
        projections[f"pc{i + 1}"] = result.projections[:, i]
    null = pd.DataFrame(result.null, columns=[f"pc{i + 1}" for i in range(k)])
    null.insert(0, "shuffle", np.arange(1, result.null.shape[0] + 1))
    mean = _parcel_frame(result.parcels, info)
    return {"stats": stats, "components": comps, "scores": scores, "projections": projections, "null": null,
            "mean": mean}


def scree_figure(result: DeltaPCA, drug: str, max_rank: int = 15):
    """Explained variance per PC with the shuffle null's 5-95 % band and its significance threshold."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = min(max_rank, result.explained_variance_ratio.size)
    ranks = np.arange(1, k + 1)
    low, high = np.percentile(result.null[:, :k], [5, 95], axis=0)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.fill_between(ranks, 100 * low, 100 * high, color="0.8", label="shuffle null, 5-95 %")
    ax.plot(ranks, 100 * result.significance.threshold[:k], color="0.4", ls="--",
            label=f"null {result.percentile:g}th percentile")
    ax.plot(ranks, 100 * result.explained_variance_ratio[:k], "o-", color="C0", label="observed")
    sig = np.arange(k) < result.n_significant
    ax.plot(ranks[sig], 100 * result.explained_variance_ratio[:k][sig], "o", color="C3",
            label=f"significant ({result.n_significant})")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance (%)")
    ax.set_title(f"{drug}: delta-GBC PCA, {len(result.subjects)} subjects, {result.n_shuffles} shuffles")
    ax.legend(frameon=False, fontsize=8)
    return fig


def _image(atlas, parcels: list[str], values: np.ndarray):
    import nibabel as nib

    data = atlas.data()
    lut = np.zeros(int(atlas.labels["index"].max()) + 1, dtype=np.float32)
    index = atlas.labels.set_index("name")["index"]
    lut[index.loc[parcels].to_numpy(dtype=int)] = values
    img = nib.Nifti1Image(lut[data], atlas.image.affine)
    img.header.set_xyzt_units("mm")
    return img


# --------------------------------------------------------------------------------------------- entry point
def run_group(output_dir: Path, *, participants: pd.DataFrame | None, sessions: pd.DataFrame | None, params: Any,
              design: Any, writer, work_dir: Path, seed: int, n_jobs: int = 1) -> list[Path]:
    """Read every delta-GBC table in ``output_dir`` and write the connectivity group results with ``writer``."""
    params = params if isinstance(params, ConnectivityParams) else ConnectivityParams.model_validate(params or {})
    output_dir, work_dir = Path(output_dir), Path(work_dir)
    paths = find_delta_tables(output_dir)
    if not paths:
        raise MissingInputError("no delta-GBC tables (sub-*/**/sub-*_desc-<drug>minusplacebo_gbc.tsv) found",
                                path=output_dir, fix="run the connectivity participant level first (same output_dir)")
    maps = [read_delta_table(p) for p in paths]
    if params.parcel_aliases is not None:
        aliases = read_parcel_aliases(params.parcel_aliases)
        maps = [apply_aliases(m, aliases) for m in maps]
    notes: list[str] = []
    if participants is not None and len(participants):
        listed = set(participants["participant_id"].astype(str))
        left_out = sorted({m.subject for m in maps if m.subject not in listed})
        if left_out:
            notes.append("maps of subjects not in the participants table left out: "
                         + ", ".join(f"sub-{s}" for s in left_out))
            LOG.warning(notes[-1])
        maps = [m for m in maps if m.subject in listed]
    by_drug: dict[str, list[DeltaMap]] = defaultdict(list)
    for m in maps:
        by_drug[m.drug].append(m)
    drugs = sorted(by_drug)
    if params.drugs is not None:
        wanted = [d.lower() for d in params.drugs]
        absent = [d for d in wanted if d not in by_drug]
        if absent:
            raise UsageError(f"drug(s) {', '.join(absent)} have no delta maps (found: {', '.join(drugs) or 'none'})",
                             fix="correct connectivity.drugs in the config file")
        drugs = wanted
    for drug in list(drugs):
        if len(by_drug[drug]) < params.min_subjects:
            notes.append(f"{drug}: {len(by_drug[drug])} maps, fewer than min_subjects={params.min_subjects}: skipped")
            LOG.warning(notes[-1])
            drugs.remove(drug)
    if not drugs:
        raise BadDataError("no drug has enough delta maps for the group analysis: " + "; ".join(notes),
                           path=output_dir, fix=f"at least {params.min_subjects} subjects per drug are needed")

    # one parcel set for every map (names), in atlas order when an atlas matches
    first = by_drug[drugs[0]][0]
    names = set(first.values.index)
    example = first.path.relative_to(output_dir) if first.path.is_relative_to(output_dir) else first.path
    atlas = resolve_atlas(params, names, notes, example=str(example))
    atlas_matches = atlas is not None
    if not atlas_matches and (params.gene_table is not None or params.ahba_dir is not None):
        notes.append("WARNING: the gene analysis was requested but not run: it needs the parcels' positions, and "
                     "no atlas matches the maps' parcel names")
        LOG.warning(notes[-1])
    warnings_ = [n for n in notes if n.startswith("WARNING")]
    if atlas_matches:
        parcel_order = list(atlas.names)
        info = atlas.labels.set_index("name")[["hemisphere", "structure"]]
        notes.extend(getattr(atlas, "notes", ()))
    else:
        parcel_order = sorted(names)
        info = first.parcel_info
    matrices = {drug: delta_matrix(by_drug[drug], parcel_order) for drug in drugs}
    ent_base = {"atlas": atlas.name} if atlas_matches else {}
    record = _params_record(params)
    record["Resolved"] = {"atlas": atlas.name if atlas_matches else None,
                          "atlas_kind": getattr(atlas, "kind", "volume") if atlas_matches else None,
                          **imported_provenance(maps)}
    written: list[Path] = []
    summary: dict[str, Any] = {"drugs": {}, "notes": notes, "seed": seed, "parcels": len(parcel_order),
                               "atlas": (atlas.name if atlas_matches else None),
                               "atlas_kind": (getattr(atlas, "kind", "volume") if atlas_matches else None),
                               "warnings": warnings_, "provenance": imported_provenance(maps)}
    results: dict[str, DeltaPCA] = {
        drug: delta_pca_frame(matrices[drug], parcel_order=parcel_order, n_shuffles=params.n_shuffles,
                              percentile=params.significance_percentile, seed=_seed_for(seed, "pca", drug),
                              batch_size=params.shuffle_batch_size, n_jobs=n_jobs) for drug in drugs}
    comparison = dim.compare_dimensionality(
        {d: matrices[d].to_numpy() for d in drugs}, subsample_size=params.dimensionality_subsample_size,
        n_subsamples=params.dimensionality_n_subsamples, n_permutations=params.dimensionality_n_permutations,
        test_subsamples=params.dimensionality_test_subsamples, seed=_seed_for(seed, "dimensionality"),
        subjects={d: [str(s) for s in matrices[d].index] for d in drugs},
        descriptive_anova=params.dimensionality_subsample_anova)
    for note in comparison.notes:
        notes.append(f"dimensionality: {note}")
        LOG.info(notes[-1])
    # build the report figures before writing anything: a plotting failure must not leave half the outputs
    from bids_ketamine.connectivity.figures import participation_ratio_figure, subject_scores_figure

    figures = [(subject_scores_figure(results), {**ent_base, "desc": "subjectscores"}, "pca"),
               (participation_ratio_figure(comparison.subsamples, comparison.per_drug, comparison.pairwise,
                                           comparison.anova), {"desc": "participationratio"}, "dimensionality")]

    for drug in drugs:
        matrix = matrices[drug]
        sources = [m.path for m in by_drug[drug]]
        result = results[drug]
        tables = pca_tables(result, info)
        tables["mean"]["mean_delta_gbc"] = result.mean_map
        tables["mean"]["sd_delta_gbc"] = matrix.to_numpy().std(axis=0, ddof=1)
        tables["mean"]["n_subjects"] = matrix.shape[0]
        tables["stats"]["atlas_matched"] = atlas_matches  # flag: without it no images, figures on the brain, genes
        k = result.explained_variance_ratio.size
        pc_cols = {f"pc{i + 1}": f"PC{i + 1}" for i in range(k)}
        meta = {"Drug": drug, "NumberOfSubjects": matrix.shape[0], "NumberOfShuffles": params.n_shuffles,
                "NumberOfSignificantComponents": result.n_significant,
                **({"Atlas": atlas.source, "AtlasName": atlas.name} if atlas_matches else {}),
                **({"Warnings": warnings_} if warnings_ else {})}
        written.append(writer.write_table(
            tables["stats"], entities={**ent_base, "desc": f"{drug}pca"}, suffix="stats", sources=sources,
            parameters=record, metadata=meta,
            description="PCA of the subjects x parcels delta-GBC matrix (parcels centred across subjects, no "
                        "scaling) and its within-subject shuffle null (Moujaes, Ji et al. 2024)",
            columns={"component": "principal component (1 = largest variance)",
                     "eigenvalue": {"Description": "variance along the PC (divisor n - 1)", "Units": "Fisher z^2"},
                     "explained_variance_ratio": "fraction of the total variance explained by this PC",
                     "cumulative_explained_variance_ratio": "fraction explained by this and all larger PCs",
                     "null_mean": "mean explained-variance ratio at this rank over the shuffles",
                     "null_threshold": f"{params.significance_percentile:g}th percentile of the shuffled "
                                       "explained-variance ratios at this rank",
                     "p_value": "(1 + #{shuffled ratio >= observed}) / (1 + number of shuffles) at this rank",
                     "exceeds_null": "observed ratio > null_threshold at this rank",
                     "significant": "counted as significant: exceeds_null for this and every larger PC "
                                    "(consecutive from PC1)",
                     "atlas_matched": "the maps' parcel names matched an atlas (false: no PC images, surface or "
                                      "brain figures, gene analysis or null calibration; see Warnings)"}))
        written.append(writer.write_table(
            tables["components"], entities={**ent_base, "desc": f"{drug}pca"}, suffix="components",
            sources=sources, parameters=record, metadata=meta,
            description="PC maps, each z-scored across parcels; sign chosen so the largest-magnitude parcel is "
                        "positive (PC signs are arbitrary)",
            columns={**{c: PARCEL_COLUMNS[c] for c in ("parcel", "hemisphere", "structure")
                        if c in tables["components"]},
                     **{c: f"{v} map, z-scored across parcels" for c, v in pc_cols.items()}}))
        written.append(writer.write_table(
            tables["scores"], entities={**ent_base, "desc": f"{drug}pca"}, suffix="scores", sources=sources,
            parameters=record, metadata=meta,
            columns={"participant_id": "subject label (without sub-)",
                     **{c: f"Pearson r between the subject's delta-GBC map and the {v} map" for c, v in
                        pc_cols.items()}}))
        written.append(writer.write_table(
            tables["projections"], entities={**ent_base, "desc": f"{drug}pcaprojection"}, suffix="scores",
            sources=sources, parameters=record, metadata=meta,
            description="projection scores (the published subject scores): each subject's delta map, centred by "
                        "the parcel means across subjects, projected on each unit-norm PC loading vector; the "
                        "correlation scores are in the desc-<drug>pca_scores table",
            columns={"participant_id": "subject label (without sub-)",
                     **{c: {"Description": f"projection of the subject's centred delta-GBC map on the {v} loadings",
                            "Units": "Fisher z"} for c, v in pc_cols.items()}}))
        written.append(writer.write_table(
            tables["null"], entities={**ent_base, "desc": f"{drug}pca"}, suffix="null", sources=sources,
            parameters=record, metadata=meta,
            columns={"shuffle": "shuffle number",
                     **{c: f"explained-variance ratio of {v} after shuffling every subject's parcel values"
                        for c, v in pc_cols.items()}}))
        written.append(writer.write_table(
            tables["mean"], entities={**ent_base, "desc": f"{drug}mean"}, suffix="gbc", sources=sources,
            parameters=record, metadata=meta,
            columns={**{c: PARCEL_COLUMNS[c] for c in ("parcel", "hemisphere", "structure") if c in tables["mean"]},
                     "mean_delta_gbc": {"Description": f"mean over subjects of GBC({drug}) - GBC(placebo)",
                                        "Units": "Fisher z"},
                     "sd_delta_gbc": {"Description": "standard deviation over subjects", "Units": "Fisher z"},
                     "n_subjects": "subjects averaged"}))
        written.append(writer.write_figure(scree_figure(result, drug), entities={**ent_base, "desc": f"{drug}scree"},
                                           suffix="pca"))
        if atlas_matches:
            n_maps = min(k, max(params.n_map_components, result.n_significant))
            written += write_component_maps(atlas, parcel_order, result, drug, n_maps, writer, ent_base=ent_base,
                                            sources=sources, record=record, meta=meta)
        summary["drugs"][drug] = {
            "n_subjects": int(matrix.shape[0]), "n_significant_components": result.n_significant,
            "explained_variance_ratio": [float(v) for v in result.explained_variance_ratio[:10]],
        }

    # ---- dimensionality across drugs (computed above)
    all_sources = [m.path for d in drugs for m in by_drug[d]]
    written += write_dimensionality(comparison, writer, sources=all_sources, record=record)
    summary["dimensionality"] = json.loads(comparison.per_drug.to_json(orient="records"))
    summary["dimensionality_tests"] = json.loads(comparison.pairwise.to_json(orient="records"))
    for fig, entities, suffix in figures:
        written.append(writer.write_figure(fig, entities=entities, suffix=suffix, extension=".png"))

    # ---- genes
    if atlas_matches and (params.gene_table is not None or params.ahba_dir is not None):
        written += _run_genes(params, atlas, parcel_order, results, drugs, work_dir, seed, n_jobs, record,
                              summary, writer)

    # ---- null calibration (on by default: the report's evidence that the spatial null is calibrated here)
    if params.null_calibration_pairs > 0 and atlas_matches:
        geometry = gene_geometry(atlas, list(atlas.names), list(params.gene_structures), work_dir / "surrogates",
                                 notes=[])
        if len(geometry.names) < 10:
            notes.append(f"null calibration skipped: only {len(geometry.names)} parcels of structures "
                         f"{params.gene_structures}")
            LOG.warning(notes[-1])
        else:
            written += write_null_calibration(params, atlas, writer, seed=seed, n_jobs=n_jobs, record=record,
                                              cache_dir=work_dir / "surrogates", geometry=geometry)
    written.append(writer.write_json(summary, entities={"desc": "connectivity"}, suffix="summary"))
    return written


DIMENSIONALITY_INFERENCE = ("permutation test of the equal-n participation-ratio difference with subjects as "
                            "units (subjects reassigned between the two drugs' pools at the observed group sizes, "
                            "each drug's maps centred by its mean map), Holm-corrected across drug pairs; 95 % "
                            "intervals by the delete-one jackknife over subjects")


def write_dimensionality(comparison: dim.DimensionalityComparison, writer, *, sources: list[Path],
                         record: dict) -> list[Path]:
    """The dimensionality tables: per drug (equal-n PR, jackknife CI), pairwise permutation tests (the inference)
    and, when asked for, the published subsample ANOVA labelled descriptive."""
    meta = {"SubsampleSize": comparison.subsample_size, "NumberOfSubsamples": comparison.n_subsamples,
            "NumberOfPermutations": comparison.n_permutations, "Inference": DIMENSIONALITY_INFERENCE,
            "Notes": comparison.notes}
    written = [writer.write_table(
        comparison.per_drug, entities={"desc": "dimensionality"}, suffix="stats", sources=sources,
        parameters=record, metadata=meta,
        description="participation ratio (sum l)^2 / sum l^2 of the covariance eigenvalues of each drug's delta "
                    "maps at one subsample size (equal-n PR: mean over subsamples), with a jackknife interval "
                    "over subjects",
        columns={"drug": "drug", "n_subjects": "subjects with a map", "subsample_size": "subjects per subsample",
                 "n_distinct_subsamples": "distinct subsamples of that size that exist, C(n_subjects, "
                                          "subsample_size)",
                 "n_subsamples": "subsamples used (each distinct subsample once when subsamples_enumerated)",
                 "subsamples_enumerated": "every distinct subsample was used once (fewer exist than requested)",
                 "pr_all_subjects": "participation ratio of all subjects (grows with n: not comparable across "
                                    "drugs of different size)",
                 "pr_mean": "equal-n PR: mean participation ratio over the subsamples",
                 "pr_sd": "SD over subsamples (they share subjects: a description, not an uncertainty)",
                 "pr_se": "jackknife standard error of the equal-n PR over subjects",
                 "pr_ci_low": "lower bound of the 95 % jackknife t interval",
                 "pr_ci_high": "upper bound of the 95 % jackknife t interval"})]
    if len(comparison.pairwise):
        written.append(writer.write_table(
            comparison.pairwise, entities={"desc": "dimensionalitypairwise"}, suffix="stats", sources=sources,
            parameters=record, metadata=meta,
            description="pairwise comparison of the equal-n participation ratio: " + DIMENSIONALITY_INFERENCE,
            columns={"drug_a": "first drug", "drug_b": "second drug",
                     "pr_a": "equal-n PR of drug_a (test subsamples)", "pr_b": "equal-n PR of drug_b",
                     "difference": "pr_a - pr_b", "se": "stratified jackknife standard error of the difference",
                     "ci_low": "lower bound of the 95 % jackknife interval of the difference",
                     "ci_high": "upper bound of the 95 % jackknife interval of the difference",
                     "p_permutation": "two-sided permutation p = (1 + #{|null| >= |observed|}) / (1 + N)",
                     "n_permutations": "reassignments of subjects", "shared_subjects": "subjects with maps under "
                     "both drugs (their two maps swapped as a unit)",
                     "p_holm": "Holm-adjusted p across drug pairs (the inference)",
                     "p_bonferroni": "p_permutation times the number of drug pairs, capped at 1"}))
    if comparison.anova is not None:
        caveat = ("DESCRIPTIVE ONLY (the published analysis): the subsamples of a drug reuse the same subjects, so "
                  "these p-values shrink as more subsamples are drawn and do not test the drugs; the inference is "
                  "desc-dimensionalitypairwise_stats.tsv")
        written.append(writer.write_table(
            comparison.anova, entities={"desc": "dimensionalitysubsampleanova"}, suffix="stats", sources=sources,
            parameters=record, metadata={**meta, "Caveat": caveat}, description="one-way ANOVA over subsample "
            "participation ratios. " + caveat,
            columns={"n_drugs": "drugs compared", "df_between": "degrees of freedom between drugs",
                     "df_within": "degrees of freedom within drugs (subsamples, not subjects)",
                     "f": "one-way ANOVA F over subsample PRs", "p": "ANOVA p-value (descriptive, see Caveat)"}))
        written.append(writer.write_table(
            comparison.anova_pairwise, entities={"desc": "dimensionalitysubsamplepairwise"}, suffix="stats",
            sources=sources, parameters=record, metadata={**meta, "Caveat": caveat},
            description="Student t-tests between drugs over subsample participation ratios. " + caveat,
            columns={"drug_a": "first drug", "drug_b": "second drug",
                     "mean_difference": "mean subsample PR of drug_a minus that of drug_b",
                     "cohens_d": "mean difference over the pooled SD of subsample PRs",
                     "fraction_a_greater": "fraction of (subsample a, subsample b) pairs with PR_a > PR_b",
                     "t": "Student t over subsample PRs", "df": "degrees of freedom (subsamples)",
                     "p": "two-sided p (descriptive, see Caveat)",
                     "p_bonferroni": "p times the number of drug pairs, capped at 1 (descriptive)"}))
    return written


@dataclass(frozen=True)
class GeneGeometry:
    """The parcels a spatial null works on and their geometry: names, hemispheres, the distance matrix (Euclidean
    between volume centroids, or geodesic along the cortex within hemispheres), and for surface parcellations the
    sphere centroids and medial-wall pseudo-parcels of the spin tests."""

    names: list[str]
    hemispheres: list[str]
    distance: np.ndarray
    surface: bool
    sphere: np.ndarray | None = None
    wall: dict | None = None
    centroids: np.ndarray | None = None


def gene_geometry(atlas, parcel_order: list[str], structures: list[str], cache_dir: Path | None,
                  notes: list[str]) -> GeneGeometry:
    labels = atlas.labels.set_index("name")
    chosen = [p for p in parcel_order if labels.loc[p, "structure"] in structures]
    if getattr(atlas, "kind", "volume") == "surface":
        on_surface = set(atlas.with_geometry())
        without = [p for p in chosen if p not in on_surface]
        if without:
            notes.append(f"{len(without)} parcel(s) of structures {structures} have no surface vertices in "
                         f"{atlas.name} and are left out of the gene analysis (first: {without[0]})")
            LOG.warning(notes[-1])
        chosen = [p for p in chosen if p in on_surface]
        if not chosen:
            return GeneGeometry(names=[], hemispheres=[], distance=np.zeros((0, 0)), surface=True)
        return GeneGeometry(names=chosen, hemispheres=atlas.hemispheres(chosen),
                            distance=atlas.geodesic_distances(chosen, cache_dir=cache_dir), surface=True,
                            sphere=atlas.sphere_centroids(chosen), wall=atlas.wall_centroids(chosen),
                            centroids=atlas.centroids_mm(chosen).to_numpy())
    xyz = atlas.centroids_mm().loc[chosen].to_numpy()
    # spatial nulls weight parcel pairs by inverse distance: two parcels at one position (an empty region's
    # centroid falls on the volume's origin) have no finite weight
    _, inverse, counts = np.unique(np.round(xyz, 6), axis=0, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        clash = [name for name, k in zip(chosen, np.ravel(inverse)) if counts[k] > 1]
        raise BadDataError(f"atlas {atlas.name}: parcels {', '.join(clash[:4])} share one centroid (an empty or "
                           "duplicated region), so spatial nulls cannot weight them", path=atlas.source,
                           fix="remove empty or duplicated regions from the atlas labels, or leave those structures "
                               "out of connectivity.gene_structures")
    return GeneGeometry(names=chosen, hemispheres=labels.loc[chosen, "hemisphere"].astype(str).tolist(),
                        distance=gn.distance_matrix(xyz), surface=False, centroids=xyz)


def _gene_parcels(atlas, parcel_order: list[str], structures: list[str]) -> tuple[list[str], np.ndarray, list[str]]:
    """(names, centroids, hemispheres) of the gene parcels (kept for callers of the volumetric path)."""
    geometry = gene_geometry(atlas, parcel_order, structures, None, [])
    return geometry.names, geometry.centroids, geometry.hemispheres


def null_methods(params: ConnectivityParams, surface: bool) -> tuple[str, list[str]]:
    """(primary null, other nulls run beside it) of the gene tests for a surface or a volumetric parcellation.

    ``auto`` picks the null that the calibration on real-shaped maps found calibrated: the ``spin`` test on
    surface parcellations, Moran spectral randomisation on volumetric ones (no sphere to spin on)."""
    primary = params.surrogate_method
    if primary == "auto":
        primary = "spin" if surface else "moran"
    others = params.gene_other_nulls
    if others is None:
        others = ["spin_vasa", "moran"] if surface else []
    chosen = [primary, *[o for o in dict.fromkeys(others) if o != primary]]
    if not surface:
        spins = [m for m in chosen if m in gn.SPIN_METHODS]
        if spins:
            raise UsageError(f"spin nulls ({', '.join(spins)}) need a surface parcellation (fsLR), but the maps' "
                             "atlas is volumetric", fix="use moran or brainsmash (connectivity.surrogate_method, "
                                                        "gene_other_nulls), or the surface atlas of the maps")
    return chosen[0], chosen[1:]


def _surrogate_settings(params: ConnectivityParams, method: str | None = None) -> gn.SurrogateSettings:
    method = method or (params.surrogate_method if params.surrogate_method != "auto" else "moran")
    return gn.SurrogateSettings(method=method, deltas=tuple(params.surrogate_deltas),
                                kernel=params.surrogate_kernel, pv=params.surrogate_pv, nh=params.surrogate_nh,
                                resample=params.surrogate_resample, per_hemisphere=params.surrogate_per_hemisphere)


NULL_DESCRIPTIONS = {
    "spin": "spin test: parcel centroids rotated on the fsLR sphere, each parcel taking the value of the nearest "
            "rotated parcel, the medial wall rotating along (parcels it lands on left out of that spin)",
    "spin_vasa": "spin test with Vasa et al. 2018's assignment (each parcel a distinct rotated parcel)",
    "spin_hungarian": "spin test with the least-total-distance (Hungarian) assignment",
    "moran": "Moran spectral randomisation on inverse-distance weights",
    "brainsmash": "variogram-matched surrogates (brainsmash)",
}


def _null_surrogates(method: str, values: np.ndarray, geometry: GeneGeometry, params: ConnectivityParams, *,
                     seed: int, map_seed: int, cache_dir: Path, n_jobs: int) -> np.ndarray:
    if method in gn.SPIN_METHODS:
        from bids_ketamine.connectivity.spatial_nulls import spun_maps

        spins = gn.cached_spins(geometry.sphere, geometry.hemispheres, n_spins=params.n_surrogates,
                                seed=_seed_for(seed, "spins", method), method=method, cache_dir=cache_dir,
                                wall=geometry.wall if method == "spin" else None)
        return spun_maps(values, spins)
    return gn.cached_surrogates(values, geometry.distance, n_surrogates=params.n_surrogates, seed=map_seed,
                                cache_dir=cache_dir, hemispheres=geometry.hemispheres,
                                settings=_surrogate_settings(params, method), n_jobs=n_jobs)


def _run_genes(params, atlas, parcel_order, results, drugs, work_dir, seed, n_jobs, record, summary,
               writer) -> list[Path]:
    if params.gene_table is not None:
        expression = gn.read_gene_table(params.gene_table)
        gene_source = [params.gene_table]
    else:
        if getattr(atlas, "kind", "volume") == "surface":
            raise UsageError("abagen computes expression for volumetric atlases only; this parcellation is a surface "
                             "one", fix="give a parcels x genes table (connectivity.gene_table) for the surface "
                                        "parcellation")
        expression = gn.expression_from_abagen(params.ahba_dir, atlas.image, atlas.labels)
        gene_source = [params.ahba_dir]
    if params.genes is not None:
        absent = [g for g in params.genes if g not in expression.columns]
        if absent:
            raise MissingInputError(f"gene(s) {', '.join(absent[:5])} not in the gene table", path=gene_source[0],
                                    fix="correct connectivity.genes or give a table with those genes")
        expression = expression[params.genes]
    cache_dir = work_dir / "surrogates"
    geometry = gene_geometry(atlas, parcel_order, list(params.gene_structures), cache_dir, summary["notes"])
    chosen = geometry.names
    absent_parcels = [p for p in chosen if p not in expression.index]
    if absent_parcels:
        raise BadDataError(f"gene table lacks parcel(s) {absent_parcels[:3]} ({len(absent_parcels)})",
                           path=gene_source[0], fix="give a row (n/a allowed) for every parcel of the atlas")
    if len(chosen) < 10:
        raise BadDataError(f"only {len(chosen)} parcels of structures {params.gene_structures} for the gene test",
                           fix="include more structures (gene_structures) or use a finer atlas")
    primary, others = null_methods(params, geometry.surface)
    nulls_run = [primary, *others]
    record.setdefault("Resolved", {}).update({"gene_primary_null": primary, "gene_nulls": nulls_run,
                                              "gene_distances": "geodesic" if geometry.surface else "euclidean"})
    written = []
    for drug in drugs:
        result = results[drug]
        pos = [result.parcels.index(p) for p in chosen]
        for comp in params.gene_components:
            if comp > result.maps_z.shape[0]:
                raise UsageError(f"gene_components asks for PC{comp}, but {drug} has {result.maps_z.shape[0]} PCs",
                                 fix="lower connectivity.gene_components")
            brain_map = pd.Series(result.maps_z[comp - 1][pos], index=chosen)
            map_seed = _seed_for(seed, "surrogates", drug, str(comp))
            surrogates = {m: _null_surrogates(m, brain_map.to_numpy(), geometry, params, seed=seed,
                                              map_seed=map_seed, cache_dir=cache_dir, n_jobs=n_jobs)
                          for m in nulls_run}
            table = gn.gene_correlations(brain_map, expression, surrogates, n_naive=params.n_naive_shuffles,
                                         seed=_seed_for(seed, "naive", drug, str(comp)))
            table["significant_fdr"] = table["q_spatial"] < params.fdr_alpha
            null_cols = {}
            for m in nulls_run:
                label = "primary inference: " if m == primary else ""
                null_cols[f"p_{m}"] = f"{label}p under the {NULL_DESCRIPTIONS[m]}"
                null_cols[f"q_{m}"] = f"Benjamini-Hochberg FDR q of p_{m} across genes"
            written.append(writer.write_table(
                table, entities={"atlas": atlas.name, "desc": f"{drug}pc{comp}genes"}, suffix="stats",
                sources=gene_source, parameters=record,
                metadata={"Drug": drug, "Component": comp, "Structures": list(params.gene_structures),
                          "NumberOfParcels": len(chosen), "SurrogateMethod": primary, "PrimaryNull": primary,
                          "NullsRun": nulls_run,
                          "Distances": ("geodesic along the fsLR midthickness cortex, within hemispheres"
                                        if geometry.surface else "Euclidean between parcel centroids"),
                          "SurrogatesPerHemisphere": bool(geometry.surface) or (
                              len(set(geometry.hemispheres)) > 1 and params.surrogate_per_hemisphere)},
                description=f"Pearson r between the z-scored PC{comp} map of {drug} and gene expression across "
                            f"parcels, with p under every spatial null that was run (primary: {primary}) and a "
                            "naive shuffle",
                columns={"gene": "gene symbol (gene table column)", "n_parcels": "parcels with expression values",
                         "r": "Pearson r across parcels",
                         "p_spatial": f"p of the primary null ({primary}): (1 + #{{|r_null| >= |r|}}) / "
                                      "(1 + number of null maps)",
                         "q_spatial": "Benjamini-Hochberg FDR q of p_spatial across genes",
                         "p_naive": "same with parcel-shuffled maps (ignores spatial autocorrelation; "
                                    "anti-conservative for smooth maps)",
                         "q_naive": "Benjamini-Hochberg FDR q of p_naive across genes",
                         "n_surrogates": "null maps per spatial null", "n_naive": "naive shuffles",
                         **null_cols, "significant_fdr": f"q_spatial < {params.fdr_alpha:g}"}))
            figure = _gene_null_figure(brain_map, expression, surrogates[primary], table, params.n_naive_shuffles,
                                       _seed_for(seed, "naive", drug, str(comp)), title=f"{drug} PC{comp} ({primary})")
            if figure is not None:
                written.append(writer.write_figure(figure, entities={"atlas": atlas.name,
                                                                     "desc": f"{drug}pc{comp}genes"}, suffix="null"))
            summary.setdefault("genes", {})[f"{drug}_pc{comp}"] = json.loads(
                table[["gene", "r", "p_spatial", "q_spatial", *[f"p_{m}" for m in nulls_run]]].head(20)
                .to_json(orient="records"))
    summary["gene_nulls"] = {"primary": primary, "run": nulls_run}
    return written


def _gene_null_figure(brain_map: pd.Series, expression: pd.DataFrame, surrogates: np.ndarray, table: pd.DataFrame,
                      n_naive: int, naive_seed: int, *, title: str, max_genes: int = 4):
    """The null distributions of r for the (up to ``max_genes``) genes with the smallest spatial p, recomputed from
    the same surrogates and the same seeded naive shuffles as the table."""
    from bids_ketamine.connectivity.null_figures import gene_null_figure

    tested = table.dropna(subset=["r", "p_spatial"])
    top = tested.assign(abs_r=tested["r"].abs()).sort_values(["p_spatial", "abs_r"], ascending=[True, False])
    genes = top["gene"].head(max_genes).tolist()
    if not genes:  # no gene could be tested (all flat or too sparse): nothing to draw
        return None
    x = brain_map.to_numpy(dtype=float)
    naive = gn.shuffled_maps(x, n_naive, np.random.default_rng(naive_seed)) if n_naive else None
    null_r, naive_r = {}, ({} if naive is not None else None)
    for gene in genes:
        values = expression.loc[list(brain_map.index), gene].to_numpy(dtype=float)
        ok = np.isfinite(values)
        null_r[gene] = gn.masked_correlations(surrogates[:, ok], values[ok])
        null_r[gene] = null_r[gene][np.isfinite(null_r[gene])]
        if naive is not None:
            naive_r[gene] = gn.row_correlations(naive[:, ok], values[ok])
    return gene_null_figure(table, null_r, naive_r, title=f"{title}: observed r against its nulls")


def calibration_methods(params: ConnectivityParams, surface: bool) -> tuple[str, list[str]]:
    """(configured null, the other nulls calibrated beside it): by default every null offered for this kind of
    parcellation that costs little (brainsmash only when listed in null_calibration_other_methods)."""
    primary, _ = null_methods(params, surface)
    others = params.null_calibration_other_methods
    if others is None:
        others = ["spin", "spin_vasa", "spin_hungarian", "moran"] if surface else ["moran"]
    if not surface:
        others = [o for o in others if o not in gn.SPIN_METHODS]
    return primary, [o for o in dict.fromkeys(others) if o != primary]


def write_null_calibration(params: ConnectivityParams, atlas, writer, *, seed: int, n_jobs: int = 1,
                           record: dict | None = None, cache_dir: Path | None = None,
                           geometry: GeneGeometry | None = None) -> list[Path]:
    """Measure every offered null's false-positive rate on unrelated smooth maps over the gene parcels; write the
    table (``desc-nullcalibration_stats.tsv``) and its figure (``figures/..._desc-genenullcalibration_fpr.svg``).

    Volumetric atlases: Gaussian random fields on the parcel centroids (Euclidean covariance). Surface
    parcellations: real-shaped maps, i.e. smooth random fields on the fsLR 32k midthickness cortex (both
    hemispheres, homologous vertices coupled) averaged in parcels (:func:`bids_ketamine.surface_atlas.
    random_parcel_maps`). Cached in ``cache_dir`` (it depends on the atlas, the settings and the seed only).
    """
    from dataclasses import replace

    from bids_ketamine.connectivity.null_figures import calibration_figure

    if geometry is None:
        geometry = gene_geometry(atlas, list(atlas.names), list(params.gene_structures), cache_dir, [])
    primary, others = calibration_methods(params, geometry.surface)
    settings = _surrogate_settings(params, primary)
    common = dict(hemispheres=geometry.hemispheres, n_pairs=params.null_calibration_pairs,
                  n_null=params.null_calibration_n_null, length_mm=params.null_calibration_length_mm,
                  seed=_seed_for(seed, "calibration"), settings=settings, other_methods=tuple(others), n_jobs=n_jobs)
    if geometry.surface:
        from bids_ketamine.surface_atlas import random_parcel_maps

        names = geometry.names
        length = params.null_calibration_length_mm
        map_seed = _seed_for(seed, "calibration", "maps")
        result = gn.cached_null_calibration(
            None, cache_dir=cache_dir, **common, distance=geometry.distance, sphere=geometry.sphere,
            wall=geometry.wall, geodesic=True, both_hemisphere_modes=False, n_parcels=len(names),
            maps=lambda: random_parcel_maps(atlas, names, 2 * params.null_calibration_pairs, length_mm=length,
                                            seed=map_seed),
            maps_key=("surface-fields", atlas.geometry_key(names), length, map_seed, 0.5))
        maps_text = (f"smooth random fields on the fsLR 32k midthickness cortex (diffusion length {length:g} mm, "
                     "homologous vertices of the two hemispheres sharing half their variance) averaged in parcels")
    else:
        if settings.method in gn.SPIN_METHODS:
            settings = replace(settings, method="moran")
        result = gn.cached_null_calibration(geometry.centroids, cache_dir=cache_dir, **common,
                                            both_hemisphere_modes=params.null_calibration_both_modes)
        maps_text = (f"Gaussian random fields on the parcel centroids (length scale "
                     f"{params.null_calibration_length_mm:g} mm)")
    figure = calibration_figure(result.table, result.pairs)
    table_path = writer.write_table(
        result.table, entities={"atlas": atlas.name, "desc": "nullcalibration"}, suffix="stats",
        parameters=record or _params_record(params),
        metadata={"Structures": list(params.gene_structures), "NumberOfParcels": len(geometry.names),
                  "Maps": maps_text, "ConfiguredNull": primary},
        description="false-positive rate of every spatial null offered for this parcellation and of a naive parcel "
                    "shuffle on pairs of unrelated smooth random maps (" + maps_text + "); a calibrated test rejects "
                    "at rate alpha",
        columns={"method": {"Description": "null model", "Levels": {
                     "surrogates_per_hemisphere": "variogram-matched surrogates (brainsmash), each hemisphere alone",
                     "surrogates_whole_brain": "variogram-matched surrogates (brainsmash) over all parcels at once",
                     "moran_per_hemisphere": "Moran spectral randomisation, each hemisphere alone",
                     "moran_whole_brain": "Moran spectral randomisation over all parcels at once",
                     "moran_geodesic": "Moran spectral randomisation on geodesic distances, per hemisphere",
                     "brainsmash_geodesic": "brainsmash on geodesic distances, per hemisphere",
                     "spin": NULL_DESCRIPTIONS["spin"], "spin_vasa": NULL_DESCRIPTIONS["spin_vasa"],
                     "spin_hungarian": NULL_DESCRIPTIONS["spin_hungarian"],
                     "naive_parcel_shuffle": "random permutation of parcels"}},
                 "configured": "the null the gene tests of this run use as their primary inference",
                 "n_pairs": "unrelated map pairs tested", "n_null": "surrogates or shuffles per pair",
                 "length_scale_mm": {"Description": "smoothness length of the random maps", "Units": "mm"},
                 "n_parcels": "parcels in the maps", "alpha": "significance level",
                 "n_false_positive": "pairs with p < alpha", "false_positive_rate": "n_false_positive / n_pairs",
                 "ci_low": "Clopper-Pearson 95 % lower bound", "ci_high": "Clopper-Pearson 95 % upper bound"})
    figure_path = writer.write_figure(figure, entities={"atlas": atlas.name, "desc": "genenullcalibration"},
                                      suffix="fpr")
    return [table_path, figure_path]


def write_component_maps(atlas, parcel_order: list[str], result: DeltaPCA, drug: str, n_maps: int, writer, *,
                         ent_base: dict, sources: list[Path], record: dict, meta: dict) -> list[Path]:
    """PC maps (z) and the mean delta map as images: NIfTI statmaps on a volumetric atlas; on a surface
    parcellation CIFTI ``.dscalar.nii`` (grayordinates) and ``.pscalar.nii`` (parcels) statmaps and a figure of each
    map on the inflated fsLR surface (``figures/..._desc-<drug>pc<k>_surface.png``)."""
    written: list[Path] = []
    maps = [(f"{drug}pc{i + 1}", "z", result.maps_z[i], f"PC{i + 1} map of {drug} delta-GBC, z-scored across "
             "parcels", i + 1) for i in range(n_maps)]
    maps.append((f"{drug}deltagbc", "mean", result.mean_map, f"mean {drug}-minus-placebo GBC (Fisher z)", None))
    if getattr(atlas, "kind", "volume") != "surface":
        for desc, stat, values, text, comp in maps:
            written.append(writer.write_nifti(
                _image(atlas, parcel_order, values), entities={**ent_base, "stat": stat, "desc": desc},
                suffix="statmap", sources=sources, parameters=record,
                metadata={**meta, **({"Component": comp} if comp else {}),
                          "Description": text + " (0 outside the atlas)"}))
        return written
    from bids_ketamine.connectivity.surface_figures import parcel_vertex_values, surface_map_figure

    figures = []
    for desc, stat, values, text, comp in (maps if atlas.on_fslr32k else []):
        label = "z" if stat == "z" else "delta GBC (Fisher z)"
        figures.append((surface_map_figure(parcel_vertex_values(atlas, parcel_order, values),
                                           title=f"{text} ({atlas.name})", label=label), desc))
    for desc, stat, values, text, comp in maps:
        extra = {**meta, **({"Component": comp} if comp else {}), "Description": text + " (0 where no parcel)"}
        written.append(writer.write_nifti(
            atlas.dscalar_image(values[None, :], [desc], parcel_order), entities={**ent_base, "stat": stat,
                                                                                  "desc": desc},
            suffix="statmap", sources=sources, parameters=record, metadata=extra, extension=".dscalar.nii"))
        image, kept = atlas.pscalar_image(values[None, :], [desc], parcel_order)
        left_out = len(parcel_order) - len(kept)
        written.append(writer.write_nifti(
            image, entities={**ent_base, "stat": stat, "desc": desc}, suffix="statmap", sources=sources,
            parameters=record, extension=".pscalar.nii",
            metadata={**extra, **({"Notes": [f"{left_out} parcel(s) without grayordinates are only in the "
                                              "tables"]} if left_out else {})}))
    for figure, desc in figures:
        written.append(writer.write_figure(figure, entities={**ent_base, "desc": desc}, suffix="surface",
                                           extension=".png"))
    return written


def imported_provenance(maps: list[DeltaMap]) -> dict[str, Any]:
    """Which delta maps this app made (a sidecar whose GeneratedBy names bids_ketamine) and which were supplied,
    with what the supplied maps' sidecars say about where they come from (for the methods text)."""
    supplied, without, provenance = 0, 0, []
    for m in maps:
        sidecar = m.path.with_suffix(".json")
        data: dict = {}
        if sidecar.is_file():
            try:
                data = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = {}
        generated = data.get("GeneratedBy") if isinstance(data, dict) else None
        entries = generated if isinstance(generated, list) else ([generated] if isinstance(generated, dict) else [])
        if any(isinstance(g, dict) and str(g.get("Name", "")).lower() == "bids_ketamine" for g in entries):
            continue
        supplied += 1
        if not data:
            without += 1
            continue
        parts = []
        for g in entries:
            if isinstance(g, dict) and g.get("Name"):
                parts.append(" ".join(str(g[k]) for k in ("Name", "Version") if g.get(k)))
        for key in ("Description", "Pipeline", "Software", "Reference", "ReferencesAndLinks", "Atlas"):
            value = data.get(key)
            if value:
                parts.append(f"{key}: {value if isinstance(value, str) else json.dumps(value)}"[:200])
        if parts:
            provenance.append("; ".join(parts))
    unique = list(dict.fromkeys(provenance))
    return {"maps_total": len(maps), "maps_supplied": supplied, "maps_supplied_without_sidecar": without,
            "maps_provenance": unique[:5]}
