"""Classification metrics for many label sets at once, bootstrap intervals and permutation p-values.

All functions take decision scores where positive means "towards response" (class 1) and work column-wise on
(n, L) arrays so that the observed labels and every permutation are scored in one pass.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _as_2d(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[:, None] if a.ndim == 1 else a


def sensitivity_specificity(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity (responders called responders) and specificity per column; a score > 0 predicts class 1."""
    y = _as_2d(labels).astype(bool)
    pred = _as_2d(scores) > 0
    n_pos = y.sum(axis=0)
    n_neg = (~y).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = (pred & y).sum(axis=0) / n_pos
        spec = (~pred & ~y).sum(axis=0) / n_neg
    return sens, spec


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mean of sensitivity and specificity per column (chance = 0.5 whatever the class balance)."""
    sens, spec = sensitivity_specificity(labels, scores)
    return (sens + spec) / 2


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Area under the ROC curve per column (Mann-Whitney U / (n_pos n_neg), ties count one half)."""
    y = _as_2d(labels).astype(bool)
    s = _as_2d(scores).astype(float)
    if y.shape[1] == 1 and s.shape[1] > 1:
        y = np.broadcast_to(y, s.shape)
    if s.shape[1] == 1 and y.shape[1] > 1:
        s = np.broadcast_to(s, y.shape)
    ranks = rankdata(s, axis=0)
    n_pos = y.sum(axis=0)
    n_neg = y.shape[0] - n_pos
    rank_sum = np.where(y, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold (from (0, 0) to (1, 1))."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr


def permutation_p(observed: float, null: np.ndarray) -> float:
    """(1 + #{null >= observed}) / (1 + N): never zero, exact for exchangeable labels."""
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + null.size))


def bootstrap_metrics(labels: np.ndarray, scores: np.ndarray, *, n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """Bootstrap distributions of BAC, sensitivity, specificity and AUC, resampling subjects within each class.

    Why within class: every resample keeps both classes at their observed sizes, so every metric is defined.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    rng = np.random.default_rng(seed)
    w_pos = np.stack([np.bincount(rng.integers(0, pos.size, pos.size), minlength=pos.size) for _ in range(n_boot)])
    w_neg = np.stack([np.bincount(rng.integers(0, neg.size, neg.size), minlength=neg.size) for _ in range(n_boot)])
    sens = w_pos @ (pos > 0) / pos.size
    spec = w_neg @ (neg <= 0) / neg.size
    wins = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    auc = np.einsum("bi,ij,bj->b", w_pos, wins, w_neg, optimize=True) / (pos.size * neg.size)
    return {"bac": (sens + spec) / 2, "sensitivity": sens, "specificity": spec, "auc": auc}


def metrics_table_rows(labels: np.ndarray, scores: np.ndarray, *, null_scores: np.ndarray | None = None,
                       null_labels: np.ndarray | None = None, n_boot: int = 2000, ci: float = 0.95,
                       seed: int = 0) -> list[dict]:
    """One row per metric: value, bootstrap CI and (for BAC and AUC) the permutation p.

    The null is given either as scores of re-run analyses on permuted labels (``null_scores`` (n, N), scored
    against the permuted ``null_labels`` (n, N)) or, for a frozen model, as permuted labels only (``null_labels``
    against the fixed ``scores``).
    """
    y = np.asarray(labels).astype(float)
    s = np.asarray(scores, dtype=float)
    sens, spec = sensitivity_specificity(y, s)
    values = {"bac": float((sens[0] + spec[0]) / 2), "sensitivity": float(sens[0]), "specificity": float(spec[0]),
              "auc": float(roc_auc(y, s)[0])}
    boot = bootstrap_metrics(y, s, n_boot=n_boot, seed=seed) if n_boot else {}
    null = {}
    if null_labels is not None:
        ns = s[:, None] if null_scores is None else null_scores
        null = {"bac": balanced_accuracy(null_labels, ns), "auc": roc_auc(null_labels, ns)}
    rows = []
    lo, hi = (1 - ci) / 2, 1 - (1 - ci) / 2
    for name, value in values.items():
        row = {"metric": name, "value": value, "ci_low": np.nan, "ci_high": np.nan, "p_permutation": np.nan,
               "n_permutations": 0}
        if name in boot:
            row["ci_low"], row["ci_high"] = (float(v) for v in np.quantile(boot[name], [lo, hi]))
        if name in null:
            row["p_permutation"] = permutation_p(value, null[name])
            row["n_permutations"] = int(np.asarray(null[name]).size)
        rows.append(row)
    return rows
