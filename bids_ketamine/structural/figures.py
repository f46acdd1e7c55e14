"""Group-level figures of the structural classifier: ROC with a bootstrap band, confusion matrix, permutation null."""

from __future__ import annotations

import numpy as np

from bids_ketamine.structural.metrics import roc_curve_points


def roc_figure(labels: np.ndarray, scores: np.ndarray, *, title: str, n_boot: int = 1000, ci: float = 0.95,
               seed: int = 0):
    """ROC curve of pooled decision scores with a bootstrap (within-class resampling) band of the TPR."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    grid = np.linspace(0, 1, 101)
    fpr, tpr = roc_curve_points(y, s)
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    curves = []
    for _ in range(n_boot):
        idx = np.r_[rng.choice(pos, pos.size), rng.choice(neg, neg.size)]
        f, t = roc_curve_points(y[idx], s[idx])
        curves.append(np.interp(grid, f, t))
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if curves:
        lo, hi = np.quantile(np.asarray(curves), [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
        ax.fill_between(grid, lo, hi, color="tab:blue", alpha=0.25, label=f"{ci:.0%} bootstrap band")
    ax.plot(fpr, tpr, color="tab:blue", lw=2, label="decision scores")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_aspect("equal")
    return fig


def confusion_figure(labels: np.ndarray, scores: np.ndarray, *, title: str):
    """2 x 2 confusion matrix of the predicted class (score > 0 = responder) against the outcome."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores, dtype=float) > 0
    counts = np.array([[np.sum(~y & ~pred), np.sum(~y & pred)], [np.sum(y & ~pred), np.sum(y & pred)]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(counts, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], ["predicted non-responder", "predicted responder"], fontsize=7)
    ax.set_yticks([0, 1], ["non-responder", "responder"], fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def permutation_figure(observed: float, null: np.ndarray, p_value: float, *, metric: str, title: str):
    """Histogram of the permutation null of a metric with the observed value marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.hist(np.asarray(null, dtype=float), bins=30, color="lightgrey", edgecolor="grey")
    ax.axvline(observed, color="tab:red", lw=2, label=f"observed {observed:.3f}, p = {p_value:.4f}")
    ax.set_xlabel(f"{metric} under permuted labels (N = {np.asarray(null).size})")
    ax.set_ylabel("permutations")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig
