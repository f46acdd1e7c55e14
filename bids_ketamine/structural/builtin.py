"""Built-in offline anatomical pipeline for a dataset that has only raw T1w images (antspyx).

Why: a dataset without sMRIPrep, CAT12 or FreeSurfer outputs must still yield modulated grey-matter maps, with no
download at run time. Steps (each a standard of the field): resampling to ``work_resolution_mm`` and cropping to the
head; N4 bias correction; an affine of the head to nilearn's MNI152 brain template, whose brain mask pulled back
gives a first mask; SyN registration of the masked brain (initialised by the affine); three-class Atropos
segmentation inside the refined mask with the template's CSF/GM/WM probabilities as priors (weight 0.25, so the
data decide and the priors only break ties such as the cerebellum's GM/WM contrast); GM warped to MNI and
Jacobian-modulated (GM x det of the MNI-to-T1w map: affine determinant x SyN warp determinant), which preserves the
subject's GM volume. TIV is the CSF + GM + WM probability inside the brain mask, i.e. the volume of the template's
brain mask warped to the subject (registration-based, as eTIV or atlas scaling; the skull itself is not segmented).

Skull-stripped inputs (ds002748's T1w are): after the first affine, the share of the image's foreground that lies
outside the template's (dilated) brain mask tells a whole head (scalp, skull, neck: about half the foreground) from a
brain alone (a few per cent). A stripped brain is then registered to the template's *brain* rather than its whole
head, because an affine of a brain onto a head scales the brain up to fill the scalp; TIV is then still the warped
template brain mask, and the sidecar and methods say so.

Working at 2 mm in subject space keeps N4 and Atropos to seconds; regional volumes at atlas scale do not need more.
ANTs' random sampling is seeded; with one thread (the default of the participant level) the result is
reproducible. More threads are faster, but ITK's multi-threaded metrics then differ run to run at the 0.1-1 % level.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bids_ketamine.errors import BadDataError
from bids_ketamine.structural.gm_features import check_t1w_image


@dataclass(frozen=True)
class BuiltinResult:
    """Outputs of the built-in pipeline (nibabel images, volumes in mm^3)."""

    #: Jacobian-modulated GM probability in MNI152 space (nilearn's template grid at the chosen resolution).
    gm_modulated_mni: object
    #: Unmodulated GM probability in MNI152 space.
    gm_mni: object
    #: Jacobian determinant of the MNI-to-T1w map on the MNI grid (T1w volume per MNI volume).
    jacobian_mni: object
    #: Bias-corrected T1w warped to MNI (for the QC figure).
    t1w_mni: object
    #: Total intracranial volume: CSF + GM + WM probability inside the brain mask, in subject space.
    tiv_mm3: float
    #: GM volume in subject space (sum of the native GM probability).
    gm_native_mm3: float
    wm_native_mm3: float
    csf_native_mm3: float
    #: Correlation of the registered T1w with the template inside the template's brain mask (registration QC).
    template_correlation: float
    #: Share of the T1w's foreground outside the template's dilated brain mask after the head affine.
    foreground_outside_brain: float
    #: The input had no scalp/skull (``foreground_outside_brain`` below :data:`SKULL_STRIPPED_MAX_OUTSIDE`).
    skull_stripped: bool
    #: Seconds per step.
    timings: dict

    @property
    def tiv_method(self) -> str:
        return tiv_method_text(self.skull_stripped, self.foreground_outside_brain)


#: A whole-head T1w has about half its foreground outside the brain (scalp, skull, neck); a skull-stripped one a few
#: per cent (the stripping margin and registration error). Measured: ds002748 sub-01 (stripped) 0.003, the
#: synthetic generator's T1w 0.0 (stripped) and 0.32 with ``whole_head`` (an 8 mm scalp shell, no neck).
SKULL_STRIPPED_MAX_OUTSIDE = 0.15


def is_skull_stripped(foreground: np.ndarray, brain_mask: np.ndarray) -> tuple[bool, float]:
    """Whether a T1w is skull-stripped, from its foreground and the template brain mask on the same grid (after
    an affine): ``(stripped, share of the foreground outside the mask)``."""
    foreground = np.asarray(foreground, dtype=bool)
    if not foreground.any():
        return False, float("nan")
    outside = float(np.count_nonzero(foreground & ~np.asarray(brain_mask, dtype=bool)) / np.count_nonzero(foreground))
    return outside < SKULL_STRIPPED_MAX_OUTSIDE, outside


def tiv_method_text(skull_stripped: bool, outside: float) -> str:
    """How the built-in pipeline obtained TIV, as the sidecar (``TIVMethod``) and the methods state it."""
    base = ("volume of the MNI152 brain mask warped to the subject by the SyN registration (= CSF + GM + WM "
            "probability inside it, subject space)")
    if skull_stripped:
        return (f"skull-stripped input ({outside:.0%} of its foreground outside the template brain): registered to "
                f"the template's brain, not its head; TIV = {base}")
    return f"whole-head input: TIV = {base}"


def _ants_threads(n_threads: int) -> None:
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(n_threads)))


def ants_image(data, affine):
    """A float32 ANTs image of ``data`` on the world ``affine``, with its units stated (mm, s): without them ITK
    prints two "units are 'unknown'" lines for every image it is handed, which buries the run's own log lines."""
    import ants
    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")
    return ants.from_nibabel_nifti(image)


def _affine_det(transform_path: str) -> float:
    """Determinant of the 3x3 linear part of an ANTs affine ``.mat`` (volume ratio T1w per MNI)."""
    import ants

    tx = ants.read_transform(transform_path)
    return float(np.linalg.det(np.asarray(tx.parameters[:9], dtype=float).reshape(3, 3)))


def run_builtin_pipeline(t1w_path: str | Path, *, work_dir: str | Path, seed: int, **options) -> BuiltinResult:
    """Raw T1w -> modulated GM in MNI152 (nilearn) space, with native GM/WM/CSF volumes and TIV.

    Deterministic for a fixed ``seed`` and thread count (ANTs' random sampling is seeded). antspy writes temporary
    images (Atropos probabilities) with ``tempfile.mktemp``; they go to a folder of the work dir that is removed
    afterwards, so nothing is left in the system's /tmp.
    """
    import shutil
    import tempfile

    work_dir = Path(work_dir)
    scratch = work_dir / "ants_tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    previous = tempfile.tempdir
    tempfile.tempdir = str(scratch)
    try:
        return _run_builtin_pipeline(t1w_path, work_dir=work_dir, seed=seed, **options)
    finally:
        tempfile.tempdir = previous
        shutil.rmtree(scratch, ignore_errors=True)


def _run_builtin_pipeline(t1w_path: str | Path, *, work_dir: Path, seed: int, resolution_mm: float = 2.0,
                          work_resolution_mm: float = 2.0, syn_iterations: tuple[int, ...] = (40, 20, 0),
                          prior_weight: float = 0.25, n_threads: int = 1) -> BuiltinResult:
    import ants
    import nibabel as nib
    from nilearn import datasets

    t1w_path = Path(t1w_path)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    from bids_ketamine.io.images import load_image

    # the data are read here, inside the error mapping: a truncated file is one line naming it (exit 65)
    t1w_img, _ = load_image(t1w_path, "T1w image", fix="give a readable NIfTI T1w (re-convert it from DICOM)")
    check_t1w_image(t1w_img, t1w_path)
    _ants_threads(n_threads)
    ants_seed = int(seed) % (2**31 - 1) or 1
    os.environ["ANTS_RANDOM_SEED"] = str(ants_seed)
    # antspy passes --random-seed to antsRegistration only from its config (its random_seed argument is ignored);
    # set it there without ants.set_ants_deterministic, which would also reseed numpy's global generator
    ants.config._random_seed = ants_seed
    res = int(round(resolution_mm))
    if res not in (1, 2):
        raise ValueError("resolution_mm must be 1 or 2 (nilearn's MNI152 grids)")

    template_nib = datasets.load_mni152_template(resolution=res)
    mask_nib = datasets.load_mni152_brain_mask(resolution=res)
    template = ants_image(template_nib.get_fdata(dtype=np.float32), template_nib.affine)
    template_mask = ants_image(mask_nib.get_fdata(dtype=np.float32), mask_nib.affine)
    tissue_priors = _tissue_priors(res, mask_nib)

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def tick(step: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[step] = round(now - clock, 2)
        clock = now

    raw = ants.image_read(str(t1w_path), pixeltype="float")
    t1 = ants.resample_image(raw, (work_resolution_mm,) * 3, use_voxels=False, interp_type=0)
    head = ants.get_mask(t1, low_thresh=_otsu(t1.numpy()) * 0.5, cleanup=0)
    t1 = ants.crop_image(t1, ants.iMath(head, "MD", 4))
    tick("load_resample_crop")
    t1 = ants.n4_bias_field_correction(t1, shrink_factor=4,
                                       convergence={"iters": [50, 50, 25], "tol": 1e-6})
    t1 = t1 / float(np.percentile(t1.numpy()[t1.numpy() > 0], 99))
    # through a NIfTI file and back: the header geometry becomes float32-exact, as in the temporary files ANTs
    # tools (Atropos) read, which otherwise refuse images that differ from ours in the last bit of the origin
    ants.image_write(t1, str(work_dir / "builtin_t1w_work.nii.gz"))
    t1 = ants.image_read(str(work_dir / "builtin_t1w_work.nii.gz"), pixeltype="float")
    tick("n4")

    prefix = str(work_dir / "builtin_")

    def head_affine(fixed):
        return ants.registration(fixed=fixed, moving=t1, type_of_transform="Affine", outprefix=prefix + "aff_",
                                 aff_iterations=(400, 200, 100, 0), aff_shrink_factors=(6, 4, 2, 1),
                                 aff_smoothing_sigmas=(3, 2, 1, 0))

    def brain_mask_of(transform):
        warped = ants.apply_transforms(fixed=t1, moving=template_mask, transformlist=transform["fwdtransforms"],
                                       whichtoinvert=[True], interpolator="linear")
        return ants.iMath(warped.threshold_image(0.5, 2.0), "MD", 2)

    # 1) affine of the whole head to the template: enough for a first, generous brain mask, and to see whether the
    # input still has its scalp (a stripped brain is then registered again, to the template's brain alone)
    affine = head_affine(template)
    mask0 = brain_mask_of(affine)
    foreground = t1.numpy() > _otsu(t1.numpy()) * 0.5
    stripped, outside = is_skull_stripped(foreground, mask0.numpy() > 0.5)
    if stripped:
        affine = head_affine(template * template_mask)
        mask0 = brain_mask_of(affine)
    tick("affine")
    # 2) SyN of the masked brain, initialised by the affine
    syn = ants.registration(fixed=template * template_mask if stripped else template, moving=t1 * mask0, type_of_transform="SyNOnly",
                            initial_transform=affine["fwdtransforms"][0], reg_iterations=syn_iterations,
                            outprefix=prefix + "syn_")
    tick("syn")
    mask = ants.apply_transforms(fixed=t1, moving=template_mask, transformlist=syn["invtransforms"],
                                 whichtoinvert=[True, False], interpolator="linear").threshold_image(0.5, 2.0)
    # 3) three tissue classes inside the mask
    priors = [ants.apply_transforms(fixed=t1, moving=p, transformlist=syn["invtransforms"],
                                    whichtoinvert=[True, False], interpolator="linear") for p in tissue_priors]
    # r=0: Atropos seeds its generator with a constant instead of the clock (reproducible segmentations)
    seg = ants.atropos(a=t1, x=mask, i=priors, m="[0.1,1x1x1]", c="[3,0]", priorweight=prior_weight, r=0)
    csf, gm, wm = seg["probabilityimages"][:3]
    tick("atropos")
    voxel_mm3 = float(np.prod(t1.spacing))
    gm_native = float(gm.numpy().sum() * voxel_mm3)
    wm_native = float(wm.numpy().sum() * voxel_mm3)
    csf_native = float(csf.numpy().sum() * voxel_mm3)
    # 4) GM to MNI and Jacobian modulation
    gm_mni = ants.apply_transforms(fixed=template, moving=gm, transformlist=syn["fwdtransforms"],
                                   interpolator="linear")
    t1_mni = ants.apply_transforms(fixed=template, moving=t1, transformlist=syn["fwdtransforms"],
                                   interpolator="linear")
    warp = [t for t in syn["fwdtransforms"] if t.endswith((".nii.gz", ".nii"))]
    mats = [t for t in syn["fwdtransforms"] if t.endswith(".mat")]
    jac = ants.create_jacobian_determinant_image(template, warp[0], do_log=False).numpy()
    jac = jac * np.prod([_affine_det(m) for m in mats])
    gm_mni_data = np.clip(gm_mni.numpy(), 0, 1)
    tick("warp_jacobian")
    affine_mni = template_nib.affine
    inside = mask_nib.get_fdata() > 0.5
    correlation = float(np.corrcoef(t1_mni.numpy()[inside], template.numpy()[inside])[0, 1])

    def nifti(data: np.ndarray) -> nib.Nifti1Image:
        img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine_mni)
        img.header.set_xyzt_units("mm")
        return img

    return BuiltinResult(
        gm_modulated_mni=nifti(gm_mni_data * jac), gm_mni=nifti(gm_mni_data), jacobian_mni=nifti(jac),
        t1w_mni=nifti(t1_mni.numpy()), tiv_mm3=csf_native + gm_native + wm_native, gm_native_mm3=gm_native,
        wm_native_mm3=wm_native, csf_native_mm3=csf_native, template_correlation=correlation,
        foreground_outside_brain=outside, skull_stripped=stripped, timings=timings,
    )


def _tissue_priors(res: int, mask_nib) -> list:
    """CSF, GM and WM prior probabilities on nilearn's MNI152 grid (CSF = brain mask minus GM and WM)."""
    from nilearn import datasets

    gm = datasets.load_mni152_gm_template(resolution=res).get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=res).get_fdata(dtype=np.float32)
    inside = mask_nib.get_fdata(dtype=np.float32)
    csf = np.clip(inside - gm - wm, 0, 1)
    return [ants_image(p, mask_nib.affine) for p in (csf, gm, wm)]


def _otsu(data: np.ndarray) -> float:
    from bids_ketamine.structural.gm_features import _otsu_threshold

    return _otsu_threshold(data)
