"""Participant level of the spectroscopy analysis: raw NIfTI-MRS -> preprocessed (block) spectra -> fit tables.

Thin wiring of the science modules (:mod:`.nifti_io`, :mod:`.preprocess`, :mod:`.simulate`, :mod:`.fit`); each
acquisition gives one ``_mrsfit.tsv`` (one row per block x metabolite, with CRLB, ratios and QC) and one figure.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, UnusableInputError
from bids_ketamine.inputs import MrsAcquisition, ParticipantInputs
from bids_ketamine.spectroscopy import dynamic_tables
from bids_ketamine.spectroscopy.nifti_io import MrsData, check_reference_matches, read_nifti_mrs
from bids_ketamine.spectroscopy.params import SpectroscopyParams

LOG = logging.getLogger(__name__)

TABLE_COLUMNS = {
    "participant_id": "Participant label (without sub-).",
    "session_id": "Session label (without ses-), n/a when the dataset has no sessions.",
    "pretreatment": "Pretreatment of the session from sessions.tsv (placebo, naltrexone), when known.",
    "block": "fMRS block number (0 = first block at or after the infusion onset; negative = before); 0 when the "
             "acquisition is averaged as a whole.",
    "block_start_min": {"Description": "Block start relative to the infusion onset.", "Units": "min"},
    "block_time_min": {"Description": "Mean acquisition time of the block's transients relative to the infusion "
                       "onset (the time of the group model).", "Units": "min"},
    "n_transients": "Transients averaged into this spectrum (after rejection).",
    "metabolite": "Basis component or sum (tCr, tNAA, tCho, Glx...).",
    "concentration": {"Description": "Fitted amplitude in basis units (mM-equivalent when the basis FIDs carry "
                      "one unit per proton at unit concentration); not water scaled.", "Units": "arbitrary"},
    "crlb": "Cramer-Rao lower bound (SD) of the concentration, same units.",
    "crlb_percent": {"Description": "CRLB as a percentage of the concentration.", "Units": "%"},
    "ratio_tCr": "Concentration divided by total creatine (Cr + PCr).",
    "ratio_tNAA": "Concentration divided by total NAA (NAA + NAAG).",
    "molal_mM": {"Description": "Water-scaled concentration per kg tissue water (Near et al. 2021 consensus: "
                 "tissue-fraction and relaxation corrected); n/a without a water reference.", "Units": "mmol/kg"},
    "molal_crlb_mM": {"Description": "CRLB of molal_mM.", "Units": "mmol/kg"},
    "molar_mM": {"Description": "Water-scaled concentration per litre of voxel; n/a without a water reference.",
                 "Units": "mmol/l"},
    "molar_crlb_mM": {"Description": "CRLB of molar_mM.", "Units": "mmol/l"},
    "snr": "Signal-to-noise ratio: height of the fitted NAA singlet / noise SD (MRSinMRS).",
    "fwhm_hz": {"Description": "Linewidth (FWHM) of the fitted singlets.", "Units": "Hz"},
    "qc_pass": "True when the spectrum's fit passed QC (converged, no parameter at a bound, tNAA/tCr CRLB, "
               "linewidth and SNR within limits) and this row's CRLB % is finite and below max_crlb_percent.",
    "qc_reason": "Why qc_pass is false (spectrum-level reasons first); empty when it is true.",
    "spectrum_qc_pass": "True when the whole spectrum's fit passed QC (the group level leaves failed spectra out "
                        "and counts them per subject and session).",
}


def plan(inputs: ParticipantInputs, params: SpectroscopyParams) -> tuple[bool, str]:
    """Will the analysis run for this participant, and on what (or what is missing)."""
    if not inputs.mrs:
        return False, "no mrs/ *_svs.nii[.gz] acquisition found"
    parts = []
    for acq in inputs.mrs:
        refs = ", ".join(sorted(acq.references)) or "no reference (no eddy-current correction or water weights)"
        timing = "fMRS blocks from events.tsv" if (acq.events and params.blocks) else "one average"
        tissue = ("" if not (params.water_scaling and acq.references) else
                  "; tissue fractions " + ("configured" if params.tissue_fractions is not None else
                                           "from the T1w segmentation" if inputs.anat.probseg_t1w else "default"))
        parts.append(f"{acq.svs.name} [{refs}; {timing}{tissue}]")
    return True, "; ".join(parts)


def load_basis(params: SpectroscopyParams, data: MrsData):
    """Basis set for an acquisition: simulated for its field, TE and sequence, or read from the user's file."""
    from bids_ketamine.spectroscopy import basis_io
    from bids_ketamine.spectroscopy.simulate import simulate_basis

    bp = params.basis
    from bids_ketamine.spectroscopy.basis import calibrate_basis

    # A user's basis carries its own amplitude scale and ppm reference: both are measured on its creatine and
    # brought to the simulated basis's (one proton of one mM = 1, 4.65 ppm), so water scaling means the same for
    # every basis source.
    if bp.source == "lcmodel":
        if bp.path is None:
            raise BadDataError("basis.source is 'lcmodel' but basis.path is not set", fix="set spectroscopy.basis.path")
        return calibrate_basis(basis_io.read_lcmodel_basis(bp.path))
    if bp.source == "fid_folder":
        if bp.path is None:
            raise BadDataError("basis.source is 'fid_folder' but basis.path is not set",
                               fix="set spectroscopy.basis.path")
        return calibrate_basis(basis_io.read_fid_folder(bp.path, dwell_time=data.dwell_time,
                                                        central_frequency=data.spectrometer_frequency))
    if data.echo_time is None:
        raise BadDataError("EchoTime is missing: the basis cannot be simulated", path=data.path,
                           fix="add EchoTime (s) to the JSON sidecar or give a basis set (spectroscopy.basis)")
    sequence = bp.sequence
    if sequence == "auto":
        declared = str(data.metadata.get("PulseSequenceType", "PRESS")).upper().replace("-", "")
        sequence = {"STEAM": "STEAM", "SLASER": "sLASER", "SEMILASER": "sLASER", "LASER": "sLASER"}.get(declared,
                                                                                                          "PRESS")
    tm = bp.mixing_time if bp.mixing_time is not None else data.metadata.get("MixingTime")
    from bids_ketamine.errors import UsageError
    from bids_ketamine.spectroscopy.simulate import DEFAULT_METABOLITES, load_spin_systems

    metabolites = tuple(bp.metabolites) if bp.metabolites else DEFAULT_METABOLITES
    known = load_spin_systems()["metabolites"]
    unknown = [m for m in metabolites if m not in known]
    if unknown:
        raise UsageError(f"spectroscopy.basis.metabolites names metabolites without a spin system: "
                         f"{', '.join(unknown)}", fix=f"choose among {', '.join(sorted(known))}")
    return simulate_basis(spectrometer_frequency=data.spectrometer_frequency, echo_time=data.echo_time,
                          metabolites=metabolites,
                          sequence=sequence, mixing_time=None if tm is None else float(tm),
                          dwell_time=data.dwell_time, n_points=data.n_points,
                          te1=bp.press_te1 if sequence == "PRESS" else None)


def preprocess_acquisition(acq: MrsAcquisition, params: SpectroscopyParams, design=None):
    """Read and preprocess one acquisition; returns (data, preprocessed, list of (block, start, time, fid, n))."""
    from bids_ketamine.spectroscopy import preprocess as pp

    data = read_nifti_mrs(acq.svs)
    refs = {}
    for role, path in acq.references.items():
        ref = read_nifti_mrs(path)
        check_reference_matches(data, ref)
        refs[role] = ref
    water = refs.get("water")
    ecc = refs.get("ecc")
    pparams = params.preprocess
    conj = {"auto": None, "yes": True, "no": False}[pparams.conjugate]
    ecc_on = pparams.eddy_current_correction
    pre = pp.preprocess_svs(
        data.fid, dwell_time=data.dwell_time, spectrometer_frequency=data.spectrometer_frequency,
        water=None if water is None else water.fid,
        ecc=None if (ecc is None or ecc_on is False) else ecc.fid,
        ppm_range=pparams.align_ppm_range, align=pparams.align, reject=pparams.reject,
        reject_threshold=pparams.reject_threshold, conjugate=conj, ecc_from_water=ecc_on is True)
    water_for_scaling = pre.water
    if "quant" in refs:  # a dedicated quantification reference, combined with the metabolite coil weights
        q = np.conj(refs["quant"].fid) if pre.conjugated else refs["quant"].fid
        water_for_scaling = pp.combine_coils(q, pre.coil_weights).mean(axis=0)
    pre = replace(pre, water=water_for_scaling)
    spectra = []
    n_tr = pre.transients.shape[0]
    if params.blocks and acq.events is not None and n_tr > 1:
        if not data.repetition_time:
            raise BadDataError("RepetitionTime is missing: fMRS blocks cannot be timed", path=data.path,
                               fix="add RepetitionTime (s) to the JSON sidecar")
        fm = design.fmrs if design is not None else None
        trial = fm.infusion_trial_type if fm is not None else "infusion"
        block_s = fm.block_seconds if fm is not None else 240.0
        onset = pp.infusion_onset(acq.events, trial)
        blocks = pp.fmrs_blocks(n_tr, data.repetition_time, onset, block_s)
        avgs, counts = pp.block_averages(pre.transients, pre.keep, blocks)
        acq_min = (np.arange(n_tr) * data.repetition_time - onset) / 60.0
        for i, b in enumerate(blocks.labels):
            spectra.append((int(b), float(blocks.start_minutes[i]), float(acq_min[blocks.index == b].mean()),
                            avgs[i], int(counts[i])))
    else:
        spectra.append((0, float("nan"), float("nan"), pre.average, int(pre.keep.sum())))
    return data, pre, spectra


def fit_table(result, *, block: int, start: float, time_min: float, n: int, params: SpectroscopyParams,
              water: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of the mrsfit table for one fitted spectrum (``water``: output of quantify.water_scaled)."""
    tab = result.table()
    wmap = water.set_index("metabolite") if water is not None else None
    denominators = {}
    for den in params.ratio_denominators:
        try:
            denominators[den] = result.concentration(den)
        except KeyError:
            denominators[den] = np.nan
    rows = []
    for _, r in tab.iterrows():
        row = {"block": block, "block_start_min": start, "block_time_min": time_min, "n_transients": n,
               "metabolite": r["metabolite"], "concentration": r["concentration"], "crlb": r["crlb"],
               "crlb_percent": r["crlb_percent"]}
        for den in ("tCr", "tNAA"):
            d = denominators.get(den, np.nan)
            row[f"ratio_{den}"] = r["concentration"] / d if d and np.isfinite(d) and d > 0 else np.nan
        for col in ("molal_mM", "molal_crlb_mM", "molar_mM", "molar_crlb_mM"):
            row[col] = float(wmap.loc[r["metabolite"], col]) if wmap is not None and r["metabolite"] in wmap.index \
                else np.nan
        row["snr"] = result.snr
        row["fwhm_hz"] = result.fwhm_hz
        reasons = list(result.qc_reasons)
        pct = r["crlb_percent"]
        if not np.isfinite(pct):
            reasons.append("fitted at zero (CRLB n/a)" if r["concentration"] <= 0 else "CRLB not finite")
        elif pct >= params.max_crlb_percent:
            reasons.append(f"CRLB {pct:.0f} % >= {params.max_crlb_percent:g} %")
        row["qc_pass"] = not reasons
        row["qc_reason"] = "; ".join(reasons)
        row["spectrum_qc_pass"] = bool(result.qc_pass)
        rows.append(row)
    return pd.DataFrame(rows)


def fit_figure(results: list, labels: list[str], title: str):
    """Data, fit, baseline, macromolecule/lipid components, removed water and residual of each fitted spectrum.

    One panel per spectrum (real parts, phase corrected). Over the fit window: the data after water removal, the
    fit, the baseline, and baseline + each nuisance group (macromolecules, lipids) so their share is visible;
    beyond it, up to the water band, the data before removal and the HLSVD water that was removed. The title
    sits above the panels and the legend in its own row below them (both "outside upper" collide in constrained
    layout), so neither covers a panel's title; a panel whose fit failed QC says so in red.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(n, 1, figsize=(7.5, 2.6 * n + 0.9), squeeze=False, layout="constrained")
    colours = {"macromolecules": "tab:green", "lipids": "tab:purple"}
    for ax, res, label in zip(axes[:, 0], results, labels):
        ppm = res.ppm
        top = np.max(np.abs(res.data.real))
        disp = getattr(res, "display", None) or {}
        if disp:
            dppm = np.asarray(disp["ppm"])
            ax.plot(dppm, np.asarray(disp["data_before_removal"]).real, color="0.75", lw=0.6,
                    label="data before water removal")
            ax.plot(dppm, np.asarray(disp["removed_water"]).real, color="tab:cyan", lw=0.8,
                    label="removed residual water (HLSVD)")
        ax.plot(ppm, res.data.real, color="0.35", lw=0.7, label="data")
        ax.plot(ppm, res.fit.real, color="tab:red", lw=0.9, label="fit")
        ax.plot(ppm, res.baseline.real, color="tab:blue", lw=0.8, label="baseline")
        for gname, spec in (getattr(res, "group_spectra", None) or {}).items():
            # group spectra are stored phase corrected, like the data
            ax.plot(ppm, res.baseline.real + np.asarray(spec).real, color=colours.get(gname, "tab:olive"), lw=0.8,
                    ls="--", label=f"baseline + {gname}")
        ax.plot(ppm, res.residual.real + 1.1 * top, color="0.2", lw=0.6, label="residual (offset)")
        lo = min(ppm.min(), float(np.min(disp["ppm"])) if disp else ppm.min())
        hi = max(ppm.max(), float(np.max(disp["ppm"])) if disp else ppm.max())
        ax.set_xlim(hi, lo)
        ax.set_ylim(-0.6 * top, 1.6 * top)
        ok = bool(getattr(res, "qc_pass", True))
        reasons = "; ".join(getattr(res, "qc_reasons", ()) or ())
        ax.set_title(label + ("" if ok else f" - QC FAILED: {reasons}"), fontsize=8, loc="left",
                     color="black" if ok else "tab:red")
        ax.set_yticks([])
    axes[-1, 0].set_xlabel("chemical shift (ppm)")
    handles, names = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in names:
                handles.append(h)
                names.append(lab)
    fig.legend(handles, names, loc="outside lower center", ncol=4, fontsize=6, frameon=False)
    fig.suptitle(title, fontsize=9)
    return fig


def _jsonable(d: dict) -> dict:
    """Metadata values as JSON-friendly Python scalars."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        out[k] = v
    return out


def segmentation_fractions(inputs: ParticipantInputs, acq: MrsAcquisition):
    """Tissue fractions of the voxel from T1w-space GM/WM/CSF probability maps, when discovery found them.

    Uses ``inputs.anat.probseg_t1w`` (a mapping ``gm``/``wm``/``csf`` -> path, same scanner space as the MRS
    data) when that field exists and is complete; otherwise None (the stated defaults are used, with a warning).
    """
    from bids_ketamine.io.images import check_probability_map, load_image
    from bids_ketamine.spectroscopy.nifti_io import tissue_fractions_in_voxel, voxel_affine
    from bids_ketamine.spectroscopy.quantify import TissueFractions

    maps = getattr(inputs.anat, "probseg_t1w", None)
    if not maps or not all(k in maps for k in ("gm", "wm", "csf")):
        return None
    images, data = {}, {}
    for k in ("gm", "wm", "csf"):  # read and checked at the door: truncated or NaN maps are refused (exit 65)
        images[k], raw = load_image(maps[k], f"{k.upper()} probability map")
        data[k] = check_probability_map(raw, maps[k], f"{k.upper()} probability map")
    fractions = tissue_fractions_in_voxel(voxel_affine(acq.svs), data, images["gm"].affine, path=acq.svs)
    return TissueFractions(**fractions, source="segmentation")


def _voxel_fractions(inputs: ParticipantInputs, acq: MrsAcquisition, params: SpectroscopyParams):
    """(fractions, why the defaults are used): the configured fractions, else the T1w segmentation's, else None."""
    if params.tissue_fractions is not None:
        return params.tissue_fractions, ""
    try:
        fr = segmentation_fractions(inputs, acq)
    except UnusableInputError:  # a broken map is refused, never replaced by the defaults
        raise
    except BadDataError as exc:  # e.g. the voxel lies outside this T1w: quantify with the defaults, say why
        return None, f"the T1w segmentation cannot be used ({exc.problem})"
    return fr, "" if fr is not None else "no T1w-space tissue segmentation (GM/WM/CSF probseg) for the voxel"


def _dynamic_fit(subject: str, acq: MrsAcquisition, spectra: list, data, basis, params: SpectroscopyParams):
    """The joint fit of an acquisition's timed blocks when ``time_fit`` is 'dynamic' (else None); a fit that fails
    QC is kept (its rows say qc_pass false) and named in a warning."""
    if params.time_fit != "dynamic" or not dynamic_tables.timed_blocks(spectra):
        return None
    from bids_ketamine.progress import step

    step(f"dynamic fit of the {len(spectra)} blocks of {acq.svs.name}", subject=subject, analysis="spectroscopy")
    result = dynamic_tables.fit_acquisition(spectra, data, basis, params)
    if not result.qc_pass:
        LOG.warning("sub-%s: %s: the dynamic fit of all blocks failed QC: %s; its rows have qc_pass false and the "
                    "group level leaves the session out", subject, acq.svs.name, "; ".join(result.qc_reasons))
    return result


def run_participant(inputs: ParticipantInputs, *, params: SpectroscopyParams, design, writer, work_dir: Path,
                    seed: int, n_procs: int = 1) -> list[Path]:
    """Preprocess and fit every acquisition of one participant; write tables and figures with ``writer``."""
    from bids_ketamine.progress import progress, step
    from bids_ketamine.spectroscopy.figures import participant_timecourse_figure, ratio_with_crlb, \
        voxel_figure_from_files
    from bids_ketamine.spectroscopy.fit import fit_spectrum

    if not inputs.mrs:
        raise BadDataError("no spectroscopy acquisition", fix="leave spectroscopy out for this participant")
    outputs, all_tables, dynamic_series = [], [], []
    for acq in inputs.mrs:
        data, pre, spectra = preprocess_acquisition(acq, params, design)
        basis = load_basis(params, data)
        water_area, quant_meta = None, {}
        if params.water_scaling and pre.water is not None and data.echo_time is not None:
            from bids_ketamine.spectroscopy.quantify import fit_water_reference

            wfit = fit_water_reference(pre.water, data.dwell_time)
            water_area = wfit.area
            fr, why_default = _voxel_fractions(inputs, acq, params)
            from bids_ketamine.spectroscopy.quantify import DEFAULT_FRACTIONS

            quant_meta = {"WaterReferenceArea": water_area, "WaterLinewidthHz": wfit.lorentzian_hz,
                          "TissueFractions": (fr or DEFAULT_FRACTIONS).model_dump()}
            if fr is not None and fr.source == "segmentation":
                # BIDS URIs, as every other source: the sidecar stays the same when the dataset moves
                quant_meta["TissueFractionsSources"] = [writer.source_uri(inputs.anat.probseg_t1w[k])
                                                        for k in ("gm", "wm", "csf")]
        tables, results, labels = [], [], []
        kind = "spectra" if len(spectra) > 1 else "averaged spectrum (static single-voxel MRS)"
        step(f"fitting {len(spectra)} {kind} of {acq.svs.name}", subject=inputs.subject, analysis="spectroscopy")
        desc = f"sub-{inputs.subject} fMRS fits" if len(spectra) > 1 else f"sub-{inputs.subject} MRS fit"
        for block, start, tmin, fid, n in progress(spectra, desc=desc, unit="fits"):
            # the data are in the NIfTI-MRS convention already: preprocessing decided the sign once for them
            res = fit_spectrum(fid, data.dwell_time, data.spectrometer_frequency, basis, params.fit,
                               echo_time=data.echo_time)
            label = f"block {block} ({tmin:+.1f} min)" if np.isfinite(tmin) else "average"
            if not res.qc_pass:
                LOG.warning("sub-%s: %s (%s): the fit failed QC: %s; its rows have qc_pass false and the group "
                            "level leaves them out", inputs.subject, acq.svs.name, label, "; ".join(res.qc_reasons))
            water = None
            if water_area is not None:
                from bids_ketamine.spectroscopy.quantify import DEFAULT_FRACTIONS, water_scaled

                # the stated defaults are passed explicitly: one warning per acquisition (below), not per block
                water = water_scaled(res, water_area, te=data.echo_time, tr=data.repetition_time,
                                     fractions=fr or DEFAULT_FRACTIONS,
                                     field_tesla=data.field_strength, params=params.quant)
            results.append(res)
            labels.append(label)
            tables.append(fit_table(res, block=block, start=start, time_min=tmin, n=n, params=params, water=water))
        if water_area is not None and fr is None:
            msg = (f"{acq.svs.name}: {why_default}; water scaling uses the default fractions of "
                   "spectroscopy.quantify (give fMRIPrep/sMRIPrep T1w-space label-GM/WM/CSF probsegs, or set "
                   "spectroscopy.tissue_fractions)")
            LOG.warning(msg)
        table = pd.concat(tables, ignore_index=True)
        dynamic = _dynamic_fit(inputs.subject, acq, spectra, data, basis, params)
        table = dynamic_tables.add_block_values(table, dynamic)
        table.insert(0, "pretreatment", acq.pretreatment if acq.pretreatment else np.nan)
        table.insert(0, "session_id", acq.session if acq.session else np.nan)
        table.insert(0, "participant_id", inputs.subject)
        entities = {"sub": inputs.subject, "ses": acq.session, "task": acq.task, "acq": acq.acq,
                    "voi": getattr(acq, "voi", None), "run": acq.run}
        sources = [acq.svs, *acq.references.values(), *([acq.events] if acq.events else [])]
        first = results[0]
        meta = {"CoilCombination": "weighted SVD", "Conjugated": pre.conjugated,
                "SignConvention": pre.sign.as_metadata() if pre.sign is not None else None,
                "TransientsRejected": int((~pre.keep).sum()),
                # what preprocessing did to this acquisition, as the methods text states it
                "Preprocessing": {"Transients": int(len(pre.keep)),
                                  "EddyCurrentCorrection": pre.eddy_current_reference,
                                  "Aligned": pre.aligned, "TransientScreen": pre.rejection,
                                  "Averaging": ("timed blocks" if len(spectra) > 1 or acq.events is not None
                                                else "single average")},
                "Basis": _jsonable(basis.metadata),
                "BasisComponents": list(basis.names), "FittedComponents": list(first.names),
                "Macromolecules": first.extras.get("macromolecules"), "RatioPriors": first.extras.get("priors"),
                "ResidualWaterRemoval": [r.extras.get("water_removal") for r in results],
                "BaselineSmoothness": [r.extras.get("baseline_smoothness") for r in results],
                "FitQC": [{"spectrum": lab, "qc_pass": r.qc_pass, "reasons": list(r.qc_reasons)}
                          for lab, r in zip(labels, results)]
                + ([{"spectrum": "dynamic fit of all blocks", "qc_pass": dynamic.qc_pass,
                     "reasons": list(dynamic.qc_reasons)}] if dynamic is not None else []), **quant_meta}
        figures = []  # built before anything of this acquisition is written
        if params.figures:
            figures.append((fit_figure(results, labels, acq.svs.name), "fit"))
            voxel_fig, note = voxel_figure_from_files(acq.svs, inputs.anat.t1w, session=acq.session,
                                                      title=acq.svs.name)
            if voxel_fig is None:  # "Skipped" in the key: the report lists it with the participant's warnings
                meta["VoxelFigureSkipped"] = note
                LOG.info("sub-%s: %s: %s", inputs.subject, acq.svs.name, note)
            else:
                meta["VoxelFigure"] = note
                figures.append((voxel_fig, "voxel"))
            series = "_".join(f"{k}-{v}" for k, v in entities.items() if v and k != "sub") or acq.svs.name
            all_tables.append(table.assign(series=series))
            if dynamic is not None:
                dynamic_series.append((series, dynamic, table))
        outputs.append(writer.write_table(
            table, entities=entities, suffix="mrsfit", columns={**TABLE_COLUMNS, **dynamic_tables.BLOCK_COLUMNS},
            sources=sources, datatype="mrs",
            description="Linear-combination fit of each (block-)averaged spectrum.",
            parameters=params.model_dump(mode="json"), metadata=meta))
        if dynamic is not None:
            dyn_table = dynamic_tables.time_model_table(dynamic, params.ratio_denominators)
            dyn_table.insert(0, "pretreatment", acq.pretreatment if acq.pretreatment else np.nan)
            dyn_table.insert(0, "session_id", acq.session if acq.session else np.nan)
            dyn_table.insert(0, "participant_id", inputs.subject)
            outputs.append(writer.write_table(
                dyn_table, entities=entities, suffix="mrsdynamic", columns=dynamic_tables.DYNAMIC_COLUMNS,
                sources=sources, datatype="mrs",
                description="Dynamic fit: all blocks of the acquisition fitted jointly; time-model coefficients "
                            "of every metabolite and ratio with SEs from the joint covariance.",
                parameters=params.model_dump(mode="json"), metadata=dynamic_tables.qc_metadata(dynamic)))
        for fig, desc in figures:
            outputs.append(writer.write_figure(fig, entities={**entities, "desc": desc}, suffix="mrs"))
    if params.figures and dynamic_series:
        from bids_ketamine.spectroscopy.figures import dynamic_timecourse_figure

        fig = dynamic_timecourse_figure(dynamic_series, "Glx", "tNAA")
        outputs.append(writer.write_figure(fig, entities={"sub": inputs.subject, "desc": "glxdynamic"},
                                           suffix="mrs"))
    if params.figures:
        timed = ratio_with_crlb(pd.concat(all_tables, ignore_index=True), "Glx", "tNAA")
        if np.isfinite(timed["block_time_min"].astype(float)).any():
            fig = participant_timecourse_figure(pd.concat(all_tables, ignore_index=True), "Glx", "tNAA")
            outputs.append(writer.write_figure(fig, entities={"sub": inputs.subject, "desc": "glxtimecourse"},
                                               suffix="mrs"))
        else:
            LOG.info("sub-%s: no Glx/tNAA time course figure: the spectra are single averages (static MRS), not "
                     "timed fMRS blocks with Glx and tNAA", inputs.subject)
    return outputs
