"""Figures of the connectivity analysis: small pure functions, arrays in, a matplotlib ``Figure`` out, nothing written.

Why these figures: a reader of a participant report must see at a glance whether a session's connectivity can be
trusted (framewise displacement and the frames scrubbing removed, a carpet plot where motion and global artefacts
show as vertical stripes) and what the GBC and delta-GBC maps look like; a reader of the group report wants how
subjects load on each principal component and whether the drugs' effective dimensionality differs.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so a participant's figures can all be built
before anything is written without pyplot keeping them open; the caller saves them with the writer's
``write_figure``. They are drawn at a modest resolution so a report that embeds them stays small, and nothing in
them is random (subject positions in the score plot are evenly spread, not jittered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Resolution of the raster figures (PNG): readable in a report, a few tens of kB each.
DPI = 90
#: Marker colours: frames flagged by FD, by intensity change, and censored frames (flagged plus neighbours).
FLAG_FD_COLOUR = "#d62728"
FLAG_INTENSITY_COLOUR = "#9467bd"
CENSORED_COLOUR = "#ff7f0e"
#: ``gid`` of the artists that mark frames, so tests and tools can find exactly which frames a figure marks.
GID_CENSORED = "censored-frames"
GID_FLAGGED_FD = "flagged-fd"
GID_FLAGGED_INTENSITY = "flagged-intensity"
GID_CARPET = "carpet"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _as_vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {array.shape}")
    if n is not None and array.size != n:
        raise ValueError(f"{name} has {array.size} frames, expected {n}")
    return array


def censored_blocks(keep: np.ndarray) -> list[tuple[int, int]]:
    """Runs of consecutive censored frames as (first, last) frame indices, for shading them as spans."""
    censored = ~np.asarray(keep, dtype=bool)
    edges = np.diff(np.concatenate([[0], censored.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1) - 1
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _shade_censored(ax, keep: np.ndarray) -> None:
    for first, last in censored_blocks(keep):
        ax.axvspan(first - 0.5, last + 0.5, color=CENSORED_COLOUR, alpha=0.18, lw=0, gid="censored-span")


# ------------------------------------------------------------------------------------------------ participant
def framewise_displacement_figure(fd: np.ndarray, keep: np.ndarray, flagged_fd: np.ndarray,
                                  flagged_intensity: np.ndarray, *, fd_threshold: float,
                                  intensity_ratio: np.ndarray | None = None, intensity_threshold: float | None = None,
                                  title: str = ""):
    """FD per frame with its threshold, the frames scrubbing censored shaded and marked, and (when given) the
    normalised intensity-change ratio with its threshold in a second panel.

    ``keep`` is the scrubbing's decision (flagged frames plus their neighbours are False); the figure marks exactly
    the frames where it is False (artist ``gid`` ``censored-frames``), so the plot shows what was removed, not a
    re-derivation of it. A missing FD (fMRIPrep's n/a at frame 0) is drawn as 0, as scrubbing counts it.
    """
    fd = np.nan_to_num(_as_vector(fd, "FD").astype(float), nan=0.0)
    n = fd.size
    keep = _as_vector(keep, "keep", n).astype(bool)
    flagged_fd = _as_vector(flagged_fd, "flagged_fd", n).astype(bool)
    flagged_intensity = _as_vector(flagged_intensity, "flagged_intensity", n).astype(bool)
    frames = np.arange(n)
    censored = np.flatnonzero(~keep)
    with_ratio = intensity_ratio is not None
    fig = _figure(8.0, 3.6 if with_ratio else 2.4)
    axes = fig.subplots(2 if with_ratio else 1, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    _shade_censored(ax, keep)
    ax.plot(frames, fd, color="0.25", lw=0.8, label="FD")
    ax.axhline(fd_threshold, color=FLAG_FD_COLOUR, ls="--", lw=0.8, label=f"threshold {fd_threshold:g} mm")
    ax.plot(censored, fd[censored], "o", ms=3.5, mfc="none", mec=CENSORED_COLOUR, gid=GID_CENSORED,
            label=f"censored ({censored.size} of {n}, {100 * censored.size / max(n, 1):.0f} %)")
    hits = np.flatnonzero(flagged_fd)
    ax.plot(hits, fd[hits], "x", ms=4, color=FLAG_FD_COLOUR, gid=GID_FLAGGED_FD, label=f"FD > threshold ({hits.size})")
    ax.set_ylabel("FD (mm)")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7, frameon=False, ncol=4)
    if with_ratio:
        ratio = np.nan_to_num(_as_vector(intensity_ratio, "intensity_ratio", n).astype(float), nan=0.0)
        ax2 = axes[1]
        _shade_censored(ax2, keep)
        ax2.plot(frames, ratio, color="0.25", lw=0.8)
        if intensity_threshold is not None:
            ax2.axhline(intensity_threshold, color=FLAG_INTENSITY_COLOUR, ls="--", lw=0.8,
                        label=f"threshold {intensity_threshold:g} x median")
        hits = np.flatnonzero(flagged_intensity)
        ax2.plot(hits, ratio[hits], "x", ms=4, color=FLAG_INTENSITY_COLOUR, gid=GID_FLAGGED_INTENSITY,
                 label=f"above threshold ({hits.size})")
        ax2.set_ylabel("intensity change\n(x run median)")
        ax2.set_ylim(bottom=0)
        ax2.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=7, frameon=False, ncol=2)
    axes[-1].set_xlabel("frame")
    axes[-1].set_xlim(-0.5, n - 0.5)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def carpet_rows(n_rows: int, max_rows: int) -> np.ndarray:
    """Indices of at most ``max_rows`` rows spread evenly over ``n_rows`` (all rows when there are few enough)."""
    if max_rows < 1:
        raise ValueError("max_rows must be >= 1")
    if n_rows <= max_rows:
        return np.arange(n_rows)
    return np.unique(np.round(np.linspace(0, n_rows - 1, max_rows)).astype(int))


def standardise_columns(series: np.ndarray) -> np.ndarray:
    """Each column linearly detrended and z-scored over frames (a constant or all-NaN column becomes 0).

    Why detrend: scanner drift would otherwise dominate the grey scale and hide frame-to-frame artefacts.
    """
    x = np.asarray(series, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"series must be frames x signals, got shape {x.shape}")
    t = np.arange(x.shape[0], dtype=float)
    t -= t.mean()
    out = np.zeros_like(x)
    finite = np.isfinite(x).all(axis=0)
    if finite.any():
        y = x[:, finite]
        y = y - y.mean(axis=0)
        denom = float(t @ t)
        if denom > 0:
            y = y - np.outer(t, (t @ y) / denom)
        sd = y.std(axis=0)
        out[:, finite] = np.divide(y, sd, out=np.zeros_like(y), where=sd > 0)
    return out


def carpet_figure(series: np.ndarray, keep: np.ndarray, *, groups: Sequence[str] | None = None,
                  max_rows: int = 400, title: str = "", row_label: str = "parcel"):
    """Carpet plot: one row per signal (parcel, or a subsample of them), one column per frame, each row detrended
    and z-scored; the censored frames are marked in a strip above (artist ``gid`` ``censored-frames``).

    ``series`` is frames x signals (the run's parcel time series, before nuisance regression, so motion and global
    artefacts stay visible); ``groups`` (one label per signal, e.g. the structure) draws separators between
    consecutive groups. Rows keep the given order.
    """
    x = np.asarray(series, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"series must be frames x signals, got shape {x.shape}")
    n_frames, n_signals = x.shape
    keep = _as_vector(keep, "keep", n_frames).astype(bool)
    rows = carpet_rows(n_signals, max_rows)
    image = standardise_columns(x)[:, rows].T  # rows x frames
    fig = _figure(8.0, 3.4)
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 12], width_ratios=[40, 1], hspace=0.05, wspace=0.03)
    strip = fig.add_subplot(grid[0, 0])
    ax = fig.add_subplot(grid[1, 0], sharex=strip)
    cax = fig.add_subplot(grid[1, 1])
    censored = np.flatnonzero(~keep)
    _shade_censored(strip, keep)
    strip.plot(censored, np.full(censored.size, 0.5), "|", ms=8, color=CENSORED_COLOUR, gid=GID_CENSORED)
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(labelbottom=False, bottom=False)
    strip.set_ylabel("cens.", rotation=0, ha="right", va="center", fontsize=7)
    shown = ax.imshow(image, aspect="auto", interpolation="nearest", cmap="gray", vmin=-2, vmax=2,
                      extent=(-0.5, n_frames - 0.5, rows.size - 0.5, -0.5))
    shown.set_gid(GID_CARPET)
    if groups is not None:
        labels = np.asarray(list(groups), dtype=object)
        if labels.size != n_signals:
            raise ValueError(f"groups has {labels.size} labels for {n_signals} signals")
        labels = labels[rows]
        change = np.flatnonzero(labels[1:] != labels[:-1]) + 1
        for edge in change:
            ax.axhline(edge - 0.5, color="#1f77b4", lw=0.8)
        starts = np.concatenate([[0], change])
        stops = np.concatenate([change, [labels.size]])
        wide = (stops - starts) >= max(1, labels.size // 25)  # label only groups tall enough to read
        ax.set_yticks(((starts + stops - 1) / 2.0)[wide])
        ax.set_yticklabels([str(labels[s]) for s in starts[wide]], fontsize=7)
    else:
        ax.set_yticks([])
    sampled = f"{rows.size} of {n_signals}" if rows.size < n_signals else f"{n_signals}"
    ax.set_ylabel(f"{row_label}s ({sampled})", fontsize=8)
    ax.set_xlabel("frame")
    fig.colorbar(shown, cax=cax, label="z")
    if title:
        strip.set_title(title, fontsize=9)
    return fig


def _symmetric_limit(values: np.ndarray, vmax: float | None) -> float:
    if vmax is not None and np.isfinite(vmax) and vmax > 0:
        return float(vmax)
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def parcel_map_figure(values: np.ndarray, *, centroids_mm: np.ndarray | None = None, title: str = "",
                      vmax: float | None = None, label: str = "", names: Sequence[str] | None = None):
    """Parcel values on a glass brain, one marker per parcel at its centroid (nilearn's ``plot_markers``), with a
    colour scale symmetric around 0 (``vmax``: common limit, e.g. over one subject's sessions). ``label`` names
    the values' units (the y axis of the per-parcel view; the title, when none is given, of the glass brain).

    Without centroids (a CIFTI parcellation has no volume to take them from) the values are drawn per parcel in
    parcel order instead.
    """
    values = _as_vector(values, "values").astype(float)
    limit = _symmetric_limit(values, vmax)
    if centroids_mm is None:
        fig = _figure(8.0, 2.6)
        ax = fig.subplots()
        positions = np.arange(values.size)
        ax.bar(positions, values, color=np.where(values >= 0, "#b2182b", "#2166ac"), width=0.9)
        ax.axhline(0, color="0.3", lw=0.6)
        ax.set_xlim(-0.5, values.size - 0.5)
        ax.set_ylim(-limit * 1.05, limit * 1.05)
        ax.set_ylabel(label)
        ax.set_xlabel("parcel (atlas order)")
        if names is not None and len(names) <= 40:
            ax.set_xticks(positions)
            ax.set_xticklabels(list(names), rotation=90, fontsize=6)
        if title:
            ax.set_title(title, fontsize=9)
        return fig
    from nilearn import plotting

    xyz = np.asarray(centroids_mm, dtype=float)
    if xyz.shape != (values.size, 3):
        raise ValueError(f"centroids must be {values.size} x 3, got shape {xyz.shape}")
    fig = _figure(8.0, 2.6)
    size = float(np.clip(2500.0 / max(values.size, 1), 4.0, 30.0))
    display = plotting.plot_markers(values, xyz, figure=fig, display_mode="lzr", node_cmap="RdBu_r",
                                    node_vmin=-limit, node_vmax=limit, node_size=size, colorbar=True,
                                    annotate=True, alpha=0.9)
    if title or label:
        display.title(title or label, size=9, bgcolor="white", color="black", alpha=1.0)
    return fig


# ------------------------------------------------------------------------------------------------ group
def subject_scores_figure(results: Mapping[str, Any], *, max_components: int = 5):
    """Per drug (one panel each), every subject's score on each PC: Pearson r between the subject's delta-GBC map
    and the PC map. Significant PCs are drawn in colour and starred, the others in grey.

    ``results`` maps a drug to its ``DeltaPCA`` (uses ``scores``, ``subjects`` and ``n_significant``). Subjects are
    spread evenly across each PC's column in their listed order (no random jitter).
    """
    if not results:
        raise ValueError("no drug results to plot")
    drugs = list(results)
    fig = _figure(max(3.2, 2.6 + 1.9 * len(drugs)), 3.0)
    axes = fig.subplots(1, len(drugs), sharey=True, squeeze=False)[0]
    for ax, drug in zip(axes, drugs):
        res = results[drug]
        scores = np.asarray(res.scores, dtype=float)
        n_sub, n_pc = scores.shape
        k = min(max_components, n_pc)
        spread = np.linspace(-0.28, 0.28, n_sub) if n_sub > 1 else np.zeros(1)
        for pc in range(k):
            significant = pc < res.n_significant
            colour = f"C{pc % 10}" if significant else "0.6"
            ax.plot(pc + 1 + spread, scores[:, pc], "o", ms=3.5, color=colour, alpha=0.8, mec="none",
                    gid=f"scores-{drug}-pc{pc + 1}")
            ax.plot([pc + 0.62, pc + 1.38], [np.nanmean(scores[:, pc])] * 2, color="black", lw=1.2)
        ax.axhline(0, color="0.4", lw=0.6)
        ax.set_xticks(np.arange(1, k + 1))
        ax.set_xticklabels([f"PC{pc + 1}{'*' if pc < res.n_significant else ''}" for pc in range(k)], fontsize=8)
        ax.set_xlim(0.5, k + 0.5)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"{drug}: {n_sub} subjects, {res.n_significant} significant PC(s)", fontsize=8)
    axes[0].set_ylabel("r (subject map, PC map)")
    return fig


def _p_text(p: float, name: str = "p") -> str:
    if not np.isfinite(p):
        return f"{name} n/a"
    return f"{name} = {p:.2g}" if p >= 1e-4 else f"{name} < 1e-4"


def participation_ratio_figure(subsamples: Any, per_drug: Any, pairwise: Any, anova: Any = None):
    """Participation ratio per drug at one subsample size: the subsample PRs (box and points; they share subjects,
    so their spread is not the uncertainty), the equal-n PR with its jackknife 95 % interval over subjects (bar),
    the PR of all subjects (diamond), and below each pair's difference with its permutation p (Holm).

    Inputs are the tables of ``dimensionality.compare_dimensionality``; ``anova`` (the descriptive subsample
    ANOVA, only when it was asked for) is named in the title as descriptive.
    """
    drugs = list(per_drug["drug"])
    if not drugs:
        raise ValueError("no drug in the participation-ratio table")
    data = [subsamples.loc[subsamples["drug"] == d, "participation_ratio"].to_numpy(dtype=float) for d in drugs]
    n_pairs = len(pairwise)
    fig = _figure(max(3.6, 1.6 + 1.3 * len(drugs)), 3.3 + 0.16 * n_pairs)
    ax = fig.subplots()
    positions = np.arange(1, len(drugs) + 1)
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False, medianprops={"color": "0.5"},
               boxprops={"color": "0.6"}, whiskerprops={"color": "0.6"}, capprops={"color": "0.6"})
    for i, values in enumerate(data):
        spread = np.linspace(-0.18, 0.18, values.size) if values.size > 1 else np.zeros(values.size)
        ax.plot(i + 1 + spread, values, "o", ms=2, alpha=0.3, color=f"C{i % 10}", mec="none",
                gid=f"participation-{drugs[i]}")
    mean = per_drug["pr_mean"].to_numpy(dtype=float)
    low = per_drug["pr_ci_low"].to_numpy(dtype=float) if "pr_ci_low" in per_drug else np.full(mean.size, np.nan)
    high = per_drug["pr_ci_high"].to_numpy(dtype=float) if "pr_ci_high" in per_drug else np.full(mean.size, np.nan)
    ok = np.isfinite(low) & np.isfinite(high)
    ax.vlines(positions[ok] + 0.32, low[ok], high[ok], color="black", lw=1.2)
    ax.plot(positions + 0.32, mean, "s", color="black", ms=4, label="equal-n PR, 95 % CI (jackknife over subjects)",
            gid="participation-ci")
    ax.plot(positions, per_drug["pr_all_subjects"].to_numpy(dtype=float), "D", color="0.3", ms=4, mfc="white",
            label="all subjects")
    ax.set_xticks(positions)
    size = int(per_drug["subsample_size"].iloc[0])
    ax.set_xticklabels([f"{d}\n(n = {int(n)})" for d, n in zip(drugs, per_drug["n_subjects"])], fontsize=8)
    ax.set_ylabel("participation ratio")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    head = (f"subject-level permutation tests, Holm across {n_pairs} pair(s)" if n_pairs
            else "one drug: no comparison")
    if anova is not None and len(anova) and np.isfinite(float(anova.iloc[0]["f"])):
        head += (f"\n(descriptive only: subsample ANOVA F = {float(anova.iloc[0]['f']):.3g}, its p counts "
                 "subsamples, not subjects)")
    ax.set_title(f"Participation ratio on subsamples of {size} subjects\n{head}", fontsize=8)
    lines = [f"{r.drug_a} - {r.drug_b}: {r.difference:+.3g} [{r.ci_low:.3g}, {r.ci_high:.3g}], "
             f"{_p_text(float(r.p_permutation), 'p_perm')}, {_p_text(float(r.p_holm), 'p_Holm')}"
             for r in pairwise.itertuples()]
    lines += [f"{d}: {int(k)} distinct subsamples, all used" for d, k, e in
              zip(drugs, per_drug.get("n_distinct_subsamples", [np.nan] * len(drugs)),
                  per_drug.get("subsamples_enumerated", [False] * len(drugs))) if bool(e) and int(k) > 1]
    lines += [f"{d}: subsample size = group size, every subsample is the whole group (no spread)"
              for d, n in zip(drugs, per_drug["n_subjects"]) if int(n) == size]
    values = np.concatenate([*data, per_drug["pr_all_subjects"].to_numpy(dtype=float), low[np.isfinite(low)],
                             high[np.isfinite(high)]])
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    pad = max(0.05 * (hi - lo), 0.02 * max(abs(hi), 1e-9))  # a visible range also when nothing varies
    ax.set_ylim(lo - pad, hi + pad)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    fig.text(0.01, 0.0, "\n".join(lines), ha="left", va="top", fontsize=6.5)
    return fig
