"""Haufe transform: turn the SVM's weights (a filter) into an activation pattern that can be read region by region.

Why: weights of a linear classifier mix signal with noise suppression (a region can get a large weight because it
cancels a shared nuisance), so they cannot be read as "this region relates to response". Haufe et al. (NeuroImage
2014) show that the pattern ``A = cov(X) w / var(s)``, with ``s = X w`` the decision score on the training data, is
the forward model: how much each feature changes per unit of score. Sign convention: the score is positive towards
response, so a positive value means more grey matter in responders.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def haufe_pattern(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Activation pattern ``cov(X) w / var(X w)`` of a linear score on training features ``X`` (n, p)."""
    x = np.asarray(features, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64).ravel()
    xc = x - x.mean(axis=0)
    score = xc @ w
    var = score @ score / (x.shape[0] - 1)
    if var <= 0:
        return np.zeros(x.shape[1])
    return (xc.T @ score) / (x.shape[0] - 1) / var


def pipeline_pattern(pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    """Weights and Haufe pattern of a fitted ComBat -> scaler -> [PCA] -> SVM pipeline, per input feature.

    The pattern is computed on the harmonised, standardised training features (the space where regions are
    comparable): ``activation`` in SD per unit score, ``activation_mm3`` in the features' own units, and
    ``weight``, the linear map from standardised features to the score.
    """
    steps = dict(pipeline.steps)
    names = list(steps["combat"].feature_names_)
    harmonised = steps["combat"].transform(frame)
    z = steps["scale"].transform(harmonised)
    z = steps["norm"].transform(z) if "norm" in steps else z
    w = steps["svm"].coef_[0]
    if "pca" in steps:
        w = steps["pca"].components_.T @ w
    if "norm" in steps:
        w = w / np.sqrt(steps["norm"].n_features_in_)
        z = z * np.sqrt(steps["norm"].n_features_in_)
    score = (z - z.mean(axis=0)) @ w
    table = pd.DataFrame({
        "region": names,
        "weight": w,
        "activation": haufe_pattern(z, w),
        "activation_mm3": haufe_pattern(harmonised, w / steps["scale"].scale_) if np.var(score) > 0
        else np.zeros(len(names)),
        "correlation": [float(np.corrcoef(z[:, j], score)[0, 1]) if np.std(z[:, j]) > 0 else 0.0
                        for j in range(z.shape[1])],
    })
    table["rank"] = table["activation"].abs().rank(ascending=False, method="first").astype(int)
    return table.sort_values("rank").reset_index(drop=True)


def region_map(values: pd.Series, atlas) -> object:
    """A 3-D MNI image with each atlas region painted with its value (0 outside regions and for unknown names)."""
    import nibabel as nib

    data = atlas.data()
    lookup = np.zeros(int(data.max()) + 1, dtype=np.float32)
    index_of = dict(zip(atlas.labels["name"], atlas.labels["index"]))
    for name, value in values.items():
        if name in index_of:
            lookup[int(index_of[name])] = float(value)
    img = nib.Nifti1Image(lookup[data], atlas.image.affine)
    img.header.set_xyzt_units("mm")
    return img


def score_contributions(pipeline, frame: pd.DataFrame) -> pd.DataFrame:
    """Per subject and region: weight x the subject's harmonised, standardised deviation from the training mean.

    For the linear model these add up (with the intercept) to the decision score, so they say which regions drove
    a patient's score and in which direction (positive = towards the positive class).
    """
    steps = dict(pipeline.steps)
    names = list(steps["combat"].feature_names_)
    z = steps["scale"].transform(steps["combat"].transform(frame))
    w = steps["svm"].coef_[0]
    if "pca" in steps:
        w = steps["pca"].components_.T @ w
    if "norm" in steps:
        w = w / np.sqrt(steps["norm"].n_features_in_)
    return pd.DataFrame(np.asarray(z) * w, columns=names, index=frame.index)
