"""Structural analysis, participant level: grey-matter features from the best source a participant has.

Order of preference (configurable, ``AnatFeatureParams.sources``): sMRIPrep/fMRIPrep derivatives (GM probseg in MNI
x Jacobian of the T1w-to-MNI transform) > CAT12 ``mwp1`` > FreeSurfer ``aseg``/``aparc`` volumes > the built-in
antspyx pipeline on the raw T1w. Everything is computed before anything is written, so bad input leaves no file.

Outputs (via the derivatives writer):
- ``sub-X/anat/sub-X_space-<tpl>_label-GM_desc-modulated_probseg.nii.gz``: modulated GM (mm^3 of subject GM per
  mm^3 of template), except for FreeSurfer which has no map;
- ``sub-X/anat/sub-X_atlas-<name>_morph.tsv``: one row per atlas region (``region``, ``hemisphere``,
  ``structure``, ``gm_volume_mm3``, ``gm_fraction_tiv``, ``tiv_mm3``), sidecar with ``FeatureSource`` and TIV;
- ``sub-X/figures/sub-X_space-<tpl>_label-GM_desc-modulated_probseg.png``: QC figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.inputs import AnatInputs, ParticipantInputs
from bids_ketamine.structural import gm_features as gmf
from bids_ketamine.structural import space as spaces_
from bids_ketamine.structural.anat_params import AnatFeatureParams, anat_params_of

ANALYSIS = "structural"
#: BIDS template identifiers of the maps each source produces.
BUILTIN_SPACE = "MNI152NLin2009aSym"  # nilearn's MNI152 template (ICBM 2009a nonlinear symmetric)
CAT12_SPACE = "IXI549Space"  # CAT12/SPM template space (IXI-derived, MNI-aligned)
MORPH_COLUMNS = {
    "region": "Atlas region name (hemisphere prefix L_/R_; see the atlas labels).",
    "hemisphere": {"Description": "Hemisphere of the region.", "Levels": {"L": "left", "R": "right",
                                                                           "B": "both / midline"}},
    "structure": "Region class: cortex, subcortex, cerebellum or brainstem.",
    "gm_volume_mm3": {"Description": "Grey-matter volume of the region in the subject (sum of Jacobian-modulated "
                                     "GM x voxel volume; FreeSurfer: GrayVol / Volume_mm3).", "Units": "mm^3"},
    "gm_fraction_tiv": {"Description": "gm_volume_mm3 divided by tiv_mm3.", "Units": "1"},
    "tiv_mm3": {"Description": "Total intracranial volume of the participant (same on every row).",
                "Units": "mm^3"},
    "total_gm_mm3": {"Description": "Total grey-matter volume of the participant, whole brain (not only the atlas "
                                    "regions; same on every row; n/a where the source gives none).", "Units": "mm^3"},
    "total_wm_mm3": {"Description": "Total white-matter volume (built-in pipeline; n/a otherwise).", "Units": "mm^3"},
    "total_csf_mm3": {"Description": "Total CSF volume inside the brain mask (built-in pipeline; n/a otherwise).",
                      "Units": "mm^3"},
    "template_correlation": {"Description": "Correlation of the registered T1w with the MNI152 template inside its "
                                            "brain mask (built-in pipeline's registration QC; n/a otherwise).",
                             "Units": "1"},
}
#: Sidecar keys of the whole-participant values repeated as morph-table columns.
TOTAL_COLUMNS = {"total_gm_mm3": "TotalGM_mm3", "total_wm_mm3": "TotalWM_mm3", "total_csf_mm3": "TotalCSF_mm3",
                 "template_correlation": "TemplateCorrelation"}


def with_totals(table: pd.DataFrame, details: dict[str, Any]) -> pd.DataFrame:
    """The morph table with the participant's totals and registration QC as columns (NaN where not given)."""
    table = table.copy()
    for column, key in TOTAL_COLUMNS.items():
        value = details.get(key)
        table[column] = float(value) if value is not None else np.nan
    return table


@dataclass
class GMFeatures:
    """Grey-matter features of one participant, ready to write."""

    source: str
    table: pd.DataFrame
    tiv_mm3: float
    atlas_name: str
    atlas_source: str
    inputs: list[Path]
    space: str | None = None
    modulated: Any = None  # nibabel image in ``space`` (None for FreeSurfer)
    background: np.ndarray | None = None  # image on the modulated map's grid for the QC figure
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total_gm_mm3(self) -> float | None:
        """Total GM of the participant (the one value the sidecar, table, figure and report show): the whole
        modulated map (= native GM: modulation preserves volume), not the atlas regions' sum, which misses the GM
        outside the atlas labels (about 25 % of it)."""
        value = self.details.get("TotalGM_mm3")
        return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------------------- choice
def available_sources(anat: AnatInputs) -> dict[str, str]:
    """Each source this participant has, with what it would use (a one-line description)."""
    found: dict[str, str] = {}
    if anat.gm_probseg_mni is not None and anat.t1w_to_mni_xfm is not None:
        found["fmriprep"] = f"{Path(anat.gm_probseg_mni).name} x Jacobian of {Path(anat.t1w_to_mni_xfm).name}"
    if anat.cat12_mwp1 is not None:
        found["cat12"] = Path(anat.cat12_mwp1).name
    if anat.freesurfer_dir is not None:
        found["freesurfer"] = f"{Path(anat.freesurfer_dir).name}/stats (aseg, aparc)"
    if anat.t1w:
        found["builtin"] = f"built-in antspyx pipeline on {Path(anat.t1w[0]).name}"
    return found


def choose_source(anat: AnatInputs, params: AnatFeatureParams) -> tuple[str | None, str]:
    """The first preferred source this participant has, and why (or what is missing)."""
    found = available_sources(anat)
    for source in params.sources:
        if source in found:
            if source == "freesurfer" and params.atlas_nifti is not None:
                continue  # FreeSurfer volumes cannot be re-parcellated with a user atlas
            return source, f"{source}: {found[source]}"
    half = ""
    if anat.gm_probseg_mni is not None and anat.t1w_to_mni_xfm is None:
        half = " (a GM probseg in MNI space was found but no T1w-to-MNI transform to modulate it)"
    return None, ("no grey-matter source among " + ", ".join(params.sources) + half +
                  ": needs fMRIPrep/sMRIPrep GM probseg + transform, CAT12 mwp1, FreeSurfer stats or a raw T1w")


def plan(inputs: ParticipantInputs, params: Any) -> tuple[bool, str]:
    """Will the structural participant level run for this participant, and on what."""
    source, why = choose_source(inputs.anat, anat_params_of(params))
    return source is not None, why


# ---------------------------------------------------------------------------------------------------- sources
def _atlas(params: AnatFeatureParams):
    from bids_ketamine.atlas import load_atlas, load_default_atlas

    if params.atlas_nifti is not None:
        return load_atlas(params.atlas_nifti, params.atlas_labels, name=params.atlas_name)
    return load_default_atlas()


def _check_tiv(tiv_mm3: float, params: AnatFeatureParams, path: Path) -> None:
    if not np.isfinite(tiv_mm3) or not params.min_tiv_cm3 <= tiv_mm3 / 1000 <= params.max_tiv_cm3:
        raise BadDataError(f"total intracranial volume {tiv_mm3 / 1000:.0f} cm^3 is outside "
                           f"{params.min_tiv_cm3:.0f}-{params.max_tiv_cm3:.0f} cm^3: not a whole adult brain, or a "
                           "failed registration", path=path,
                           fix="check the input and its registration, or adjust min_tiv_cm3/max_tiv_cm3")


def _finish_table(table: pd.DataFrame, tiv_mm3: float) -> pd.DataFrame:
    table = table[["region", "hemisphere", "structure", "gm_volume_mm3"]].copy()
    table["gm_fraction_tiv"] = table["gm_volume_mm3"] / tiv_mm3
    table["tiv_mm3"] = float(tiv_mm3)
    return table


def _load_nifti(path: Path, what: str):
    from bids_ketamine.io.images import load_image

    # the data are read here, inside the error mapping: a truncated file is one line naming it (exit 65)
    return load_image(path, what, fix=f"give a readable NIfTI {what} (re-run the tool that wrote it)")[0]


def features_from_fmriprep(anat: AnatInputs, params: AnatFeatureParams, atlas, *, seed: int = 0) -> GMFeatures:
    """GM probseg in MNI x Jacobian determinant of sMRIPrep's T1w-to-MNI transform; TIV from the T1w brain mask."""
    import nibabel as nib
    from nilearn import datasets

    probseg_path, xfm_path = Path(anat.gm_probseg_mni), Path(anat.t1w_to_mni_xfm)
    img = _load_nifti(probseg_path, "GM probseg")
    gm = gmf.check_gm_map(img, probseg_path)
    if float(gm.max()) > 1.0 + 1e-3:
        raise BadDataError(f"GM probseg has values up to {float(gm.max()):.3g}; a probability map lies in 0-1",
                           path=probseg_path, fix="give sMRIPrep's label-GM_probseg (not a modulated map)")
    components = gmf.read_itk_transform(xfm_path)
    jac = gmf.jacobian_on_grid(components, gm.shape, img.affine)
    gmf.check_jacobian(jac[gm > 0.1], xfm_path)
    modulated = gmf.modulate(gm, jac)
    inputs = [probseg_path, xfm_path]
    if anat.brain_mask_t1w is not None:
        mask_img = _load_nifti(Path(anat.brain_mask_t1w), "T1w brain mask")
        mask = np.asarray(mask_img.dataobj) > 0.5
        tiv = float(mask.sum() * abs(np.linalg.det(mask_img.affine[:3, :3])))
        tiv_method = "volume of sMRIPrep's T1w brain mask"
        inputs.append(Path(anat.brain_mask_t1w))
    else:  # atlas scaling: the template's brain mask times the Jacobian
        tpl_mask = datasets.load_mni152_brain_mask(resolution=2)
        mask = np.asarray(tpl_mask.dataobj) > 0.5
        jac_mask = gmf.jacobian_on_grid(components, mask.shape, tpl_mask.affine)
        tiv = float((jac_mask * mask).sum() * abs(np.linalg.det(tpl_mask.affine[:3, :3])))
        tiv_method = "MNI152 brain mask x Jacobian of the T1w-to-MNI transform (no T1w brain mask found)"
    _check_tiv(tiv, params, probseg_path)
    mod_img = nib.Nifti1Image(modulated, img.affine)
    source_space = anat.mni_space or _space_of(probseg_path)
    aligned = spaces_.register_to_atlas_space(mod_img, nib.Nifti1Image(gm, img.affine),
                                              spaces_.plan_alignment(source_space, atlas.space,
                                                                      register=params.register_to_atlas_space),
                                              seed=seed)
    spaces_.warn_if_untrusted(aligned, probseg_path)
    table = gmf.regional_table(aligned.modulated, atlas, tiv_mm3=tiv)
    background = _template_on_grid(gm.shape, img.affine)
    return GMFeatures(source="fmriprep", table=_finish_table(table, tiv), tiv_mm3=tiv, atlas_name=atlas.name,
                      atlas_source=atlas.source, inputs=inputs, space=source_space,
                      modulated=mod_img, background=background,
                      details={"TIVMethod": tiv_method, "JacobianMedian": float(np.median(jac[gm > 0.1])),
                               "TotalGM_mm3": gmf.total_volume(modulated, abs(np.linalg.det(img.affine[:3, :3]))),
                               **aligned.sidecar()})


def _space_of(path: Path) -> str:
    match = re.search(r"space-([A-Za-z0-9]+)", path.name)
    return match.group(1) if match else "MNI152NLin2009cAsym"


@lru_cache(maxsize=4)
def _template_on_grid_cached(shape: tuple[int, int, int], affine_bytes: bytes) -> np.ndarray:
    from nilearn import datasets

    affine = np.frombuffer(affine_bytes).reshape(4, 4)
    for res in (2, 1):  # nilearn's own grids need no resampling
        tpl = datasets.load_mni152_template(resolution=res)
        if tpl.shape == shape and np.allclose(tpl.affine, affine, atol=1e-4):
            return np.asarray(tpl.dataobj, dtype=np.float32)
    return gmf.resample_to_grid(datasets.load_mni152_template(resolution=1), shape, affine, order=1)


def _template_on_grid(shape, affine) -> np.ndarray:
    """nilearn's MNI152 T1 template sampled on a grid (the QC figure's background)."""
    return _template_on_grid_cached(tuple(int(n) for n in shape), np.asarray(affine, dtype=float).tobytes())


def features_from_cat12(anat: AnatInputs, params: AnatFeatureParams, atlas, *, seed: int = 0) -> GMFeatures:
    """CAT12's mwp1 (already modulated) map; TIV from CAT12's report XML when present."""
    from bids_ketamine.structural.sources import find_cat12_report, read_cat12_mwp1, read_cat12_tiv

    path = Path(anat.cat12_mwp1)
    img = read_cat12_mwp1(path)
    report = find_cat12_report(path)
    if report is None:
        raise MissingInputError("CAT12 report (report/cat_<name>.xml) with the TIV not found beside the mwp1 map",
                                path=path, fix="keep CAT12's report folder next to its mri folder")
    tiv = read_cat12_tiv(report)
    _check_tiv(tiv, params, report)
    aligned = spaces_.register_to_atlas_space(img, img, spaces_.plan_alignment(CAT12_SPACE, atlas.space,
                                                                 register=params.register_to_atlas_space), seed=seed)
    spaces_.warn_if_untrusted(aligned, path)
    table = gmf.regional_table(aligned.modulated, atlas, tiv_mm3=tiv)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return GMFeatures(source="cat12", table=_finish_table(table, tiv), tiv_mm3=tiv, atlas_name=atlas.name,
                      atlas_source=atlas.source, inputs=[path, report], space=CAT12_SPACE, modulated=img,
                      background=_template_on_grid(data.shape, img.affine),
                      details={"TIVMethod": "CAT12 report vol_TIV",
                               "TotalGM_mm3": gmf.total_volume(data, abs(np.linalg.det(img.affine[:3, :3]))),
                               **aligned.sidecar()})


def features_from_freesurfer(anat: AnatInputs, params: AnatFeatureParams, atlas) -> GMFeatures:
    """FreeSurfer aparc GrayVol + aseg volumes, aligned to the default atlas' regions; eTIV as TIV."""
    from bids_ketamine.structural.sources import align_to_atlas, freesurfer_regional_volumes

    subject_dir = Path(anat.freesurfer_dir)
    table, etiv = freesurfer_regional_volumes(subject_dir)
    _check_tiv(etiv, params, subject_dir / "stats" / "aseg.stats")
    table = align_to_atlas(table, atlas.labels, subject_dir / "stats")
    stats = subject_dir / "stats"
    return GMFeatures(source="freesurfer", table=_finish_table(table, etiv), tiv_mm3=etiv, atlas_name=atlas.name,
                      atlas_source="FreeSurfer aparc (Desikan-Killiany) + aseg, named as " + atlas.source,
                      inputs=[stats / "aseg.stats", stats / "lh.aparc.stats", stats / "rh.aparc.stats"],
                      details={"TIVMethod": "FreeSurfer eTIV"})


def features_from_builtin(anat: AnatInputs, params: AnatFeatureParams, atlas, *, work_dir: Path, seed: int,
                          n_procs: int) -> GMFeatures:
    """The built-in antspyx pipeline on the first raw T1w."""
    from bids_ketamine.structural.builtin import run_builtin_pipeline

    t1w = Path(anat.t1w[0])
    result = run_builtin_pipeline(t1w, work_dir=work_dir, seed=seed, resolution_mm=params.builtin_resolution_mm,
                                  work_resolution_mm=params.builtin_work_resolution_mm,
                                  syn_iterations=tuple(params.builtin_syn_iterations),
                                  n_threads=1 if params.builtin_reproducible else n_procs)
    if result.template_correlation < params.min_template_correlation:
        raise BadDataError(f"the T1w does not match the MNI152 brain after registration (correlation "
                           f"{result.template_correlation:.2f} < {params.min_template_correlation})", path=t1w,
                           fix="check that the file is a whole-head T1w; if it is, report the registration failure")
    _check_tiv(result.tiv_mm3, params, t1w)
    table = gmf.regional_table(result.gm_modulated_mni, atlas, tiv_mm3=result.tiv_mm3)
    return GMFeatures(source="builtin", table=_finish_table(table, result.tiv_mm3), tiv_mm3=result.tiv_mm3,
                      atlas_name=atlas.name, atlas_source=atlas.source, inputs=[t1w], space=BUILTIN_SPACE,
                      modulated=result.gm_modulated_mni, background=np.asarray(result.t1w_mni.dataobj),
                      details={"TIVMethod": result.tiv_method, "SkullStripped": result.skull_stripped,
                               "ForegroundOutsideBrain": result.foreground_outside_brain,
                               "TotalGM_mm3": result.gm_native_mm3, "TotalWM_mm3": result.wm_native_mm3,
                               "TotalCSF_mm3": result.csf_native_mm3,
                               "TemplateCorrelation": result.template_correlation,
                               "StepSeconds": result.timings,
                               **spaces_.Aligned(result.gm_modulated_mni,
                                                 spaces_.plan_alignment(BUILTIN_SPACE, atlas.space)).sidecar()})


def compute_features(inputs: ParticipantInputs, params: AnatFeatureParams, *, work_dir: Path, seed: int,
                     n_procs: int = 1) -> GMFeatures:
    """GM features of one participant from the first available preferred source (nothing written)."""
    source, why = choose_source(inputs.anat, params)
    if source is None:
        raise MissingInputError(f"sub-{inputs.subject}: {why}",
                                fix="run fMRIPrep/sMRIPrep, CAT12 or FreeSurfer, or provide a raw T1w")
    atlas = _atlas(params)
    if source == "fmriprep":
        features = features_from_fmriprep(inputs.anat, params, atlas, seed=seed)
    elif source == "cat12":
        features = features_from_cat12(inputs.anat, params, atlas, seed=seed)
    elif source == "freesurfer":
        features = features_from_freesurfer(inputs.anat, params, atlas)
    else:
        features = features_from_builtin(inputs.anat, params, atlas, work_dir=Path(work_dir), seed=seed,
                                         n_procs=n_procs)
    if atlas.cerebellum and source != "freesurfer":
        features.details["AtlasCerebellum"] = atlas.cerebellum
    return features


# ---------------------------------------------------------------------------------------------------- writing
def qc_title(subject: str, features: GMFeatures) -> str:
    """The QC figure's title: TIV and total GM as the sidecar records them (one value, not a recomputation)."""
    total_gm = features.total_gm_mm3
    return (f"sub-{subject}  {features.source}  TIV {features.tiv_mm3 / 1000:.0f} cm3"
            + (f"  total GM {total_gm / 1000:.0f} cm3" if total_gm is not None else "")
            + ("  (skull-stripped input)" if features.details.get("SkullStripped") else ""))


def anatomy_provenance(output_dir: str | Path) -> dict[str, Any]:
    """What the participant-level morph sidecars of ``output_dir`` record, for the methods text: participants per
    feature source and per template space, the TIV methods of the other sources, how many built-in inputs were
    skull-stripped, and what was done to bring each map into the atlas' space (participants per statement)."""
    import json

    sources: dict[str, int] = {}
    spaces: dict[str, int] = {}
    tiv_methods: dict[str, list[str]] = {}
    alignments: dict[str, int] = {}
    stripped = 0
    for path in morph_tables(Path(output_dir)):
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        source = str(meta.get("FeatureSource"))
        sources[source] = sources.get(source, 0) + 1
        if meta.get("TemplateSpace"):
            spaces[str(meta["TemplateSpace"])] = spaces.get(str(meta["TemplateSpace"]), 0) + 1
        if meta.get("SpaceAlignment"):
            alignments[str(meta["SpaceAlignment"])] = alignments.get(str(meta["SpaceAlignment"]), 0) + 1
        if source == "builtin":
            stripped += bool(meta.get("SkullStripped"))
        elif meta.get("TIVMethod") and meta["TIVMethod"] not in tiv_methods.setdefault(source, []):
            tiv_methods[source].append(str(meta["TIVMethod"]))
    return {"sources": sources, "spaces": spaces, "tiv_methods": tiv_methods, "n_skull_stripped": stripped,
            "alignments": alignments}


def run_participant(inputs: ParticipantInputs, *, params: Any, design: Any = None, writer, work_dir: Path,
                    seed: int, n_procs: int = 1) -> list[Path]:
    """Compute the participant's GM features, then write map, regional table and QC figure with ``writer``."""
    anat_params = anat_params_of(params)
    features = compute_features(inputs, anat_params, work_dir=Path(work_dir) / f"sub-{inputs.subject}_anat",
                                seed=seed, n_procs=n_procs)
    base = {"sub": inputs.subject, "ses": inputs.anat.session}
    parameters = anat_params.model_dump(mode="json")
    outputs: list[Path] = []
    # build the figure before writing anything: a plotting failure must not leave half the outputs
    figure = None
    if anat_params.write_qc and features.modulated is not None:
        from bids_ketamine.structural.qc import gm_qc_figure

        figure = gm_qc_figure(features.background, np.asarray(features.modulated.dataobj),
                              affine=features.modulated.affine, title=qc_title(inputs.subject, features))
    map_entities = {**base, "space": features.space, "label": "GM", "desc": "modulated"}
    if features.modulated is not None:
        img = features.modulated
        if anat_params.smoothing_fwhm_mm > 0:
            import nibabel as nib

            img = nib.Nifti1Image(gmf.smooth_fwhm(np.asarray(img.dataobj, dtype=np.float32), img.affine,
                                                  anat_params.smoothing_fwhm_mm), img.affine)
        img.header.set_xyzt_units("mm")
        outputs.append(writer.write_nifti(img, entities=map_entities, suffix="probseg", datatype="anat",
                                          sources=features.inputs, parameters=parameters, metadata={
                                              "Description": "Jacobian-modulated grey-matter probability: mm^3 of "
                                                             "subject grey matter per mm^3 of template",
                                              "FeatureSource": features.source,
                                              "SmoothingFWHM_mm": anat_params.smoothing_fwhm_mm,
                                              "TemplateSpace": features.space}))
    outputs.append(writer.write_table(
        with_totals(features.table, features.details), entities={**base, "atlas": features.atlas_name}, suffix="morph", datatype="anat",
        columns=MORPH_COLUMNS, sources=features.inputs, parameters=parameters, float_format="%.9g",
        description="Regional grey-matter volumes and total intracranial volume of one participant",
        metadata={"FeatureSource": features.source, "Atlas": features.atlas_source,
                  "TemplateSpace": features.space, "TIV_mm3": features.tiv_mm3, **features.details}))
    if figure is not None:
        outputs.append(writer.write_figure(figure, entities=map_entities, suffix="probseg", extension=".png"))
    return outputs


# ---------------------------------------------------------------------------------------------------- group input
def morph_tables(output_dir: Path, atlas_name: str | None = None) -> list[Path]:
    """The participant-level morph tables of ``output_dir`` (sessionless and per session), of one atlas or all,
    sorted; the one place that knows where they live."""
    pattern = f"*_atlas-{atlas_name}_morph.tsv" if atlas_name else "*_morph.tsv"
    return sorted(set(output_dir.glob(f"sub-*/anat/{pattern}")) | set(output_dir.glob(f"sub-*/ses-*/anat/{pattern}")))


def load_regional_features(output_dir: str | Path, atlas_name: str | None = None) -> tuple[pd.DataFrame,
                                                                                             pd.DataFrame]:
    """Participant-level morph tables of ``output_dir`` as (features, info).

    ``features``: one row per participant (index ``participant_id`` without ``sub-``), one column per region
    (GM volume, mm^3). ``info``: ``tiv_mm3``, ``feature_source``, ``session`` per participant. A participant with
    several sessions contributes its first session (sorted label); all tables must share the atlas and regions.
    """
    import json

    output_dir = Path(output_dir)
    paths = morph_tables(output_dir, atlas_name)
    if not paths:
        raise MissingInputError("no participant-level structural tables (sub-*/anat/*_morph.tsv)", path=output_dir,
                                fix="run the participant level with the structural analysis first")
    rows, info, regions, atlases = {}, {}, None, set()
    for path in paths:
        subject = re.search(r"sub-([A-Za-z0-9]+)", path.name).group(1)
        session_match = re.search(r"_ses-([A-Za-z0-9]+)", path.name)
        atlases.add(re.search(r"_atlas-([A-Za-z0-9]+)", path.name).group(1))
        if subject in rows:
            continue  # sorted paths: the first session wins
        table = pd.read_csv(path, sep="\t")
        if regions is None:
            regions = table["region"].tolist()
        elif table["region"].tolist() != regions:
            raise BadDataError("regions differ from the other participants' tables", path=path,
                               fix="re-run the participant level of every participant with the same atlas")
        rows[subject] = table["gm_volume_mm3"].to_numpy(dtype=float)
        sidecar = path.with_suffix(".json")
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        source = meta.get("FeatureSource")
        info[subject] = {"tiv_mm3": float(table["tiv_mm3"].iloc[0]), "feature_source": source,
                         # the space the regional features are in (after any registration to the atlas' space)
                         "template_space": meta.get("FeatureSpace", meta.get("TemplateSpace")),
                         "session": session_match.group(1) if session_match else None}
    if len(atlases) > 1:
        raise BadDataError(f"participant tables use several atlases {sorted(atlases)}", path=output_dir,
                           fix="choose one with the atlas setting and re-run the participant level")
    features = pd.DataFrame.from_dict(rows, orient="index", columns=regions)
    features.index.name = "participant_id"
    info_df = pd.DataFrame.from_dict(info, orient="index")
    info_df.index.name = "participant_id"
    return features, info_df


def one_template_space(spaces, path: Path) -> str | None:
    """The one template space of the participants' regional features (None when no sidecar names one).

    Maps from other templates than the atlas' are registered to the atlas' space at the participant level
    (``structural.space``), so their features share the atlas' space and mix freely. What is still refused: features
    left in different spaces (an atlas whose space is not stated is laid on each map as given), because regional
    volumes from different templates are not comparable and a model trained on them would learn the source.
    """
    counts = pd.Series([s for s in spaces if isinstance(s, str) and s]).value_counts()
    if len(counts) > 1:
        listed = ", ".join(f"{space} ({n})" for space, n in counts.sort_index().items())
        raise BadDataError(f"participants' regional features are in different template spaces: {listed}; the atlas' "
                           "space is not stated, so the maps were not registered to one space", path=path,
                           fix="use the default atlas (maps are registered to its space) or extract every "
                               "participant's features with one source (structural.anat.sources)")
    return str(counts.index[0]) if len(counts) else None
