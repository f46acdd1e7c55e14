"""PCA of individual drug-minus-placebo GBC maps and its within-subject shuffle null (Moujaes, Ji et al. 2024).

The input is a subjects x parcels matrix of delta-GBC maps. Each parcel is centred across subjects (no scaling), so
the components describe how subjects *differ* from the mean drug effect; the mean map is reported separately.

Significance, as published: every subject's parcel values are shuffled independently (which keeps each subject's
value distribution but destroys any spatial pattern shared between subjects), the PCA is redone, ``n_shuffles``
times; PC k is significant when its explained-variance ratio exceeds the ``percentile`` (95th) of the shuffled
explained-variance ratios *at the same rank k*.

Counting rule (ours, stated because the paper does not): the number of significant PCs is the number of
*consecutive* significant ranks starting at PC1. A rank after the first non-significant one is never counted, since
a lower-rank component cannot be interpreted once a higher-variance one is indistinguishable from noise. The
per-rank decisions are reported too.

Speed: a shuffle's explained variances are the eigenvalues of the double-centred subjects x subjects Gram matrix
(40 x 40 instead of 718 x 718), computed for a batch of shuffles at once. Every batch draws from its own child of
``numpy.random.SeedSequence(seed)``, so results do not depend on ``n_jobs``.

Parcel order: the functions on arrays take the columns as given; :func:`delta_pca_frame` aligns columns by parcel
name into a canonical order (the given ``parcel_order`` or the sorted names), so a shuffled column order gives
identical results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_ketamine.progress import progress

#: Shuffles per batch: a batch of 40 x 718 float64 matrices is 23 MB at this size.
DEFAULT_BATCH = 100


def centre_parcels(delta: np.ndarray) -> np.ndarray:
    """Subtract each parcel's mean across subjects (columns of a subjects x parcels array); no scaling."""
    delta = np.asarray(delta, dtype=float)
    return delta - delta.mean(axis=0, keepdims=True)


def n_components(n_subjects: int, n_parcels: int) -> int:
    """Components a column-centred subjects x parcels matrix can have: min(n - 1, p)."""
    return max(min(n_subjects - 1, n_parcels), 0)


def pca_spectrum(delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues, components) of the parcel covariance of a subjects x parcels matrix.

    Eigenvalues are variances along each PC (divisor n - 1), descending; components are unit-norm rows
    (n_components x parcels).
    """
    centred = centre_parcels(delta)
    n, p = centred.shape
    k = n_components(n, p)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    return (s[:k] ** 2) / (n - 1), vt[:k]


def explained_variance_ratio(eigenvalues: np.ndarray) -> np.ndarray:
    """Each eigenvalue over their sum (the total variance)."""
    eigenvalues = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    total = eigenvalues.sum(axis=-1, keepdims=True)
    return np.divide(eigenvalues, total, out=np.zeros_like(eigenvalues), where=total > 0)


def gram_explained_variance(batch: np.ndarray, k: int) -> np.ndarray:
    """Explained-variance ratios of the first ``k`` PCs for a batch (B x subjects x parcels), column-centred.

    Uses the double-centred Gram matrix H X X^T H (H the centring matrix), whose non-zero eigenvalues equal those
    of the centred parcel covariance times (n - 1).
    """
    gram = batch @ np.swapaxes(batch, 1, 2)
    gram = (gram - gram.mean(axis=1, keepdims=True) - gram.mean(axis=2, keepdims=True)
            + gram.mean(axis=(1, 2), keepdims=True))
    eig = np.linalg.eigvalsh(gram)[:, ::-1][:, :k]
    eig = np.clip(eig, 0.0, None)
    total = np.trace(gram, axis1=1, axis2=2)[:, None]
    return np.divide(eig, total, out=np.zeros_like(eig), where=total > 0)


def _null_batch(delta: np.ndarray, size: int, k: int, seed_seq: np.random.SeedSequence) -> np.ndarray:
    rng = np.random.default_rng(seed_seq)
    batch = np.array(np.broadcast_to(delta, (size, *delta.shape)))  # contiguous copy: in-place shuffle is 2x faster
    rng.permuted(batch, axis=2, out=batch)
    return gram_explained_variance(batch, k)


def shuffle_null(delta: np.ndarray, *, n_shuffles: int = 5000, seed: int = 0, batch_size: int = DEFAULT_BATCH,
                 n_jobs: int = 1) -> np.ndarray:
    """Explained-variance ratios (n_shuffles x n_components) after shuffling each subject's parcel values.

    Each row of every shuffle is permuted independently (within-subject shuffle); results are identical for any
    ``n_jobs`` because each batch has its own seed.
    """
    delta = np.asarray(delta, dtype=float)
    if n_shuffles < 1:
        raise ValueError("n_shuffles must be >= 1")
    k = n_components(*delta.shape)
    sizes = [batch_size] * (n_shuffles // batch_size)
    if n_shuffles % batch_size:
        sizes.append(n_shuffles % batch_size)
    children = np.random.SeedSequence(seed).spawn(len(sizes))
    parts = []
    with progress(total=n_shuffles, desc=f"PCA shuffle null ({delta.shape[0]} subjects)", unit="shuffle") as bar:
        if n_jobs == 1:
            batches = (_null_batch(delta, s, k, c) for s, c in zip(sizes, children))
        else:
            from joblib import Parallel, delayed

            batches = Parallel(n_jobs=n_jobs, return_as="generator")(
                delayed(_null_batch)(delta, s, k, c) for s, c in zip(sizes, children))
        for part in batches:  # in submission order, so the result does not depend on n_jobs
            parts.append(part)
            bar.update(part.shape[0])
    return np.concatenate(parts, axis=0)


@dataclass(frozen=True)
class Significance:
    """Per-rank threshold, p-value and decision, and the count of consecutive significant PCs from PC1."""

    threshold: np.ndarray
    p_values: np.ndarray
    significant: np.ndarray
    n_significant: int


def rank_significance(observed: np.ndarray, null: np.ndarray, *, percentile: float = 95.0) -> Significance:
    """Published rule: PC k significant when observed ratio > ``percentile`` of the null ratios at rank k.

    p-value per rank: (1 + #{null >= observed}) / (1 + N). ``n_significant`` counts consecutive significant ranks
    from PC1 (see the module docstring).
    """
    observed = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    if null.ndim != 2 or null.shape[1] != observed.size:
        raise ValueError(f"null {null.shape} must be shuffles x {observed.size} ranks")
    threshold = np.percentile(null, percentile, axis=0)
    significant = observed > threshold
    p_values = (1.0 + (null >= observed[None, :]).sum(axis=0)) / (1.0 + null.shape[0])
    n_sig = int(np.argmin(significant)) if not significant.all() else int(significant.size)
    return Significance(threshold=threshold, p_values=p_values, significant=significant, n_significant=n_sig)


def orient_components(components: np.ndarray) -> np.ndarray:
    """Flip each component so its largest-magnitude loading is positive (PC signs are arbitrary; this makes them
    reproducible and independent of parcel order)."""
    components = np.asarray(components, dtype=float)
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def zscore_maps(components: np.ndarray) -> np.ndarray:
    """Each component map z-scored across parcels (mean 0, population SD 1), as the PC maps are shown."""
    components = np.asarray(components, dtype=float)
    sd = components.std(axis=1, keepdims=True)
    return (components - components.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def subject_scores(delta: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Pearson r between each subject's (uncentred) delta map and each PC map (subjects x components)."""
    a = np.asarray(delta, dtype=float)
    a = a - a.mean(axis=1, keepdims=True)
    b = np.asarray(maps, dtype=float)
    b = b - b.mean(axis=1, keepdims=True)
    na = np.linalg.norm(a, axis=1)[:, None]
    nb = np.linalg.norm(b, axis=1)[None, :]
    r = (a @ b.T) / np.where((na * nb) > 0, na * nb, np.nan)
    return r


def projection_scores(delta: np.ndarray, components: np.ndarray) -> np.ndarray:
    """The paper's projection scores: each subject's parcel-centred map projected on each unit-norm PC loading
    (subjects x components, in the maps' units). Unlike the correlation scores they keep how strongly a subject
    expresses a component (their variance across subjects is the PC's eigenvalue times n - 1 over n - 1)."""
    return centre_parcels(delta) @ np.asarray(components, dtype=float).T


@dataclass(frozen=True)
class DeltaPCA:
    """Everything the group level reports for one drug; arrays are indexed like ``parcels`` / ``subjects``."""

    parcels: list[str]
    subjects: list[str]
    eigenvalues: np.ndarray
    explained_variance_ratio: np.ndarray
    components: np.ndarray      # unit-norm loadings, oriented (components x parcels)
    maps_z: np.ndarray          # components z-scored across parcels
    scores: np.ndarray          # subjects x components, Pearson r
    projections: np.ndarray     # subjects x components, centred map projected on the unit-norm loadings
    mean_map: np.ndarray        # mean delta map across subjects
    null: np.ndarray            # shuffles x components, explained-variance ratios
    significance: Significance
    n_shuffles: int
    percentile: float
    seed: int

    @property
    def n_significant(self) -> int:
        return self.significance.n_significant


def delta_pca(delta: np.ndarray, *, n_shuffles: int = 5000, percentile: float = 95.0, seed: int = 0,
              batch_size: int = DEFAULT_BATCH, n_jobs: int = 1, parcels: Sequence[str] | None = None,
              subjects: Sequence[str] | None = None) -> DeltaPCA:
    """PCA of a subjects x parcels delta matrix with the within-subject shuffle null."""
    delta = np.asarray(delta, dtype=float)
    if delta.ndim != 2:
        raise ValueError(f"delta must be subjects x parcels, got shape {delta.shape}")
    if not np.isfinite(delta).all():
        raise ValueError("delta matrix has NaN or infinite values")
    n, p = delta.shape
    if n < 3 or p < 2:
        raise ValueError(f"PCA needs at least 3 subjects and 2 parcels, got {n} x {p}")
    eigenvalues, components = pca_spectrum(delta)
    ratio = explained_variance_ratio(eigenvalues)
    components = orient_components(components)
    null = shuffle_null(delta, n_shuffles=n_shuffles, seed=seed, batch_size=batch_size, n_jobs=n_jobs)
    sig = rank_significance(ratio, null, percentile=percentile)
    maps_z = zscore_maps(components)
    return DeltaPCA(
        parcels=list(parcels) if parcels is not None else [f"parcel{i}" for i in range(p)],
        subjects=list(subjects) if subjects is not None else [f"subject{i}" for i in range(n)],
        eigenvalues=eigenvalues, explained_variance_ratio=ratio, components=components, maps_z=maps_z,
        scores=subject_scores(delta, maps_z), projections=projection_scores(delta, components), mean_map=delta.mean(axis=0), null=null, significance=sig,
        n_shuffles=n_shuffles, percentile=percentile, seed=seed,
    )


def align_parcels(delta: pd.DataFrame, parcel_order: Sequence[str] | None = None) -> pd.DataFrame:
    """Columns of a subjects x parcels frame put in ``parcel_order`` (or sorted by name), matched by name.

    Raises ValueError naming missing or extra parcels; position never decides which parcel a value belongs to.
    """
    names = [str(c) for c in delta.columns]
    if len(set(names)) != len(names):
        dup = pd.Index(names)[pd.Index(names).duplicated()][0]
        raise ValueError(f"parcel {dup!r} appears twice")
    order = sorted(names) if parcel_order is None else [str(c) for c in parcel_order]
    missing = [c for c in order if c not in set(names)]
    extra = [c for c in names if c not in set(order)]
    if missing or extra:
        raise ValueError(f"parcels do not match: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
    frame = delta.copy()
    frame.columns = names
    return frame[order]


def delta_pca_frame(delta: pd.DataFrame, *, parcel_order: Sequence[str] | None = None, **kwargs) -> DeltaPCA:
    """:func:`delta_pca` on a subjects (index) x parcel names (columns) frame, aligned by name."""
    aligned = align_parcels(delta, parcel_order)
    return delta_pca(aligned.to_numpy(dtype=float), parcels=list(aligned.columns),
                     subjects=[str(s) for s in aligned.index], **kwargs)
