"""The structural classifier: ComBat -> standard scaling (/ sqrt(p)) -> optional PCA -> balanced linear SVM, C tuned inside.

Every step is a scikit-learn estimator fitted on training folds only. The input is a DataFrame with one row per
subject: the regional features plus the side columns ComBat needs (site and label-free covariates such as age, sex
and TIV); the outcome is only ever the ``y`` of the final SVM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from bids_ketamine.structural.combat import ComBatHarmonizer
from bids_ketamine.structural.svm_solver import LinearSVM

SITE_COLUMN = "__site__"


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline is made of (a plain record, so tests and the group level build the same thing)."""

    covariates: tuple[str, ...] = ()
    harmonize: bool = True
    pca_variance: float | None = None
    min_unseen_site_size: int = 5
    tol: float = 1e-2
    intercept_scaling: float | str = "auto"


class FeatureCountScaler(TransformerMixin, BaseEstimator):
    """Divide standardised features by sqrt(number of features), so that a subject's squared norm is ~1.

    Why: the SVM's C then means the same for 80 regions or 400 (the kernel diagonal is ~1 whatever p), and the
    default C grid spans the strongly regularised to the nearly hard-margin regime. Label-free and stateless
    apart from p.
    """

    def fit(self, X, y=None):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X):
        check_is_fitted(self, "n_features_in_")
        return np.asarray(X, dtype=np.float64) / np.sqrt(self.n_features_in_)


def model_frame(features: pd.DataFrame, sites, covariates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Features plus the side columns (site, covariates) in the layout ``ComBatHarmonizer`` reads."""
    frame = features.copy()
    frame.insert(0, SITE_COLUMN, np.asarray(sites).astype(str))
    if covariates is not None:
        for i, col in enumerate(covariates.columns):
            frame.insert(1 + i, f"__cov_{col}__", covariates[col].to_numpy(dtype=float))
    return frame


def covariate_columns(spec: ModelSpec) -> tuple[str, ...]:
    return tuple(f"__cov_{c}__" for c in spec.covariates)


def make_preprocessor(spec: ModelSpec) -> Pipeline:
    """The label-free part of the pipeline: ComBat (or pass-through), scaling, optional PCA."""
    steps = [
        ("combat", ComBatHarmonizer(site_column=SITE_COLUMN, covariate_columns=covariate_columns(spec),
                                    min_unseen_site_size=spec.min_unseen_site_size, enabled=spec.harmonize)),
        ("scale", StandardScaler()),
        ("norm", FeatureCountScaler()),
    ]
    if spec.pca_variance is not None:
        steps.append(("pca", PCA(n_components=spec.pca_variance, svd_solver="full")))
    return Pipeline(steps)


def make_pipeline(spec: ModelSpec, c: float) -> Pipeline:
    """The full classifier with a fixed C (the nested CV chooses C per training set)."""
    pre = make_preprocessor(spec)
    return Pipeline([*pre.steps, ("svm", LinearSVM(C=c, tol=spec.tol, intercept_scaling=spec.intercept_scaling))])


class PreprocessorFactory:
    """Picklable ``make_preprocessor`` for joblib workers."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self) -> Pipeline:
        return make_preprocessor(self.spec)


class PipelineFactory:
    """Picklable ``make_pipeline`` with the spec bound."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, c: float) -> Pipeline:
        return make_pipeline(self.spec, c)
