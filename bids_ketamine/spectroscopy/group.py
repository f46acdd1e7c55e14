"""Group level of the spectroscopy analysis: Glx/tNAA time courses and the pretreatment x time mixed model.

The model follows Jelen et al. (2025): blocks over time nested in sessions in subjects; fixed effects time
(minutes since infusion onset), pretreatment (naltrexone = 1, placebo = 0), sex (male = +0.5, female = -0.5) with
all their interactions up to sex x pretreatment x time, and crossover period; a random intercept per subject and a
variance component per session within subject (statsmodels MixedLM, REML). Wald tests use t with Satterthwaite
degrees of freedom (:func:`mixed_model_df`, the same rule as the dynamic summary-statistics model). MADRS: score ~ pretreatment x time (0 = before, 1 = 24 h)
+ period with a random intercept per subject, from the ``sessions`` table.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from bids_ketamine.errors import MissingInputError
from bids_ketamine.spectroscopy.basis import is_macromolecule

LOG = logging.getLogger(__name__)

STATS_COLUMNS = {
    "outcome": "Modelled outcome (e.g. Glx/tNAA, or MADRS).",
    "term": "Fixed-effect term: time, pretreatment, sex, their products (x), period.",
    "estimate": "Coefficient (outcome units per unit of the term; time in minutes for fMRS, 0/1 for MADRS).",
    "se": "Standard error of the coefficient.",
    "ci_low": "Lower bound of the 95 % confidence interval (t quantile, Satterthwaite df).",
    "ci_high": "Upper bound of the 95 % confidence interval.",
    "statistic": "Wald t statistic (estimate / se).",
    "df": "Satterthwaite degrees of freedom of the term (REML variances; a variance estimated as zero adds none).",
    "p": "Two-sided p-value of the t statistic.",
    "n_obs": "Observations in the model.",
    "n_subjects": "Subjects in the model.",
    "formula": "Fixed-effect formula actually fitted (simpler when the full design is not identifiable).",
}
TERM_NAMES = {"time": "time", "nal": "pretreatment", "sex_c": "sex", "nal:time": "pretreatment_x_time",
              "time:nal": "pretreatment_x_time", "sex_c:time": "sex_x_time", "time:sex_c": "sex_x_time",
              "nal:sex_c": "sex_x_pretreatment", "sex_c:nal": "sex_x_pretreatment",
              "nal:sex_c:time": "sex_x_pretreatment_x_time", "time:nal:sex_c": "sex_x_pretreatment_x_time",
              "time:sex_c:nal": "sex_x_pretreatment_x_time", "Intercept": "intercept"}


def read_fit_tables(output_dir: Path) -> pd.DataFrame:
    """All participant-level ``_mrsfit.tsv`` tables under ``output_dir``, stacked."""
    paths = sorted(Path(output_dir).glob("sub-*/**/*_mrsfit.tsv"))
    if not paths:
        raise MissingInputError("no participant-level spectroscopy tables (*_mrsfit.tsv)", path=output_dir,
                                fix="run the participant level with the spectroscopy analysis first")
    frames = [pd.read_csv(p, sep="\t", na_values=["n/a"], dtype={"participant_id": str, "session_id": str})
              for p in paths]
    return pd.concat(frames, ignore_index=True)


def read_dynamic_tables(output_dir: Path) -> pd.DataFrame:
    """All participant-level ``_mrsdynamic.tsv`` tables (dynamic fits' time-model coefficients), stacked; empty
    when the participant level fitted block-wise only."""
    paths = sorted(Path(output_dir).glob("sub-*/**/*_mrsdynamic.tsv"))
    frames = [pd.read_csv(p, sep="\t", na_values=["n/a"], dtype={"participant_id": str, "session_id": str})
              for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def dynamic_model_tables(dynamic: pd.DataFrame, outcomes: list[str], participants: pd.DataFrame,
                         sessions: pd.DataFrame | None) -> list[pd.DataFrame]:
    """Summary-statistics models (:mod:`.group_summary`) of each ``outcome`` (e.g. Glx/tNAA) from the sessions'
    dynamic-fit level and slope with their SEs; sessions whose joint fit failed QC are left out (named in a
    warning)."""
    from bids_ketamine.spectroscopy.group_summary import fit_time_model_group

    failed = dynamic[~dynamic["qc_pass"].astype(bool)][["participant_id", "session_id"]].drop_duplicates()
    if len(failed):
        LOG.warning("spectroscopy group: %d session(s) whose dynamic fit failed QC are left out of the dynamic "
                    "model (%s); see qc_reason in their _mrsdynamic.tsv", len(failed),
                    ", ".join(f"sub-{r.participant_id}" + (f" ses-{r.session_id}" if isinstance(r.session_id, str)
                                                           else "") for r in failed.itertuples()))
    tables = []
    for outcome in outcomes:
        d = dynamic[(dynamic["quantity"] == outcome) & dynamic["qc_pass"].astype(bool)]
        if d["participant_id"].nunique() < 2:
            continue
        frame = model_frame(d, participants, sessions)
        try:
            tables.append(fit_time_model_group(frame, outcome))
        except (np.linalg.LinAlgError, ValueError) as exc:
            LOG.warning("spectroscopy group: the dynamic (summary-statistics) model of %s failed (%s)", outcome, exc)
    return tables


def ratio_long(fits: pd.DataFrame, numerator: str, denominator: str = "tNAA") -> pd.DataFrame:
    """One row per subject x session x block with ``value`` = numerator / denominator."""
    num = fits[fits["metabolite"] == numerator].set_index(["participant_id", "session_id", "block"])
    den = fits[fits["metabolite"] == denominator].set_index(["participant_id", "session_id", "block"])
    if num.empty or den.empty:
        return pd.DataFrame()
    out = num[["block_time_min", "pretreatment"]].copy()
    out["value"] = num["concentration"] / den["concentration"].reindex(num.index)
    out["qc_pass"] = num["qc_pass"].astype(bool) & den["qc_pass"].reindex(num.index).astype(bool)
    return out.reset_index()


def model_frame(long: pd.DataFrame, participants: pd.DataFrame, sessions: pd.DataFrame | None) -> pd.DataFrame:
    """Add sex (+/-0.5), pretreatment (0/1) and period to the long table."""
    df = long.copy()
    sex = participants.set_index("participant_id")["sex"] if "sex" in participants else pd.Series(dtype=object)
    df["sex_c"] = df["participant_id"].map(sex).map({"M": 0.5, "F": -0.5})
    if sessions is not None and not sessions.empty:
        ses = sessions.set_index(["participant_id", "session_id"])
        key = pd.MultiIndex.from_frame(df[["participant_id", "session_id"]])
        if "pretreatment" in ses:
            pre = ses["pretreatment"].reindex(key).to_numpy()
            df["pretreatment"] = np.where(pd.isna(pre), df.get("pretreatment"), pre)
        if "period" in ses:
            df["period"] = ses["period"].reindex(key).to_numpy()
    df["nal"] = (df["pretreatment"].astype(str).str.lower() == "naltrexone").astype(float)
    df.loc[df["pretreatment"].isna(), "nal"] = np.nan
    return df


def fit_mixed_model(df: pd.DataFrame, outcome: str, *, time_col: str = "time", session_vc: bool = True
                    ) -> pd.DataFrame:
    """MixedLM of ``value`` on time x pretreatment x sex (+ period); a coefficient table with CIs and p."""
    import statsmodels.formula.api as smf

    df = df.dropna(subset=["value", time_col]).copy()
    df = df.rename(columns={time_col: "time"})
    rhs = _first_full_rank(df, design_candidates(df, time=True, with_period=True), outcome)
    vc = {"session": "0 + C(session_id)"} if session_vc and df["session_id"].notna().all() else None
    # re_formula "1": with a vc_formula statsmodels leaves out the subject intercept unless asked for it
    model = smf.mixedlm(f"value ~ {rhs}", df, groups=df["participant_id"], re_formula="1", vc_formula=vc)
    res = None
    for method in ("lbfgs", "powell", "nm", "cg"):  # optimisers differ in where they step; keep the first that fits
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = model.fit(reml=True, method=method)
        except (np.linalg.LinAlgError, ValueError):
            continue
        if np.all(np.isfinite(res.bse_fe)):
            break
    if res is None:
        raise np.linalg.LinAlgError(f"no optimiser could fit the mixed model of {outcome}")
    dofs = mixed_model_df(res, df, with_session=vc is not None)
    se = res.bse_fe
    rows = []
    for j, (term, est) in enumerate(res.fe_params.items()):
        s = float(se[term])
        dof = float(dofs[j])
        tq = stats.t.ppf(0.975, dof)
        tval = est / s if s > 0 else np.nan
        name = TERM_NAMES.get(term, term.replace("C(period)[T.", "period_").rstrip("]"))
        rows.append({"outcome": outcome, "term": name, "estimate": est, "se": s, "ci_low": est - tq * s,
                     "ci_high": est + tq * s, "statistic": tval, "df": dof,
                     "p": 2 * stats.t.sf(abs(tval), dof) if np.isfinite(tval) else np.nan,
                     "n_obs": len(df), "n_subjects": df["participant_id"].nunique(), "formula": f"value ~ {rhs}"})
    return pd.DataFrame(rows)


def mixed_model_df(res, df: pd.DataFrame, *, with_session: bool) -> np.ndarray:
    """Satterthwaite df of each fixed effect of a fitted MixedLM (subject intercept, optional session variance,
    residual), by :func:`.group_summary.satterthwaite_dof`, the rule the dynamic model uses; a variance statsmodels
    leaves below :data:`.group_summary.BOUNDARY` x the residual variance is on the boundary (zero)."""
    from bids_ketamine.spectroscopy.group_summary import BOUNDARY, satterthwaite_dof

    x = np.asarray(res.model.exog, float)
    subject = df["participant_id"].astype(str).to_numpy()
    if len(subject) != x.shape[0]:
        raise ValueError(f"{len(subject)} rows but the mixed model has {x.shape[0]} observations")
    same_subject = (subject[:, None] == subject[None, :]).astype(float)
    scale = float(res.scale)
    cov_re = np.asarray(res.cov_re, float)
    components, variances = [same_subject], [float(cov_re[0, 0]) if cov_re.size else 0.0]
    if with_session:
        session = df["session_id"].astype(str).to_numpy()
        components.append(same_subject * (session[:, None] == session[None, :]))
        variances.append(float(np.asarray(res.vcomp)[0]))
    variances = [v if v > BOUNDARY * scale else 0.0 for v in variances]
    components.append(np.eye(len(subject)))
    variances.append(scale)
    return satterthwaite_dof(x, np.zeros(len(subject)), components, variances)


DYNAMIC_MODEL_DOC = (
    "Dynamic fit with a summary-statistics mixed model: every session's blocks fitted jointly (level before the "
    "infusion onset, linear slope per minute after it); each session's slope (terms time, pretreatment_x_time, "
    "sex_x_time, sex_x_pretreatment_x_time) and level (intercept, pretreatment, sex, sex_x_pretreatment, period) "
    "modelled on pretreatment * sex (+ period for the level) with the first-level standard errors as known "
    "variances and REML subject and session variances (inverse-variance weighted).")

_WARNED: set[tuple[str, str]] = set()


def design_candidates(df: pd.DataFrame, *, time: bool, with_period: bool) -> list[str]:
    """Right-hand sides to try, fullest first, for both group models (block-wise: ``time`` x ...; dynamic: the
    session's slope or level on ...): pretreatment * sex when both vary, simpler nested models when the three-way
    design is not identifiable, and the crossover period first when ``with_period`` and it varies."""
    usable_nal = "nal" in df and df["nal"].notna().all() and df["nal"].nunique() > 1
    usable_sex = "sex_c" in df and df["sex_c"].notna().all() and df["sex_c"].nunique() > 1
    core = ("nal * sex_c" if usable_nal and usable_sex else "nal" if usable_nal else "sex_c" if usable_sex
            else "")
    prefix = "time * " if time else ""
    rhs = prefix + core if core else ("time" if time else "1")
    candidates = [rhs]
    if core == "nal * sex_c":
        candidates += [prefix + "nal + sex_c", prefix + "nal"]
    if with_period and "period" in df and df["period"].notna().all() and df["period"].nunique() > 1:
        candidates.insert(0, rhs + " + C(period)")
    return candidates


def _first_full_rank(df: pd.DataFrame, candidates: list[str], outcome: str) -> str:
    """The first right-hand side whose fixed-effect design has full column rank (a confounded period is dropped)."""
    from patsy import dmatrix

    for rhs in candidates:
        x = np.asarray(dmatrix(rhs, df))
        if np.linalg.matrix_rank(x) == x.shape[1]:
            if rhs != candidates[0] and (candidates[0], rhs) not in _WARNED:
                _WARNED.add((candidates[0], rhs))  # once per design, not once per metabolite
                LOG.warning("spectroscopy group: %s: '%s' is not identifiable (crossover period confounded with "
                            "sex x pretreatment?); fitted '%s' instead", outcome, candidates[0], rhs)
            return rhs
    raise ValueError(f"no identifiable fixed-effect design among {candidates}")


def madrs_long(sessions: pd.DataFrame) -> pd.DataFrame:
    """MADRS before (time 0) and 24 h after (time 1) each session, long format."""
    cols = {"madrs_baseline": 0.0, "madrs_24h": 1.0}
    if sessions is None or sessions.empty or not all(c in sessions for c in cols):
        return pd.DataFrame()
    parts = []
    for col, tval in cols.items():
        part = sessions[["participant_id", "session_id", "pretreatment", *(["period"] if "period" in sessions
                                                                          else [])]].copy()
        part["value"] = sessions[col].astype(float)
        part["time"] = tval
        parts.append(part)
    return pd.concat(parts, ignore_index=True).dropna(subset=["value"])


def time_course(df: pd.DataFrame, outcome: str) -> pd.DataFrame:
    """Mean, SEM and n of the outcome per pretreatment, sex and block."""
    d = df.copy()
    d["sex"] = d["sex_c"].map({0.5: "M", -0.5: "F"})
    g = d.groupby(["pretreatment", "sex", "block"], dropna=False)
    out = g.agg(time_min=("block_time_min", "mean"), mean=("value", "mean"), sem=("value", "sem"),
                n=("value", "size")).reset_index()
    out.insert(0, "outcome", outcome)
    return out


def run_group(output_dir: Path, *, participants: pd.DataFrame, sessions: pd.DataFrame, params, design, writer,
              work_dir: Path, seed: int, n_jobs: int = 1) -> list[Path]:
    """Fit the mixed models for Glx/tNAA and every metabolite / tNAA, and MADRS; write tables and figures."""
    from bids_ketamine.spectroscopy.figures import group_timecourse_figure, madrs_change_figure

    fits = read_fit_tables(output_dir)
    outputs: list[Path] = []
    qc_counts = failed_spectra(fits)
    if qc_counts is not None and int(qc_counts["n_failed"].sum()):
        where = ", ".join(f"sub-{r.participant_id}" + (f" ses-{r.session_id}" if isinstance(r.session_id, str) else "")
                          + f": {r.n_failed} of {r.n_spectra}" for r in qc_counts.itertuples() if r.n_failed)
        LOG.warning("spectroscopy group: %d spectra failed QC and are left out of the models (%s); see qc_reason in "
                    "the participants' _mrsfit.tsv", int(qc_counts["n_failed"].sum()), where)
    metabolites = params.group_metabolites
    if metabolites is None:
        # metabolites only: macromolecule and lipid components are nuisance signals of the fit, not outcomes
        present = [m for m in fits["metabolite"].unique() if m not in ("tNAA",) and not is_macromolecule(m)]
        metabolites = ("Glx", *sorted(m for m in present if m != "Glx"))
    coef_tables, courses, frames = [], [], []
    for met in metabolites:
        long = ratio_long(fits, met, "tNAA")
        if long.empty:
            continue
        frame = model_frame(long, participants, sessions)
        outcome = f"{met}/tNAA"
        courses.append(time_course(frame, outcome))
        frames.append((frame, outcome))
        in_model = frame[(frame["block_time_min"] >= params.model_from_minute) & frame["qc_pass"]]
        if in_model["block_time_min"].nunique() < 2 or in_model["participant_id"].nunique() < 2:
            LOG.warning("spectroscopy group: %s has too few blocks or subjects for the time model", outcome)
            continue
        try:
            coef_tables.append(fit_mixed_model(in_model, outcome, time_col="block_time_min"))
        except (np.linalg.LinAlgError, ValueError) as exc:
            LOG.warning("spectroscopy group: the mixed model of %s failed (%s)", outcome, exc)
    dynamic_tables = []
    if getattr(params, "time_fit", "blockwise") == "dynamic":
        dynamic = read_dynamic_tables(output_dir)
        if dynamic.empty:
            LOG.warning("spectroscopy group: time_fit is 'dynamic' but no participant wrote a _mrsdynamic.tsv "
                        "(no timed blocks on both sides of the infusion onset?); only the block-wise model is fitted")
        else:
            dynamic_tables = dynamic_model_tables(dynamic, [f"{m}/tNAA" for m in metabolites], participants,
                                                  sessions)
    mad = madrs_long(sessions)
    madrs_table = None
    if not mad.empty and mad["participant_id"].nunique() > 1:
        frame = model_frame(mad.assign(block_time_min=mad["time"]), participants, sessions)
        frame = frame.drop(columns=["sex_c"])  # the MADRS model of the paper has no sex terms
        try:
            madrs_table = fit_mixed_model(frame, "MADRS", time_col="time", session_vc=False)
        except (np.linalg.LinAlgError, ValueError) as exc:
            LOG.warning("spectroscopy group: the MADRS model failed (%s)", exc)
    figures = []  # every figure is drawn before anything is written: a plotting failure leaves no partial outputs
    if params.figures and frames:
        frame, outcome = frames[0]
        if frame["qc_pass"].astype(bool).any():
            # named after the metabolite drawn (the first of group_metabolites; Glx by default)
            label = "".join(ch for ch in outcome.split("/")[0] if ch.isalnum()).lower()
            figures.append((group_timecourse_figure(frame, outcome), f"{label}timecourse"))
        else:
            LOG.warning("spectroscopy group: no %s block passed QC; no time-course figure", outcome)
    if params.figures and not mad.empty and mad["pretreatment"].notna().any():
        figures.append((madrs_change_figure(mad), "madrschange"))
    sources = sorted(Path(output_dir).glob("sub-*/**/*_mrsfit.tsv"))
    model_doc = ("Block-wise fits (every block fitted on its own), MixedLM (REML): value ~ time * pretreatment * sex + period, random intercept per subject and "
                 "variance component per session; time = minutes since infusion onset (block mean), pretreatment "
                 "naltrexone = 1 / placebo = 0, sex male = +0.5 / female = -0.5.")
    if coef_tables:
        outputs.append(writer.write_table(pd.concat(coef_tables, ignore_index=True),
                                          entities={"desc": "fmrslmm"}, suffix="stats", columns=STATS_COLUMNS,
                                          sources=sources, datatype="spectroscopy", description=model_doc,
                                          parameters=params.model_dump(mode="json")))
    if dynamic_tables:
        outputs.append(writer.write_table(
            pd.concat(dynamic_tables, ignore_index=True), entities={"desc": "fmrsdynamicmodel"}, suffix="stats",
            columns=STATS_COLUMNS, sources=sorted(Path(output_dir).glob("sub-*/**/*_mrsdynamic.tsv")),
            datatype="spectroscopy", description=DYNAMIC_MODEL_DOC, parameters=params.model_dump(mode="json")))
    if courses:
        tc = pd.concat(courses, ignore_index=True)
        tc_cols = {"outcome": STATS_COLUMNS["outcome"], "pretreatment": "Pretreatment of the session.",
                   "sex": "Sex (F/M).", "block": "Block number (0 = first block from the infusion onset).",
                   "time_min": {"Description": "Mean block time from the infusion onset.", "Units": "min"},
                   "mean": "Mean of the outcome over subjects.", "sem": "Standard error of that mean.",
                   "n": "Number of subject-sessions."}
        outputs.append(writer.write_table(tc, entities={"desc": "fmrstimecourse"}, suffix="stats", columns=tc_cols,
                                          sources=sources, datatype="spectroscopy",
                                          description="Group time courses of each ratio by pretreatment and sex."))
    if madrs_table is not None:
        outputs.append(writer.write_table(
            madrs_table, entities={"desc": "madrslmm"}, suffix="stats", columns=STATS_COLUMNS,
            datatype="spectroscopy",
            description="MixedLM: MADRS ~ time (0 = before, 1 = 24 h) * pretreatment + period, random intercept "
                        "per subject; pretreatment_x_time = extra change of the score after naltrexone."))
    if qc_counts is not None:
        qc_cols = {"participant_id": "Participant label.", "session_id": "Session label (n/a without sessions).",
                   "n_spectra": "Spectra (blocks or averages) fitted.",
                   "n_failed": "Spectra whose fit failed QC (left out of the group models)."}
        outputs.append(writer.write_table(qc_counts, entities={"desc": "fmrsqc"}, suffix="stats", columns=qc_cols,
                                          sources=sources, datatype="spectroscopy",
                                          description="Spectra per subject and session, and how many failed QC."))
    for fig, desc in figures:
        outputs.append(writer.write_figure(fig, entities={"desc": desc}, suffix="mrs"))
    return outputs


def failed_spectra(fits: pd.DataFrame) -> pd.DataFrame | None:
    """Per participant and session: spectra fitted and spectra whose fit failed QC (``spectrum_qc_pass``)."""
    if "spectrum_qc_pass" not in fits.columns or fits.empty:
        return None
    keys = ["participant_id", "session_id"]
    frame = fits.assign(session_id=fits.get("session_id", pd.Series(np.nan, index=fits.index)))
    series = [c for c in ("series", "block") if c in frame.columns]
    per_spectrum = frame.groupby(keys + series, dropna=False)["spectrum_qc_pass"].first().reset_index()
    per_spectrum["failed"] = ~per_spectrum["spectrum_qc_pass"].astype(bool)
    out = per_spectrum.groupby(keys, dropna=False).agg(n_spectra=("failed", "size"), n_failed=("failed", "sum"))
    return out.reset_index().astype({"n_spectra": int, "n_failed": int})
