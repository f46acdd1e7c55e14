"""Grey-matter features: Jacobian modulation of a GM probability map in MNI space, regional volumes and TIV.

Why modulation: a GM probability map warped to MNI space says *where* grey matter is, not *how much*. Multiplying
it by the Jacobian determinant of the MNI-to-subject map (subject volume per MNI volume) restores the amount, so a
region's sum of modulated GM x voxel volume is that region's GM volume in the subject (mm^3).

Transforms follow ITK conventions: a transform maps points of the fixed (MNI) space to the moving (T1w) space, in
LPS millimetres; a composite applies its last component first (sMRIPrep's ``..._mode-image_xfm.h5`` stores
[affine, displacement field], i.e. the field is applied to the MNI point, then the affine). Everything here is
converted to RAS (nibabel's convention); the Jacobian determinant does not depend on the LPS/RAS choice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_ketamine.errors import BadDataError

#: LPS <-> RAS flip (its own inverse).
_FLIP = np.diag([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------------------------------------------- input checks
def check_t1w_image(img, path: str | Path) -> np.ndarray:
    """The T1w data as a 3-D float array, or ``BadDataError`` when it cannot be a head image.

    Refuses 2-D images (or a single slice), images without signal (all zero or constant), images with non-finite
    values, a field of view smaller than 60 mm or larger than 500 mm along an axis, and volumes whose foreground
    fills the field of view's faces like noise does (a head touches at most the neck side).
    """
    path = Path(path)
    shape = img.shape
    squeezed = tuple(s for s in shape if s > 1)
    if len(squeezed) < 3:
        raise BadDataError(f"T1w image is {len(squeezed)}-D (shape {shape}), not a 3-D volume", path=path,
                           fix="give the full 3-D T1w volume, not a single slice")
    if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
        raise BadDataError(f"T1w image is {len(shape)}-D with {int(np.prod(shape[3:]))} volumes", path=path,
                           fix="give one 3-D T1w volume (average repeated acquisitions first)")
    data = np.asarray(img.dataobj, dtype=np.float32).reshape(shape[:3])
    finite = np.isfinite(data)
    if not finite.all():
        raise BadDataError(f"T1w image has {int((~finite).sum())} NaN or infinite voxels", path=path,
                           fix="re-export the T1w from the scanner data; NaNs are not a valid intensity")
    if not data.any() or float(data.max()) == float(data.min()):
        raise BadDataError("T1w image is empty (every voxel has the same value)", path=path,
                           fix="re-export the T1w; this file carries no image")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    extent = zooms * np.asarray(shape[:3])
    if (extent < 60).any() or (extent > 500).any() or (zooms > 4).any():
        raise BadDataError(f"T1w field of view {np.round(extent).astype(int).tolist()} mm with voxels "
                           f"{np.round(zooms, 2).tolist()} mm does not hold a human head", path=path,
                           fix="give a whole-head T1w (field of view 150-300 mm, voxels <= 2 mm)")
    foreground = data > _otsu_threshold(data)
    faces = [foreground[0], foreground[-1], foreground[:, 0], foreground[:, -1], foreground[:, :, 0],
             foreground[:, :, -1]]
    face_fraction = sorted(float(f.mean()) for f in faces)
    # a head fills at most one face substantially (neck); noise or a phantom filling the box fills them all
    if face_fraction[-2] > 0.35:
        raise BadDataError("T1w image does not look like a head: its bright voxels fill the edges of the field "
                           "of view (noise or a non-brain object)", path=path,
                           fix="check that this file is a T1w head scan")
    return data


def _otsu_threshold(data: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold on the positive intensities (why: it separates head from background without a model)."""
    values = data[data > 0]
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres) / np.maximum(w0, 1)
    m1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def check_gm_map(img, path: str | Path) -> np.ndarray:
    """A GM probability (or modulated GM) map as a 3-D array; ``BadDataError`` when it is not one."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise BadDataError(f"GM map is {data.ndim}-D", path=path, fix="give a 3-D grey-matter map")
    if not np.isfinite(data).all():
        raise BadDataError("GM map has NaN or infinite values", path=path, fix="re-run the segmentation")
    if float(data.max()) <= 0:
        raise BadDataError("GM map is empty", path=path, fix="re-run the segmentation")
    if float(data.min()) < -1e-3:
        raise BadDataError(f"GM map has negative values (min {float(data.min()):.3g})", path=path,
                           fix="give a GM probability (0-1) or modulated GM map")
    return data


# ---------------------------------------------------------------------------------------------------- transforms
@dataclass(frozen=True)
class AffineComponent:
    """A linear map of RAS points: ``y = matrix @ x + offset`` (mm)."""

    matrix: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class DisplacementField:
    """A dense displacement field: ``y = x + u(x)`` with ``u`` sampled on a grid (RAS, mm).

    ``vectors`` has shape (X, Y, Z, 3); ``grid_affine`` maps voxel indices to RAS mm.
    """

    vectors: np.ndarray
    grid_affine: np.ndarray


def read_itk_transform(path: str | Path) -> list[AffineComponent | DisplacementField]:
    """Components of an ITK transform file in ITK storage order (a composite applies the last one first).

    Reads the HDF5 format (``.h5``: sMRIPrep's ``from-T1w_to-MNI..._mode-image_xfm.h5``, ANTs' ``Composite.h5``)
    and displacement-field NIfTI warps (``.nii.gz``, ANTs' 5-D vector images).
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return [_read_warp_nifti(path)]
    if not name.endswith((".h5", ".hdf5")):
        raise BadDataError("unknown transform format", path=path,
                           fix="give the ITK .h5 composite or a displacement-field .nii.gz from sMRIPrep/ANTs")
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise BadDataError(f"cannot read the transform as HDF5 ({exc})", path=path,
                           fix="give the T1w-to-MNI .h5 written by sMRIPrep/fMRIPrep") from exc
    components: list[AffineComponent | DisplacementField] = []
    with handle:
        if "TransformGroup" not in handle:
            raise BadDataError("HDF5 file has no ITK 'TransformGroup'", path=path,
                               fix="give the T1w-to-MNI .h5 written by sMRIPrep/fMRIPrep")
        group = handle["TransformGroup"]
        for key in sorted(group, key=int):
            item = group[key]
            kind = _h5_string(item["TransformType"][()])
            if kind.startswith("CompositeTransform"):
                continue
            params = np.asarray(item["TransformParameters"][()], dtype=float).ravel()
            fixed = np.asarray(item["TransformFixedParameters"][()], dtype=float).ravel()
            if kind.startswith(("AffineTransform", "MatrixOffsetTransformBase")):
                components.append(_itk_affine(params, fixed))
            elif kind.startswith("DisplacementFieldTransform"):
                components.append(_itk_field(params, fixed, path))
            else:
                raise BadDataError(f"unsupported ITK transform type {kind!r}", path=path,
                                   fix="give an affine + displacement-field composite (sMRIPrep's default)")
    if not components:
        raise BadDataError("transform file holds no transform", path=path, fix="re-run sMRIPrep")
    return components


def _h5_string(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def _itk_affine(params: np.ndarray, fixed: np.ndarray) -> AffineComponent:
    """ITK affine in LPS (``y = M (x - c) + c + t``) as a RAS affine."""
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    centre = fixed[:3] if fixed.size >= 3 else np.zeros(3)
    offset_lps = translation + centre - matrix @ centre
    return AffineComponent(matrix=_FLIP @ matrix @ _FLIP, offset=_FLIP @ offset_lps)


def _itk_field(params: np.ndarray, fixed: np.ndarray, path: Path) -> DisplacementField:
    """ITK displacement field: fixed = size(3), origin(3), spacing(3), direction(9); x index fastest, vectors LPS."""
    size = fixed[:3].astype(int)
    if params.size != int(np.prod(size)) * 3:
        raise BadDataError(f"displacement field has {params.size} values for a {size.tolist()} grid", path=path,
                           fix="the transform file is truncated; re-run sMRIPrep")
    origin, spacing, direction = fixed[3:6], fixed[6:9], fixed[9:18].reshape(3, 3)
    vectors = params.reshape(size[2], size[1], size[0], 3).transpose(2, 1, 0, 3) @ _FLIP
    grid = np.eye(4)
    grid[:3, :3] = _FLIP @ direction @ np.diag(spacing)
    grid[:3, 3] = _FLIP @ origin
    return DisplacementField(vectors=np.ascontiguousarray(vectors), grid_affine=grid)


def _read_warp_nifti(path: Path) -> DisplacementField:
    import nibabel as nib

    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 5 and data.shape[3] == 1 and data.shape[4] == 3:
        data = data[:, :, :, 0, :]
    if data.ndim != 4 or data.shape[3] != 3:
        raise BadDataError(f"warp has shape {data.shape}, not a 3-D vector field", path=path,
                           fix="give an ITK/ANTs displacement field (X, Y, Z, 1, 3)")
    return DisplacementField(vectors=data @ _FLIP, grid_affine=img.affine.copy())


def field_jacobian_determinant(field: DisplacementField) -> np.ndarray:
    """det(I + du/dx) on the field's own grid (central differences; one-sided at the edges)."""
    inv = np.linalg.inv(field.grid_affine[:3, :3])
    # d u_i / d index_k, then chain rule to physical coordinates: du/dx = du/dindex @ inv(grid)
    grads = np.stack([np.stack(np.gradient(field.vectors[..., i], axis=(0, 1, 2)), axis=-1) for i in range(3)],
                     axis=-2)  # (..., i, k)
    jac = grads @ inv + np.eye(3)
    return np.linalg.det(jac)


def _sample(volume: np.ndarray, grid_affine: np.ndarray, points: np.ndarray, order: int = 1) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    ijk = (points - grid_affine[:3, 3]) @ np.linalg.inv(grid_affine[:3, :3]).T
    return map_coordinates(volume, ijk.T, order=order, mode="nearest")


def jacobian_on_grid(components: list[AffineComponent | DisplacementField], shape: tuple[int, int, int],
                     affine: np.ndarray) -> np.ndarray:
    """Jacobian determinant of the composite (last component applied first) at every voxel of a target grid.

    The chain rule makes it a product: each component's determinant evaluated where that component acts.
    """
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    det = np.ones(len(points))
    for comp in reversed(components):
        if isinstance(comp, AffineComponent):
            det *= np.linalg.det(comp.matrix)
            points = points @ comp.matrix.T + comp.offset
        else:
            det *= _sample(field_jacobian_determinant(comp), comp.grid_affine, points)
            shift = np.stack([_sample(comp.vectors[..., i], comp.grid_affine, points) for i in range(3)], axis=1)
            points = points + shift
    return det.reshape(shape)


def check_jacobian(jac: np.ndarray, path: str | Path) -> None:
    """A folding or absurd transform gives a non-positive or extreme determinant: refuse it."""
    if not np.isfinite(jac).all() or (jac <= 0).mean() > 0.001 or np.median(jac) < 0.3 or np.median(jac) > 3:
        raise BadDataError(f"the T1w-to-MNI transform has an implausible Jacobian (median {np.median(jac):.3g}, "
                           f"{100 * (jac <= 0).mean():.2f} % folded voxels)", path=path,
                           fix="check the registration in the sMRIPrep report and re-run it")


def modulate(gm_probability: np.ndarray, jacobian: np.ndarray) -> np.ndarray:
    """Modulated GM = probability x Jacobian determinant (sum x voxel volume = native GM volume)."""
    if gm_probability.shape != jacobian.shape:
        raise ValueError(f"shapes differ: GM {gm_probability.shape} vs Jacobian {jacobian.shape}")
    return (np.clip(gm_probability, 0, 1) * np.clip(jacobian, 0, None)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- regions
def resample_to_grid(img, shape: tuple[int, int, int], affine: np.ndarray, order: int = 1) -> np.ndarray:
    """An image's values at the voxel centres of a target grid (``order`` 0 nearest, 1 linear; 0 outside)."""
    from scipy.ndimage import map_coordinates

    data = np.asarray(img.dataobj)
    data = data.astype(np.int32) if order == 0 else data.astype(np.float32)
    if data.shape == tuple(shape) and np.allclose(img.affine, affine, atol=1e-4):
        return data
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1).T
    points = ijk @ affine[:3, :3].T + affine[:3, 3]
    src = (points - img.affine[:3, 3]) @ np.linalg.inv(img.affine[:3, :3]).T
    return map_coordinates(data, src.T, order=order, mode="constant", cval=0).reshape(shape)


_LABEL_CACHE: dict[tuple, np.ndarray] = {}


def labels_on_grid(atlas_img, shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Atlas labels at the voxel centres of a target grid (nearest neighbour; 0 outside the atlas).

    Cached per (atlas image, grid): every participant of a dataset usually shares one grid.
    """
    key = (id(atlas_img), tuple(shape), np.round(np.asarray(affine, dtype=float), 6).tobytes())
    if key not in _LABEL_CACHE:
        if len(_LABEL_CACHE) > 8:
            _LABEL_CACHE.clear()
        _LABEL_CACHE[key] = resample_to_grid(atlas_img, shape, affine, order=0).astype(np.int32)
        _LABEL_CACHE[key].setflags(write=False)
    return _LABEL_CACHE[key]


def regional_volumes(modulated_gm: np.ndarray, voxel_mm3: float, labels: np.ndarray,
                     indices: np.ndarray) -> np.ndarray:
    """GM volume (mm^3) of each atlas region: sum of modulated GM x voxel volume over the region's voxels."""
    if labels.shape != modulated_gm.shape:
        raise ValueError(f"shapes differ: labels {labels.shape} vs GM {modulated_gm.shape}")
    indices = np.asarray(indices, dtype=np.int64)
    sums = np.bincount(labels.ravel(), weights=modulated_gm.ravel().astype(np.float64),
                       minlength=int(max(indices.max(), labels.max())) + 1)
    return sums[indices] * float(voxel_mm3)


def regional_table(modulated_gm_img, atlas, *, tiv_mm3: float | None):
    """Regional GM volumes of an atlas as a table: region, hemisphere, structure, gm_volume_mm3, gm_fraction_tiv."""
    import pandas as pd

    data = np.asarray(modulated_gm_img.dataobj, dtype=np.float32)
    labels = labels_on_grid(atlas.image, data.shape, modulated_gm_img.affine)
    voxel_mm3 = float(abs(np.linalg.det(modulated_gm_img.affine[:3, :3])))
    volumes = regional_volumes(data, voxel_mm3, labels, atlas.labels["index"].to_numpy())
    table = pd.DataFrame({
        "region": atlas.labels["name"].to_numpy(),
        "hemisphere": atlas.labels["hemisphere"].to_numpy(),
        "structure": atlas.labels["structure"].to_numpy(),
        "gm_volume_mm3": volumes,
    })
    table["gm_fraction_tiv"] = volumes / tiv_mm3 if tiv_mm3 else np.nan
    return table


def total_volume(probability: np.ndarray, voxel_mm3: float) -> float:
    """Sum of a probability map x voxel volume (mm^3)."""
    return float(np.asarray(probability, dtype=np.float64).sum() * voxel_mm3)


def smooth_fwhm(data: np.ndarray, affine: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """Gaussian smoothing with a FWHM in mm (why: voxel-wise classifiers need some spatial pooling)."""
    if fwhm_mm <= 0:
        return data
    from scipy.ndimage import gaussian_filter

    sigma_vox = fwhm_mm / np.sqrt(8 * np.log(2)) / np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return gaussian_filter(data, sigma=sigma_vox, mode="constant").astype(np.float32)
