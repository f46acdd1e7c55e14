"""Synthetic regional grey-matter cohorts with a planted effect of known Bayes-optimal performance.

Why: the classifier's numbers can only be trusted if it recovers a known truth. Responders differ from
non-responders by a mean shift that is positive in frontal and negative in cerebellar regions; the noise is
Gaussian with a known covariance (independent regional noise plus shared TIV and age factors that ComBat keeps),
so the Bayes-optimal classifier and its AUC are known in closed form: with Mahalanobis distance
``D = sqrt(mu' S^-1 mu)``, the optimal linear score has AUC ``Phi(D / sqrt(2))`` and (equal priors) accuracy
``Phi(D / 2)``. Sites add a location offset per region (what ComBat must remove).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

FRONTAL = ("superiorfrontal", "rostralmiddlefrontal", "caudalmiddlefrontal", "parsopercularis",
           "parstriangularis", "lateralorbitofrontal", "medialorbitofrontal", "frontalpole")


@dataclass(frozen=True)
class SyntheticCohort:
    features: pd.DataFrame  # (n, p) regional GM volumes in mm^3, columns = region names
    covariates: pd.DataFrame  # age (years), sex (0 F / 1 M), tiv (mm^3)
    sites: np.ndarray  # (n,) site labels
    labels: np.ndarray  # (n,) 1 responder / 0 non-responder
    shift: pd.Series  # planted responder-minus-non-responder mean difference per region (noise-sd units)
    bayes_auc: float
    bayes_accuracy: float
    standardised: np.ndarray | None = None  # (n, p) noise + signal + site offset in noise-SD units (volumes' source)
    noise_covariance: np.ndarray | None = None  # (p, p) covariance of the noise part
    base: np.ndarray | None = None  # (p,) regional mean volume (mm^3); volumes = base * (1 + 0.08 * standardised)


def region_names(n_features: int, n_frontal: int = 8, n_cerebellar: int = 2) -> tuple[list[str], list[str], list[str]]:
    """Region names: frontal (L_/R_ Desikan-Killiany frontal names), cerebellar, then neutral ones."""
    frontal = [f"{h}_{name}" for name in FRONTAL for h in "LR"][:n_frontal]
    cerebellar = [f"{h}_cerebellum{'' if k == 0 else k}" for k in range(n_cerebellar) for h in "LR"][:n_cerebellar]
    others = [f"region{k:03d}" for k in range(n_features - len(frontal) - len(cerebellar))]
    return frontal, cerebellar, others


def simulate_cohort(n_subjects: int = 200, n_features: int = 88, *, mahalanobis: float = 2.5, n_frontal: int = 8,
                    n_cerebellar: int = 2, n_sites: int = 3, site_offset_sd: float = 1.0,
                    site_responder_rates: tuple[float, ...] | None = None, tiv_loading: float = 0.5,
                    age_loading: float = -0.3, seed: int = 0) -> SyntheticCohort:
    """A cohort of ``n_subjects`` (half responders unless ``site_responder_rates`` ties the outcome to site).

    ``mahalanobis = 0`` gives a null cohort (features unrelated to the outcome). ``site_responder_rates`` (one
    rate per site) makes the outcome depend on site only, so a classifier can only find it through site offsets.
    """
    rng = np.random.default_rng(seed)
    frontal, cerebellar, others = region_names(n_features, n_frontal, n_cerebellar)
    names = frontal + cerebellar + others
    sites = np.array([f"site{k + 1}" for k in rng.integers(0, n_sites, n_subjects)])
    if site_responder_rates is None:
        labels = rng.permutation(np.arange(n_subjects) < n_subjects // 2).astype(int)
    else:
        rates = np.asarray(site_responder_rates, dtype=float)
        labels = (rng.random(n_subjects) < rates[np.char.lstrip(sites, "site").astype(int) - 1]).astype(int)
    p = len(names)
    tiv_z, age_z = rng.standard_normal(n_subjects), rng.standard_normal(n_subjects)
    load_tiv = np.full(p, tiv_loading)
    load_age = np.full(p, age_loading)
    cov = np.eye(p) + np.outer(load_tiv, load_tiv) + np.outer(load_age, load_age)
    direction = np.zeros(p)
    direction[: len(frontal)] = 1.0
    direction[len(frontal): len(frontal) + len(cerebellar)] = -1.0
    if mahalanobis > 0:
        scale = mahalanobis / np.sqrt(direction @ np.linalg.solve(cov, direction))
        shift = direction * scale
    else:
        shift = np.zeros(p)
    distance = float(np.sqrt(shift @ np.linalg.solve(cov, shift)))
    noise = rng.standard_normal((n_subjects, p)) + np.outer(tiv_z, load_tiv) + np.outer(age_z, load_age)
    signal = np.outer(labels - 0.5, shift)
    site_levels = np.unique(sites)
    offsets = {s: rng.normal(0.0, site_offset_sd, p) for s in site_levels}
    site_part = np.stack([offsets[s] for s in sites])
    base = rng.uniform(4000, 12000, p)
    sd = 0.08 * base
    volumes = base + sd * (noise + signal + site_part)
    covariates = pd.DataFrame({"age": 40 + 12 * age_z, "sex": rng.integers(0, 2, n_subjects).astype(float),
                               "tiv": 1.5e6 + 1.2e5 * tiv_z})
    return SyntheticCohort(features=pd.DataFrame(volumes, columns=names), covariates=covariates, sites=sites,
                           labels=labels, shift=pd.Series(shift, index=names),
                           bayes_auc=float(norm.cdf(distance / np.sqrt(2))),
                           bayes_accuracy=float(norm.cdf(distance / 2)), standardised=noise + signal + site_part,
                           noise_covariance=cov, base=base)


@dataclass(frozen=True)
class SyntheticVoxelCohort:
    """Voxel-wise modulated GM maps of a regional cohort, with the Bayes-optimal AUC of the voxel data."""

    regional: SyntheticCohort
    images: dict  # participant_id -> nibabel image (mm^3 GM per mm^3, i.e. modulated density)
    affine: np.ndarray
    region_of_voxel: np.ndarray  # (X, Y, Z) int: region index + 1, 0 outside every region
    bayes_auc: float


def simulate_voxel_cohort(n_subjects: int = 200, n_features: int = 88, *, block: int = 3, voxel_mm: float = 4.0,
                          voxel_noise_sd: float = 2.0, seed: int = 0, **regional) -> SyntheticVoxelCohort:
    """Each region of ``simulate_cohort`` becomes a cube of ``block``^3 voxels on a ``voxel_mm`` grid.

    A voxel's value is its region's volume share plus independent voxel noise: in the region's noise-SD units a
    voxel reads ``z_r + voxel_noise_sd * e`` (``e`` standard normal, i.i.d.). Given the regional values the voxel
    noise is independent, so the region's voxel mean is sufficient and the voxel data carry the information of
    regional values with extra noise ``voxel_noise_sd^2 / block^3`` per region: the Bayes-optimal AUC is
    ``Phi(D' / sqrt(2))`` with ``D'^2 = mu' (S + voxel_noise_sd^2 / block^3 I)^-1 mu`` (closed form, from the
    generator's own mean shift ``mu`` and noise covariance ``S``).
    """
    import nibabel as nib

    cohort = simulate_cohort(n_subjects, n_features, seed=seed, **regional)
    rng = np.random.default_rng([seed, 7919])
    p = n_features
    per_axis = int(np.ceil(p ** (1 / 3)))
    layout = np.arange(per_axis ** 3).reshape(per_axis, per_axis, per_axis)
    region_of_voxel = np.kron(layout + 1, np.ones((block, block, block), dtype=int))
    region_of_voxel[region_of_voxel > p] = 0
    inside = region_of_voxel > 0
    r = region_of_voxel[inside] - 1
    n_vox = block ** 3
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = -voxel_mm * np.asarray(region_of_voxel.shape) / 2
    images = {}
    density_scale = cohort.base / n_vox / voxel_mm ** 3  # mean density of a region's voxel
    for s in range(n_subjects):
        z = cohort.standardised[s, r] + voxel_noise_sd * rng.standard_normal(r.size)
        vol = np.zeros(region_of_voxel.shape, dtype=np.float32)
        vol[inside] = density_scale[r] * (1 + 0.08 * z)
        images[f"{s + 1:03d}"] = nib.Nifti1Image(vol, affine)
    shift = cohort.shift.to_numpy()
    cov = cohort.noise_covariance + np.eye(p) * voxel_noise_sd ** 2 / n_vox
    distance = float(np.sqrt(shift @ np.linalg.solve(cov, shift)))
    return SyntheticVoxelCohort(regional=cohort, images=images, affine=affine, region_of_voxel=region_of_voxel,
                                bayes_auc=float(norm.cdf(distance / np.sqrt(2))))
