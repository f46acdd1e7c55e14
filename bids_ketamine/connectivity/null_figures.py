"""Figures of the spatial nulls of the gene analysis: how often each null rejects on unrelated smooth maps (the
calibration), and each tested gene's observed r against its surrogate and naive null distributions.

Why both: a reader cannot judge a gene p value without seeing how wide the spatial null is compared with a naive
parcel shuffle, and whether the spatial test keeps its nominal false-positive rate on this atlas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Readable names of the null methods of :func:`bids_ketamine.connectivity.genes.null_calibration`.
METHOD_LABELS = {"moran_whole_brain": "Moran surrogates\n(whole brain)",
                 "moran_per_hemisphere": "Moran surrogates\n(per hemisphere)",
                 "surrogates_whole_brain": "brainsmash\n(whole brain)",
                 "surrogates_per_hemisphere": "brainsmash\n(per hemisphere)",
                 "naive_parcel_shuffle": "naive parcel\nshuffle"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def calibration_figure(table: pd.DataFrame, pairs: pd.DataFrame):
    """Left: rate of p < alpha per null method with its 95 % interval and the nominal alpha. Right: the
    cumulative distribution of the p values per method (a calibrated null follows the diagonal)."""
    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(8.5, 3.6), gridspec_kw={"width_ratios": [1.1, 1]})
    alpha = float(table["alpha"].iloc[0])
    x = np.arange(len(table))
    rate = table["false_positive_rate"].to_numpy(dtype=float)
    err = np.vstack([rate - table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float) - rate])
    palette = {"moran": "C0", "surrogates": "C2", "naive": "C3"}
    colours = [palette.get(m.split("_")[0], "C7") for m in table["method"]]
    ax.bar(x, 100 * rate, color=colours, alpha=0.8)
    ax.errorbar(x, 100 * rate, yerr=100 * err, fmt="none", ecolor="k", capsize=4, lw=1)
    ax.axhline(100 * alpha, color="0.3", ls="--", lw=1, label=f"nominal {100 * alpha:g} %")
    for xi, (k, n) in enumerate(zip(table["n_false_positive"], table["n_pairs"])):
        ax.text(xi, 100 * rate[xi] + 1, f"{k}/{n}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [METHOD_LABELS.get(m, m) for m in table["method"]], fontsize=8)
    ax.set_ylabel(f"pairs with p < {alpha:g} (%)")
    row = table.iloc[0]
    ax.set_title(f"False positives on unrelated smooth maps\n{int(row['n_parcels'])} parcels, "
                 f"{row['length_scale_mm']:g} mm fields, {int(row['n_null'])} nulls per pair", fontsize=9)
    ax.legend(frameon=False, fontsize=8)
    grid = np.linspace(0, 1, 201)
    ax2.plot([0, 1], [0, 1], color="0.5", lw=1, ls=":", label="calibrated")
    for method, colour in zip(table["method"], colours):
        p = np.sort(pairs[f"p_{method}"].to_numpy(dtype=float))
        ax2.plot(grid, np.searchsorted(p, grid, side="right") / p.size, color=colour,
                 ls="--" if method.endswith("per_hemisphere") else "-",
                 label=METHOD_LABELS.get(method, method).replace("\n", " "))
    ax2.set_xlabel("p value")
    ax2.set_ylabel("fraction of pairs with p at most this")
    ax2.set_title("p values of unrelated map pairs", fontsize=9)
    ax2.legend(frameon=False, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def gene_null_figure(table: pd.DataFrame, null_r: dict[str, np.ndarray], naive_r: dict[str, np.ndarray] | None,
                     *, title: str):
    """One panel per gene in ``null_r``: histogram of surrogate r (and naive-shuffle r) with the observed r."""
    plt = _pyplot()
    genes = list(null_r)
    fig, axes = plt.subplots(1, len(genes), figsize=(3.0 * len(genes) + 0.5, 3.0), squeeze=False, sharey=False)
    rows = table.set_index("gene")
    for ax, gene in zip(axes[0], genes):
        bins = np.linspace(-1, 1, 61)
        ax.hist(null_r[gene], bins=bins, density=True, color="C0", alpha=0.6, label="spatial surrogates")
        if naive_r is not None and gene in naive_r:
            ax.hist(naive_r[gene], bins=bins, density=True, histtype="step", color="C3", lw=1.2,
                    label="naive shuffle")
        r = float(rows.loc[gene, "r"])
        ax.axvline(r, color="k", lw=1.5, label="observed r")
        ax.set_title(f"{gene}: r = {r:.2f}\np_spatial = {rows.loc[gene, 'p_spatial']:.3g}, "
                     f"p_naive = {rows.loc[gene, 'p_naive']:.3g}", fontsize=8)
        ax.set_xlabel("r with the brain map")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(frameon=False, fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
