"""Effective dimensionality of individual drug maps: the participation ratio, compared across drugs with the subject
as the unit of inference.

PR = (sum_i l_i)^2 / sum_i l_i^2 over the eigenvalues l_i of the parcel covariance of a subjects x parcels delta
matrix (each parcel centred across subjects). k equal eigenvalues give PR = k; one dominant eigenvalue gives ~1.
PR grows with the number of subjects (at most n - 1 non-zero eigenvalues), so drugs are compared at one size m:
a drug's *equal-n PR* is the mean PR over subsamples of m of its subjects (Moujaes, Ji et al. 2024 used m = 22).
Default m: one below the smallest group, so even the smallest group has m + 1 distinct subsamples (the published
choice for groups of 23 and 24). A group has only C(n, m) distinct subsamples (23 for n = 23, m = 22): when that
is at most the requested number they are all enumerated, each once, instead of drawing the same ones repeatedly.

Inference (the default), per pair of drugs:

- **Permutation test of the equal-n PR difference, subjects as units.** Each drug's maps are centred by the drug's
  own mean map (so a difference in the mean drug effect cannot pose as a difference in dimensionality; within a
  subsample this centring changes nothing), the two pools of subjects are reassigned at random between the drugs
  at the observed group sizes, and the difference of the equal-n PRs is recomputed with the same subsample index
  sets. A subject with maps under both drugs is a pair: its two maps are swapped (or not) as a unit, and only
  subjects with one map are exchanged between the pools. p = (1 + #{|T*| >= |T|}) / (1 + N), two-sided.
- **Jackknife confidence intervals over subjects**: each subject is left out in turn and the equal-n PR
  recomputed; the delete-one jackknife standard error gives a t interval (n - 1 degrees of freedom). The equal-n PR
  is a U-statistic (the mean of a kernel over subsets of m subjects), for which the jackknife variance is
  consistent. Why not the bootstrap: a resample repeats subjects, and a repeated subject is a duplicate row that
  lowers the PR (by about 1 at n = 24, m = 22, on a population with PR 5.8 at that size), so bootstrap intervals
  sit too low (46 % coverage of a nominal 95 % bias-corrected interval in that simulation, against 88-90 % for the
  jackknife interval; benchmarks/bench_connectivity_group.py measures it). The difference's interval is the
  stratified jackknife over subjects with one map under drug a, one under drug b, and those with both (left out of
  both at once).
- Across pairs: Holm's step-down correction (Bonferroni reported beside it).

Why not the published ANOVA over subsample PRs (kept as ``subsample_anova``, a labelled descriptive option): the
subsamples of one drug reuse the same subjects, so they are not independent observations; its F and t grow with
the number of subsamples drawn (an F of about 3000 on 1000 subsamples of 23 subjects), and a PR difference of 0.07
came out at p = 3e-7. Its p-values are therefore never the inference.

Speed: PR needs only tr(G) and ||G||_F of the centred Gram matrix G of a subsample (PR = tr(G)^2 / ||G||_F^2, the
non-zero eigenvalues of the parcel covariance being those of G), and every subsample's Gram matrix is a block of
the Gram matrix of all subjects, computed once. A permutation costs subsamples x m^2 operations, independent of
the number of parcels.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from bids_ketamine.connectivity.pca import centre_parcels

#: Subsample PRs evaluated at once (memory: batch x m x m x 8 bytes).
_BATCH = 20000


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


def gram_participation_ratios(gram: np.ndarray, index_sets: np.ndarray) -> np.ndarray:
    """PR of each subsample (rows of ``index_sets``, subject indices) from the Gram matrix X X' of all subjects.

    The subsample is centred (double-centring of its Gram block), then PR = tr(G)^2 / ||G||_F^2. A subsample whose
    centred maps are all zero has no PR (NaN).
    """
    gram = np.asarray(gram, dtype=float)
    index_sets = np.atleast_2d(np.asarray(index_sets, dtype=np.intp))
    out = np.empty(index_sets.shape[0])
    m = index_sets.shape[1]
    step = max(1, _BATCH // max(m, 1))
    for start in range(0, index_sets.shape[0], step):
        idx = index_sets[start:start + step]
        block = gram[idx[:, :, None], idx[:, None, :]]
        block = (block - block.mean(axis=1, keepdims=True) - block.mean(axis=2, keepdims=True)
                 + block.mean(axis=(1, 2), keepdims=True))
        trace = np.trace(block, axis1=1, axis2=2)
        frob = np.einsum("bij,bij->b", block, block)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + step] = np.where(frob > 0, trace ** 2 / frob, np.nan)
    return out


def subsample_sets(n: int, size: int, max_sets: int, rng: np.random.Generator) -> tuple[np.ndarray, int, bool]:
    """(index sets (k x size), number of distinct subsamples C(n, size), enumerated?).

    When C(n, size) <= ``max_sets`` every subsample is listed once (in lexicographic order); otherwise ``max_sets``
    random subsets are drawn (each without replacement within the subset).
    """
    if not 2 <= size <= n:
        raise ValueError(f"subsample size {size} must be between 2 and the number of subjects ({n})")
    distinct = math.comb(n, size)
    if distinct <= max_sets:
        return np.array(list(combinations(range(n), size)), dtype=np.intp).reshape(-1, size), distinct, True
    sets = np.argsort(rng.random((max_sets, n)), axis=1)[:, :size]
    return np.sort(sets, axis=1), distinct, False


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


def _name_key(*names: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(names).encode()).digest()[:4], "little")


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (monotone, capped at 1; NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def jackknife_interval(estimate: float, leave_one_out: Sequence[np.ndarray], level: float = 0.95
                       ) -> tuple[float, float, float]:
    """(standard error, low, high): stratified delete-one jackknife, t interval around ``estimate``.

    ``leave_one_out`` holds one array per stratum (the estimates with each unit of that stratum left out);
    variance = sum over strata of (n_s - 1) / n_s * sum (theta_i - mean_s)^2, degrees of freedom sum(n_s) - strata.
    """
    from scipy import stats

    groups = [np.asarray(g, dtype=float) for g in leave_one_out if np.asarray(g).size]
    if not groups or any(g.size < 2 or not np.isfinite(g).all() for g in groups) or not np.isfinite(estimate):
        return np.nan, np.nan, np.nan
    var = sum((g.size - 1) / g.size * float(np.sum((g - g.mean()) ** 2)) for g in groups)
    se = float(np.sqrt(var))
    df = sum(g.size for g in groups) - len(groups)
    half = float(stats.t.ppf((1 + level) / 2, max(df, 1))) * se
    return se, float(estimate - half), float(estimate + half)


def equal_n_pr(gram: np.ndarray, members: np.ndarray, sets: np.ndarray) -> float:
    """Mean PR over the subsamples ``sets`` (positions within ``members``, rows/columns of ``gram``)."""
    return float(np.nanmean(gram_participation_ratios(gram, np.asarray(members)[sets])))


def leave_one_out_prs(gram: np.ndarray, members: np.ndarray, size: int, n_sets: int,
                      rng: np.random.Generator) -> np.ndarray:
    """Equal-n PR of ``members`` with each member left out in turn (NaN when ``size`` leaves no subsample)."""
    members = np.asarray(members)
    if members.size - 1 < size:
        return np.full(members.size, np.nan)
    sets, _, _ = subsample_sets(members.size - 1, size, n_sets, rng)
    return np.array([equal_n_pr(gram, np.delete(members, j), sets) for j in range(members.size)])


@dataclass(frozen=True)
class DrugSubsamples:
    """One drug's subsample index sets (positions within the drug's subjects) and their PRs."""

    drug: str
    sets: np.ndarray
    distinct: int
    enumerated: bool
    prs: np.ndarray

    @property
    def equal_n_pr(self) -> float:
        return float(np.nanmean(self.prs))


@dataclass(frozen=True)
class DimensionalityComparison:
    """Per-drug equal-n PR with jackknife CIs, pairwise permutation tests (Holm), the subsample PRs (long table),
    and, only when asked for, the published subsample ANOVA (descriptive)."""

    per_drug: pd.DataFrame
    pairwise: pd.DataFrame
    subsamples: pd.DataFrame  # long table: drug, subsample, participation_ratio
    subsample_size: int
    n_subsamples: int
    n_permutations: int
    notes: list[str]
    anova: pd.DataFrame | None = None
    anova_pairwise: pd.DataFrame | None = None


def _permutation_batch(gram: np.ndarray, perms: np.ndarray, sets_a: np.ndarray, sets_b: np.ndarray,
                       n_a: int) -> np.ndarray:
    """Equal-n PR differences for a batch of reassignments (each row of ``perms``: pooled indices, first n_a = a)."""
    size = perms.shape[0]
    in_a = perms[:, :n_a][:, sets_a].reshape(-1, sets_a.shape[1])     # (batch x sets) x m subject indices
    in_b = perms[:, n_a:][:, sets_b].reshape(-1, sets_b.shape[1])
    pr_a = gram_participation_ratios(gram, in_a).reshape(size, -1)
    pr_b = gram_participation_ratios(gram, in_b).reshape(size, -1)
    return np.nanmean(pr_a, axis=1) - np.nanmean(pr_b, axis=1)


def _random_reassignments(rng: np.random.Generator, n: int, unshared: np.ndarray, pairs: np.ndarray,
                          size: int) -> np.ndarray:
    """``size`` reassignments of the pooled subjects: unshared ones permuted among unshared positions, each shared
    subject's two maps swapped with probability 1/2."""
    perms = np.tile(np.arange(n), (size, 1))
    if unshared.size:
        block = np.tile(unshared, (size, 1))
        rng.permuted(block, axis=1, out=block)
        perms[:, unshared] = block
    if pairs.size:
        swap = rng.random((size, pairs.shape[0])) < 0.5
        first, second = perms[:, pairs[:, 0]].copy(), perms[:, pairs[:, 1]].copy()
        perms[:, pairs[:, 0]] = np.where(swap, second, first)
        perms[:, pairs[:, 1]] = np.where(swap, first, second)
    return perms


def pr_difference_test(maps_a: np.ndarray, maps_b: np.ndarray, *, size: int, n_permutations: int,
                       n_subsamples: int, seed: int, subjects_a: Sequence[str] | None = None,
                       subjects_b: Sequence[str] | None = None, jackknife: bool = True,
                       batch: int = 100) -> dict:
    """Permutation test (and jackknife CI) of equal-n PR(a) - PR(b), subjects as units; see the module docstring.

    Returns a dict with ``pr_a``, ``pr_b``, ``difference``, ``p``, the null differences (``null``), the subsample
    sets of both drugs, ``se``/``ci_low``/``ci_high`` of the difference and ``shared`` (subjects with maps under
    both drugs, matched by label).
    """
    a = np.asarray(maps_a, dtype=float)
    b = np.asarray(maps_b, dtype=float)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"maps have {a.shape[1]} and {b.shape[1]} parcels")
    n_a, n_b = a.shape[0], b.shape[0]
    rng = np.random.default_rng(seed)
    sets_a, distinct_a, enum_a = subsample_sets(n_a, size, n_subsamples, rng)
    sets_b, distinct_b, enum_b = subsample_sets(n_b, size, n_subsamples, rng)
    pooled = np.vstack([a - a.mean(axis=0), b - b.mean(axis=0)])
    gram = pooled @ pooled.T
    members_a, members_b = np.arange(n_a), np.arange(n_a, n_a + n_b)
    pr_a = equal_n_pr(gram, members_a, sets_a)
    pr_b = equal_n_pr(gram, members_b, sets_b)
    observed = pr_a - pr_b
    sub_a = list(subjects_a) if subjects_a is not None else [f"a{i}" for i in range(n_a)]
    sub_b = list(subjects_b) if subjects_b is not None else [f"b{i}" for i in range(n_b)]
    where_b = {s: n_a + j for j, s in enumerate(sub_b)}
    pairs = np.array([(i, where_b[s]) for i, s in enumerate(sub_a) if s in where_b], dtype=np.intp).reshape(-1, 2)
    shared = set(pairs.ravel().tolist())
    unshared = np.array([i for i in range(n_a + n_b) if i not in shared], dtype=np.intp)
    null = np.empty(n_permutations)
    for start in range(0, n_permutations, batch):
        stop = min(start + batch, n_permutations)
        perms = _random_reassignments(rng, n_a + n_b, unshared, pairs, stop - start)
        null[start:stop] = _permutation_batch(gram, perms, sets_a, sets_b, n_a)
    p = (float((1 + np.sum(np.abs(null) >= abs(observed) - 1e-12)) / (1 + n_permutations))
         if n_permutations else np.nan)
    se = low = high = np.nan
    if jackknife and min(n_a, n_b) - 1 >= size:
        sets_a1, _, _ = subsample_sets(n_a - 1, size, n_subsamples, rng)
        sets_b1, _, _ = subsample_sets(n_b - 1, size, n_subsamples, rng)

        def without(unit_a: int | None, unit_b: int | None) -> float:
            pa = pr_a if unit_a is None else equal_n_pr(gram, np.delete(members_a, unit_a), sets_a1)
            pb = pr_b if unit_b is None else equal_n_pr(gram, np.delete(members_b, unit_b - n_a), sets_b1)
            return pa - pb

        strata = [np.array([without(i, None) for i in range(n_a) if i not in shared]),
                  np.array([without(None, j) for j in range(n_a, n_a + n_b) if j not in shared]),
                  np.array([without(i, j) for i, j in pairs])]
        se, low, high = jackknife_interval(observed, strata)
    return {"pr_a": pr_a, "pr_b": pr_b, "difference": observed, "p": p, "null": null,
            "sets_a": sets_a, "sets_b": sets_b, "distinct_a": distinct_a, "distinct_b": distinct_b,
            "enumerated_a": enum_a, "enumerated_b": enum_b, "se": se, "ci_low": low, "ci_high": high,
            "shared": int(pairs.shape[0])}


def drug_subsamples(delta: np.ndarray, drug: str, *, size: int, n_subsamples: int, seed: int) -> DrugSubsamples:
    """A drug's subsample sets (enumerated when C(n, size) <= n_subsamples) and their PRs."""
    delta = np.asarray(delta, dtype=float)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _name_key(drug)]))
    sets, distinct, enumerated = subsample_sets(delta.shape[0], size, n_subsamples, rng)
    centred = centre_parcels(delta)
    prs = gram_participation_ratios(centred @ centred.T, sets)
    return DrugSubsamples(drug=drug, sets=sets, distinct=distinct, enumerated=enumerated, prs=prs)


def default_subsample_size(sizes: Mapping[str, int]) -> int:
    """One below the smallest group (at least 2), so every group has more than one distinct subsample."""
    return max(2, min(sizes.values()) - 1)


def compare_dimensionality(maps: Mapping[str, np.ndarray], *, subsample_size: int | None = None,
                           n_subsamples: int = 1000, n_permutations: int = 5000, seed: int = 0,
                           subjects: Mapping[str, Sequence[str]] | None = None, descriptive_anova: bool = False,
                           test_subsamples: int = 200) -> DimensionalityComparison:
    """Equal-n PR per drug, its jackknife CI, pairwise permutation tests with Holm correction (module docstring).

    ``subjects`` (drug -> subject labels, in row order) tells which subjects have maps under two drugs; without it
    every subject is taken to appear under one drug only. ``n_subsamples`` subsamples describe each drug (all of
    them when fewer exist); ``test_subsamples`` (at most ``n_subsamples``) define the statistic inside the
    permutation test and the jackknife, where it is recomputed thousands of times. ``descriptive_anova`` adds the
    published ANOVA and t-tests over subsample PRs (descriptive only: see the module docstring).
    """
    if not maps:
        raise ValueError("no drug maps to compare")
    drugs = sorted(maps)
    sizes = {d: int(np.asarray(maps[d]).shape[0]) for d in drugs}
    size = default_subsample_size(sizes) if subsample_size is None else int(subsample_size)
    too_small = [d for d in drugs if sizes[d] < size]
    if too_small:
        raise ValueError(f"subsample size {size} exceeds the subjects of {', '.join(too_small)} "
                         f"({', '.join(str(sizes[d]) for d in too_small)})")
    labels = {d: (list(subjects[d]) if subjects is not None and d in subjects
                  else [f"{d}:{i}" for i in range(sizes[d])]) for d in drugs}
    notes: list[str] = []
    described = {d: drug_subsamples(maps[d], d, size=size, n_subsamples=n_subsamples, seed=seed) for d in drugs}
    for d in drugs:
        s = described[d]
        if s.distinct == 1:
            notes.append(f"{d}: subsample size {size} equals its {sizes[d]} subjects, so every subsample is the "
                         "whole group (no spread, no jackknife interval)")
        elif s.enumerated and s.distinct < n_subsamples:
            notes.append(f"{d}: only {s.distinct} distinct subsamples of {size} of {sizes[d]} subjects exist; all "
                         f"were used once instead of {n_subsamples} draws")
    n_test = max(1, min(int(test_subsamples), int(n_subsamples)))
    pair_rows = []
    for a, b in combinations(drugs, 2):
        res = pr_difference_test(maps[a], maps[b], size=size, n_permutations=n_permutations, n_subsamples=n_test,
                                 seed=int(np.random.SeedSequence([int(seed), _name_key(a, b)]).generate_state(1)[0]),
                                 subjects_a=labels[a], subjects_b=labels[b])
        pair_rows.append({"drug_a": a, "drug_b": b, "pr_a": res["pr_a"], "pr_b": res["pr_b"],
                          "difference": res["difference"], "se": res["se"], "ci_low": res["ci_low"],
                          "ci_high": res["ci_high"], "p_permutation": res["p"], "n_permutations": n_permutations,
                          "shared_subjects": res["shared"]})
    pairwise = pd.DataFrame(pair_rows, columns=["drug_a", "drug_b", "pr_a", "pr_b", "difference", "se", "ci_low",
                                                "ci_high", "p_permutation", "n_permutations", "shared_subjects"])
    pairwise["p_holm"] = holm(pairwise["p_permutation"].to_numpy())
    pairwise["p_bonferroni"] = np.minimum(1.0, pairwise["p_permutation"].to_numpy(dtype=float) * len(pairwise))
    rows = []
    for d in drugs:
        delta = np.asarray(maps[d], dtype=float)
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _name_key("jackknife", d)]))
        centred = centre_parcels(delta)
        gram = centred @ centred.T
        members = np.arange(sizes[d])
        s = described[d]
        # the standard error from the test subsamples, the interval around the described equal-n PR
        se, low, high = jackknife_interval(s.equal_n_pr, [leave_one_out_prs(gram, members, size, n_test, rng)])
        rows.append({
            "drug": d, "n_subjects": sizes[d], "subsample_size": size, "n_distinct_subsamples": s.distinct,
            "n_subsamples": int(s.sets.shape[0]), "subsamples_enumerated": bool(s.enumerated),
            "pr_all_subjects": participation_ratio(covariance_eigenvalues(delta)),
            "pr_mean": s.equal_n_pr, "pr_sd": float(np.nanstd(s.prs, ddof=1)) if s.prs.size > 1 else 0.0,
            "pr_se": se, "pr_ci_low": low, "pr_ci_high": high,
        })
    per_drug = pd.DataFrame(rows)
    subsamples = pd.DataFrame({
        "drug": np.concatenate([[d] * described[d].prs.size for d in drugs]),
        "subsample": np.concatenate([np.arange(described[d].prs.size) for d in drugs]),
        "participation_ratio": np.concatenate([described[d].prs for d in drugs]),
    })
    anova = anova_pairwise = None
    if descriptive_anova:
        anova, anova_pairwise = subsample_anova({d: described[d].prs for d in drugs})
    return DimensionalityComparison(per_drug=per_drug, pairwise=pairwise, subsamples=subsamples,
                                    subsample_size=size, n_subsamples=int(n_subsamples),
                                    n_permutations=int(n_permutations), notes=notes, anova=anova,
                                    anova_pairwise=anova_pairwise)


def subsample_anova(prs: Mapping[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The published comparison, DESCRIPTIVE ONLY: one-way ANOVA over subsample PRs and Student t-tests between
    every pair, Bonferroni-corrected. Subsamples reuse subjects, so these p-values shrink with the number of
    subsamples drawn and are not a test of the drugs (module docstring); effect sizes are given beside them."""
    from scipy import stats

    drugs = sorted(prs)
    k = {d: np.asarray(prs[d], dtype=float) for d in drugs}
    anova_row = {"n_drugs": len(drugs), "df_between": len(drugs) - 1,
                 "df_within": sum(v.size for v in k.values()) - len(drugs), "f": np.nan, "p": np.nan}
    pairs = list(combinations(drugs, 2))
    with warnings.catch_warnings():  # identical subsamples (size = group size): no spread; documented
        warnings.filterwarnings("ignore", category=RuntimeWarning)
        if len(drugs) >= 2 and all(v.size >= 2 for v in k.values()):
            res = stats.f_oneway(*(k[d] for d in drugs))
            anova_row.update(f=float(res.statistic), p=float(res.pvalue))
        rows = []
        for a, b in pairs:
            xa, xb = k[a], k[b]
            ok = xa.size >= 2 and xb.size >= 2
            res = stats.ttest_ind(xa, xb) if ok else None
            pooled = np.sqrt((xa.var(ddof=1) + xb.var(ddof=1)) / 2) if ok else np.nan
            diff = float(xa.mean() - xb.mean())
            p = float(res.pvalue) if res is not None else np.nan
            rows.append({"drug_a": a, "drug_b": b, "mean_difference": diff,
                         "cohens_d": diff / pooled if pooled and pooled > 0 else np.nan,
                         "fraction_a_greater": float((xa[:, None] > xb[None, :]).mean()),
                         "t": float(res.statistic) if res is not None else np.nan, "df": xa.size + xb.size - 2,
                         "p": p, "p_bonferroni": min(1.0, p * len(pairs)) if np.isfinite(p) else np.nan})
    pairwise = pd.DataFrame(rows, columns=["drug_a", "drug_b", "mean_difference", "cohens_d", "fraction_a_greater",
                                           "t", "df", "p", "p_bonferroni"])
    return pd.DataFrame([anova_row]), pairwise
