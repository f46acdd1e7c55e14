"""Synthetic anatomy: a raw T1w and sMRIPrep-style derivatives whose grey-matter volumes carry a planted effect.

Why this construction: the structural analysis measures GM volume as (GM probability in MNI) x (Jacobian of the
MNI-to-T1w map). So the subject is made *from* a planted map: a smooth displacement field ``u`` on the MNI grid whose
divergence equals a chosen log-volume change ``s`` (``u`` = gradient of the solution of Poisson's equation
``lap p = s``), composed with a random head-size affine ``A``. A point ``x`` of MNI space sits at ``A (x + u(x))`` in
the subject, so the subject's local volume is ``det A x det(I + du/dx) ~ det A x exp(s)``:

- ``gm_effect`` (the latent score ``z``) makes every prefrontal DK region larger by ``FRACTION_PER_Z x z`` and both
  cerebellar hemispheres smaller by the same fraction (smoothly tapered at the region borders);
- ``site_offset`` scales the GM probability globally by ``1 + site_offset`` (a scanner/segmentation site effect);
- a per-subject random smooth field (SD ``ANATOMICAL_NOISE_SD`` of log-volume) and head size (SD ``HEAD_SCALE_SD``
  of the linear scale) give ordinary anatomical variability.

The raw T1w is nilearn's MNI152 template pulled through the inverse map, so the built-in pipeline can run on it; the
derivatives follow sMRIPrep's names and formats (ITK HDF5 composite [affine, displacement field], LPS mm).
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

#: Fractional GM volume change per unit of the latent score in the planted regions (interior of each region).
FRACTION_PER_Z = 0.06
#: DK regions (both hemispheres) made larger for positive scores: the prefrontal cortex.
FRONTAL_REGIONS = ("superiorfrontal", "rostralmiddlefrontal", "caudalmiddlefrontal", "lateralorbitofrontal",
                   "medialorbitofrontal", "parsopercularis", "parstriangularis", "parsorbitalis", "frontalpole")
#: Regions made smaller for positive scores.
CEREBELLAR_REGIONS = ("cerebellum",)
#: Gaussian taper (mm) of the planted regions' borders, so the displacement field stays smooth.
TAPER_SIGMA_MM = 4.0
#: SD of the random log-volume field (anatomical variability) and its smoothness (Gaussian sigma, mm).
ANATOMICAL_NOISE_SD = 0.03
ANATOMICAL_NOISE_SIGMA_MM = 8.0
#: SD of the log linear head scale (head size: ~9 % SD of volume), rotation (degrees) and shift (mm).
HEAD_SCALE_SD = 0.03
ROTATION_SD_DEG = 2.0
SHIFT_SD_MM = 3.0
#: SD of additive noise of the GM probability map and of the T1w (fraction of its maximum).
PROBSEG_NOISE_SD = 0.02
T1W_NOISE_SD = 0.01
SPACE = "MNI152NLin2009cAsym"
#: Edge (mm) of the synthetic spectroscopy voxel, and its centre in MNI space: the pregenual anterior cingulate,
#: the voxel of the fMRS study (about 2/3 grey matter, with white matter and the interhemispheric CSF).
MRS_VOXEL_MM = 20.0
MRS_VOXEL_MNI = (0.0, 42.0, 8.0)
_FLIP = np.diag([-1.0, -1.0, 1.0])
#: Whole-head option: nilearn's MNI152 T1 is a brain alone (zero outside its brain mask), so a scalp is added as
#: shells around the brain mask, in mm from its edge: dark skull and CSF up to SKULL_MM, then scalp (fat, bright in
#: T1w, SCALP_INTENSITY x the template's 95th brain percentile) up to SCALP_MM.
SKULL_MM = 6.0
SCALP_MM = 14.0
SCALP_INTENSITY = 0.9


def _with_scalp(t1_tpl: np.ndarray, brain: np.ndarray, voxel_mm: float) -> np.ndarray:
    """The template T1 with a skull (dark) and scalp (bright) shell around its brain mask."""
    from scipy.ndimage import distance_transform_edt

    distance = distance_transform_edt(~brain) * voxel_mm
    scalp = (distance > SKULL_MM) & (distance <= SCALP_MM)
    head = t1_tpl.copy()
    head[scalp] = SCALP_INTENSITY * float(np.percentile(t1_tpl[brain], 95))
    return head


@lru_cache(maxsize=2)
def _templates(resolution_mm: int):
    """nilearn's MNI152 T1, GM probability and brain mask on its grid, and the default atlas labels on that grid."""
    from nilearn import datasets

    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.structural.gm_features import labels_on_grid

    t1 = datasets.load_mni152_template(resolution=resolution_mm)
    gm = datasets.load_mni152_gm_template(resolution=resolution_mm)
    mask = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    atlas = load_default_atlas()
    labels = labels_on_grid(atlas.image, t1.shape, t1.affine)
    return (t1.get_fdata(dtype=np.float32), gm.get_fdata(dtype=np.float32), mask.get_fdata(dtype=np.float32) > 0.5,
            t1.affine.copy(), labels, atlas.labels.copy())


@lru_cache(maxsize=2)
def _tissue_templates(resolution_mm: int) -> dict[str, np.ndarray]:
    """Template GM, WM and CSF probabilities on the MNI grid; CSF is the rest of the brain mask (nilearn ships no
    CSF map), so the three add up to one inside the brain."""
    from nilearn import datasets

    _, gm, brain, _, _, _ = _templates(resolution_mm)
    wm = datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(dtype=np.float32)
    gm, wm = np.clip(gm, 0, 1), np.clip(wm, 0, 1)
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0, 1), 0.0).astype(np.float32)
    return {"gm": gm, "wm": wm, "csf": csf}


def _subject_to_template_index(points: np.ndarray, matrix: np.ndarray, offset: np.ndarray, field: np.ndarray,
                               field_affine: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Template voxel indices (3, n) of subject points (n, 3): inverts y = M (x + u(x)) + t by the fixed point
    x = w - u(x), w = M^-1 (y - t)."""
    from scipy.ndimage import map_coordinates

    w = (points - offset) @ np.linalg.inv(matrix).T
    field_inv = np.linalg.inv(field_affine[:3, :3])
    x = w.copy()
    for _ in range(4):
        fidx = ((x - field_affine[:3, 3]) @ field_inv.T).T
        x = w - np.stack([map_coordinates(field[..., i], fidx, order=1, mode="nearest") for i in range(3)], axis=1)
    return ((x - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).T


def planted_region_names(atlas_labels) -> dict[str, list[str]]:
    """Atlas names of the planted regions: ``increase`` (frontal) and ``decrease`` (cerebellar)."""
    names = atlas_labels["name"].tolist()
    up = [n for n in names if n.split("_", 1)[-1] in FRONTAL_REGIONS]
    down = [n for n in names if n.split("_", 1)[-1] in CEREBELLAR_REGIONS]
    return {"increase": up, "decrease": down}


def _territories(labels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Each brain voxel takes the label of its nearest labelled voxel (why: a cortical ribbon is thinner than the
    taper, so the planted change is applied to each region's whole territory, white matter beneath included)."""
    from scipy.ndimage import distance_transform_edt

    nearest = distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    territory = labels[tuple(nearest)]
    return np.where(brain | (labels > 0), territory, 0)


def _upsample2(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation from a grid of twice the spacing (same origin) to ``shape``: exact at the fine points."""
    out = coarse
    for axis, n in enumerate(shape):
        a = np.moveaxis(out, axis, 0)
        nxt = np.concatenate([a[1:], a[-1:]], axis=0)
        fine = np.empty((2 * a.shape[0],) + a.shape[1:], dtype=a.dtype)
        fine[0::2] = a
        fine[1::2] = (a + nxt) / 2
        out = np.moveaxis(fine[:n], 0, axis)
    return np.ascontiguousarray(out)


def _poisson_gradient(source: np.ndarray, spacing_mm: float, pad: int) -> np.ndarray:
    """Displacement ``u = grad p`` with ``lap p = source`` (FFT, zero-padded box): ``div u = source``."""
    from scipy import fft

    shape = tuple(fft.next_fast_len(n + 2 * pad, real=True) for n in source.shape)
    padded = np.zeros(shape)
    padded[tuple(slice(pad, pad + n) for n in source.shape)] = source
    padded -= padded.mean()  # the padding absorbs the net volume change, spread thinly over the margin
    kx = 2 * np.pi * fft.fftfreq(shape[0], d=spacing_mm)[:, None, None]
    ky = 2 * np.pi * fft.fftfreq(shape[1], d=spacing_mm)[None, :, None]
    kz = 2 * np.pi * fft.rfftfreq(shape[2], d=spacing_mm)[None, None, :]
    k2 = kx**2 + ky**2 + kz**2
    k2[0, 0, 0] = 1.0
    p_hat = -fft.rfftn(padded) / k2
    p_hat[0, 0, 0] = 0.0
    crop = tuple(slice(pad, pad + n) for n in source.shape)
    return np.stack([fft.irfftn(1j * k * p_hat, s=shape)[crop] for k in (kx, ky, kz)], axis=-1)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _gz_nifti(data: np.ndarray, affine: np.ndarray, path: Path, *, dtype, intent: str | None = None,
              scale: float | None = None) -> None:
    """Write a NIfTI with gzip mtime 0 (byte-identical for identical data)."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    if scale is not None:
        img.header.set_slope_inter(scale, 0.0)
    if intent:
        img.header.set_intent(intent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _write_itk_composite(path: Path, matrix_ras: np.ndarray, offset_ras: np.ndarray, field_ras: np.ndarray,
                         field_affine: np.ndarray) -> None:
    """ITK HDF5 composite as sMRIPrep writes it: group 0 composite, 1 affine, 2 displacement field (LPS)."""
    import h5py

    matrix_lps = _FLIP @ matrix_ras @ _FLIP
    offset_lps = _FLIP @ offset_ras
    # multiples of 2**-12 mm (0.24 micrometre): exact in binary, so the zero low mantissa bits compress well
    vectors_lps = np.round((field_ras @ _FLIP) * 4096) / 4096
    size = np.array(field_ras.shape[:3], dtype=float)
    origin_lps = _FLIP @ field_affine[:3, 3]
    spacing = np.sqrt((field_affine[:3, :3] ** 2).sum(axis=0))
    direction_lps = _FLIP @ field_affine[:3, :3] @ np.diag(1 / spacing)
    fixed = np.concatenate([size, origin_lps, spacing, direction_lps.ravel()])
    params = vectors_lps.transpose(2, 1, 0, 3).ravel()  # x index fastest, components interleaved
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w", track_order=False) as h5:
        h5.create_dataset("HDFVersion", data=np.bytes_("1.8.16"))
        h5.create_dataset("ITKVersion", data=np.bytes_("5.3.0"))
        group = h5.create_group("TransformGroup")
        g0 = group.create_group("0")
        g0.create_dataset("TransformType", data=[np.bytes_("CompositeTransform_double_3_3")])
        g1 = group.create_group("1")
        g1.create_dataset("TransformType", data=[np.bytes_("AffineTransform_double_3_3")])
        g1.create_dataset("TransformParameters", data=np.concatenate([matrix_lps.ravel(), offset_lps]))
        g1.create_dataset("TransformFixedParameters", data=np.zeros(3))
        g2 = group.create_group("2")
        g2.create_dataset("TransformType", data=[np.bytes_("DisplacementFieldTransform_double_3_3")])
        g2.create_dataset("TransformParameters", data=params, compression="gzip", compression_opts=6,
                          shuffle=True, chunks=(min(params.size, 3 * 2**16),), track_times=False)
        g2.create_dataset("TransformFixedParameters", data=fixed)
    tmp.replace(path)


def write_synthetic_anat(bids_root: Path, fmriprep_root: Path, subject: str, *, gm_effect: float,
                         site_offset: float, seed: int, resolution_mm: float = 2.0,
                         mrs_voxel_mni: tuple[float, float, float] | None = None,
                         mrs_voxel_mm: float = MRS_VOXEL_MM, whole_head: bool = False) -> dict[str, Any]:
    """Write ``sub-<subject>``'s raw T1w (+ JSON) and sMRIPrep-style anatomical derivatives; return the truth.

    The raw T1w is skull-stripped (nilearn's template is a brain alone) unless ``whole_head``, which adds a skull
    and scalp around it (:func:`_with_scalp`).

    With ``mrs_voxel_mni`` (a spectroscopy voxel centre in MNI mm) it also writes sMRIPrep's T1w-space tissue
    probability maps (``label-{GM,WM,CSF}_probseg``) and returns, under ``"mrs_voxel"``, the voxel in the subject's
    scanner space (a cube of ``mrs_voxel_mm`` aligned with the head, as planned on the scanner) and its planted
    tissue fractions, computed on the template through the planted map from points spread inside the voxel (not
    from the written maps).

    The truth dict names the planted regions (atlas names of the default atlas), the fraction per unit score, and
    for this subject the expected fractional GM change of each planted region relative to the same subject with
    score 0 (the taper makes it a little smaller than ``FRACTION_PER_Z x gm_effect``).
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    res = int(round(resolution_mm))
    if res not in (1, 2) or abs(res - resolution_mm) > 1e-6:
        raise ValueError("resolution_mm must be 1 or 2 (the grids of nilearn's MNI152 templates)")
    if abs(FRACTION_PER_Z * gm_effect) >= 0.5:
        raise ValueError(f"gm_effect {gm_effect} would change volumes by >= 50 %; use a latent score in (-8, 8)")
    bids_root, fmriprep_root = Path(bids_root), Path(fmriprep_root)
    t1_tpl, gm_tpl, brain, affine, labels, atlas_labels = _templates(res)
    if whole_head:
        t1_tpl = _with_scalp(t1_tpl, brain, float(res))
    rng = np.random.default_rng(seed)
    regions = planted_region_names(atlas_labels)
    index_of = dict(zip(atlas_labels["name"], atlas_labels["index"]))

    # ---- the planted log-volume map s on a coarse field grid (2 x the image spacing)
    step = 2
    field_shape = tuple(int(np.ceil(n / step)) for n in t1_tpl.shape)
    field_affine = affine.copy()
    field_affine[:3, :3] = affine[:3, :3] * step
    spacing = float(res * step)
    territory = _territories(labels[::step, ::step, ::step], brain[::step, ::step, ::step])
    sigma = TAPER_SIGMA_MM / spacing
    frontal = gaussian_filter(np.isin(territory, [index_of[n] for n in regions["increase"]]).astype(float), sigma)
    cereb = gaussian_filter(np.isin(territory, [index_of[n] for n in regions["decrease"]]).astype(float), sigma)
    planted = np.log1p(FRACTION_PER_Z * gm_effect) * frontal + np.log1p(-FRACTION_PER_Z * gm_effect) * cereb
    noise = gaussian_filter(rng.standard_normal(field_shape), ANATOMICAL_NOISE_SIGMA_MM / spacing)
    noise *= ANATOMICAL_NOISE_SD / max(float(noise.std()), 1e-12)
    source = planted + noise
    field = _poisson_gradient(source, spacing, pad=max(field_shape) // 3)

    # ---- head-size affine (MNI point -> subject point after the field): y = M (x + u(x)) + t
    scale = float(np.exp(rng.normal(0, HEAD_SCALE_SD)))
    rot = _rotation(np.deg2rad(rng.normal(0, ROTATION_SD_DEG, 3)))
    matrix = scale * rot
    centre = np.array([0.0, -18.0, 18.0])  # near the centre of the brain: rotate and scale about it
    shift = rng.normal(0, SHIFT_SD_MM, 3)
    offset = centre + shift - matrix @ centre

    # ---- subject T1w: invert y = M (x + u(x)) + t on the coarse grid (fixed point x = w - u(x), w = M^-1 (y - t)),
    # then upsample the smooth inverse displacement to the image grid
    coarse_ijk = np.indices(field_shape, dtype=np.float64).reshape(3, -1).T
    w = (coarse_ijk @ field_affine[:3, :3].T + field_affine[:3, 3] - offset) @ np.linalg.inv(matrix).T
    field_inv = np.linalg.inv(field_affine[:3, :3])
    x = w.copy()
    for _ in range(4):
        fidx = ((x - field_affine[:3, 3]) @ field_inv.T).T
        x = w - np.stack([map_coordinates(field[..., i], fidx, order=1, mode="nearest") for i in range(3)], axis=1)
    # x(y) is affine in y plus a smooth part: upsample the coordinates of the MNI point in template voxel units
    tidx_coarse = ((x - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).reshape(*field_shape, 3)
    tidx = np.stack([_upsample2(tidx_coarse[..., i], t1_tpl.shape) for i in range(3)])
    t1 = map_coordinates(t1_tpl, tidx, order=1, mode="constant", cval=0.0, output=np.float32)
    mask_t1w = map_coordinates(brain.astype(np.uint8), tidx, order=0, mode="constant", output=np.uint8)
    t1 = np.clip(t1, 0, None)
    preproc = np.round(t1 / max(float(t1.max()), 1e-6) * 1000)
    raw = preproc * (1 + 0.5 * site_offset) + rng.normal(0, T1W_NOISE_SD * 1000, t1.shape) * (preproc > 0)
    raw = np.clip(np.round(raw), 0, 32767)

    # ---- GM probability in MNI space: the template GM (perfect registration), site-scaled, with noise
    probseg = gm_tpl * (1 + site_offset) + rng.normal(0, PROBSEG_NOISE_SD, gm_tpl.shape) * (gm_tpl > 0.01)
    probseg = np.clip(np.round(np.clip(probseg, 0, 1) * 255) / 255, 0, 1)

    # ---- files
    sub = f"sub-{subject}"
    anat_raw = bids_root / sub / "anat"
    anat_der = fmriprep_root / sub / "anat"
    files = {
        "t1w": anat_raw / f"{sub}_T1w.nii.gz",
        "preproc_t1w": anat_der / f"{sub}_desc-preproc_T1w.nii.gz",
        "brain_mask": anat_der / f"{sub}_desc-brain_mask.nii.gz",
        "gm_probseg_mni": anat_der / f"{sub}_space-{SPACE}_label-GM_probseg.nii.gz",
        "t1w_to_mni_xfm": anat_der / f"{sub}_from-T1w_to-{SPACE}_mode-image_xfm.h5",
    }
    _gz_nifti(raw.astype(np.int16), affine, files["t1w"], dtype=np.int16)
    files["t1w"].with_name(f"{sub}_T1w.json").write_text(json.dumps({
        "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "bids_ketamine synthetic",
        "RepetitionTime": 2.3, "EchoTime": 0.00298, "InversionTime": 0.9, "FlipAngle": 9,
    }, indent=2) + "\n")
    _gz_nifti(preproc.astype(np.int16), affine, files["preproc_t1w"], dtype=np.int16)
    _gz_nifti(mask_t1w.astype(np.uint8), affine, files["brain_mask"], dtype=np.uint8)
    _gz_nifti(np.round(probseg * 255).astype(np.uint8), affine, files["gm_probseg_mni"], dtype=np.uint8,
              scale=1 / 255)
    _write_itk_composite(files["t1w_to_mni_xfm"], matrix, offset, field, field_affine)
    voxel = None
    if mrs_voxel_mni is not None:
        tissue = _tissue_templates(res)
        for name, prob in tissue.items():  # the template tissue maps pulled into T1w space, as the T1w itself
            mapped = map_coordinates(prob, tidx, order=1, mode="constant", cval=0.0, output=np.float32)
            path = anat_der / f"{sub}_label-{name.upper()}_probseg.nii.gz"
            _gz_nifti(np.round(np.clip(mapped, 0, 1) * 255).astype(np.uint8), affine, path, dtype=np.uint8,
                      scale=1 / 255)
            files[f"{name}_probseg_t1w"] = path
        voxel = _planted_voxel(np.asarray(mrs_voxel_mni, float), mrs_voxel_mm, matrix, rot, offset, field,
                               field_affine, affine, tissue)

    # ---- ground truth, from the planted map (not from reading the files back)
    planted_fine = _upsample2(planted, t1_tpl.shape)
    expected = {}
    for name in regions["increase"] + regions["decrease"]:
        in_region = labels == index_of[name]
        weights = gm_tpl[in_region]
        expected[name] = float(np.sum(weights * np.expm1(planted_fine[in_region])) / np.sum(weights))
    return {
        "subject": subject,
        "gm_effect": float(gm_effect),
        "site_offset": float(site_offset),
        "planted_regions": regions,
        "fractional_change_per_z": FRACTION_PER_Z,
        "sign_convention": "positive gm_effect: frontal GM volume larger, cerebellar GM volume smaller",
        "site_effect": "GM probability multiplied by (1 + site_offset) everywhere",
        "expected_fractional_change": expected,
        "head_scale_linear": scale,
        "head_volume_ratio": float(np.linalg.det(matrix)),
        "atlas": "default (Desikan-Killiany + cerebellum, bids_ketamine.atlas.load_default_atlas)",
        "resolution_mm": res,
        "whole_head": bool(whole_head),
        "files": {k: str(v) for k, v in files.items()},
        **({"mrs_voxel": voxel} if voxel is not None else {}),
    }


def _planted_voxel(centre_mni: np.ndarray, edge_mm: float, matrix: np.ndarray, rot: np.ndarray, offset: np.ndarray,
                   field: np.ndarray, field_affine: np.ndarray, affine: np.ndarray,
                   tissue: dict[str, np.ndarray], n_side: int = 24) -> dict[str, Any]:
    """The voxel affine in the subject's scanner space and its tissue fractions from the template maps."""
    from scipy.ndimage import map_coordinates

    centre = matrix @ centre_mni + offset  # where the MNI point lies in the subject (the smooth field is small)
    voxel_affine = np.eye(4)
    voxel_affine[:3, :3] = rot @ np.diag([edge_mm] * 3)
    voxel_affine[:3, 3] = centre
    u = (np.arange(n_side) + 0.5) / n_side - 0.5  # n_side^3 points evenly inside the voxel (index space)
    grid = np.stack(np.meshgrid(u, u, u, indexing="ij"), axis=-1).reshape(-1, 3)
    points = grid @ voxel_affine[:3, :3].T + voxel_affine[:3, 3]
    tidx = _subject_to_template_index(points, matrix, offset, field, field_affine, affine)
    means = {k: float(map_coordinates(v, tidx, order=1, mode="constant", cval=0.0).mean()) for k, v in tissue.items()}
    total = sum(means.values())
    return {"affine": voxel_affine.tolist(), "fractions": {k: v / total for k, v in means.items()},
            "centre_mni": [float(c) for c in centre_mni], "edge_mm": float(edge_mm)}
