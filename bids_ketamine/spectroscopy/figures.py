"""Figures of the spectroscopy reports: where the voxel sits on the T1w, Glx/tNAA over the infusion, MADRS change.

Why one module of plain functions: each figure is drawn from numbers the analysis already computed (the NIfTI-MRS
affine, the ``_mrsfit.tsv`` rows, the MADRS columns of ``sessions.tsv``), so the geometry and the statistics shown
are separate pure functions a test can check against planted values, and the drawing functions only display them.

Geometry: the NIfTI-MRS affine maps the index space of the 1 x 1 x 1 grid to scanner millimetres; the voxel spans
indices -0.5..0.5 on each axis, so its centre is ``affine @ (0, 0, 0, 1)``, its edges are the affine's first three
columns, and an oblique (rotated) voxel is a parallelepiped in world space. The voxel figure cuts the T1w and that
parallelepiped with the same three world planes (axial z, coronal y, sagittal x) through the voxel centre, so the
outline is right for any voxel and T1w orientation, as long as both share scanner coordinates (same session).
"""

from __future__ import annotations

import itertools
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

#: ``gid`` of the voxel outline lines (lets tests and readers of the SVG find them).
VOXEL_GID = "mrs-voxel"
#: World axes shown in each view: (name, axis normal to the plane, horizontal axis, vertical axis).
VIEWS = (("sagittal", 0, 1, 2), ("coronal", 1, 0, 2), ("axial", 2, 0, 1))
_AXIS_NAMES = ("x (R+)", "y (A+)", "z (S+)")
#: Corners of the voxel in its own index space (the 1 x 1 x 1 grid spans -0.5..0.5).
_UNIT_CORNERS = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
#: The 12 edges of the box as pairs of corner indices (corners differing in exactly one coordinate).
_BOX_EDGES = tuple((a, b) for a, b in itertools.combinations(range(8), 2)
                   if np.count_nonzero(_UNIT_CORNERS[a] != _UNIT_CORNERS[b]) == 1)


# ------------------------------------------------------------------------------------------------ voxel geometry
def voxel_centre(mrs_affine: np.ndarray) -> np.ndarray:
    """Scanner coordinates (mm) of the voxel centre."""
    return np.asarray(mrs_affine, float)[:3, 3].copy()


def voxel_size(mrs_affine: np.ndarray) -> np.ndarray:
    """Edge lengths (mm) of the voxel along its own three axes."""
    return np.linalg.norm(np.asarray(mrs_affine, float)[:3, :3], axis=0)


def voxel_corners(mrs_affine: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of the voxel in scanner millimetres."""
    a = np.asarray(mrs_affine, float)
    return _UNIT_CORNERS @ a[:3, :3].T + a[:3, 3]


def voxel_section(mrs_affine: np.ndarray, axis: int, position: float) -> np.ndarray:
    """Outline (n, 2) of the voxel cut by the world plane ``coordinate[axis] == position``, in drawing order.

    The two columns are the in-plane world coordinates of ``VIEWS`` (sagittal: y, z; coronal: x, z; axial: x, y).
    A plane through a box cuts it in a convex polygon (3 to 6 vertices) whose vertices are where the plane crosses
    the box edges; they are ordered by angle around their centroid. Empty (0, 2) when the plane misses the voxel.
    """
    corners = voxel_corners(mrs_affine)
    height = corners[:, axis] - position
    points = []
    for a, b in _BOX_EDGES:
        ha, hb = height[a], height[b]
        if ha == 0.0:
            points.append(corners[a])
        if hb == 0.0:
            points.append(corners[b])
        if ha * hb < 0:
            points.append(corners[a] + ha / (ha - hb) * (corners[b] - corners[a]))
    in_plane = [i for i in range(3) if i != axis]
    if not points:
        return np.zeros((0, 2))
    flat = np.unique(np.round(np.asarray(points)[:, in_plane], 9), axis=0)
    if len(flat) < 3:  # the plane only touches an edge or a corner
        return np.zeros((0, 2))
    centre = flat.mean(axis=0)
    order = np.argsort(np.arctan2(flat[:, 1] - centre[1], flat[:, 0] - centre[0]))
    return flat[order]


def image_world_bounds(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) scanner coordinates of an image's field of view (voxel centres of its corner voxels)."""
    ijk = np.array(list(itertools.product(*[(0, n - 1) for n in shape[:3]])), float)
    world = ijk @ np.asarray(affine, float)[:3, :3].T + np.asarray(affine, float)[:3, 3]
    return world.min(axis=0), world.max(axis=0)


def world_slice(data: np.ndarray, affine: np.ndarray, axis: int, position: float, *, step: float | None = None
                ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Sample a 3-D image on the world plane ``coordinate[axis] == position`` (linear interpolation).

    Returns (image indexed [horizontal, vertical], extent (h0, h1, v0, v1) in mm) with the in-plane axes of
    ``VIEWS``; outside the field of view the value is NaN. ``step`` defaults to the image's smallest voxel size.
    """
    from scipy.ndimage import map_coordinates

    affine = np.asarray(affine, float)
    step = float(step or np.linalg.norm(affine[:3, :3], axis=0).min())
    lo, hi = image_world_bounds(data.shape, affine)
    h_axis, v_axis = [i for i in range(3) if i != axis]
    h = np.arange(lo[h_axis], hi[h_axis] + step / 2, step)
    v = np.arange(lo[v_axis], hi[v_axis] + step / 2, step)
    world = np.zeros((h.size, v.size, 3))
    world[..., axis] = position
    world[..., h_axis] = h[:, None]
    world[..., v_axis] = v[None, :]
    inv = np.linalg.inv(affine)
    ijk = world @ inv[:3, :3].T + inv[:3, 3]
    plane = map_coordinates(np.asarray(data, float), ijk.reshape(-1, 3).T, order=1, mode="constant", cval=np.nan)
    plane = plane.reshape(h.size, v.size)
    half = step / 2
    return plane, (h[0] - half, h[-1] + half, v[0] - half, v[-1] + half)


def voxel_outside_image(mrs_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray) -> bool:
    """True when the voxel centre lies outside the image's field of view (different scanner space or session)."""
    lo, hi = image_world_bounds(shape, affine)
    half = np.abs(np.asarray(affine, float)[:3, :3]).sum(axis=1) / 2  # half a voxel of margin on each side
    centre = voxel_centre(mrs_affine)
    return bool(np.any(centre < lo - half) or np.any(centre > hi + half))


# ------------------------------------------------------------------------------------------------ statistics shown
def mean_ci(values, level: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and two-sided t confidence interval of the finite values: (mean, low, high, n); NaN bounds for n < 2."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return np.nan, np.nan, np.nan, 0
    m = float(v.mean())
    if n < 2:
        return m, np.nan, np.nan, n
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return m, m - half, m + half, n


def ratio_with_crlb(fits: pd.DataFrame, numerator: str = "Glx", denominator: str = "tNAA") -> pd.DataFrame:
    """One row per acquisition and block: ``numerator / denominator`` with its CRLB-propagated SD.

    ``fits`` holds ``_mrsfit.tsv`` rows (``session_id``, ``pretreatment``, ``block``, ``block_time_min``,
    ``metabolite``, ``concentration``, ``crlb``, ``qc_pass``) and optionally ``series`` naming the acquisition
    (else the session). SD of r = G/N to first order: r * sqrt((sd_G/G)^2 + (sd_N/N)^2); the table has no
    covariance of the two amplitudes, so they are treated as independent.
    """
    df = fits.copy()
    if "series" not in df:
        df["series"] = ["n/a" if pd.isna(s) else f"ses-{s}" for s in df["session_id"]]
    keys = ["series", "block"]
    num = df[df["metabolite"] == numerator].set_index(keys)
    den = df[df["metabolite"] == denominator].set_index(keys)
    if num.empty or den.empty:
        return pd.DataFrame(columns=["series", "block", "session_id", "pretreatment", "block_time_min", "ratio",
                                     "ratio_sd", "qc_pass"])
    den = den.reindex(num.index)
    ratio = num["concentration"].astype(float) / den["concentration"].astype(float)
    rel = np.sqrt((num["crlb"].astype(float) / num["concentration"].astype(float)) ** 2
                  + (den["crlb"].astype(float) / den["concentration"].astype(float)) ** 2)
    qc = pd.Series(True, index=num.index)
    if "qc_pass" in num:
        qc = num["qc_pass"].astype(bool) & den["qc_pass"].fillna(False).astype(bool)
    out = pd.DataFrame({"session_id": num["session_id"], "pretreatment": num["pretreatment"],
                        "block_time_min": num["block_time_min"].astype(float), "ratio": ratio,
                        "ratio_sd": (ratio * rel).abs(), "qc_pass": qc}).reset_index()
    return out.sort_values(["series", "block"], kind="stable").reset_index(drop=True)


def block_means_ci(frame: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per pretreatment and block: mean block time, mean ``value`` and its t confidence interval over
    subject-sessions (``frame``: one row per subject x session x block, as the group model's frame)."""
    rows = []
    for (pre, block), part in frame.groupby(["pretreatment", "block"], dropna=False, sort=True):
        m, lo, hi, n = mean_ci(part["value"], level)
        rows.append({"pretreatment": pre, "block": block, "time_min": float(part["block_time_min"].mean()),
                     "mean": m, "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=["pretreatment", "block", "time_min", "mean", "ci_low", "ci_high", "n"])


def madrs_summary(madrs: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """MADRS per pretreatment: mean with CI before and at 24 h, and of the change (24 h minus before) per session.

    ``madrs``: long rows (``participant_id``, ``session_id``, ``pretreatment``, ``time`` 0 = before / 1 = 24 h,
    ``value``). The change uses the subject-sessions with both scores.
    """
    rows = []
    for pre, part in madrs.groupby("pretreatment", sort=True):
        for label, tval in (("before", 0.0), ("24h", 1.0)):
            m, lo, hi, n = mean_ci(part.loc[part["time"] == tval, "value"], level)
            rows.append({"pretreatment": pre, "measure": label, "mean": m, "ci_low": lo, "ci_high": hi, "n": n})
        wide = part.pivot_table(index=["participant_id", "session_id"], columns="time", values="value",
                                aggfunc="mean")
        change = (wide[1.0] - wide[0.0]) if {0.0, 1.0} <= set(wide.columns) else pd.Series(dtype=float)
        m, lo, hi, n = mean_ci(change, level)
        rows.append({"pretreatment": pre, "measure": "change", "mean": m, "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows, columns=["pretreatment", "measure", "mean", "ci_low", "ci_high", "n"])


# ------------------------------------------------------------------------------------------------ drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _yerr(mean, low, high) -> np.ndarray:
    m, lo, hi = (np.asarray(a, float) for a in (mean, low, high))
    return np.vstack([np.nan_to_num(m - lo), np.nan_to_num(hi - m)])


def voxel_figure(t1w: np.ndarray, t1w_affine: np.ndarray, mrs_affine: np.ndarray, *, title: str = ""):
    """Three orthogonal T1w slices through the voxel centre with the voxel outline (scanner coordinates).

    Views are in world orientation (neurological: the subject's right on the right); the outline of an oblique
    voxel is its true cut by each plane. Raises ValueError when the voxel centre is outside the T1w.
    """
    data = np.asarray(t1w, float)
    data = data[..., 0] if data.ndim == 4 else data
    if voxel_outside_image(mrs_affine, data.shape, t1w_affine):
        raise ValueError("the spectroscopy voxel centre lies outside the T1w field of view")
    centre = voxel_centre(mrs_affine)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    finite = data[np.isfinite(data) & (data != 0)]
    vmin, vmax = (np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0))
    if vmax <= vmin:  # a nearly uniform image: use its full range
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        vmax = vmax if vmax > vmin else vmin + 1.0
    for ax, (name, axis, h_axis, v_axis) in zip(axes, VIEWS):
        plane, extent = world_slice(data, t1w_affine, axis, centre[axis])
        ax.imshow(plane.T, origin="lower", extent=extent, cmap="gray", vmin=vmin, vmax=vmax,
                  interpolation="nearest", aspect="equal")
        outline = voxel_section(mrs_affine, axis, centre[axis])
        if len(outline):
            closed = np.vstack([outline, outline[:1]])
            ax.plot(closed[:, 0], closed[:, 1], color="#ff3b30", lw=1.4, gid=VOXEL_GID)
        ax.plot([centre[h_axis]], [centre[v_axis]], "+", color="#ffcc00", ms=6)
        ax.set_title(f"{name} {'xyz'[axis]} = {centre[axis]:.1f} mm", fontsize=8)
        ax.set_xlabel(_AXIS_NAMES[h_axis], fontsize=7)
        ax.set_ylabel(_AXIS_NAMES[v_axis], fontsize=7)
        ax.tick_params(labelsize=6)
    size = voxel_size(mrs_affine)
    header = (f"voxel {size[0]:.1f} x {size[1]:.1f} x {size[2]:.1f} mm at ({centre[0]:.1f}, {centre[1]:.1f}, "
              f"{centre[2]:.1f}) mm")
    fig.suptitle(f"{title}\n{header}" if title else header, fontsize=9)
    fig.tight_layout()
    return fig


def pick_t1w(t1w_paths, session: str | None):
    """The T1w sharing the acquisition's session (same scanner coordinates), else the first one; None if none."""
    paths = list(t1w_paths or ())
    if not paths:
        return None
    same = [p for p in paths if _of_session(p, session)]
    return same[0] if same else paths[0]


def _of_session(path, session: str | None) -> bool:
    return bool(session) and re.search(rf"(^|[_/])ses-{re.escape(str(session))}(?=[_/.])", str(path)) is not None


def voxel_figure_from_files(svs, t1w_paths, *, session: str | None = None, title: str = ""):
    """The voxel figure of one NIfTI-MRS file on the participant's T1w: (figure, note) or (None, why not).

    The header allows a position only when its qform or sform code is set (scanner or aligned coordinates) and
    the voxel centre falls inside the chosen T1w; otherwise no figure is drawn and the note says why.
    """
    import nibabel as nib

    t1w = pick_t1w(t1w_paths, session)
    if t1w is None:
        return None, "no voxel figure: the participant has no T1w"
    mrs = nib.load(str(svs))
    if int(mrs.header["qform_code"]) == 0 and int(mrs.header["sform_code"]) == 0:
        return None, "no voxel figure: the NIfTI-MRS header has no position (qform and sform codes are 0)"
    try:
        anat = nib.load(str(t1w))
        anat_data = np.asanyarray(anat.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        return None, f"no voxel figure: {Path(t1w).name} cannot be read ({type(exc).__name__})"
    if voxel_outside_image(mrs.affine, anat.shape, anat.affine):
        return None, (f"no voxel figure: the voxel centre lies outside {Path(t1w).name} (T1w from another session or "
                      "scanner space)")
    other = bool(session) and not _of_session(t1w, session)
    note = f"voxel drawn on {Path(t1w).name}"
    note += " (not this session's T1w: right only if the head did not move)" if other else ""
    fig = voxel_figure(anat_data, anat.affine, mrs.affine,
                       title=f"{title} on {Path(t1w).name}" if title else Path(t1w).name)
    return fig, note


def participant_timecourse_figure(fits: pd.DataFrame, numerator: str = "Glx", denominator: str = "tNAA"):
    """``numerator/denominator`` per fMRS block over the infusion, one series per session (pretreatment).

    Points sit at each block's mean acquisition time from the infusion onset, with CRLB-propagated error bars;
    blocks failing QC are drawn hollow. Raises ValueError when no block is timed (no fMRS blocks).
    """
    tab = ratio_with_crlb(fits, numerator, denominator)
    tab = tab[np.isfinite(tab["block_time_min"])]
    if tab.empty:
        raise ValueError(f"no timed fMRS block with {numerator} and {denominator}: nothing to draw over time")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for i, (series, part) in enumerate(tab.groupby("series", sort=True)):
        color = f"C{i % 10}"
        pre = part["pretreatment"].dropna()
        label = str(series) + (f" ({pre.iloc[0]})" if len(pre) else "")
        ax.errorbar(part["block_time_min"], part["ratio"], yerr=part["ratio_sd"], color=color, marker="o", ms=4,
                    capsize=2, lw=1, label=label, gid=f"timecourse-{series}")
        failed = part[~part["qc_pass"].astype(bool)]
        if len(failed):
            ax.plot(failed["block_time_min"], failed["ratio"], "o", ms=6, mfc="white", mec=color,
                    label=f"{label}: failed QC")
    ax.axvline(0.0, color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("minutes from infusion onset (block mean)")
    ax.set_ylabel(f"{numerator}/{denominator}")
    ax.set_title(f"{numerator}/{denominator} over the infusion (error bars: CRLB)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def dynamic_timecourse_figure(series: list[tuple[str, object, pd.DataFrame]], numerator: str = "Glx",
                              denominator: str = "tNAA"):
    """Block-wise ``numerator/denominator`` points with the dynamic fit's time course and 95 % band, per session.

    ``series``: (label, :class:`~bids_ketamine.spectroscopy.dynamic_fit.DynamicFitResult`, the acquisition's
    ``_mrsfit.tsv`` rows). With the default time model (constant, then linear from the onset) the line and band
    are drawn over time from its coefficients; with another design, at the blocks (implied ratios, 95 % bars). A
    session whose joint fit failed QC is drawn dashed and marked in the legend.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    z = stats.norm.ppf(0.975)
    for i, (label, result, fits) in enumerate(series):
        color = f"C{i % 10}"
        points = ratio_with_crlb(fits.assign(series=label), numerator, denominator)
        points = points[np.isfinite(points["block_time_min"].astype(float))]
        ax.errorbar(points["block_time_min"], points["ratio"], yerr=points["ratio_sd"], color=color, fmt="o",
                    ms=4, capsize=2, lw=0.8, label=f"{label}: block-wise fits (CRLB)")
        mark = "" if result.qc_pass else " - FAILED QC"
        style = "-" if result.qc_pass else "--"
        if result.design.kind == "hinge":
            est, cov = result.ratio_time_model(numerator, denominator)
            t = np.linspace(float(np.min(result.block_minutes)), float(np.max(result.block_minutes)), 200)
            rows = np.stack([np.ones_like(t), np.clip(t, 0, None)], axis=1)
            value = rows @ est
            band = z * np.sqrt(np.clip(np.einsum("ij,jk,ik->i", rows, cov, rows), 0, None))
            ax.plot(t, value, style, color=color, lw=1.4,
                    label=f"{label}: dynamic fit, slope {est[1]:+.4f}/min{mark}")
            ax.fill_between(t, value - band, value + band, color=color, alpha=0.2, lw=0)
        else:
            ratio, se = result.block_ratios(numerator, denominator)
            ax.errorbar(result.block_minutes, ratio, yerr=z * se, fmt=style, color=color, lw=1.4, capsize=3,
                        label=f"{label}: dynamic fit ({result.design.kind}){mark}")
    ax.axvline(0.0, color="0.5", ls="--", lw=0.8)
    ax.set_xlabel("minutes from infusion onset")
    ax.set_ylabel(f"{numerator}/{denominator}")
    ax.set_title(f"{numerator}/{denominator}: dynamic fit with 95 % band, block-wise fits as points", fontsize=9)
    ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    return fig


def group_timecourse_figure(frame: pd.DataFrame, outcome: str, *, level: float = 0.95):
    """Group ``outcome`` per block by pretreatment: means with t confidence intervals over subject-sessions.

    ``frame``: the group model's rows (``participant_id``, ``session_id``, ``block``, ``block_time_min``,
    ``pretreatment``, ``value``, optional ``qc_pass`` and ``sex_c``); blocks failing QC are left out, as in the
    model. Panels: all subjects, then each sex when both are present.
    """
    df = frame[frame["qc_pass"].astype(bool)] if "qc_pass" in frame else frame
    df = df[np.isfinite(df["value"].astype(float)) & np.isfinite(df["block_time_min"].astype(float))]
    if df.empty:
        raise ValueError(f"no block of {outcome} passed QC: nothing to draw")
    panels = [("all", df)]
    if "sex_c" in df:
        sexes = df["sex_c"].map({-0.5: "F", 0.5: "M"})
        if set(sexes.dropna()) == {"F", "M"}:
            panels += [(f"sex {s}", df[sexes == s]) for s in ("F", "M")]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), sharey=True, squeeze=False)
    pretreatments = sorted(df["pretreatment"].dropna().astype(str).unique())
    for ax, (title, part) in zip(axes[0], panels):
        summary = block_means_ci(part, level)
        for j, pre in enumerate(pretreatments):
            s = summary[summary["pretreatment"].astype(str) == pre]
            ax.errorbar(s["time_min"], s["mean"], yerr=_yerr(s["mean"], s["ci_low"], s["ci_high"]),
                        color=f"C{j}", marker="o", ms=4, capsize=2, lw=1, label=pre, gid=f"group-{title}-{pre}")
        ax.axvline(0.0, color="0.5", ls="--", lw=0.8)
        ax.set_title(f"{title} (n = {part['participant_id'].nunique()})", fontsize=9)
        ax.set_xlabel("minutes from infusion onset")
    axes[0, 0].set_ylabel(f"{outcome} (mean, {level:.0%} CI)")
    axes[0, 0].legend(fontsize=7, frameon=False, title="pretreatment", title_fontsize=7)
    fig.tight_layout()
    return fig


def madrs_change_figure(madrs: pd.DataFrame, *, level: float = 0.95):
    """MADRS before and 24 h after each infusion by pretreatment (left) and the change per session (right),
    means with t confidence intervals; the subject-sessions' changes are shown as points."""
    summary = madrs_summary(madrs, level)
    if summary.empty:
        raise ValueError("no MADRS scores to draw")
    pretreatments = list(summary["pretreatment"].unique())
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4), gridspec_kw={"width_ratios": [1.3, 1]})
    width = 0.08 * (len(pretreatments) - 1)
    for j, pre in enumerate(pretreatments):
        s = summary[(summary["pretreatment"] == pre) & summary["measure"].isin(["before", "24h"])]
        x = np.array([0.0, 1.0]) + (j * 0.08 - width / 2)
        left.errorbar(x, s["mean"], yerr=_yerr(s["mean"], s["ci_low"], s["ci_high"]), color=f"C{j}", marker="o",
                      capsize=3, lw=1.2, label=str(pre), gid=f"madrs-{pre}")
        change = summary[(summary["pretreatment"] == pre) & (summary["measure"] == "change")]
        right.errorbar([j], change["mean"], yerr=_yerr(change["mean"], change["ci_low"], change["ci_high"]),
                       color=f"C{j}", marker="s", ms=7, capsize=4, lw=1.5, gid=f"madrs-change-{pre}")
        part = madrs[madrs["pretreatment"] == pre]
        wide = part.pivot_table(index=["participant_id", "session_id"], columns="time", values="value",
                                aggfunc="mean")
        if {0.0, 1.0} <= set(wide.columns):
            d = (wide[1.0] - wide[0.0]).dropna().to_numpy()
            offsets = np.linspace(-0.15, 0.15, d.size) if d.size > 1 else np.zeros(d.size)
            right.plot(j + 0.25 + offsets, d, ".", color=f"C{j}", alpha=0.5, ms=4)
    left.set_xticks([0, 1], ["before", "24 h"])
    left.set_ylabel(f"MADRS (mean, {level:.0%} CI)")
    left.set_title("MADRS by pretreatment", fontsize=9)
    left.legend(fontsize=7, frameon=False, title="pretreatment", title_fontsize=7)
    right.axhline(0.0, color="0.5", ls="--", lw=0.8)
    right.set_xticks(range(len(pretreatments)), [str(p) for p in pretreatments])
    right.set_xlim(-0.6, len(pretreatments) - 0.1)
    right.set_ylabel("MADRS change (24 h - before)")
    right.set_title("change per session", fontsize=9)
    fig.tight_layout()
    return fig
