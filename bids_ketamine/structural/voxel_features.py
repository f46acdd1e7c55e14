"""Voxel-wise grey-matter features (NeuroMiner-style), the option beside regional volumes.

Each participant's Jacobian-modulated GM map (MNI space, written by the participant level) is optionally smoothed
(Gaussian, FWHM in mm, on its own grid, so the smoothing also removes what the coarser grid cannot carry), sampled
on an isotropic MNI grid (``voxel_size_mm``, 4 mm by default) and masked with a fixed grey-matter mask (nilearn's
MNI152 GM template above a threshold, shipped with nilearn, label-free and the same for every subject and every
fold). The values are in mm^3 of subject GM per grid voxel (modulated density x voxel volume), so a region's
voxels sum to about its regional volume.

Why a fixed template mask and not one from the cohort: a mask from the data would be computed once on all subjects
(test folds included); a template mask uses nobody's data. PCA, the step that reduces ~20 000 voxels to at most
n - 1 components, is not done here: it is a step of the scikit-learn pipeline (``model.make_preprocessor``), so it
is fitted inside every training fold of the nested CV and saved with the model bundle.

Haufe maps: the Haufe pattern per voxel (``interpret.pipeline_pattern``, which maps the SVM weights back through
the PCA) is written back into the grid as a NIfTI image in MNI space (``pattern_image``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError

#: Feature-type names (sidecars, model card, bundle check).
REGIONAL = "regional"
VOXEL = "voxel"
#: Prefix of voxel feature columns: ``vox-<i>_<j>_<k>`` (grid indices, so a column says where it is).
VOXEL_PREFIX = "vox-"


@dataclass(frozen=True)
class VoxelGrid:
    """An isotropic MNI grid and the GM mask on it: what every voxel feature of a model refers to."""

    shape: tuple[int, int, int]
    affine: np.ndarray  # voxel index -> MNI mm (RAS)
    mask: np.ndarray  # bool (shape), the voxels used as features

    @property
    def voxel_size_mm(self) -> float:
        return float(abs(self.affine[0, 0]))

    @property
    def columns(self) -> list[str]:
        i, j, k = np.nonzero(self.mask)
        return [f"{VOXEL_PREFIX}{a}_{b}_{c}" for a, b, c in zip(i, j, k)]

    def describe(self) -> dict:
        """What the model card and sidecars record about the grid."""
        return {"voxel_size_mm": self.voxel_size_mm, "shape": list(self.shape),
                "affine": np.round(self.affine, 6).tolist(), "n_voxels": int(self.mask.sum())}


def mni_grid(voxel_size_mm: float, *, gm_threshold: float = 0.2) -> VoxelGrid:
    """An isotropic grid covering nilearn's MNI152 field of view, masked where its GM template exceeds
    ``gm_threshold`` (the template sampled linearly on the grid)."""
    from nilearn import datasets

    from bids_ketamine.structural.gm_features import resample_to_grid

    if not 1.0 <= voxel_size_mm <= 12.0:
        raise ValueError(f"voxel_size_mm must be within 1-12 mm, got {voxel_size_mm}")
    template = datasets.load_mni152_gm_template(resolution=2)
    lo = template.affine[:3, 3]
    hi = lo + (np.asarray(template.shape) - 1) * np.diag(template.affine)[:3]
    shape = tuple(int(np.floor((h - l) / voxel_size_mm)) + 1 for l, h in zip(lo, hi))
    affine = np.diag([voxel_size_mm] * 3 + [1.0])
    affine[:3, 3] = lo
    gm = resample_to_grid(template, shape, affine, order=1)
    return VoxelGrid(shape=shape, affine=affine, mask=np.asarray(gm > gm_threshold))


def voxel_vector(modulated_img, grid: VoxelGrid, *, fwhm_mm: float = 0.0, path: str | Path | None = None
                 ) -> np.ndarray:
    """A participant's masked voxel features (mm^3 of GM per grid voxel) from a modulated GM map in MNI space."""
    from bids_ketamine.structural.gm_features import check_gm_map, smooth_fwhm

    data = check_gm_map(modulated_img, path or "modulated GM map")
    if fwhm_mm > 0:
        data = smooth_fwhm(data, modulated_img.affine, fwhm_mm)
    density = _box_average(np.asarray(data, dtype=np.float32), modulated_img.affine, grid)
    values = density[grid.mask].astype(np.float64) * grid.voxel_size_mm ** 3
    covered = float(np.mean(values > 0)) if values.size else 0.0
    if covered < 0.5:
        raise BadDataError(f"the modulated GM map covers only {covered:.0%} of the grey-matter mask",
                           path=path, fix="give a modulated GM map in MNI space (space-MNI152...)")
    return values


def _box_average(data: np.ndarray, affine: np.ndarray, grid: VoxelGrid) -> np.ndarray:
    """Mean density over each grid voxel's box (linear samples on a sub-grid of k^3 points per voxel, k = target /
    source voxel size rounded up), so a coarser grid keeps the GM volume instead of point-sampling it."""
    from scipy.ndimage import map_coordinates

    source_mm = float(np.min(np.sqrt((affine[:3, :3] ** 2).sum(axis=0))))
    k = max(1, int(np.ceil(grid.voxel_size_mm / source_mm - 1e-6)))
    sub = (np.arange(k) + 0.5) / k - 0.5  # sub-voxel offsets in grid voxels
    ijk = np.indices(grid.shape, dtype=np.float64).reshape(3, -1).T
    to_source = np.linalg.inv(affine) @ grid.affine
    total = np.zeros(len(ijk))
    for di in sub:
        for dj in sub:
            for dk in sub:
                pts = (ijk + (di, dj, dk)) @ to_source[:3, :3].T + to_source[:3, 3]
                total += map_coordinates(data, pts.T, order=1, mode="constant", cval=0)
    return (total / k ** 3).reshape(grid.shape)


def voxel_table(images: dict[str, object], grid: VoxelGrid, *, fwhm_mm: float = 0.0,
                paths: dict[str, Path] | None = None) -> pd.DataFrame:
    """One row per participant (index ``participant_id``), one column per masked grid voxel."""
    paths = paths or {}
    rows = {sid: voxel_vector(img, grid, fwhm_mm=fwhm_mm, path=paths.get(sid)) for sid, img in images.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=grid.columns)
    table.index.name = "participant_id"
    return table


def grid_from_columns(columns, affine: np.ndarray, shape: tuple[int, int, int]) -> VoxelGrid:
    """The grid whose mask holds exactly the voxels named by ``vox-i_j_k`` columns (for a saved model)."""
    mask = np.zeros(shape, dtype=bool)
    for col in columns:
        i, j, k = (int(v) for v in str(col)[len(VOXEL_PREFIX):].split("_"))
        mask[i, j, k] = True
    return VoxelGrid(shape=tuple(shape), affine=np.asarray(affine, dtype=float), mask=mask)


def pattern_image(values: pd.Series, grid: VoxelGrid):
    """A NIfTI image in MNI space with each voxel feature's value (e.g. its Haufe activation) at its voxel."""
    import nibabel as nib

    out = np.zeros(grid.shape, dtype=np.float32)
    for col, value in values.items():
        i, j, k = (int(v) for v in str(col)[len(VOXEL_PREFIX):].split("_"))
        out[i, j, k] = float(value)
    img = nib.Nifti1Image(out, grid.affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(grid.affine, code=4)  # 4 = MNI152
    img.header.set_sform(grid.affine, code=4)
    return img


def feature_type_of(columns) -> str:
    """``voxel`` when every column is a ``vox-i_j_k`` voxel, ``regional`` otherwise."""
    cols = [str(c) for c in columns]
    return VOXEL if cols and all(c.startswith(VOXEL_PREFIX) for c in cols) else REGIONAL


def check_feature_type(expected: str, columns, *, path: str | Path | None = None) -> None:
    """Refuse features of the other type than the model was trained on (one line, exit 65)."""
    got = feature_type_of(columns)
    if got != expected:
        raise BadDataError(f"the model was trained on {expected} features but the input has {got} features",
                           path=path, fix=f"set structural.feature_type = \"{expected}\" to apply this model")


def load_voxel_features(output_dir: str | Path, subjects, grid: VoxelGrid, *, fwhm_mm: float = 0.0,
                        sessions: dict | None = None) -> pd.DataFrame:
    """Voxel features of ``subjects`` (ids without ``sub-``) from the participant level's modulated GM maps
    (``sub-X/[ses-Y/]anat/*_label-GM_desc-modulated_probseg.nii.gz``; the session of the regional table when one
    is given). A participant without a map (FreeSurfer source) is refused: voxel features need a map."""
    import nibabel as nib

    from bids_ketamine.errors import MissingInputError

    output_dir = Path(output_dir)
    sessions = sessions or {}
    images, paths = {}, {}
    for subject in subjects:
        ses = sessions.get(subject)
        folder = output_dir / f"sub-{subject}" / (f"ses-{ses}/anat" if ses else "anat")
        found = sorted(folder.glob("*_label-GM_desc-modulated_probseg.nii*"))
        if not found:
            raise MissingInputError(f"no modulated GM map for sub-{subject} (voxel-wise features need one)",
                                    path=folder, fix="use a map-producing feature source (builtin, fmriprep, cat12) "
                                                     "or set structural.feature_type = \"regional\"")
        paths[subject] = found[0]
        images[subject] = nib.load(found[0])
    return voxel_table(images, grid, fwhm_mm=fwhm_mm, paths=paths)
