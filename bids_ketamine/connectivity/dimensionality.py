"""Effective dimensionality of individual drug maps: the participation ratio, compared across drugs.

PR = (sum_i l_i)^2 / sum_i l_i^2 over the eigenvalues l_i of the parcel covariance of a subjects x parcels delta
matrix (each parcel centred across subjects). k equal eigenvalues give PR = k; one dominant eigenvalue gives ~1.
PR grows with the number of subjects (at most n - 1 non-zero eigenvalues), so drugs are compared on random
subsamples of the same size ``n`` (default: the smallest group; Moujaes, Ji et al. 2024 used 22), drawn without
replacement, ``n_subsamples`` times per drug. Drugs are compared with a one-way ANOVA over the subsample PRs and
Student t-tests between every pair, Bonferroni-corrected (p x number of pairs, capped at 1).

Caveat, stated in the outputs: the subsample PRs of one drug are not independent observations (they reuse the same
subjects), so these p-values shrink as ``n_subsamples`` grows; the effect sizes (mean PR difference, Cohen's d) and
the fraction of subsample pairs in which one drug's PR exceeds the other's do not, and are reported alongside.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from bids_ketamine.connectivity.pca import centre_parcels


def participation_ratio(eigenvalues: np.ndarray) -> float:
    """(sum l)^2 / sum l^2 of non-negative eigenvalues (round-off negatives count as 0)."""
    lam = np.clip(np.asarray(eigenvalues, dtype=float), 0.0, None)
    denom = float(np.sum(lam ** 2))
    if denom <= 0:
        raise ValueError("participation ratio is undefined when every eigenvalue is 0")
    return float(np.sum(lam) ** 2 / denom)


def covariance_eigenvalues(delta: np.ndarray) -> np.ndarray:
    """Non-zero-capable eigenvalues of the parcel covariance (divisor n - 1), via the n x n Gram matrix."""
    centred = centre_parcels(delta)
    n = centred.shape[0]
    if n < 2:
        raise ValueError("covariance needs at least 2 subjects")
    gram = centred @ centred.T / (n - 1)
    return np.clip(np.linalg.eigvalsh(gram)[::-1], 0.0, None)


def subsample_participation_ratios(delta: np.ndarray, *, size: int, n_subsamples: int,
                                   rng: np.random.Generator) -> np.ndarray:
    """PR of ``n_subsamples`` random subsets of ``size`` subjects (without replacement within a subset)."""
    delta = np.asarray(delta, dtype=float)
    n = delta.shape[0]
    if not 2 <= size <= n:
        raise ValueError(f"subsample size {size} must be between 2 and the number of subjects ({n})")
    out = np.empty(n_subsamples)
    for i in range(n_subsamples):
        idx = rng.choice(n, size=size, replace=False)
        out[i] = participation_ratio(covariance_eigenvalues(delta[idx]))
    return out


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


@dataclass(frozen=True)
class DimensionalityComparison:
    """Per-drug PR summaries, the ANOVA across drugs and the Bonferroni-corrected pairwise tests."""

    per_drug: pd.DataFrame
    anova: pd.DataFrame
    pairwise: pd.DataFrame
    subsamples: pd.DataFrame  # long table: drug, subsample, participation_ratio
    subsample_size: int
    n_subsamples: int


def compare_dimensionality(maps: Mapping[str, np.ndarray], *, subsample_size: int | None = None,
                           n_subsamples: int = 1000, seed: int = 0) -> DimensionalityComparison:
    """PR per drug on equal-size subsamples and its comparison across drugs (ANOVA, Bonferroni t-tests).

    Each drug gets its own random stream (``SeedSequence([seed, hash of the drug name])``), so adding a drug does
    not change the subsamples of the others. With the default size (the smallest group) every subsample of the
    smallest group is that whole group, so its PR has no spread; give ``subsample_size`` below it to avoid that.
    """
    from scipy import stats

    if not maps:
        raise ValueError("no drug maps to compare")
    drugs = sorted(maps)
    sizes = {d: int(np.asarray(maps[d]).shape[0]) for d in drugs}
    size = min(sizes.values()) if subsample_size is None else int(subsample_size)
    too_small = [d for d in drugs if sizes[d] < size]
    if too_small:
        raise ValueError(f"subsample size {size} exceeds the subjects of {', '.join(too_small)} "
                         f"({', '.join(str(sizes[d]) for d in too_small)})")
    children = [np.random.SeedSequence([int(seed), _name_key(d)]) for d in drugs]
    prs: dict[str, np.ndarray] = {}
    rows = []
    for drug, child in zip(drugs, children):
        delta = np.asarray(maps[drug], dtype=float)
        prs[drug] = subsample_participation_ratios(delta, size=size, n_subsamples=n_subsamples,
                                                   rng=np.random.default_rng(child))
        rows.append({
            "drug": drug, "n_subjects": sizes[drug], "subsample_size": size, "n_subsamples": n_subsamples,
            "pr_all_subjects": participation_ratio(covariance_eigenvalues(delta)),
            "pr_mean": float(prs[drug].mean()), "pr_sd": float(prs[drug].std(ddof=1)) if n_subsamples > 1 else 0.0,
            "pr_q025": float(np.quantile(prs[drug], 0.025)), "pr_q975": float(np.quantile(prs[drug], 0.975)),
        })
    per_drug = pd.DataFrame(rows)
    anova_row = {"n_drugs": len(drugs), "df_between": len(drugs) - 1, "df_within": len(drugs) * (n_subsamples - 1),
                 "f": np.nan, "p": np.nan}
    # a drug whose subsample size is its group size has identical subsamples; scipy warns about that, we document it
    quiet = warnings.catch_warnings()
    with quiet:
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        if len(drugs) >= 2 and n_subsamples >= 2:
            res = stats.f_oneway(*(prs[d] for d in drugs))
            anova_row.update(f=float(res.statistic), p=float(res.pvalue))
        pairs = list(combinations(drugs, 2))
        tests = {(a, b): stats.ttest_ind(prs[a], prs[b]) if n_subsamples >= 2 else None for a, b in pairs}
    pair_rows = []
    for a, b in pairs:
        xa, xb = prs[a], prs[b]
        res = tests[(a, b)]
        pooled = np.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2) if n_subsamples >= 2 else np.nan
        diff = float(xa.mean() - xb.mean())
        p = float(res.pvalue) if res is not None else np.nan
        pair_rows.append({
            "drug_a": a, "drug_b": b, "mean_difference": diff,
            "cohens_d": diff / pooled if pooled and pooled > 0 else np.nan,
            "fraction_a_greater": float((xa[:, None] > xb[None, :]).mean()),
            "t": float(res.statistic) if res is not None else np.nan, "df": 2 * n_subsamples - 2,
            "p": p, "p_bonferroni": min(1.0, p * len(pairs)) if np.isfinite(p) else np.nan,
        })
    pairwise = pd.DataFrame(pair_rows, columns=["drug_a", "drug_b", "mean_difference", "cohens_d",
                                                "fraction_a_greater", "t", "df", "p", "p_bonferroni"])
    subsamples = pd.DataFrame({
        "drug": np.repeat(drugs, n_subsamples),
        "subsample": np.tile(np.arange(n_subsamples), len(drugs)),
        "participation_ratio": np.concatenate([prs[d] for d in drugs]),
    })
    return DimensionalityComparison(per_drug=per_drug, anova=pd.DataFrame([anova_row]), pairwise=pairwise,
                                    subsamples=subsamples, subsample_size=size, n_subsamples=n_subsamples)
