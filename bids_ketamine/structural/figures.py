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


def confusion_figure(labels: np.ndarray, scores: np.ndarray, *, title: str, positive: str = "responder",
                     negative: str = "non-responder"):
    """2 x 2 confusion matrix of the predicted class (score > 0 = ``positive``) against the outcome; the class
    names come from the design's outcome wording (``structural.wording``), never a fixed "responder"."""
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
    ax.set_xticks([0, 1], [f"predicted {negative}", f"predicted {positive}"], fontsize=7)
    ax.set_yticks([0, 1], [negative, positive], fontsize=7)
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


def calibration_figure(curve, *, title: str):
    """Reliability diagram: mean predicted probability against observed fraction per bin (marker size = n)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    if len(curve):
        ax.plot(curve["mean_predicted"], curve["fraction_positive"], color="tab:blue", lw=1.5)
        ax.scatter(curve["mean_predicted"], curve["fraction_positive"], s=12 + 6 * curve["n"], color="tab:blue",
                   label="bins (size = n)", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed fraction positive")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_aspect("equal")
    return fig


def patient_figure(*, score: float, probability: float, interval: tuple[float, float], slope: float,
                   intercept: float, boot_slopes: np.ndarray, boot_intercepts: np.ndarray, oof_scores: np.ndarray,
                   oof_labels: np.ndarray, contributions, positive: str, negative: str, title: str):
    """One patient: probability on the calibration map, score among training classes, top contributing regions."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from scipy.special import expit

    oof = np.asarray(oof_scores, dtype=float)
    labels = np.asarray(oof_labels).astype(bool)
    low, high = min(oof.min(), score), max(oof.max(), score)
    pad = 0.1 * (high - low or 1.0)
    grid = np.linspace(low - pad, high + pad, 200)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1, 1.3]})
    ax = axes[0]
    if len(boot_slopes):
        band = expit(np.outer(boot_slopes, grid) + np.asarray(boot_intercepts)[:, None])
        ax.fill_between(grid, *np.quantile(band, [0.025, 0.975], axis=0), color="tab:blue", alpha=0.2,
                        label="95% bootstrap band")
    ax.plot(grid, expit(slope * grid + intercept), color="tab:blue", label="calibration map")
    ax.errorbar([score], [probability], yerr=[[probability - interval[0]], [interval[1] - probability]],
                fmt="o", color="tab:red", capsize=3, label=f"this patient: {probability:.2f}")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("decision score")
    ax.set_ylabel(f"P({positive})")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax = axes[1]
    rng = np.random.default_rng(0)
    for k, (mask, name, colour) in enumerate(((labels, positive, "tab:green"), (~labels, negative, "tab:orange"))):
        ax.scatter(oof[mask], k + rng.uniform(-0.15, 0.15, mask.sum()), s=10, color=colour, alpha=0.7)
    ax.axvline(score, color="tab:red", lw=2, label="this patient")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_yticks([0, 1], [f"training\n{positive}", f"training\n{negative}"], fontsize=7)
    ax.set_xlabel("decision score (training: out-of-fold)")
    ax.legend(fontsize=7)
    ax = axes[2]
    top = contributions.head(8).iloc[::-1]
    ax.barh(top.index, top.values, color=np.where(top.values > 0, "tab:green", "tab:orange"))
    ax.axvline(0, color="grey", lw=0.8)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel(f"contribution to score (+ towards {positive})")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def voxel_pattern_figure(img, *, title: str, n_slices: int = 8):
    """Axial slices of a voxel-wise Haufe map (diverging colours, symmetric scale, colour bar, MNI z in mm)."""
    import matplotlib.pyplot as plt

    data = np.asarray(img.dataobj, dtype=float)
    nonzero = np.nonzero(np.abs(data).sum(axis=(0, 1)) > 0)[0]
    ks = np.linspace(nonzero.min(), nonzero.max(), n_slices + 2)[1:-1].round().astype(int) if nonzero.size \
        else np.linspace(0, data.shape[2] - 1, n_slices).round().astype(int)
    vmax = float(np.percentile(np.abs(data[data != 0]), 99)) if np.any(data) else 1.0
    fig, axes = plt.subplots(1, n_slices, figsize=(1.6 * n_slices + 1, 2.6), squeeze=False)
    image = None
    for ax, k in zip(axes[0], ks):
        image = ax.imshow(np.rot90(data[:, :, k]), cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        z_mm = float(img.affine[2, 2] * k + img.affine[2, 3])
        ax.set_title(f"z = {z_mm:.0f} mm", fontsize=8)
        ax.axis("off")
    bar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
    bar.set_label("activation (SD per unit score)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig
