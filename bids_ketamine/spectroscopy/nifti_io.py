"""Read single-voxel NIfTI-MRS files (BIDS ``mrs/``) into a plain, validated record.

Why our own reader on top of nibabel: the NIfTI-MRS layout is simple (x, y, z, time, then up to three tagged
higher dimensions, metadata as JSON in header extension 44), and every way a file can be unusable must become one
clear ``BadDataError`` naming the file and the fix, before any science runs on it. Supported: 1H single voxel with
``DIM_COIL`` and ``DIM_DYN``; refused: spectroscopic imaging, edited (MEGA, HERMES...) and other tagged dimensions.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_ketamine.errors import BadDataError, MissingInputError

#: NIfTI header-extension code of the NIfTI-MRS JSON header.
NIFTI_MRS_ECODE = 44
#: Chemical shift of the receiver reference (water) in ppm for 1H, the NIfTI-MRS convention.
PPM_REFERENCE_1H = 4.65
SUPPORTED_DIMS = ("DIM_COIL", "DIM_DYN")
EDITING_DIMS = ("DIM_EDIT", "DIM_ISIS")
#: Header keys whose presence means an edited acquisition (MEGA-PRESS, HERMES, ...).
EDITING_KEYS = ("EditPulse", "EditCondition")
#: Relative tolerance when comparing two dwell times (they come from float32 pixdim or a JSON number).
DWELL_RTOL = 1e-4


@dataclass(frozen=True)
class MrsData:
    """One single-voxel acquisition: ``fid`` has shape (n_coils, n_dynamics, n_points), complex128.

    ``spectrum = fftshift(fft(fid))`` and ``ppm = 4.65 + frequency / spectrometer_frequency`` (NIfTI-MRS).
    """

    fid: np.ndarray
    dwell_time: float  #: seconds
    spectrometer_frequency: float  #: MHz
    nucleus: str
    echo_time: float | None  #: seconds
    repetition_time: float | None  #: seconds
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_points(self) -> int:
        return int(self.fid.shape[-1])

    @property
    def spectral_width(self) -> float:
        return 1.0 / self.dwell_time

    @property
    def field_strength(self) -> float:
        """Tesla, from the 1H Larmor frequency (42.577 MHz/T)."""
        return self.spectrometer_frequency / 42.577478

    def time_axis(self) -> np.ndarray:
        return np.arange(self.n_points) * self.dwell_time

    def ppm_axis(self) -> np.ndarray:
        return ppm_axis(self.n_points, self.dwell_time, self.spectrometer_frequency)

    def with_fid(self, fid: np.ndarray) -> MrsData:
        """Same acquisition, new data (e.g. after coil combination)."""
        return MrsData(np.asarray(fid, dtype=complex), self.dwell_time, self.spectrometer_frequency, self.nucleus,
                       self.echo_time, self.repetition_time, dict(self.metadata), self.path)


def frequency_axis(n_points: int, dwell_time: float) -> np.ndarray:
    """Hz of each point of ``fftshift(fft(fid))``."""
    return np.fft.fftshift(np.fft.fftfreq(n_points, dwell_time))


def ppm_axis(n_points: int, dwell_time: float, spectrometer_frequency: float,
             reference: float = PPM_REFERENCE_1H) -> np.ndarray:
    return reference + frequency_axis(n_points, dwell_time) / spectrometer_frequency


def to_spectrum(fid: np.ndarray) -> np.ndarray:
    """Spectrum along the last axis, NIfTI-MRS convention."""
    return np.fft.fftshift(np.fft.fft(fid, axis=-1), axes=-1)


def _sidecar(path: Path) -> dict[str, Any]:
    name = path.name
    stem = name[: -len(".nii.gz")] if name.endswith(".nii.gz") else path.stem
    side = path.with_name(stem + ".json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadDataError(f"sidecar is not valid JSON ({exc})", path=side, fix="repair the JSON sidecar") from exc


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def read_nifti_mrs(path: str | Path, *, sidecar: bool = True) -> MrsData:
    """Load and validate one NIfTI-MRS file; every unusable case raises ``BadDataError`` naming the fix."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise MissingInputError("spectroscopy file not found", path=path, fix="check the BIDS mrs/ folder")
    try:
        img = nib.load(str(path))
        header = img.header
        raw = np.asanyarray(img.dataobj)
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as exc:
        first = " ".join(str(exc).split())[:120]
        raise BadDataError(f"cannot read NIfTI-MRS data ({type(exc).__name__}: {first}); the file is truncated or "
                           "corrupt", path=path, fix="re-convert the raw data (e.g. with spec2nii) or re-copy the "
                           "file") from exc
    hdr_ext: dict[str, Any] = {}
    for ext in header.extensions:
        if ext.get_code() == NIFTI_MRS_ECODE:
            try:
                hdr_ext = json.loads(ext.get_content())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadDataError("the NIfTI-MRS header extension is not valid JSON", path=path,
                                   fix="re-convert the data with spec2nii") from exc
    meta = {**(_sidecar(path) if sidecar else {}), **hdr_ext}

    if not np.iscomplexobj(raw):
        raise BadDataError(f"data type {raw.dtype} is not complex; not a NIfTI-MRS FID", path=path,
                           fix="convert the raw data with spec2nii to NIfTI-MRS")
    if np.any(raw.real) and not np.any(raw.imag):  # (an all-zero FID is refused below, as such)
        raise BadDataError("every imaginary part is zero: the FID was stored as real values in a complex type",
                           path=path, fix="re-convert the complex raw data with spec2nii (a magnitude or real-only "
                                          "spectrum cannot be fitted)")
    if raw.ndim < 4:
        raise BadDataError(f"{raw.ndim}-D image: NIfTI-MRS needs x, y, z and time", path=path,
                           fix="convert the raw data with spec2nii to NIfTI-MRS")
    if any(s > 1 for s in raw.shape[:3]):
        raise BadDataError(f"spatial size {raw.shape[:3]}: spectroscopic imaging (MRSI) is not supported, only "
                           "single-voxel spectroscopy", path=path, fix="exclude MRSI files with --bids-filter-file")

    nucleus = _scalar(meta.get("ResonantNucleus"))
    if nucleus is None:
        raise BadDataError("ResonantNucleus is missing", path=path, fix="add \"ResonantNucleus\": [\"1H\"] to the "
                           "header extension or JSON sidecar")
    if str(nucleus) != "1H":
        raise BadDataError(f"ResonantNucleus is {nucleus!r}; only proton (1H) spectroscopy is supported", path=path,
                           fix="exclude non-1H spectra with --bids-filter-file")
    sf = _scalar(meta.get("SpectrometerFrequency"))
    try:
        sf = float(sf) if sf is not None else None
    except (TypeError, ValueError):
        sf = None
    if sf is None or not np.isfinite(sf) or sf <= 0:
        raise BadDataError("SpectrometerFrequency is missing or not a positive number", path=path,
                           fix="add SpectrometerFrequency (MHz) to the JSON sidecar or header extension")

    dwell_pix = float(header["pixdim"][4])
    sw = meta.get("SpectralWidth")
    dwell_sw = 1.0 / float(sw) if isinstance(sw, (int, float)) and sw > 0 else None
    if not (np.isfinite(dwell_pix) and dwell_pix > 0):
        dwell_pix = None
    if dwell_pix is None and dwell_sw is None:
        raise BadDataError("SpectralWidth is missing (no dwell time in pixdim[4] and no SpectralWidth)", path=path,
                           fix="add SpectralWidth (Hz) to the JSON sidecar or re-convert with spec2nii")
    if dwell_pix is not None and dwell_sw is not None and not np.isclose(dwell_pix, dwell_sw, rtol=1e-3):
        raise BadDataError(f"dwell time {dwell_pix:.6g} s in the header disagrees with SpectralWidth {sw} Hz",
                           path=path, fix="correct SpectralWidth in the JSON sidecar")
    dwell = dwell_pix if dwell_pix is not None else dwell_sw

    # higher dimensions: refuse edited data and unknown tags, move coils then dynamics in front
    tags = []
    for i in range(5, 8):
        size = raw.shape[i - 1] if raw.ndim >= i else 1
        tag = meta.get(f"dim_{i}")
        if size > 1 or tag is not None:
            tags.append((i - 1, tag, size))
    if any(k in meta for k in EDITING_KEYS) or any(t in EDITING_DIMS for _, t, _ in tags):
        raise BadDataError("edited spectroscopy (MEGA/HERMES, DIM_EDIT or editing pulses) is not supported",
                           path=path, fix="exclude edited acquisitions with --bids-filter-file")
    for axis, tag, size in tags:
        if tag is None and size > 1:
            raise BadDataError(f"dimension {axis + 1} (size {size}) has no dim_{axis + 1} tag", path=path,
                               fix="re-convert with spec2nii so the higher dimensions are tagged")
        if tag not in SUPPORTED_DIMS and size > 1:
            raise BadDataError(f"dimension tag {tag} is not supported (only {', '.join(SUPPORTED_DIMS)})",
                               path=path, fix="combine or remove that dimension before running, or exclude the file")
    data = raw.reshape(raw.shape[3:]) if raw.ndim > 3 else raw
    data = np.asarray(data, dtype=np.complex128)
    # data axes now: time, then tagged dims in file order
    dim_of = {tag: axis - 3 for axis, tag, size in tags if tag in SUPPORTED_DIMS}
    n_coil = data.shape[dim_of["DIM_COIL"]] if "DIM_COIL" in dim_of else 1
    n_dyn = data.shape[dim_of["DIM_DYN"]] if "DIM_DYN" in dim_of else 1
    order = [dim_of[t] for t in SUPPORTED_DIMS if t in dim_of]
    rest = [a for a in range(1, data.ndim) if a not in order]
    data = np.transpose(data, [*order, *rest, 0]).reshape(n_coil, n_dyn, -1)

    if not np.all(np.isfinite(data)):
        raise BadDataError("the FID contains NaN or infinite values", path=path,
                           fix="re-convert the raw data; exclude the file if the acquisition failed")
    if not np.any(np.abs(data) > 0):
        raise BadDataError("the FID is all zeros", path=path, fix="exclude the file; the acquisition holds no signal")
    te = _scalar(meta.get("EchoTime"))
    tr = _scalar(meta.get("RepetitionTime"))
    return MrsData(fid=data, dwell_time=float(dwell), spectrometer_frequency=sf, nucleus="1H",
                   echo_time=None if te is None else float(te), repetition_time=None if tr is None else float(tr),
                   metadata=meta, path=path)


def check_reference_matches(metabolite: MrsData, reference: MrsData) -> None:
    """A water reference must share dwell time, points and frequency with the metabolite data it corrects."""
    if not np.isclose(metabolite.dwell_time, reference.dwell_time, rtol=DWELL_RTOL):
        raise BadDataError(f"dwell time {reference.dwell_time:.6g} s differs from the metabolite data "
                           f"({metabolite.dwell_time:.6g} s)", path=reference.path,
                           fix="use a water reference acquired with the same spectral width")
    if not np.isclose(metabolite.spectrometer_frequency, reference.spectrometer_frequency, rtol=1e-4):
        raise BadDataError(f"spectrometer frequency {reference.spectrometer_frequency} MHz differs from the "
                           f"metabolite data ({metabolite.spectrometer_frequency} MHz)", path=reference.path,
                           fix="use a water reference from the same session and scanner")
    if reference.n_points != metabolite.n_points:
        raise BadDataError(f"{reference.n_points} points, the metabolite data has {metabolite.n_points}",
                           path=reference.path, fix="use a water reference with the same number of points")


def nifti_mrs_intent() -> str:
    """The intent name of the current NIfTI-MRS standard (``mrs_v<major>_<minor>``), as the ``nifti-mrs`` package
    (the standard's reference implementation) defines it."""
    from nifti_mrs.definitions import nifti_mrs_version

    major, minor = nifti_mrs_version
    return f"mrs_v{major}_{minor}"


def make_nifti_mrs(fid: np.ndarray, *, dwell_time: float, spectrometer_frequency: float,
                   dim_tags: tuple[str, ...] = (), metadata: dict[str, Any] | None = None):
    """A nibabel NIfTI-MRS image from ``fid`` shaped (n_points, *higher dims) with their tags."""
    import nibabel as nib

    fid = np.asarray(fid, dtype=np.complex64)
    if fid.ndim - 1 != len(dim_tags):
        raise ValueError("one tag per higher dimension is needed")
    data = fid.reshape((1, 1, 1) + fid.shape)
    img = nib.Nifti2Image(data, np.eye(4))
    img.header["pixdim"][4] = dwell_time
    img.header.set_intent(0, (), nifti_mrs_intent())
    ext = {"SpectrometerFrequency": [float(spectrometer_frequency)], "ResonantNucleus": ["1H"]}
    for i, tag in enumerate(dim_tags):
        ext[f"dim_{i + 5}"] = tag
    ext.update(metadata or {})
    img.header.extensions.append(nib.nifti1.Nifti1Extension(NIFTI_MRS_ECODE, json.dumps(ext).encode()))
    return img


def tissue_fractions_in_voxel(mrs_affine: np.ndarray, probabilities: dict[str, np.ndarray],
                              segmentation_affine: np.ndarray, *, path: str | Path | None = None
                              ) -> dict[str, float]:
    """Volume fractions of each tissue class inside a single MRS voxel, from probability maps of a segmentation.

    Why here: the voxel's position, size and orientation are the NIfTI-MRS affine (index space of the 1 x 1 x 1
    grid, the voxel spanning indices -0.5..0.5 on each axis). Each segmentation voxel whose centre falls inside
    counts with its tissue probabilities; the mean probabilities are normalised to sum to one. ``probabilities``
    maps a class (``gm``, ``wm``, ``csf``) to a 3-D array on the grid of ``segmentation_affine`` (same scanner
    space, e.g. a T1w segmentation of the same session).
    """
    arrays = {k: np.asarray(v, float) for k, v in probabilities.items()}
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError("probability maps must be 3-D arrays of one shape")
    shape = next(iter(shapes))
    # bounding box of the voxel's 8 corners in segmentation index space
    corners = np.array([[x, y, z, 1.0] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    to_seg = np.linalg.inv(segmentation_affine) @ np.asarray(mrs_affine, float)
    ijk = (to_seg @ corners.T)[:3].T
    lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(shape))
    if np.any(hi <= lo):
        raise BadDataError("the spectroscopy voxel lies outside the anatomical segmentation", path=path,
                           fix="use a segmentation of the same session and scanner coordinates as the MRS data")
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1).reshape(-1, 3)
    to_mrs = np.linalg.inv(np.asarray(mrs_affine, float)) @ segmentation_affine
    mrs_idx = grid @ to_mrs[:3, :3].T + to_mrs[:3, 3]
    inside = np.all(np.abs(mrs_idx) <= 0.5, axis=1)
    if not inside.any():
        raise BadDataError("no anatomical voxel falls inside the spectroscopy voxel", path=path,
                           fix="use a segmentation of the same session and scanner coordinates as the MRS data")
    sel = grid[inside]
    means = {k: float(a[sel[:, 0], sel[:, 1], sel[:, 2]].mean()) for k, a in arrays.items()}
    total = sum(means.values())
    if total <= 0:
        raise BadDataError("the segmentation has no tissue inside the spectroscopy voxel", path=path,
                           fix="check the segmentation and the voxel position")
    return {k: v / total for k, v in means.items()}


def voxel_affine(path: str | Path) -> np.ndarray:
    """The 4 x 4 affine (scanner mm) of a single-voxel NIfTI-MRS file: position, size and orientation."""
    import nibabel as nib

    img = nib.load(str(path))
    return np.asarray(img.affine, float)
