"""Parcel mean time series from fMRIPrep BOLD: volumetric NIfTI in MNI space (any resolution) or CIFTI fsLR 91k.

Volumetric: the atlas is resampled to the BOLD grid by nearest neighbour (so labels stay labels), restricted to the
BOLD brain mask, and every parcel's time series is the mean over its voxels. The BOLD file is streamed a few volumes
at a time and reduced with a sparse parcel x voxel averaging matrix, so the 4-D array is never held in memory and
nothing is converted to float64 beyond one chunk. The same pass accumulates the normalised intensity change used by
scrubbing (see ``scrubbing``) over all brain-mask voxels.

CIFTI: a dense time series (``.dtseries.nii``) and a dense label file (``.dlabel.nii``) are matched grayordinate by
grayordinate (structure and vertex/voxel), and each label's time series is the mean over its grayordinates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from bids_ketamine.connectivity.scrubbing import intensity_change_from_sums


def labels_on_grid(atlas_data: np.ndarray, atlas_affine: np.ndarray, shape: tuple[int, int, int],
                   affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of an integer label volume onto another grid (world coordinates via affines).

    Voxels of the target grid whose nearest atlas voxel lies outside the atlas get 0.
    """
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    src = np.linalg.solve(atlas_affine[:3, :3], world - atlas_affine[:3, 3:4])
    src = np.rint(src).astype(np.int64)
    inside = np.all((src >= 0) & (src < np.array(atlas_data.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], dtype=np.int32)
    out[inside] = atlas_data[src[0, inside], src[1, inside], src[2, inside]]
    return out.reshape(shape)


@dataclass(frozen=True)
class ParcelSeries:
    """Parcel mean time series (frames x parcels), voxel counts, and the per-frame intensity change."""

    timeseries: np.ndarray
    names: list[str]
    n_voxels: np.ndarray
    intensity_change: np.ndarray


class AtlasOverlapError(ValueError):
    """Raised when parcels have too few voxels inside the brain mask (names in ``.parcels``)."""

    def __init__(self, message: str, parcels: list[str]):
        super().__init__(message)
        self.parcels = parcels


def averaging_matrix(label_grid: np.ndarray, mask: np.ndarray, indices: list[int], names: list[str],
                     min_voxels: int = 1) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Sparse parcels x mask-voxels matrix with 1/count entries, mask voxel flat indices (Fortran order), counts.

    Raises AtlasOverlapError when a parcel has fewer than ``min_voxels`` voxels inside the mask.
    """
    mask = np.asarray(mask, dtype=bool)
    flat_mask = np.flatnonzero(mask.ravel(order="F"))
    labels = label_grid.ravel(order="F")[flat_mask]
    lookup = np.full(max(int(labels.max(initial=0)), max(indices, default=0)) + 1, -1, dtype=np.int64)
    lookup[np.asarray(indices, dtype=np.int64)] = np.arange(len(indices))
    row = lookup[labels]
    counts = np.bincount(row[row >= 0], minlength=len(indices))
    if (counts == 0).all():
        raise AtlasOverlapError("the atlas does not overlap the brain mask at all", list(names))
    small = np.flatnonzero(counts < min_voxels)
    if small.size:
        bad = [names[i] for i in small]
        raise AtlasOverlapError(f"{len(bad)} parcel(s) have fewer than {min_voxels} voxel(s) inside the brain mask "
                                f"(first: {bad[0]!r})", bad)
    cols = np.flatnonzero(row >= 0)
    weights = 1.0 / counts[row[cols]]
    matrix = sparse.csr_matrix((weights.astype(np.float32), (row[cols], cols)), shape=(len(indices), flat_mask.size))
    return matrix, flat_mask, counts


def _zlib_module():
    """``isal.isal_zlib`` (ISA-L, several times faster inflate) when installed, else the standard ``zlib``."""
    try:
        from isal import isal_zlib

        return isal_zlib
    except ImportError:
        import zlib

        return zlib


class _Inflater:
    """Sequential reader of a gzip file's decompressed bytes with bounded output per call (``max_length``), so a
    run of zeros outside the brain, which inflates a thousand-fold, never lands in memory at once."""

    def __init__(self, handle, codec, input_bytes: int):
        self.handle, self.codec, self.input_bytes = handle, codec, input_bytes
        self.inflater = codec.decompressobj(31)
        self.source = b""

    def read_into(self, target: bytearray, size: int) -> int:
        """Append up to ``size`` bytes to ``target``; returns how many (fewer only at the end of the file)."""
        start = len(target)
        while len(target) - start < size:
            if not self.source:
                if self.inflater.eof and self.inflater.unused_data:  # a further gzip member
                    self.source = self.inflater.unused_data
                    self.inflater = self.codec.decompressobj(31)
                else:
                    self.source = self.handle.read(self.input_bytes)
                    if not self.source:
                        break
            target += self.inflater.decompress(self.source, size - (len(target) - start))
            self.source = self.inflater.unconsumed_tail
            if self.inflater.eof and not self.source:
                self.source = b""
                if not self.inflater.unused_data:
                    rest = self.handle.read(self.input_bytes)
                    if not rest:
                        break
                    self.inflater = self.codec.decompressobj(31)
                    self.source = rest
        return len(target) - start


def _decompressed_chunks(path: Path, offset: int, chunk_bytes: int, total_bytes: int,
                         input_bytes: int = 16 * 2**20) -> Iterator[bytearray]:
    """The bytes ``offset .. offset + total_bytes`` of a (gzipped) file, in pieces of ``chunk_bytes``."""
    with open(path, "rb") as handle:
        if str(path).endswith(".gz"):
            reader = _Inflater(handle, _zlib_module(), input_bytes)
            skip = bytearray()
            reader.read_into(skip, offset)
            read = reader.read_into
        else:
            handle.seek(offset)

            def read(target: bytearray, size: int) -> int:
                data = handle.read(size)
                target += data
                return len(data)
        sent = 0
        while sent < total_bytes:
            piece = bytearray()
            got = read(piece, min(chunk_bytes, total_bytes - sent))
            if got:
                yield piece
            sent += got
            if got < min(chunk_bytes, total_bytes - sent + got):
                return


def _prefetch(chunks: Iterator[bytes], depth: int = 2) -> Iterator[bytes]:
    """Run ``chunks`` in a thread, ``depth`` pieces ahead: inflating (which releases the GIL) overlaps the
    parcel averaging of the previous piece, so the wall time approaches that of decompression alone."""
    import queue
    import threading

    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for piece in chunks:
                if stop.is_set():
                    return
                box.put(piece)
            box.put(done)
        except BaseException as exc:  # handed to the consumer
            box.put(exc)

    thread = threading.Thread(target=work, name="bold-inflate", daemon=True)
    thread.start()
    try:
        while True:
            item = box.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                box.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def parcel_timeseries_nifti(bold_path: str | Path, label_grid: np.ndarray, mask: np.ndarray, indices: list[int],
                            names: list[str], *, chunk_volumes: int = 8, min_voxels: int = 1) -> ParcelSeries:
    """Stream a 4-D NIfTI and return parcel means and the normalised intensity change.

    ``label_grid`` and ``mask`` are on the BOLD grid (see :func:`labels_on_grid`).
    """
    import nibabel as nib

    bold_path = Path(bold_path)
    img = nib.load(bold_path)
    shape = img.shape
    if len(shape) != 4:
        raise ValueError(f"BOLD image is {len(shape)}-D, expected 4-D")
    if tuple(label_grid.shape) != tuple(shape[:3]) or tuple(mask.shape) != tuple(shape[:3]):
        raise ValueError(f"labels {label_grid.shape} / mask {mask.shape} do not match the BOLD grid {shape[:3]}")
    matrix, flat_mask, counts = averaging_matrix(label_grid, mask, indices, names, min_voxels)
    n_frames = shape[3]
    n_vox = int(np.prod(shape[:3]))
    proxy = img.dataobj
    dtype = img.header.get_data_dtype()
    slope, inter = proxy.slope, proxy.inter
    scaled = not (slope in (None, 1.0) and inter in (None, 0.0)) and np.isfinite(slope)
    out = np.empty((n_frames, len(indices)), dtype=np.float64)
    sum_sq = np.zeros(n_frames)
    total = 0.0
    previous = None
    vol_bytes = n_vox * dtype.itemsize
    chunk_volumes = max(1, min(chunk_volumes, n_frames))
    matrix_t = matrix.T.tocsr()  # mask voxels x parcels: dense(frames x voxels) @ sparse is the fast product
    chunks = _prefetch(_decompressed_chunks(bold_path, int(proxy.offset), vol_bytes * chunk_volumes,
                                            vol_bytes * n_frames))
    start = 0
    for raw in chunks:
        if len(raw) % vol_bytes:
            raise ValueError(f"BOLD file ends inside volume {start + len(raw) // vol_bytes + 1} of {n_frames}")
        stop = start + len(raw) // vol_bytes
        # volumes are contiguous in the file: gather the mask voxels volume by volume (cache friendly)
        block = np.frombuffer(raw, dtype=dtype).reshape((stop - start, n_vox))[:, flat_mask]
        block = block.astype(np.float32, copy=False)
        if scaled:
            block = block * np.float32(slope) + np.float32(inter or 0.0)
        out[start:stop] = np.asarray(block @ matrix_t)
        # float32 row sums use numpy's pairwise summation (relative error ~1e-7), twice as fast as float64
        total += float(block.sum(axis=1).sum(dtype=np.float64))
        diffs = np.diff(block, axis=0)
        np.square(diffs, out=diffs)
        sum_sq[start + 1:stop] = diffs.sum(axis=1)
        if previous is not None:
            step = (block[0] - previous).astype(np.float64)
            sum_sq[start] = float(np.dot(step, step))
        previous = block[-1].copy()
        start = stop
        del raw, block, diffs
    if start < n_frames:
        raise ValueError(f"BOLD file ends after {start} of {n_frames} volumes")
    mean_intensity = total / (flat_mask.size * n_frames)
    if np.isfinite(mean_intensity) and mean_intensity != 0:
        change = intensity_change_from_sums(sum_sq, flat_mask.size, mean_intensity)
    else:  # NaN/inf voxels or an all-zero mask: the caller reports it (parcel check or intensity check)
        change = np.full(n_frames, np.nan)
    return ParcelSeries(timeseries=out, names=list(names), n_voxels=counts, intensity_change=change)


def _grayordinate_keys(axis) -> np.ndarray:
    """One string key per grayordinate: structure plus vertex (surface) or voxel ijk (volume)."""
    keys = []
    for name, vertex, voxel in zip(axis.name, axis.vertex, axis.voxel):
        keys.append(f"{name}:{vertex}" if vertex >= 0 else f"{name}:{voxel[0]},{voxel[1]},{voxel[2]}")
    return np.asarray(keys)


def cifti_label_table(dlabel_path: str | Path) -> tuple[np.ndarray, dict[int, str], object]:
    """(label key per grayordinate, {key: name} without the unlabelled key 0, brain-model axis) of a dlabel."""
    import nibabel as nib

    img = nib.load(str(dlabel_path))
    label_axis, brain_axis = img.header.get_axis(0), img.header.get_axis(1)
    keys = np.asarray(img.get_fdata()[0], dtype=np.int64)
    table = {int(k): v[0] for k, v in label_axis.label[0].items() if int(k) != 0}
    return keys, table, brain_axis


def parcel_timeseries_cifti(dtseries_path: str | Path, dlabel, min_grayordinates: int = 1) -> ParcelSeries:
    """Parcel means of a CIFTI dense time series under a dense label parcellation (matched by grayordinate):
    ``dlabel`` is a .dlabel.nii path or a surface parcellation (:class:`bids_ketamine.surface_atlas.SurfaceAtlas`).
    Parcels with no grayordinate in the parcellation (the built-in CAB-NP's subcortex) are not part of the result."""
    import nibabel as nib

    img = nib.load(str(dtseries_path))
    brain = img.header.get_axis(1)
    data = np.asarray(img.dataobj, dtype=np.float32)  # frames x grayordinates; 91k x T is small
    if hasattr(dlabel, "label_table"):
        label_keys, table, label_brain = dlabel.label_table()
        present = set(np.unique(label_keys)) - {0}
        table = {k: v for k, v in table.items() if k in present}
    else:
        label_keys, table, label_brain = cifti_label_table(dlabel)
    data_keys = _grayordinate_keys(brain)
    position = {k: i for i, k in enumerate(_grayordinate_keys(label_brain))}
    idx = np.array([position.get(k, -1) for k in data_keys])
    if (idx < 0).all():
        raise AtlasOverlapError("the CIFTI parcellation shares no grayordinate with the BOLD", list(table.values()))
    keys = np.where(idx >= 0, label_keys[np.maximum(idx, 0)], 0)
    order = sorted(table)
    names = [table[k] for k in order]
    matrix, _, counts = averaging_matrix(keys[:, None, None], np.ones((keys.size, 1, 1), bool), order, names,
                                         min_grayordinates)
    timeseries = np.asarray(matrix @ data.T, dtype=np.float64).T
    diff = np.diff(data.astype(np.float64), axis=0)
    sums = np.concatenate([[0.0], np.einsum("tv,tv->t", diff, diff)])
    change = intensity_change_from_sums(sums, data.shape[1], float(data.mean(dtype=np.float64)))
    return ParcelSeries(timeseries=timeseries, names=names, n_voxels=counts, intensity_change=change)
