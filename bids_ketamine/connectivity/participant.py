"""Connectivity participant level: each BOLD run -> scrubbing -> nuisance regression -> parcel time series; each
session -> Fisher-z connectivity and GBC; each drug -> the subject's delta-GBC map (drug minus placebo).

Outputs (BIDS-Derivatives, tables described in docs/connectivity_tables.md), under ``sub-<label>/[ses-<label>/]func``:

* ``..._run-<n>_space-<space>_atlas-<atlas>_timeseries.tsv``: cleaned parcel time series, one row per frame
  (censored frames n/a), one column per parcel;
* ``..._space-<space>_atlas-<atlas>_desc-fisherz_relmat.tsv``: the session's Fisher-z connectivity matrix;
* ``..._space-<space>_atlas-<atlas>_gbc.tsv``: the session's GBC per parcel;
* ``sub-<label>_desc-scrubbing_stats.tsv``: frames flagged and censored per run, and which sessions were excluded;
* ``sub-<label>_desc-<drug>minusplacebo_gbc.tsv``: the delta-GBC map, the group level's input.

Report figures (PNG) under ``sub-<label>/figures/``: per run ``..._desc-framewise_motion.png`` (FD and intensity
change with the censored frames marked) and ``..._desc-carpet_bold.png`` (parcel signals before nuisance regression);
per usable session ``..._atlas-<atlas>_gbc.png``; per drug ``sub-<label>_desc-<drug>minusplacebo_gbc.png``.

Several runs of a session are cleaned separately and their kept frames concatenated before the correlation. Several
placebo (or same-drug) sessions are averaged. A session with more than ``max_scrubbed_fraction`` of its frames
censored is excluded and the stats table says so; a drug whose placebo partner is missing or excluded gets no delta
map (the scrubbing stats table and the log say why). Bad input fails the participant with an error from errors.py:
no placebo session (MissingInputError, 66), a confounds file whose length differs from the BOLD, a constant or NaN
parcel, an atlas that does not overlap the brain mask (BadDataError, 65).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams
from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.inputs import BoldRun, ParticipantInputs

LOG = logging.getLogger(__name__)
DEFAULT_PLACEBO = "placebo"


def participant_params(params: Any) -> ConnectivityParticipantParams:
    """The participant-level parameters, from our own model, a parent model with ``.participant``, or a dict."""
    if isinstance(params, ConnectivityParticipantParams):
        return params
    if params is None:
        return ConnectivityParticipantParams()
    if hasattr(params, "participant") and isinstance(params.participant, ConnectivityParticipantParams):
        return params.participant
    if isinstance(params, dict):
        return ConnectivityParticipantParams.model_validate(params)
    if hasattr(params, "model_dump"):
        fields = ConnectivityParticipantParams.model_fields
        return ConnectivityParticipantParams.model_validate(
            {k: v for k, v in params.model_dump().items() if k in fields})
    raise TypeError(f"cannot read connectivity participant parameters from {type(params).__name__}")


def _placebo_label(design: Any) -> str:
    try:
        return str(design.sessions.placebo_condition)
    except AttributeError:
        return DEFAULT_PLACEBO


def condition_label(condition: str) -> str:
    """A condition as a BIDS label (alphanumeric): ``ketamine``, ``lsd``..."""
    label = re.sub(r"[^0-9a-zA-Z]", "", str(condition)).lower()
    if not label:
        raise BadDataError(f"condition {condition!r} has no letters or digits", fix="name conditions with letters")
    return label


def entity_label(value: str) -> str:
    """Any name as a BIDS entity label: letters and digits only, case kept."""
    return re.sub(r"[^0-9a-zA-Z]", "", str(value)) or "atlas"


def usable_runs(inputs: ParticipantInputs, params: ConnectivityParticipantParams) -> list[BoldRun]:
    """BOLD runs in the space the parameters ask for (volumetric MNI, or CIFTI fsLR)."""
    if params.space == "fsLR":
        return [r for r in inputs.bold if r.space == "fsLR" and str(r.bold).endswith(".dtseries.nii")]
    return [r for r in inputs.bold if r.space != "fsLR" and not str(r.bold).endswith(".dtseries.nii")]


def plan(inputs: ParticipantInputs, params: Any, placebo: str = DEFAULT_PLACEBO) -> tuple[bool, str]:
    """Will the connectivity participant level run for this participant, and on what (or what is missing)."""
    p = participant_params(params)
    runs = usable_runs(inputs, p)
    if not runs:
        other = "CIFTI fsLR" if p.space == "MNI" else "volumetric MNI"
        have = " (only " + other + " BOLD found; set space accordingly)" if inputs.bold else ""
        return False, f"no fMRIPrep resting BOLD in {p.space} space with confounds{have}"
    by_condition: dict[str, set[str]] = defaultdict(set)
    for run in runs:
        by_condition[str(run.condition)].add(run.session or "-")
    if placebo not in by_condition:
        return False, (f"no {placebo!r} session among {sorted(by_condition)}: a delta map needs the placebo "
                       "partner of each drug session")
    drugs = sorted(c for c in by_condition if c not in (placebo, "None"))
    if not drugs:
        return False, f"only {placebo!r} sessions: no drug session to compare with"
    sessions = "; ".join(f"{c}: ses {', '.join(sorted(s))}" for c, s in sorted(by_condition.items()))
    return True, (f"{len(runs)} BOLD run(s) ({sessions}) -> parcel time series, Fisher-z connectivity, GBC per "
                  f"session and delta-GBC maps for {', '.join(drugs)}")


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class RunResult:
    run: BoldRun
    names: list[str]
    timeseries: np.ndarray        # cleaned, frames x parcels, NaN at censored frames
    n_voxels: np.ndarray
    keep: np.ndarray
    flagged_fd: np.ndarray
    flagged_dvars: np.ndarray
    regressors: list[str]
    #: for the figures: FD and intensity-change ratio per frame, and the parcel series before nuisance regression
    fd: np.ndarray | None = None
    intensity_ratio: np.ndarray | None = None
    raw: np.ndarray | None = None
    #: where the framewise displacement came from (FD_FROM_CONFOUNDS or FD_FROM_MOTION)
    fd_source: str = "framewise_displacement column of the confounds file"


#: Sidecar key of the scrubbing table listing the runs whose FD was computed (the reports show it as a warning).
FD_WARNINGS_KEY = "FramewiseDisplacementWarnings"
#: FD sources, as written in the scrubbing table and the time-series sidecars.
FD_FROM_CONFOUNDS = "framewise_displacement column of the confounds file"
FD_FROM_MOTION = ("computed from trans_x..rot_z of the confounds file (Power et al. 2012, rotations on a 50 mm "
                  "sphere): the file has no framewise_displacement column")


@dataclass
class Parcellation:
    """The atlas actually used: a volumetric Atlas, or a surface parcellation on fsLR grayordinates."""

    name: str
    source: str
    atlas: Any = None
    surface: Any = None

    @property
    def labels(self) -> pd.DataFrame | None:
        if self.atlas is not None:
            return self.atlas.labels
        return None if self.surface is None else self.surface.labels

    @property
    def dlabel(self) -> Any:
        """What CIFTI time series are matched against (the surface parcellation), or None for a volume atlas."""
        return self.surface


def load_parcellation(params: ConnectivityParticipantParams) -> Parcellation:
    if params.space == "fsLR":
        from bids_ketamine.surface_atlas import load_surface_atlas

        spec = list(params.gifti_labels) if params.gifti_labels else str(params.cifti_dlabel)
        surface = load_surface_atlas(spec)
        return Parcellation(name=entity_label(surface.name), source=surface.source, surface=surface)
    from bids_ketamine.atlas import load_atlas, load_default_atlas

    atlas = (load_default_atlas() if params.atlas_nifti is None
             else load_atlas(params.atlas_nifti, params.atlas_labels))
    return Parcellation(name=entity_label(atlas.name), source=atlas.source, atlas=atlas)


def read_confounds(path: Path, n_frames: int) -> pd.DataFrame:
    """fMRIPrep confounds with exactly one row per BOLD frame (else BadDataError naming the file)."""
    if not Path(path).exists():
        raise MissingInputError("confounds file not found", path=path, fix="give the fMRIPrep confounds of this run")
    table = pd.read_csv(path, sep="\t", na_values=["n/a", "NaN", "nan"])
    if len(table) != n_frames:
        shorter = "shorter" if len(table) < n_frames else "longer"
        raise BadDataError(f"confounds file has {len(table)} rows, {shorter} than the {n_frames} BOLD volumes",
                           path=path, fix="use the confounds file fMRIPrep wrote for this BOLD run (same "
                                          "number of volumes; no dummy scans removed from one of them only)")
    return table


def _repetition_time(run: BoldRun, img) -> float:
    if run.repetition_time:
        return float(run.repetition_time)
    zooms = img.header.get_zooms()
    if len(zooms) > 3 and zooms[3] > 0:
        unit = img.header.get_xyzt_units()[1] if hasattr(img.header, "get_xyzt_units") else "sec"
        return float(zooms[3]) / (1000.0 if unit == "msec" else 1.0)
    raise MissingInputError("no RepetitionTime in the sidecar or the header", path=run.bold,
                            fix="add RepetitionTime (s) to the BOLD JSON sidecar")


def _volumetric_series(run: BoldRun, parcellation: Parcellation, params: ConnectivityParticipantParams):
    import nibabel as nib

    from bids_ketamine.connectivity.parcellate import AtlasOverlapError, labels_on_grid, parcel_timeseries_nifti

    try:
        img = nib.load(run.bold)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise BadDataError(f"cannot read the BOLD image ({exc})", path=run.bold,
                           fix="give a readable 4-D NIfTI (fMRIPrep desc-preproc_bold)") from exc
    if len(img.shape) != 4 or img.shape[3] < 3:
        raise BadDataError(f"BOLD image has shape {img.shape}, expected 4-D with >= 3 volumes", path=run.bold,
                           fix="give the 4-D preprocessed BOLD series")
    mask_path = run.mask
    if mask_path is not None and str(mask_path).endswith(".json"):  # a sidecar given for the image beside it
        image = Path(str(mask_path)[: -len(".json")] + ".nii.gz")
        mask_path = image if image.exists() else mask_path
    if mask_path is not None:
        from bids_ketamine.io.images import load_image

        # read in full inside the error mapping: a truncated mask is one line naming it (exit 65)
        mask_img, mask_data = load_image(mask_path, "brain mask",
                                         fix="give fMRIPrep's desc-brain_mask NIfTI of the BOLD's space")
        if tuple(mask_img.shape[:3]) != tuple(img.shape[:3]) or not np.allclose(mask_img.affine, img.affine,
                                                                                 atol=1e-3):
            raise BadDataError("brain mask is not on the BOLD grid", path=mask_path,
                               fix="use the desc-brain_mask of the same space and resolution as the BOLD")
        mask = np.asarray(mask_data) > 0
    else:  # no mask: voxels with a non-zero, finite first volume
        first = np.asarray(img.dataobj[..., 0])
        mask = np.isfinite(first) & (first != 0)
        LOG.warning("sub-%s: %s has no brain mask; using the non-zero voxels of the first volume",
                    run.session, Path(run.bold).name)
    atlas = parcellation.atlas
    grid = labels_on_grid(atlas.data(), atlas.image.affine, img.shape[:3], img.affine)
    try:
        series = parcel_timeseries_nifti(run.bold, grid, mask, atlas.labels["index"].tolist(), atlas.names,
                                         chunk_volumes=params.chunk_volumes, min_voxels=params.min_parcel_voxels)
    except AtlasOverlapError as exc:
        raise BadDataError(f"atlas {parcellation.name}: {exc}", path=mask_path or run.bold,
                           fix="check that the BOLD is in MNI space and the atlas covers its brain mask, or give "
                               "another atlas (atlas_nifti/atlas_labels)") from exc
    except (ValueError, OSError, EOFError) as exc:  # truncated or corrupt file
        raise BadDataError(f"cannot read the BOLD series ({exc})", path=run.bold,
                           fix="re-run fMRIPrep or copy the file again") from exc
    return series, _repetition_time(run, img)


def _cifti_series(run: BoldRun, parcellation: Parcellation, params: ConnectivityParticipantParams):
    import nibabel as nib

    from bids_ketamine.connectivity.parcellate import AtlasOverlapError, parcel_timeseries_cifti

    try:
        series = parcel_timeseries_cifti(run.bold, parcellation.dlabel, params.min_parcel_voxels)
    except AtlasOverlapError as exc:
        raise BadDataError(f"CIFTI parcellation: {exc}", path=run.bold,
                           fix="give a dlabel on the same fsLR 91k grayordinates") from exc
    if run.repetition_time:
        tr = float(run.repetition_time)
    else:
        axis = nib.load(run.bold).header.get_axis(0)
        tr = float(axis.step) if getattr(axis, "unit", "SECOND") == "SECOND" else 0.0
        if tr <= 0:
            raise MissingInputError("no repetition time", path=run.bold, fix="add RepetitionTime to the sidecar")
    return series, tr


def process_run(run: BoldRun, parcellation: Parcellation, params: ConnectivityParticipantParams) -> RunResult:
    """Parcellate, scrub and clean one run (raises BadDataError/MissingInputError naming the file)."""
    from bids_ketamine.connectivity.denoise import full_design, nuisance_names, regress_out
    from bids_ketamine.connectivity.gbc import check_parcel_signals
    from bids_ketamine.connectivity.scrubbing import censor_frames, framewise_displacement, intensity_change_ratio

    if parcellation.dlabel is not None:
        series, tr = _cifti_series(run, parcellation, params)
    else:
        series, tr = _volumetric_series(run, parcellation, params)
    n_frames = series.timeseries.shape[0]
    confounds = read_confounds(run.confounds, n_frames)
    try:
        check_parcel_signals(series.timeseries, series.names)
    except ValueError as exc:
        raise BadDataError(str(exc), path=run.bold, fix="check the BOLD for empty or corrupted regions, or give an "
                                                        "atlas that fits its field of view") from exc
    if "framewise_displacement" in confounds.columns:
        fd = pd.to_numeric(confounds["framewise_displacement"], errors="coerce").to_numpy(dtype=float)
        fd_source = FD_FROM_CONFOUNDS
    else:
        missing = [c for c in ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z") if c not in confounds]
        if missing:
            raise MissingInputError(f"confounds lack framewise_displacement and {missing[0]}", path=run.confounds,
                                    fix="use fMRIPrep's desc-confounds_timeseries.tsv")
        fd = framewise_displacement(confounds[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]]
                                    .to_numpy(dtype=float))
        fd_source = FD_FROM_MOTION
        LOG.warning("%s: no framewise_displacement column; FD %s", run.confounds, FD_FROM_MOTION.split(":")[0])
    if not np.isfinite(series.intensity_change).all():
        raise BadDataError("the BOLD has NaN or infinite values (or zero mean) inside the brain mask", path=run.bold,
                           fix="check the preprocessed BOLD and its brain mask")
    try:
        ratio = intensity_change_ratio(series.intensity_change)
    except ValueError as exc:
        raise BadDataError(str(exc), path=run.bold, fix="check the BOLD series") from exc
    censoring = censor_frames(fd, ratio, fd_threshold=params.fd_threshold, dvars_ratio=params.dvars_ratio,
                              neighbours=params.neighbours)
    names = nuisance_names(motion=params.motion_regressors, tissue=params.tissue_regressors,
                           global_signal=params.global_signal_regression)
    try:
        design, labels = full_design(confounds, names, repetition_time=tr, high_pass_hz=params.high_pass_hz,
                                     derivatives=params.derivatives)
    except KeyError as exc:
        raise MissingInputError(f"confounds lack the column {exc.args[0]!r}", path=run.confounds,
                                fix="use fMRIPrep's confounds, or switch that regressor off in the parameters") from exc
    except ValueError as exc:
        raise BadDataError(str(exc), path=run.confounds, fix="use the confounds file fMRIPrep wrote") from exc
    clean = None
    if censoring.censored_fraction <= params.max_scrubbed_fraction:
        try:
            clean = regress_out(series.timeseries, design, censoring.keep)
        except ValueError as exc:
            raise BadDataError(str(exc), path=run.bold, fix="the run is too short for the nuisance model") from exc
    else:
        clean = np.full(series.timeseries.shape, np.nan)
    return RunResult(run=run, names=series.names, timeseries=clean, n_voxels=series.n_voxels, keep=censoring.keep,
                     flagged_fd=censoring.flagged_fd, flagged_dvars=censoring.flagged_dvars, regressors=labels,
                     fd=fd, intensity_ratio=ratio, raw=series.timeseries, fd_source=fd_source)


def _fd_note(results: list[RunResult]) -> dict[str, Any]:
    """Sidecar note (read by the methods text) naming the runs whose FD was computed from the motion parameters."""
    computed = [f"{Path(r.run.confounds).name}: no framewise_displacement column; FD {FD_FROM_MOTION.split(':')[0]}"
                for r in results if r.fd_source == FD_FROM_MOTION]
    return {FD_WARNINGS_KEY: computed} if computed else {}


# ------------------------------------------------------------------------------------------------ a session
@dataclass
class SessionResult:
    session: str | None
    condition: str | None
    runs: list[RunResult]
    censored_fraction: float
    excluded: bool
    z: np.ndarray | None = None
    gbc: np.ndarray | None = None

    @property
    def names(self) -> list[str]:
        return self.runs[0].names


def session_connectivity(session: str | None, condition: str | None, runs: list[RunResult],
                         params: ConnectivityParticipantParams) -> SessionResult:
    """Exclusion by censored fraction, then Fisher-z connectivity and GBC of the concatenated kept frames."""
    from bids_ketamine.connectivity.gbc import check_parcel_signals, gbc_from_timeseries
    from bids_ketamine.connectivity.scrubbing import Censoring, session_censored_fraction

    names = runs[0].names
    for r in runs[1:]:
        if r.names != names:
            raise BadDataError("runs of one session have different parcels", path=r.run.bold,
                               fix="use the same atlas and space for every run")
    fraction = session_censored_fraction([Censoring(r.keep, r.flagged_fd, r.flagged_dvars) for r in runs])
    result = SessionResult(session, condition, runs, fraction, fraction > params.max_scrubbed_fraction)
    if result.excluded:
        LOG.warning("ses-%s excluded: %.0f %% of frames censored (> %.0f %%)", session, 100 * fraction,
                    100 * params.max_scrubbed_fraction)
        return result
    kept = np.concatenate([r.timeseries[r.keep] for r in runs], axis=0)
    try:
        check_parcel_signals(kept, names)
    except ValueError as exc:
        raise BadDataError(f"after cleaning, {exc}", path=runs[0].run.bold,
                           fix="check the BOLD and confounds of this session") from exc
    result.z, result.gbc = gbc_from_timeseries(kept)
    return result


# ------------------------------------------------------------------------------------------------ entry point
def _parcel_columns(names: list[str], labels: pd.DataFrame | None) -> pd.DataFrame:
    frame = pd.DataFrame({"parcel": names})
    if labels is not None:
        info = labels.set_index("name")
        frame["hemisphere"] = info.loc[names, "hemisphere"].to_numpy()
        frame["structure"] = info.loc[names, "structure"].to_numpy()
    return frame


PARCEL_COLUMNS = {
    "parcel": "parcel (region) name of the atlas; the key of every parcel table",
    "hemisphere": {"Description": "hemisphere of the parcel", "Levels": {"L": "left", "R": "right", "B": "both"}},
    "structure": "cortex, subcortex, cerebellum or brainstem",
}


def run_participant(inputs: ParticipantInputs, *, params: Any, design: Any, writer, work_dir: Path, seed: int,
                    n_procs: int = 1) -> list[Path]:
    """Run the connectivity participant level for one participant and write its tables with ``writer``.

    Runs are processed one after another (each streams its BOLD, so memory stays at a few hundred MB); ``seed``
    is unused because no step is random; ``n_procs`` is accepted for the common interface.
    """
    p = participant_params(params)
    placebo = _placebo_label(design)
    subject = inputs.subject
    runs = usable_runs(inputs, p)
    ok, why = plan(inputs, p, placebo)
    if not ok:
        raise MissingInputError(f"sub-{subject}: {why}", fix="check the study design's session conditions and the "
                                                            "fMRIPrep derivatives (-d fmriprep=PATH)")
    parcellation = load_parcellation(p)
    space = "fsLR" if p.space == "fsLR" else (runs[0].space or "MNI")
    space = re.sub(r"[^0-9a-zA-Z]", "", space)
    sources_all: list[Path] = []
    results = [process_run(run, parcellation, p) for run in runs]
    written: list[Path] = []
    parameters = p.model_dump(mode="json")
    for res in results:
        run = res.run
        sources = [run.bold, run.confounds] + ([run.mask] if run.mask else [])
        sources_all += sources
        ent = {"sub": subject, "ses": run.session, "task": run.task, "run": run.run, "space": space,
               "atlas": parcellation.name}
        table = pd.DataFrame(res.timeseries, columns=res.names)
        columns = {n: f"cleaned mean signal of parcel {n} (n/a: censored frame)" for n in res.names}
        written.append(writer.write_table(
            table, entities=ent, suffix="timeseries", columns=columns, sources=sources, datatype="func",
            parameters=parameters, float_format="%.6g",
            metadata={"RepetitionTime": run.repetition_time, "Atlas": parcellation.source,
                      "NuisanceRegressors": res.regressors, "FramewiseDisplacementSource": res.fd_source,
                      "CensoredFrames": np.flatnonzero(~res.keep).tolist(),
                      "NumberOfVoxels": dict(zip(res.names, res.n_voxels.astype(int).tolist()))}))

    by_session: dict[str | None, list[RunResult]] = defaultdict(list)
    for res in results:
        by_session[res.run.session].append(res)
    sessions = [session_connectivity(ses, rs[0].run.condition, rs, p) for ses, rs in sorted(
        by_session.items(), key=lambda kv: str(kv[0]))]
    for res_s in sessions:
        if len({r.run.condition for r in res_s.runs}) > 1:
            raise BadDataError("runs of one session have different conditions", path=res_s.runs[0].run.bold,
                               fix="give one condition per session in sessions.tsv")
    # build the figures before writing anything: a plotting failure must not leave half the outputs
    figures = participant_figures(subject, results, sessions, placebo, parcellation, p, space)
    for res in results:  # the uncleaned series served the carpet plots only
        res.raw = None

    stats_rows = []
    for res_s in sessions:
        for r in res_s.runs:
            stats_rows.append({
                "session": res_s.session or "n/a", "run": r.run.run or "n/a", "condition": res_s.condition or "n/a",
                "n_frames": int(r.keep.size), "n_flagged_fd": int(r.flagged_fd.sum()),
                "n_flagged_intensity": int(r.flagged_dvars.sum()), "n_censored": int((~r.keep).sum()),
                "fd_source": r.fd_source,
                "session_censored_fraction": res_s.censored_fraction, "session_excluded": bool(res_s.excluded),
                "reason": (f"{100 * res_s.censored_fraction:.1f} % of frames censored > "
                           f"{100 * p.max_scrubbed_fraction:.0f} %") if res_s.excluded else "n/a"})
    stats_columns = {
        "session": "session label", "run": "run label", "condition": "drug condition of the session",
        "n_frames": "frames in the run",
        "n_flagged_fd": f"frames with framewise displacement > {p.fd_threshold} mm",
        "n_flagged_intensity": f"frames with normalised intensity change > {p.dvars_ratio} x the run median",
        "n_censored": f"frames censored (flagged plus {p.neighbours} neighbour(s) each side)",
        "fd_source": "where the framewise displacement came from (the confounds column, or computed from the "
                     "motion parameters when the file has none; a warning names the file)",
        "session_censored_fraction": "censored fraction over all runs of the session",
        "session_excluded": f"session excluded (censored fraction > {p.max_scrubbed_fraction})",
        "reason": "why the session was excluded",
    }
    written.append(writer.write_table(pd.DataFrame(stats_rows), entities={"sub": subject, "desc": "scrubbing"},
                                      suffix="stats", columns=stats_columns, sources=sources_all, datatype="func",
                                      parameters=parameters, metadata=_fd_note(results)))

    labels = parcellation.labels
    for res_s in sessions:
        if res_s.excluded:
            continue
        tasks = {r.run.task for r in res_s.runs}
        ent = {"sub": subject, "ses": res_s.session, "task": tasks.pop() if len(tasks) == 1 else None,
               "space": space, "atlas": parcellation.name}
        sources = [s for r in res_s.runs for s in (r.run.bold, r.run.confounds)]
        meta = {"Condition": res_s.condition, "Atlas": parcellation.source,
                "CensoredFraction": res_s.censored_fraction,
                "NumberOfFramesUsed": int(sum(int(r.keep.sum()) for r in res_s.runs))}
        rel = pd.DataFrame(res_s.z, columns=res_s.names)
        rel.insert(0, "parcel", res_s.names)
        rel_cols = {"parcel": PARCEL_COLUMNS["parcel"],
                    **{n: f"Fisher z (artanh Pearson r) with parcel {n}; n/a on the diagonal" for n in res_s.names}}
        written.append(writer.write_table(rel, entities={**ent, "desc": "fisherz"}, suffix="relmat",
                                          columns=rel_cols, sources=sources, datatype="func",
                                          parameters=parameters, metadata=meta))
        gbc = _parcel_columns(res_s.names, labels)
        gbc["gbc"] = res_s.gbc
        gbc["n_voxels"] = res_s.runs[0].n_voxels.astype(int)
        written.append(writer.write_table(
            gbc, entities=ent, suffix="gbc", sources=sources, datatype="func", parameters=parameters,
            metadata=meta, columns={**{k: v for k, v in PARCEL_COLUMNS.items() if k in gbc},
                                    "gbc": "global brain connectivity: mean Fisher z with all other parcels",
                                    "n_voxels": "voxels (or grayordinates) of the parcel inside the brain mask"}))

    written += write_delta_maps(subject, sessions, placebo, parcellation, writer, parameters)
    for fig, entities, suffix in figures:
        written.append(writer.write_figure(fig, entities=entities, suffix=suffix, extension=".png"))
    return written


def participant_figures(subject: str, results: list[RunResult], sessions: list[SessionResult], placebo: str,
                        parcellation: Parcellation, params: ConnectivityParticipantParams,
                        space: str) -> list[tuple[Any, dict, str]]:
    """(figure, entities, suffix) of the report figures: per run FD with the scrubbed frames and a carpet plot;
    per usable session its GBC map; per drug its delta-GBC map (names chosen for the report's rules)."""
    from bids_ketamine.connectivity import figures as figs

    figures: list[tuple[Any, dict, str]] = []
    structures = None
    if parcellation.labels is not None:
        info = parcellation.labels.set_index("name")
        structures = info["hemisphere"].astype(str) + " " + info["structure"].astype(str)
    for res in results:
        run = res.run
        ent = {"sub": subject, "ses": run.session, "task": run.task, "run": run.run}
        where = " ".join(f"{k}-{v}" for k, v in ent.items() if v)
        figures.append((figs.framewise_displacement_figure(
            res.fd, res.keep, res.flagged_fd, res.flagged_dvars, fd_threshold=params.fd_threshold,
            intensity_ratio=res.intensity_ratio, intensity_threshold=params.dvars_ratio,
            title=f"{where}: framewise displacement and scrubbing (+{params.neighbours} neighbour(s) each side)"),
            {**ent, "desc": "framewise"}, "motion"))
        groups = structures.loc[res.names].astype(str).tolist() if structures is not None else None
        figures.append((figs.carpet_figure(res.raw, res.keep, groups=groups, title=(
            f"{where}: parcel signals before nuisance regression (detrended, z-scored)")),
            {**ent, "desc": "carpet"}, "bold"))
    centroids = None
    if parcellation.atlas is not None:
        centroids = parcellation.atlas.centroids_mm()

    def draw(values, names, *, label, title, vmax=None):
        if parcellation.surface is not None and parcellation.surface.on_fslr32k:  # on the inflated fsLR surface
            from bids_ketamine.connectivity.surface_figures import parcel_vertex_values, surface_map_figure

            return surface_map_figure(parcel_vertex_values(parcellation.surface, names, values), title=title,
                                      label=label, vmax=vmax)
        xyz = None if centroids is None else centroids.loc[names].to_numpy()
        return figs.parcel_map_figure(values, centroids_mm=xyz, vmax=vmax, names=names, label=label, title=title)

    usable = [s for s in sessions if not s.excluded]
    if usable:
        limit = max(float(np.nanmax(np.abs(s.gbc))) for s in usable)
        for s in usable:
            tasks = {r.run.task for r in s.runs}
            figures.append((draw(
                s.gbc, s.names, vmax=limit, label="GBC (mean Fisher z)",
                title=f"ses-{s.session} ({s.condition}): GBC, Fisher z"),
                {"sub": subject, "ses": s.session, "task": tasks.pop() if len(tasks) == 1 else None, "space": space,
                 "atlas": parcellation.name}, "gbc"))
    maps, _ = delta_maps(sessions, placebo)
    if maps:
        names = usable[0].names
        for drug, delta in maps.items():
            figures.append((draw(
                delta, names, label="delta GBC (Fisher z)", title=f"{drug} - {placebo}: delta-GBC, Fisher z"),
                {"sub": subject, "desc": f"{condition_label(drug)}minusplacebo"}, "gbc"))
    return figures


def delta_maps(sessions: list[SessionResult], placebo: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """{drug: GBC(drug) - GBC(placebo)} from the usable sessions (same-condition sessions averaged) and notes on
    drugs that got no map."""
    usable: dict[str, list[np.ndarray]] = defaultdict(list)
    excluded: dict[str, list[str]] = defaultdict(list)
    for s in sessions:
        if s.condition is None:
            continue
        if s.excluded:
            excluded[s.condition].append(f"ses-{s.session} ({100 * s.censored_fraction:.0f} % censored)")
        else:
            usable[s.condition].append(s.gbc)
    notes = []
    drugs = sorted({s.condition for s in sessions if s.condition not in (None, placebo)})
    if placebo not in usable:
        why = ("excluded by scrubbing: " + ", ".join(excluded[placebo])) if excluded[placebo] else "missing"
        return {}, [f"placebo session {why}: no delta map for {', '.join(drugs)}"]
    reference = np.mean(usable[placebo], axis=0)
    maps = {}
    for drug in drugs:
        if drug not in usable:
            notes.append(f"{drug}: every session excluded by scrubbing ({', '.join(excluded[drug])})")
            continue
        maps[drug] = np.mean(usable[drug], axis=0) - reference
    return maps, notes


def write_delta_maps(subject: str, sessions: list[SessionResult], placebo: str, parcellation: Parcellation,
                     writer, parameters: dict) -> list[Path]:
    maps, notes = delta_maps(sessions, placebo)
    for note in notes:
        LOG.warning("sub-%s: %s", subject, note)
    if not maps:  # scrubbing excluded the sessions: a published QC outcome, reported, not an error
        LOG.warning("sub-%s: no delta-GBC map (%s); the participant does not enter the group analysis", subject,
                    "; ".join(notes))
        return []
    names = next(s.names for s in sessions if not s.excluded)
    written = []
    for drug, delta in maps.items():
        table = _parcel_columns(names, parcellation.labels)
        table["delta_gbc"] = delta
        used = [s for s in sessions if not s.excluded and s.condition in (drug, placebo)]
        sources = [r.run.bold for s in used for r in s.runs]
        written.append(writer.write_table(
            table, entities={"sub": subject, "desc": f"{condition_label(drug)}minusplacebo"}, suffix="gbc",
            datatype="func", sources=sources, parameters=parameters,
            columns={**{k: v for k, v in PARCEL_COLUMNS.items() if k in table},
                     "delta_gbc": {"Description": f"GBC({drug}) - GBC({placebo}): mean Fisher z with all other "
                                                  "parcels, drug session minus placebo session",
                                   "Units": "Fisher z"}},
            metadata={"Drug": drug, "Reference": placebo, "Atlas": parcellation.source,
                      "AtlasName": parcellation.name,
                      "Sessions": {s.condition: [x.session for x in used if x.condition == s.condition]
                                   for s in used},
                      "Notes": notes}))
    return written
