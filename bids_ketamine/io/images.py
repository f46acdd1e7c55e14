"""Images read at the door: the whole file is read inside the error mapping, and probability maps are checked.

Why: nibabel loads lazily, so ``nib.load`` of a truncated ``.nii.gz`` succeeds and the truncation surfaces later as
an ``EOFError`` or ``zlib.error`` deep inside an analysis, with no file name ("unexpected error"). Reading the data
here once turns every such defect into one line naming the file (exit 65). Probability maps (GM/WM/CSF) must be
finite and within 0-1: a NaN voxel would otherwise spread into a table, differently from run to run.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from bids_ketamine.errors import MissingInputError, UnusableInputError

#: What nibabel and the decompressors raise for unreadable, truncated or corrupt files.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, ValueError)


def _read_errors() -> tuple[type[BaseException], ...]:
    from nibabel.filebasedimages import ImageFileError

    return (*READ_ERRORS, ImageFileError)


def load_image(path: str | Path, what: str, fix: str | None = None):
    """``(image, data)`` of a NIfTI file with its data read in full; an unreadable file is one line (exit 65)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{what} not found", path=path, fix="check the path (and the container's mounts)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except _read_errors() as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UnusableInputError(f"cannot read the {what} ({type(exc).__name__}: {detail}); the file is truncated, "
                                 "corrupt or not readable", path=path,
                                 fix=fix or "copy the file again, or re-run the tool that wrote it") from exc
    return img, data


def check_probability_map(data: np.ndarray, path: str | Path, what: str) -> np.ndarray:
    """``data`` as float when it is a usable probability map: finite, within 0-1 (rounding allowed), not empty."""
    values = np.asarray(data, dtype=float)
    finite = np.isfinite(values)
    if not finite.all():
        raise UnusableInputError(f"{what} has {int((~finite).sum())} NaN or infinite voxels", path=path,
                                 fix="re-run the segmentation (a probability map holds values 0-1 everywhere)")
    if values.size and (values.min() < -1e-3 or values.max() > 1 + 1e-3):
        raise UnusableInputError(f"{what} has values {values.min():.3g} to {values.max():.3g}, outside 0-1",
                                 path=path, fix="give the tissue probability map (label-<tissue>_probseg), not a "
                                                "modulated or label image")
    if not values.any():
        raise UnusableInputError(f"{what} is empty (all zero)", path=path, fix="re-run the segmentation")
    return values
