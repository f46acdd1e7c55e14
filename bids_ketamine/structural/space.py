"""Template spaces of the GM maps: which space a source's map is in, and what is done before the atlas is laid on it.

Why: one atlas grid laid on maps from different templates (fMRIPrep's MNI152NLin2009cAsym, CAT12's IXI549Space,
the built-in MNI152NLin2009aSym) gives regional volumes that differ by template, not by subject: the templates
differ by a few mm in position and a few % in size, which moves atlas boundaries across cortex. So a map in another
space than the atlas is first brought into the atlas' space by an affine registration of the source's GM map to the
atlas-space GM template (nilearn's MNI152NLin2009aSym, the only template shipped offline), and the modulated map is
resampled with that transform and multiplied by its determinant, so every region keeps the subject's GM volume.
A map already in the atlas' space is left as it is. An atlas whose space is not stated (a user atlas) is laid on
the map as given, and the features stay in the map's space (a mix of those is refused at the group level).

Transforms follow ITK/ANTs conventions: the forward transform maps points of the fixed (atlas) space into the
moving (source) space, so a fixed-space voxel covers ``|det A|`` times its volume of source space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

REGISTER = "register"
UNCHANGED = "none"


@dataclass(frozen=True)
class SpacePlan:
    """What is done to a GM map of ``source_space`` before parcellation with an atlas in ``atlas_space``."""

    source_space: str | None
    atlas_space: str | None
    action: str  # REGISTER or UNCHANGED
    reason: str

    @property
    def feature_space(self) -> str | None:
        """The space the regional features are in after the plan: the atlas' when the map is (brought) there."""
        if self.action == REGISTER or self.source_space == self.atlas_space:
            return self.atlas_space
        return self.source_space


def plan_alignment(source_space: str | None, atlas_space: str | None, *, register: bool = True) -> SpacePlan:
    """The one decision: register the map to the atlas' space when the spaces differ, else leave it.

    ``register=False`` (setting ``register_to_atlas_space``) lays the atlas on the map as given and says so."""
    if atlas_space is None:
        return SpacePlan(source_space, atlas_space, UNCHANGED,
                         "the atlas' template space is not stated (user atlas): the atlas was laid on the map as "
                         f"given, so the features are in the map's space ({source_space or 'unstated'})")
    if source_space == atlas_space:
        return SpacePlan(source_space, atlas_space, UNCHANGED,
                         f"the map is in the atlas' space ({atlas_space}): no registration")
    if not register:
        return SpacePlan(source_space, atlas_space, UNCHANGED,
                         f"registration to the atlas' space switched off (register_to_atlas_space = false): the "
                         f"atlas ({atlas_space}) was laid on the map ({source_space or 'unstated space'}) as given")
    return SpacePlan(source_space, atlas_space, REGISTER,
                     f"the map ({source_space or 'unstated space'}) was registered to the atlas' space "
                     f"({atlas_space}) by an affine ANTs registration of the source's GM map to nilearn's "
                     f"{atlas_space} GM template, resampled (linear) and multiplied by the transform's determinant")


@dataclass
class Aligned:
    """A modulated GM map in the atlas' space and what was done to get it there (sidecar-ready)."""

    modulated: Any  # nibabel image
    plan: SpacePlan
    details: dict[str, Any] = field(default_factory=dict)

    def sidecar(self) -> dict[str, Any]:
        return {"FeatureSpace": self.plan.feature_space, "AtlasSpace": self.plan.atlas_space,
                "SpaceAlignment": self.plan.reason, **self.details}


def masked_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two volumes inside a mask (the registration's quality figure)."""
    x, y = np.asarray(a, dtype=np.float64)[mask], np.asarray(b, dtype=np.float64)[mask]
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


#: fraction of the 4 mm voxels the affine's metric samples, and iterations per level (8 mm, 4 mm)
AFFINE_SAMPLING_RATE = 0.25
AFFINE_ITERATIONS = (40, 20)


@lru_cache(maxsize=2)
def _gm_template(resolution_mm: int):
    """nilearn's MNI152NLin2009aSym GM template (loaded once per process: nilearn resamples it at every load)."""
    from nilearn import datasets

    return datasets.load_mni152_gm_template(resolution=resolution_mm)


@lru_cache(maxsize=2)
def _registration_target(resolution_mm: int):
    """(GM template, brain mask, the template at 4 mm as an ANTs image): the fixed side of every registration."""
    import ants
    from nilearn import datasets

    fixed_nib = _gm_template(resolution_mm)
    mask_nib = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    fixed = ants.resample_image(_to_ants(fixed_nib), (4.0, 4.0, 4.0), use_voxels=False, interp_type=0)
    return fixed_nib, mask_nib, fixed


def _to_ants(img):
    from bids_ketamine.structural.builtin import ants_image

    return ants_image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


def register_to_atlas_space(modulated, registration_map, plan: SpacePlan, *, seed: int = 0,
                            resolution_mm: int = 2) -> Aligned:
    """``modulated`` (nibabel) in the atlas' space following ``plan``.

    ``registration_map`` is the source's GM map (probability or modulated: the Mattes mutual-information metric does
    not care about scale) that is registered to nilearn's GM template at ``resolution_mm``; the output is on
    nilearn's template grid at 1 mm when the input voxels are finer than 2 mm, else 2 mm. Quality: the correlation
    of the registration map with the template inside the template's brain mask, before (map as given, resampled)
    and after the registration. ``seed`` is ANTs' ``--random-seed``: the metric's sample points are drawn at random
    (even dense sampling jitters them within each voxel), so without a fixed seed the same map gives volumes
    ~0.02 % apart run to run.
    """
    if plan.action != REGISTER:
        return Aligned(modulated=modulated, plan=plan)
    import ants
    import nibabel as nib

    from bids_ketamine.structural import gm_features as gmf
    from bids_ketamine.structural.builtin import _affine_det, _ants_threads

    _ants_threads(1)  # one ITK thread: with several, the metric's sums change order and the transform by ~1e-4
    fixed_nib, mask_nib, fixed = _registration_target(resolution_mm)
    # twelve affine parameters need no fine grid: both maps at 4 mm, coarse-to-fine
    moving = ants.resample_image(_to_ants(registration_map), (4.0, 4.0, 4.0), use_voxels=False, interp_type=0)
    # a quarter of the 4 mm voxels sampled, 40 + 20 iterations: on fMRIPrep-like and moved maps the same transform
    # (parameters within 1e-4) and regional volumes as every voxel with 100 + 50 iterations, in 3 s instead of 20 s
    # (benchmarks/bench_space_registration.py). The sample is drawn by ANTs' seeded sampler, so its seed is fixed:
    # antspy passes ``--random-seed`` only from its module-level ``config._random_seed`` (the public
    # ``set_ants_deterministic`` also reseeds numpy's global generator): set for this call and restored after it
    previous_seed = ants.config._random_seed
    ants.config._random_seed = int(seed)
    try:
        reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine", aff_metric="mattes",
                                aff_random_sampling_rate=AFFINE_SAMPLING_RATE, aff_iterations=AFFINE_ITERATIONS,
                                aff_shrink_factors=(2, 1), aff_smoothing_sigmas=(1, 0))
    finally:
        ants.config._random_seed = previous_seed
    voxel = float(np.cbrt(abs(np.linalg.det(np.asarray(modulated.affine)[:3, :3]))))
    out_nib = _gm_template(1 if voxel < 1.99 else 2)
    out = _to_ants(out_nib)
    warped = ants.apply_transforms(fixed=out, moving=_to_ants(modulated), transformlist=reg["fwdtransforms"],
                                   interpolator="linear")
    det = abs(_affine_det(reg["fwdtransforms"][0]))
    data = np.clip(warped.numpy(), 0, None).astype(np.float32) * np.float32(det)
    img = nib.Nifti1Image(data, out_nib.affine)
    img.header.set_xyzt_units("mm")
    fixed_data = np.asarray(fixed_nib.dataobj, dtype=np.float32)
    mask = np.asarray(mask_nib.dataobj) > 0.5
    before = gmf.resample_to_grid(registration_map, fixed_data.shape, fixed_nib.affine, order=1)
    after = ants.apply_transforms(fixed=_to_ants(fixed_nib), moving=_to_ants(registration_map),
                                  transformlist=reg["fwdtransforms"], interpolator="linear").numpy()
    quality = {"SpaceRegistration": f"ANTs affine (Mattes MI, {AFFINE_SAMPLING_RATE:.0%} of voxels sampled with a "
                                    "fixed seed, 4 mm)",
               "SpaceRegistrationDeterminant": det,
               "SpaceRegistrationCorrelationBefore": masked_correlation(before, fixed_data, mask),
               "SpaceRegistrationCorrelationAfter": masked_correlation(after, fixed_data, mask)}
    quality["SpaceRegistrationImproved"] = bool(quality["SpaceRegistrationCorrelationAfter"]
                                                > quality["SpaceRegistrationCorrelationBefore"])
    return Aligned(modulated=img, plan=plan, details=quality)


def warn_if_untrusted(aligned: Aligned, path) -> None:
    """A registration that did not bring the map closer to the template is loud (file and both correlations)."""
    import warnings

    if aligned.details.get("SpaceRegistrationImproved") is False:
        warnings.warn(f"{path}: registration to {aligned.plan.atlas_space} did not improve the match with the GM "
                      f"template (correlation {aligned.details['SpaceRegistrationCorrelationBefore']:.2f} -> "
                      f"{aligned.details['SpaceRegistrationCorrelationAfter']:.2f}); its regional volumes are "
                      "flagged SpaceRegistrationImproved = false", stacklevel=2)
