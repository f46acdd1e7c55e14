"""Participant-level outputs of the dynamic fit: the time-model table (``_mrsdynamic.tsv``), the per-block values
the fit implies (extra columns of ``_mrsfit.tsv``), and the figure of data, fitted time course and band.

Thin glue between :func:`.dynamic_fit.fit_dynamic` and the writer: which blocks go into the fit, which quantities
are reported (every metabolite and sum in basis units, and as a ratio to each of ``ratio_denominators``), and how
QC is stated (a ``qc_pass`` column with the reasons, and a warning naming the file).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy import stats

from bids_ketamine.spectroscopy.basis import is_macromolecule

LOG = logging.getLogger(__name__)

#: Columns of the ``_mrsdynamic.tsv`` table (one row per quantity x time-model parameter).
DYNAMIC_COLUMNS = {
    "participant_id": "Participant label (without sub-).",
    "session_id": "Session label (without ses-), n/a when the dataset has no sessions.",
    "pretreatment": "Pretreatment of the session from sessions.tsv (placebo, naltrexone), when known.",
    "quantity": "Metabolite or sum in basis units (e.g. Glx), or a ratio (e.g. Glx/tNAA).",
    "parameter": "Time-model coefficient: 'level' = value before the infusion onset, 'slope_per_min' = change per "
                 "minute after the onset (default model); otherwise a column of the user's design file.",
    "estimate": "Coefficient from the joint fit of all blocks (ratios: the time model fitted to the implied block "
                "ratios, weighted by transients).",
    "se": "Standard error from the joint fit's covariance (ratios: delta method).",
    "ci_low": "Lower bound of the 95 % interval (normal quantile).",
    "ci_high": "Upper bound of the 95 % interval.",
    "n_blocks": "Blocks fitted jointly.",
    "design": "Concentration design of the joint fit (hinge = constant before the onset, linear after it).",
    "qc_pass": "False when the joint fit cannot be trusted (qc_reason says why); the group level leaves it out.",
    "qc_reason": "Why the joint fit failed QC (n/a when it passed).",
}
#: Columns the dynamic fit adds to ``_mrsfit.tsv`` (n/a for spectra not fitted jointly).
BLOCK_COLUMNS = {
    "dynamic_concentration": {"Description": "Concentration in this block implied by the joint (dynamic) fit of all "
                              "blocks of the acquisition, basis units.", "Units": "arbitrary"},
    "dynamic_concentration_se": "Standard error of dynamic_concentration (joint covariance).",
    "dynamic_ratio_tNAA": "dynamic_concentration divided by the implied tNAA of the block.",
    "dynamic_ratio_tNAA_se": "Standard error of dynamic_ratio_tNAA (delta method, joint covariance).",
}


def timed_blocks(spectra: list) -> bool:
    """True when the acquisition has timed fMRS blocks on both sides of the infusion onset (what the default time
    model needs: a level before, a slope after)."""
    times = np.array([s[2] for s in spectra], float)
    return len(spectra) > 1 and bool(np.all(np.isfinite(times))) and (times < 0).any() and (times > 0).any()


def fit_acquisition(spectra: list, data, basis, params):
    """The dynamic fit of one acquisition's blocks (``spectra`` from :func:`.participant.preprocess_acquisition`)."""
    from bids_ketamine.spectroscopy.dynamic_fit import fit_dynamic
    from bids_ketamine.spectroscopy.time_model import read_design_tsv

    labels = np.array([s[0] for s in spectra])
    design = None
    if params.dynamic.design_file is not None:
        design = read_design_tsv(params.dynamic.design_file, labels)
    return fit_dynamic(np.stack([s[3] for s in spectra]), data.dwell_time, data.spectrometer_frequency, basis,
                       block_labels=labels, block_minutes=np.array([s[2] for s in spectra]),
                       n_transients=np.array([s[4] for s in spectra]), design=design, params=params.fit,
                       dynamic=params.dynamic, echo_time=data.echo_time)


def _quantities(result) -> list[str]:
    return [n for n in list(result.names) + list(result.sums) if not (is_macromolecule(n) or n.startswith("Lip"))]


def time_model_table(result, denominators: tuple[str, ...]) -> pd.DataFrame:
    """One row per quantity (metabolites, sums, their ratios to ``denominators``) x design column."""
    rows = []
    z = stats.norm.ppf(0.975)
    reason = "; ".join(result.qc_reasons) if result.qc_reasons else np.nan
    common = {"n_blocks": len(result.block_labels), "design": result.design.kind, "qc_pass": result.qc_pass,
              "qc_reason": reason}
    items = []
    for name in _quantities(result):
        try:
            items.append((name, *result.time_coefficients(name)))
        except KeyError:  # one amplitude for the session (not time-varying): no time-model coefficients
            continue
    for den in denominators:
        for name in _quantities(result):
            if name == den:
                continue
            try:
                items.append((f"{name}/{den}", *result.ratio_time_model(name, den)))
            except (KeyError, ValueError):
                continue
    for quantity, est, cov in items:
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        for j, col in enumerate(result.design.columns):
            rows.append({"quantity": quantity, "parameter": col, "estimate": float(est[j]), "se": float(se[j]),
                         "ci_low": float(est[j] - z * se[j]), "ci_high": float(est[j] + z * se[j]), **common})
    return pd.DataFrame(rows, columns=[c for c in DYNAMIC_COLUMNS if c not in
                                       ("participant_id", "session_id", "pretreatment")])


def block_values(result) -> pd.DataFrame:
    """The per-block values the joint fit implies, keyed by (block, metabolite), columns :data:`BLOCK_COLUMNS`."""
    rows = []
    try:
        tnaa, _ = result.block_concentrations("tNAA")
    except KeyError:
        tnaa = None
    for name in list(result.names) + list(result.sums):
        conc, cov = result.block_concentrations(name)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        ratio = ratio_se = np.full(len(conc), np.nan)
        if tnaa is not None and name != "tNAA" and np.all(tnaa > 0):
            ratio, ratio_se = result.block_ratios(name, "tNAA")
        for i, b in enumerate(result.block_labels):
            rows.append({"block": int(b), "metabolite": name, "dynamic_concentration": float(conc[i]),
                         "dynamic_concentration_se": float(se[i]), "dynamic_ratio_tNAA": float(ratio[i]),
                         "dynamic_ratio_tNAA_se": float(ratio_se[i])})
    return pd.DataFrame(rows)


def add_block_values(table: pd.DataFrame, result) -> pd.DataFrame:
    """``_mrsfit.tsv`` rows with the :data:`BLOCK_COLUMNS` of ``result`` (n/a where there is no dynamic fit)."""
    if result is None:
        return table.assign(**{c: np.nan for c in BLOCK_COLUMNS})
    values = block_values(result)
    return table.merge(values, on=["block", "metabolite"], how="left")


def qc_metadata(result) -> dict:
    """The dynamic fit's QC and settings for the ``_mrsdynamic.json`` sidecar."""
    return {"DynamicFit": {"qc_pass": result.qc_pass, "reasons": list(result.qc_reasons),
                           "converged": result.success, "message": result.message,
                           "evaluations": result.n_evaluations,
                           "degrees_of_freedom": result.degrees_of_freedom,
                           "settings": _jsonable(result.settings)}}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
