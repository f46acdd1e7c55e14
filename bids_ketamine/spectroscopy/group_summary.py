"""Group level from first-level time-model estimates: an inverse-variance weighted (summary-statistics) mixed model.

Each session contributes its Glx/tNAA pre-infusion level and slope per minute from the dynamic fit, each with its
standard error from the joint fit's covariance. For one of them, ``y_s`` of session ``s`` of subject ``i``:

    y_s = x_s' beta + u_i + e_s + eps_s,   u_i ~ N(0, tau_u^2),  e_s ~ N(0, tau_e^2),  eps_s ~ N(0, se_s^2)

with the first-level sampling variance ``se_s^2`` known: a precise session weighs more, and true between-session
and between-subject variation (``tau``) is estimated by restricted maximum likelihood, so the weights fall back to
equal ones when it dominates. This is the two-stage summary-statistics approach (Holmes & Friston 1998; FSL's
FLAMEO does the same for fMRI; Chen et al. 2012 for random effects with known variances), written here because
statsmodels' MixedLM cannot take known residual variances and FLAMEO needs FSL.

The terms keep the names of the block-wise model of :mod:`.group`: in the slope model the intercept is ``time``
(slope in placebo, averaged over sex), ``nal`` is ``pretreatment_x_time``, ``sex_c`` ``sex_x_time`` and ``nal:sex_c``
``sex_x_pretreatment_x_time``; the level model gives ``intercept``, ``pretreatment``, ``sex``,
``sex_x_pretreatment`` and the crossover period (a level shift, as in the block-wise model). Wald t tests use
Satterthwaite degrees of freedom (:func:`satterthwaite_dof`, the rule the block-wise model of :mod:`.group` uses too).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import optimize, stats

#: A REML variance below this fraction of the median squared first-level SE is taken as zero (on the boundary of
#: the parameter space): it is reported as 0 and held fixed in the Satterthwaite degrees of freedom.
BOUNDARY = 1e-3

#: Term names of the slope model (the block-wise model's names for the same effects).
SLOPE_TERMS = {"Intercept": "time", "nal": "pretreatment_x_time", "sex_c": "sex_x_time",
               "nal:sex_c": "sex_x_pretreatment_x_time"}
LEVEL_TERMS = {"Intercept": "intercept", "nal": "pretreatment", "sex_c": "sex", "nal:sex_c": "sex_x_pretreatment"}


def reml_known_variance(y: np.ndarray, x: np.ndarray, se: np.ndarray, groups: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, float, float]:
    """GLS fixed effects and their covariance under ``V = diag(se^2 + tau_e^2) + tau_u^2 Z Z'`` (REML taus).

    ``groups`` labels the subject of each row (random intercept ``u``); returns (beta, cov_beta, tau_u^2,
    tau_e^2). With one row per group the two variance components are not separable; their sum is what matters.
    """
    y, x, se = np.asarray(y, float), np.asarray(x, float), np.asarray(se, float)
    if np.any(~np.isfinite(se)) or np.any(se <= 0):
        raise ValueError("first-level standard errors must be positive and finite")
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    z = (inverse[:, None] == np.arange(inverse.max() + 1)[None, :]).astype(float)
    zz = z @ z.T
    scale = float(np.median(se))  # work in units of the typical first-level SE (well-scaled optimisation)
    ys, ss = y / scale, se / scale
    n, p = x.shape
    if n <= p:
        raise ValueError(f"{n} sessions cannot estimate {p} fixed effects")

    def pieces(theta):
        tu, te = np.exp(theta)
        v = np.diag(ss**2 + te) + tu * zz
        c = np.linalg.cholesky(v)
        vi_x = np.linalg.solve(c.T, np.linalg.solve(c, x))
        vi_y = np.linalg.solve(c.T, np.linalg.solve(c, ys))
        xtvx = x.T @ vi_x
        beta = np.linalg.solve(xtvx, x.T @ vi_y)
        r = ys - x @ beta
        vi_r = vi_y - vi_x @ beta
        nll = (2 * np.log(np.diag(c)).sum() + np.linalg.slogdet(xtvx)[1] + r @ vi_r) / 2
        return nll, beta, xtvx

    lo, hi = np.log(1e-8), np.log(1e4)
    best = None
    for start in ((-4.0, -4.0), (0.0, -4.0), (-4.0, 0.0), (0.0, 0.0)):
        res = optimize.minimize(lambda th: pieces(th)[0], np.array(start), method="L-BFGS-B",
                                bounds=[(lo, hi), (lo, hi)])
        if best is None or res.fun < best.fun:
            best = res
    theta = np.where(best.x <= np.log(BOUNDARY), -np.inf, best.x)  # at the boundary: exactly no such variance
    _, beta, xtvx = pieces(theta)
    tu, te = np.exp(theta)
    return beta * scale, np.linalg.inv(xtvx) * scale**2, float(tu * scale**2), float(te * scale**2)


def satterthwaite_dof(x: np.ndarray, known: np.ndarray, components: list[np.ndarray], variances: list[float]
                      ) -> np.ndarray:
    """Satterthwaite degrees of freedom of each fixed effect of a linear mixed model fitted by REML (GLS).

    ``V = diag(known) + sum_k variances[k] * components[k]``: ``known`` is a known variance per observation (the
    first-level SEs squared; zeros for a model whose residual variance is one of the components) and
    ``components`` are the covariance patterns of the REML variances (``Z Z'`` of a random intercept, the
    identity of a residual). The df is ``2 g^2 / (grad g' A grad g)`` with ``g`` the coefficient's variance as a
    function of the variances and ``A`` the inverse REML (expected) information, as lmerTest does for lme4: the
    one df rule of both spectroscopy group models. A variance on the boundary (0) contributes no gradient (on
    the standard-deviation scale its derivative is zero, as in lmerTest for a singular fit); the others keep
    their uncertainty from the full information (the trade-off between them stays). Without that rule the df
    stayed at the within-subject residual count (2 with 4 subjects) when all variance was first-level, and the
    null test never rejected (0 of 1000 studies at p < 0.05). Clipped to [1, observations x 1000] (every
    variance known or on the boundary: in effect a z test).
    """
    x = np.asarray(x, float)
    n = x.shape[0]
    v = np.diag(np.asarray(known, float)) + sum(t * c for t, c in zip(variances, components))
    vi = np.linalg.inv(v)
    m_inv = np.linalg.inv(x.T @ vi @ x)
    upper = 1000.0 * n
    active = np.array([t > 0 for t in variances], float)
    if not active.any():
        return np.full(x.shape[1], upper)
    p_mat = vi - vi @ x @ m_inv @ x.T @ vi
    pv = [p_mat @ c for c in components]
    info = np.array([[0.5 * np.sum(a * b.T) for b in pv] for a in pv])  # 0.5 tr(P V_k P V_l)
    a_cov = np.linalg.pinv(info)
    # d cov(beta) / d variance_k = M^-1 X' V^-1 V_k V^-1 X M^-1
    vix = vi @ x @ m_inv
    grads = np.stack([np.einsum("ij,ik,kj->j", vix, c, vix) for c in components], axis=1) * active
    g = np.diag(m_inv)
    denom = np.einsum("jk,kl,jl->j", grads, a_cov, grads)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denom > 0, 2 * g**2 / denom, upper)
    return np.clip(df, 1.0, upper)


def satterthwaite_df(x: np.ndarray, se: np.ndarray, groups: np.ndarray, tau_u: float, tau_e: float
                     ) -> np.ndarray:
    """:func:`satterthwaite_dof` of :func:`reml_known_variance`'s model (known ``se``, subject ``tau_u``,
    session ``tau_e``). Why not the sessions minus fixed effects: a pretreatment contrast is within subjects, so
    with few subjects and dominant between-session variance that count is too large (p < 0.05 in 12 % of
    4-subject null studies), while with dominant known first-level variances it is too small."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    z = (inverse[:, None] == np.arange(inverse.max() + 1)[None, :]).astype(float)
    return satterthwaite_dof(x, np.asarray(se, float) ** 2, [z @ z.T, np.eye(len(inverse))], [tau_u, tau_e])


def summary_model(frame: pd.DataFrame, outcome: str, quantity: str, rhs: str, terms: dict[str, str]
                  ) -> pd.DataFrame:
    """Coefficient table (the columns of :data:`.group.STATS_COLUMNS`) of one summary-statistics model.

    ``frame`` has one row per session with ``estimate``, ``se``, ``participant_id`` and the covariates of ``rhs``.
    """
    from patsy import dmatrix

    d = frame.dropna(subset=["estimate", "se"])
    xm = dmatrix(rhs, d, return_type="dataframe")
    beta, cov, tau_u, tau_e = reml_known_variance(d["estimate"].to_numpy(), xm.to_numpy(), d["se"].to_numpy(),
                                                  d["participant_id"].to_numpy())
    dofs = satterthwaite_df(xm.to_numpy(), d["se"].to_numpy(), d["participant_id"].to_numpy(), tau_u, tau_e)
    rows = []
    for j, term in enumerate(xm.columns):
        est, s = float(beta[j]), float(np.sqrt(max(cov[j, j], 0.0)))
        dof = float(dofs[j])
        tq = stats.t.ppf(0.975, dof)
        tval = est / s if s > 0 else np.nan
        name = terms.get(term, term.replace("C(period)[T.", "period_").rstrip("]"))
        rows.append({"outcome": outcome, "term": name, "estimate": est, "se": s, "ci_low": est - tq * s,
                     "ci_high": est + tq * s, "statistic": tval, "df": dof,
                     "p": 2 * stats.t.sf(abs(tval), dof) if np.isfinite(tval) else np.nan, "n_obs": len(d),
                     "n_subjects": d["participant_id"].nunique(),
                     "formula": f"{quantity} ~ {rhs} (first-level SEs as known variances; REML subject and "
                                f"session variances {tau_u:.3g}, {tau_e:.3g})"})
    return pd.DataFrame(rows)


def fit_time_model_group(sessions: pd.DataFrame, outcome: str, *, level: str = "level",
                         slope: str = "slope_per_min") -> pd.DataFrame:
    """Slope and level models of one outcome from a table with one row per session and ``parameter`` rows.

    ``sessions`` columns: participant_id, session_id, parameter, estimate, se, nal, sex_c, (period); the
    design falls back as the block-wise model does (no sex terms without two sexes, period dropped when it is
    confounded with sex x pretreatment).
    """
    from bids_ketamine.spectroscopy.group import _first_full_rank, design_candidates

    out = []
    for quantity, terms, with_period in ((slope, SLOPE_TERMS, False), (level, LEVEL_TERMS, True)):
        d = sessions[sessions["parameter"] == quantity].copy()
        if d.empty:
            continue
        rhs = _first_full_rank(d, design_candidates(d, time=False, with_period=with_period), outcome)
        out.append(summary_model(d, outcome, quantity, rhs, terms))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()
