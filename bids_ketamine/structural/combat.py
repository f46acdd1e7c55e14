"""Train-only ComBat: empirical-Bayes site harmonisation that keeps covariate effects and never sees the outcome.

Model (Johnson, Li & Rabinovic 2007; Fortin et al. 2018 for imaging): for feature v of subject j at site k,
``x = alpha_v + c_j . beta_v + gamma_kv + sqrt(delta_kv) * e``. Fitting on the training subjects estimates the grand
mean ``alpha``, the covariate effects ``beta`` (age, sex, TIV... -- kept, because they are biology, and never the
outcome, which would leak labels), the pooled residual variance, and per-site location ``gamma*`` and scale
``delta*`` shrunk towards priors shared by the features of that site (normal prior on gamma, inverse-gamma on
delta, moments estimated across features). Transform removes ``gamma*`` and ``delta*`` of each subject's site.

A site that was not in training (leave-site-out folds, external cohorts): its location and scale are estimated from
that site's own subjects in the data being transformed -- their features and covariates only, never labels -- with
the same empirical-Bayes step, after standardising with the training grand mean, covariate effects and pooled
variance. Why this rule: leaving the site un-harmonised would score it with its scanner offset, which the classifier
never saw and which shifts every decision value of that site; estimating it from the unlabelled test batch is the
only choice that uses no outcome and no training label, so it cannot leak. A site with fewer than
``min_unseen_site_size`` subjects cannot be estimated reliably: it is left un-harmonised and a warning says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from bids_ketamine.errors import BadDataError


class UnseenSiteWarning(UserWarning):
    """A site was too small to estimate its location and scale at transform time and was left un-harmonised."""


@dataclass(frozen=True)
class SiteEffects:
    """Empirical-Bayes location ``gamma`` and scale ``delta`` (per feature) of one site."""

    gamma: np.ndarray
    delta: np.ndarray


@dataclass(frozen=True)
class CombatModel:
    """Everything ComBat learned from the training subjects."""

    grand_mean: np.ndarray  # (p,)
    beta: np.ndarray  # (q, p) covariate effects on centred covariates
    covariate_mean: np.ndarray  # (q,) training means (centring, and imputation of missing values)
    pooled_sd: np.ndarray  # (p,)
    sites: dict[str, SiteEffects]


def _covariate_matrix(covariates: np.ndarray | None, n: int) -> np.ndarray:
    if covariates is None:
        return np.zeros((n, 0))
    cov = np.asarray(covariates, dtype=np.float64)
    return cov.reshape(n, -1)


def _inverse_gamma_prior(delta_hat: np.ndarray) -> tuple[float, float]:
    """Method-of-moments inverse-gamma hyper-parameters (a, b) from the per-feature variances of one site."""
    mean = float(delta_hat.mean())
    var = float(delta_hat.var(ddof=1)) if delta_hat.size > 1 else 0.0
    if var <= 0:
        var = max(mean, 1e-12) * 1e-6
    return (2 * var + mean ** 2) / var, (mean * var + mean ** 3) / var


def empirical_bayes_site(z: np.ndarray, *, max_iter: int = 1000, tol: float = 1e-6) -> SiteEffects:
    """Shrunken location and scale of one site from its standardised data ``z`` (n_site, p), n_site >= 2.

    Priors: gamma ~ N(gamma_bar, tau2), delta ~ InvGamma(a, b), their moments estimated across the p features;
    the posterior means are found by the usual fixed-point iteration.
    """
    n = z.shape[0]
    gamma_hat = z.mean(axis=0)
    delta_hat = z.var(axis=0, ddof=1)
    delta_hat = np.maximum(delta_hat, 1e-12)
    gamma_bar = float(gamma_hat.mean())
    tau2 = float(gamma_hat.var(ddof=1)) if gamma_hat.size > 1 else 0.0
    a, b = _inverse_gamma_prior(delta_hat)
    gamma, delta = gamma_hat.copy(), delta_hat.copy()
    for _ in range(max_iter):
        gamma_new = (n * tau2 * gamma_hat + delta * gamma_bar) / (n * tau2 + delta) if tau2 > 0 else \
            np.full_like(gamma_hat, gamma_bar)
        ss = ((z - gamma_new) ** 2).sum(axis=0)
        delta_new = (b + 0.5 * ss) / (n / 2.0 + a - 1.0)
        # z is in pooled-SD units, so an absolute change in gamma and a relative one in delta are comparable
        change = max(np.max(np.abs(gamma_new - gamma)), np.max(np.abs(delta_new - delta) / delta))
        gamma, delta = gamma_new, delta_new
        if change < tol:
            break
    return SiteEffects(gamma=gamma, delta=delta)


def _standardise(model: CombatModel, features: np.ndarray, covariates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cov = covariates.copy()
    if cov.shape[1]:
        missing = np.isnan(cov)
        cov[missing] = np.broadcast_to(model.covariate_mean, cov.shape)[missing]
        cov = cov - model.covariate_mean
    stand_mean = model.grand_mean + cov @ model.beta
    return (features - stand_mean) / model.pooled_sd, stand_mean


def fit_combat(features: np.ndarray, sites: np.ndarray, covariates: np.ndarray | None = None) -> CombatModel:
    """Fit ComBat on training data: ``features`` (n, p), ``sites`` (n,) labels, ``covariates`` (n, q) numeric.

    Missing covariate values are set to the training mean (they then carry no covariate effect).
    """
    x = np.asarray(features, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    n, p = x.shape
    if not np.all(np.isfinite(x)):
        raise BadDataError("the feature table has missing or infinite values",
                           fix="re-run the participant level for the subjects with n/a volumes")
    cov = _covariate_matrix(covariates, n)
    cov_mean = np.nanmean(cov, axis=0) if cov.shape[1] else np.zeros(0)
    if cov.shape[1]:
        cov_mean = np.where(np.isnan(cov_mean), 0.0, cov_mean)
        cov = np.where(np.isnan(cov), cov_mean, cov) - cov_mean
    levels, site_index = np.unique(sites, return_inverse=True)
    onehot = np.eye(levels.size)[site_index]
    design = np.hstack([onehot, cov])
    coef, *_ = np.linalg.lstsq(design, x, rcond=None)
    site_coef, beta = coef[: levels.size], coef[levels.size:]
    weights = onehot.sum(axis=0) / n
    grand_mean = weights @ site_coef
    resid = x - design @ coef
    pooled_var = (resid ** 2).mean(axis=0)
    pooled_sd = np.sqrt(np.maximum(pooled_var, 1e-12 * max(float(np.mean(pooled_var)), 1e-300)))
    z = (x - grand_mean - cov @ beta) / pooled_sd
    effects: dict[str, SiteEffects] = {}
    if levels.size > 1:
        for k, level in enumerate(levels):
            rows = site_index == k
            if rows.sum() >= 2:
                effects[str(level)] = empirical_bayes_site(z[rows])
            else:  # one training subject: location from it, scale left at 1 (no variance to estimate)
                effects[str(level)] = SiteEffects(gamma=z[rows].mean(axis=0), delta=np.ones(p))
    return CombatModel(grand_mean=grand_mean, beta=beta, covariate_mean=cov_mean, pooled_sd=pooled_sd,
                       sites=effects)


def apply_combat(model: CombatModel, features: np.ndarray, sites: np.ndarray, covariates: np.ndarray | None = None,
                 *, min_unseen_site_size: int = 5) -> np.ndarray:
    """Harmonise ``features`` with a fitted model; unseen sites are estimated from their own (unlabelled) subjects.

    With a single training site there is no site effect to remove and the features are returned unchanged.
    """
    x = np.asarray(features, dtype=np.float64)
    sites = np.asarray(sites).astype(str)
    if not model.sites:
        return x.copy()
    cov = _covariate_matrix(covariates, x.shape[0])
    z, stand_mean = _standardise(model, x, cov)
    out = x.copy()
    for level in np.unique(sites):
        rows = sites == level
        effect = model.sites.get(str(level))
        if effect is None:
            if rows.sum() < min_unseen_site_size:
                warnings.warn(f"site {level!r} was not in the training data and has only {int(rows.sum())} "
                              f"subject(s) (< {min_unseen_site_size}); it is left un-harmonised",
                              UnseenSiteWarning, stacklevel=2)
                continue
            effect = empirical_bayes_site(z[rows])
        out[rows] = (z[rows] - effect.gamma) / np.sqrt(effect.delta) * model.pooled_sd + stand_mean[rows]
    return out


class ComBatHarmonizer(TransformerMixin, BaseEstimator):
    """scikit-learn transformer around ``fit_combat``/``apply_combat`` for a DataFrame input.

    The input frame carries the site column and the covariate columns beside the features (the side table);
    they are split off by name and the harmonised features are returned as a numpy array. The outcome is never
    an input: ``fit`` ignores ``y``. ``enabled=False`` passes the features through (to show what harmonisation
    changes).
    """

    def __init__(self, site_column: str = "site", covariate_columns: tuple[str, ...] = (),
                 min_unseen_site_size: int = 5, enabled: bool = True):
        self.site_column = site_column
        self.covariate_columns = covariate_columns
        self.min_unseen_site_size = min_unseen_site_size
        self.enabled = enabled

    def _split(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        side = [self.site_column, *self.covariate_columns]
        features = frame.drop(columns=side).to_numpy(dtype=np.float64)
        covariates = frame[list(self.covariate_columns)].to_numpy(dtype=np.float64) if self.covariate_columns \
            else None
        return features, frame[self.site_column].astype(str).to_numpy(), covariates

    def fit(self, X: pd.DataFrame, y=None):
        features, sites, covariates = self._split(X)
        self.feature_names_ = [c for c in X.columns if c not in (self.site_column, *self.covariate_columns)]
        self.model_ = fit_combat(features, sites, covariates) if self.enabled else None
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        features, sites, covariates = self._split(X)
        if self.model_ is None:
            return features
        return apply_combat(self.model_, features, sites, covariates,
                            min_unseen_site_size=self.min_unseen_site_size)

    def get_feature_names_out(self, input_features=None):
        return np.asarray(self.feature_names_, dtype=object)
