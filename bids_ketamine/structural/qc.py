"""QC figure of one participant's grey-matter features: the modulated GM map over the T1w (or template) in MNI space.

Why this view: a failed registration or segmentation shows at once as GM off the cortex, a misplaced cerebellum or
GM in the ventricles; the title carries TIV and total GM so implausible volumes stand out in a report. Slices are
labelled in MNI millimetres (a reader compares them with an atlas, not with our grid) and a colour bar gives the
scale of the modulated GM.
"""

from __future__ import annotations

import numpy as np


def _slices(volume: np.ndarray, axis: int, n: int) -> list[int]:
    """``n`` evenly spaced slice indices through the non-zero extent of ``volume`` along ``axis``."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(np.abs(volume).sum(axis=other) > 0)
    lo, hi = (present[0], present[-1]) if present.size else (0, volume.shape[axis] - 1)
    return [int(round(v)) for v in np.linspace(lo + (hi - lo) * 0.12, hi - (hi - lo) * 0.12, n)]


def slice_mm(affine: np.ndarray, axis: int, index: int, shape: tuple[int, ...]) -> float:
    """World coordinate (mm) along ``axis`` of slice ``index`` of a grid (at the grid's centre in the other axes)."""
    voxel = np.asarray(shape, dtype=float) / 2.0
    voxel[axis] = index
    return float((np.asarray(affine, dtype=float) @ np.r_[voxel, 1.0])[axis])


def gm_qc_figure(background: np.ndarray, gm_modulated: np.ndarray, *, affine: np.ndarray, title: str,
                 n_slices: int = 6):
    """A figure: axial (top) and coronal (bottom) slices of ``background`` with the GM map in colour over it,
    slices labelled in MNI mm (``z``, ``y`` from ``affine``) and a colour bar of the modulated GM.

    Both arrays are on the same MNI grid (RAS voxel axes); returns the matplotlib figure (caller saves and closes).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if background.shape != gm_modulated.shape:
        raise ValueError(f"shapes differ: background {background.shape} vs GM {gm_modulated.shape}")
    bg = np.asarray(background, dtype=float)
    hi = np.percentile(bg[bg > 0], 99) if (bg > 0).any() else 1.0
    gm = np.asarray(gm_modulated, dtype=float)
    vmax = max(float(np.percentile(gm[gm > 0], 99.5)) if (gm > 0).any() else 1.0, 1e-6)
    fig, axes = plt.subplots(2, n_slices, figsize=(1.6 * n_slices + 0.8, 3.8), facecolor="black")
    overlay = None
    for row, axis in enumerate((2, 1)):
        for col, index in enumerate(_slices(bg if bg.any() else gm, axis, n_slices)):
            ax = axes[row, col]
            b = np.take(bg, index, axis=axis).T
            g = np.take(gm, index, axis=axis).T
            ax.imshow(b, cmap="gray", vmin=0, vmax=hi, origin="lower", interpolation="nearest")
            overlay = ax.imshow(np.ma.masked_less(g, 0.1 * vmax), cmap="hot", vmin=0, vmax=vmax, alpha=0.55,
                                origin="lower", interpolation="nearest")
            ax.set_axis_off()
            ax.set_title(f"{'z' if axis == 2 else 'y'} = {slice_mm(affine, axis, index, bg.shape):.0f} mm",
                         color="white", fontsize=7)
    fig.suptitle(title, color="white", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.9, bottom=0.01, top=0.86, wspace=0.02, hspace=0.15)
    bar = fig.colorbar(overlay, cax=fig.add_axes((0.92, 0.1, 0.015, 0.7)))
    bar.set_label("modulated GM (mm3 per mm3 of template)", color="white", fontsize=7)
    bar.ax.tick_params(colors="white", labelsize=6)
    return fig
