"""Correlating a parcel-wise brain map (e.g. the PC1 map) with gene expression, against spatial-autocorrelation nulls.

Why surrogates: neighbouring parcels have similar values in smooth brain maps and in gene expression, so the number
of independent observations is far smaller than the number of parcels, and a naive null that shuffles parcels
(destroying that smoothness) gives p-values that are too small. The null here are surrogate maps with the brain
map's spatial autocorrelation, from a Euclidean distance matrix between parcel centroids, made by one of:

- ``moran`` (default): Moran spectral randomisation (:mod:`.spatial_nulls`): random sign flips of the map's
  coefficients on the Moran eigenvectors of inverse-distance weights; keeps the map's mean, sum of squares and Moran
  spectrum exactly, costs a matrix product.
- ``brainsmash``: variogram matching (Burt et al. 2020), the tool of the published analysis.

Why Moran by default (benchmarks/bench_connectivity_group.py, p < 0.05 rate on unrelated smooth map pairs, 199
nulls, nominal 4.5 %): over five map sets (Gaussian fields of 15, 30 and 45 mm, exponential of 20 and 60 mm) on the
default atlas's 68 cortical parcels and on a 360-parcel cortical parcellation, Moran whole-brain surrogates
rejected in 3.9-6.1 % of 1000 pairs per set (pooled 4.9 %); brainsmash (its defaults, resample on) in 4-11 % of
100 pairs per set on the 68 parcels (9-11 % for the 30 and 45 mm fields; 3 % on 360 parcels, 30 mm), at a few
hundred times the cost per pair, which also kept the calibration off by default before. brainsmash fits the
variogram at short distances (pv = 25 %) and its surrogates are less smooth at long range than a very smooth map;
fitting all distances (pv = 100) was worse (9.2 % vs 5.8 % at 45 mm, 120 pairs).

Why whole-brain rather than per hemisphere (the published choice, ``per_hemisphere``): Euclidean distances are
defined across hemispheres, and surrogates made per hemisphere lose the coupling between the hemispheres that smooth
maps have (the medial parcels of both hemispheres are neighbours), so their null distribution of r is too narrow:
per hemisphere rejected in 5.6-11.5 % of pairs with Moran and 6-20 % with brainsmash on the 68 parcels (4.5-9.8 %
with Moran on 360 parcels). With 34 parcels per hemisphere the fit also has half the data. :func:`null_calibration`
reproduces this on any atlas, and the group level writes it as a table and a figure by default (cached per atlas). Very smooth maps (few effective degrees of
freedom) remain the hardest case for every spatial null: read p values near 0.05 with care.

- p = (1 + #{|r_null| >= |r|}) / (1 + N), two-sided, N surrogates; Benjamini-Hochberg FDR across genes.
- Surrogates are generated once per brain map and reused for every gene, and cached on disk keyed by a hash of the
  map, the distances, the settings, the seed and N (a re-run with the same inputs reads them back).
- The naive parcel-shuffle p (same formula) is reported next to the spatial p, and :func:`null_calibration`
  measures both false-positive rates on pairs of unrelated smooth maps.

Gene tables: a TSV with a column ``parcel`` (or ``name``: parcel names of the atlas) and one column per gene, or
computed with abagen from a local copy of the Allen Human Brain Atlas (never downloaded: a missing copy is a
MissingInputError).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bids_ketamine.errors import BadDataError, MissingInputError

#: Allen Human Brain Atlas donors (abagen's identifiers) and the files abagen reads for each one.
AHBA_DONORS = ("9861", "10021", "12876", "14380", "15496", "15697")
#: Genes correlated with the surrogates in one matrix product (memory: n_surrogates x chunk x 8 bytes).
GENE_CHUNK = 256
AHBA_FILES = ("MicroarrayExpression.csv", "Ontology.csv", "PACall.csv", "Probes.csv", "SampleAnnot.csv")


# --------------------------------------------------------------------------------------------- gene tables
def read_gene_table(path: str | os.PathLike) -> pd.DataFrame:
    """A parcels x genes table from a TSV keyed by parcel name (column ``parcel`` or ``name``), indexed by name."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError("gene expression table not found", path=path,
                                fix="give a TSV with a 'parcel' column (parcel names) and one column per gene")
    table = pd.read_csv(path, sep="\t")
    key = next((c for c in ("parcel", "name") if c in table.columns), None)
    if key is None:
        raise BadDataError("gene table has no 'parcel' (or 'name') column", path=path,
                           fix="key the rows by atlas parcel name in a column called 'parcel'")
    if table[key].duplicated().any():
        raise BadDataError(f"parcel {table[key][table[key].duplicated()].iloc[0]!r} appears twice",
                           path=path, fix="give one row per parcel")
    table = table.set_index(table[key].astype(str)).drop(columns=key)
    numeric = table.apply(pd.to_numeric, errors="coerce")
    bad = [c for c in table.columns if numeric[c].isna().sum() > table[c].isna().sum()]
    if bad:
        raise BadDataError(f"gene column {bad[0]!r} has non-numeric values", path=path,
                           fix="write expression values as numbers and missing values as n/a")
    if numeric.shape[1] == 0:
        raise BadDataError("gene table has no gene columns", path=path, fix="add one column per gene")
    numeric.index.name = "parcel"
    return numeric


def check_ahba_copy(ahba_dir: str | os.PathLike) -> Path:
    """The ``microarray`` folder holding ``normalized_microarray_donor*/`` (``ahba_dir/microarray`` or ``ahba_dir``
    itself when it is named ``microarray``: abagen's layout).

    Raises MissingInputError naming the first missing file: nothing is ever downloaded.
    """
    root = Path(ahba_dir)
    if root.name != "microarray":
        root = root / "microarray"
    for donor in AHBA_DONORS:
        for name in AHBA_FILES:
            path = root / f"normalized_microarray_donor{donor}" / name
            if not path.is_file():
                raise MissingInputError("local Allen Human Brain Atlas copy is incomplete (nothing is downloaded)",
                                        path=path, fix="point ahba_dir at a complete local AHBA microarray copy "
                                                       "(abagen layout: <dir>/microarray/normalized_microarray_"
                                                       "donor<id>/), or give a gene table TSV instead")
    return root


def expression_from_abagen(ahba_dir: str | os.PathLike, atlas_image, labels: pd.DataFrame,
                           **abagen_kwargs) -> pd.DataFrame:
    """Parcels x genes expression from a local AHBA copy with abagen (indexed by parcel name)."""
    import abagen

    root = check_ahba_copy(ahba_dir)
    info = pd.DataFrame({"id": labels["index"].astype(int), "label": labels["name"],
                         "hemisphere": labels["hemisphere"], "structure": labels["structure"]})
    expression = abagen.get_expression_data(atlas_image, atlas_info=info, data_dir=str(root), verbose=0,
                                            **abagen_kwargs)
    names = dict(zip(labels["index"].astype(int), labels["name"]))
    expression.index = [names[int(i)] for i in expression.index]
    expression.index.name = "parcel"
    return expression


# --------------------------------------------------------------------------------------------- surrogates
def distance_matrix(xyz: np.ndarray) -> np.ndarray:
    """Euclidean distances (mm) between parcel centroids (parcels x 3)."""
    xyz = np.asarray(xyz, dtype=float)
    diff = xyz[:, None, :] - xyz[None, :, :]
    return np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))


@dataclass(frozen=True)
class SurrogateSettings:
    """Surrogate settings: ``method`` "moran" (Moran spectral randomisation, :mod:`.spatial_nulls`) or "brainsmash"
    (variogram matching; the other fields are passed to brainsmash: its defaults, except ``resample``)."""

    method: str = "moran"
    deltas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    kernel: str = "exp"
    pv: int = 25
    nh: int = 25
    resample: bool = True
    per_hemisphere: bool = False
    batch_size: int = 100


NULL_METHODS = ("moran", "brainsmash", "spin", "spin_vasa", "spin_hungarian")
SPIN_METHODS = ("spin", "spin_vasa", "spin_hungarian")
#: Spin method name -> assignment of :func:`.spatial_nulls.spin_permutations`.
SPIN_ASSIGNMENT = {"spin": "nearest", "spin_vasa": "vasa", "spin_hungarian": "hungarian"}


def hemisphere_groups(hemispheres: Sequence[str] | None, per_hemisphere: bool, n: int) -> list[np.ndarray]:
    """Index groups to generate surrogates in: L and R separately when every parcel is L or R, else one group."""
    if per_hemisphere and hemispheres is not None:
        hemi = np.asarray([str(h) for h in hemispheres])
        if set(hemi) <= {"L", "R"} and min((hemi == "L").sum(), (hemi == "R").sum()) >= 3:
            return [np.flatnonzero(hemi == "L"), np.flatnonzero(hemi == "R")]
    return [np.arange(n)]


def generate_surrogates(values: np.ndarray, distance: np.ndarray | None, *, n_surrogates: int, seed: int,
                        hemispheres: Sequence[str] | None = None,
                        settings: SurrogateSettings = SurrogateSettings(), n_jobs: int = 1,
                        sphere: np.ndarray | None = None, spins: np.ndarray | None = None,
                        wall: dict | None = None) -> np.ndarray:
    """Surrogate maps (n_surrogates x parcels) with the spatial autocorrelation of ``values``: Moran spectral
    randomisation or brainsmash variogram matching on ``distance`` (over all parcels or per hemisphere), or a
    parcel-wise spin test on the ``sphere`` centroids (``spin``: nearest rotated parcel with the medial wall
    ``wall`` rotating along, NaN where it lands; ``spin_vasa``, ``spin_hungarian``: permutations; ``spins``:
    precomputed resamplings, n x parcels, of which the first ``n_surrogates`` are used).

    Distances that are not finite between hemispheres (surface geodesic distances) make Moran and brainsmash work
    per hemisphere whatever ``settings.per_hemisphere`` says: there is no distance to weigh across them.
    """
    from bids_ketamine.connectivity.spatial_nulls import moran_surrogates, spin_permutations, spun_maps

    if settings.method not in NULL_METHODS:
        raise ValueError(f"unknown surrogate method {settings.method!r} ({', '.join(NULL_METHODS)})")
    values = np.asarray(values, dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("brain map has NaN values; restrict it to parcels with values first")
    if settings.method in SPIN_METHODS:
        if spins is None:
            if sphere is None or hemispheres is None:
                raise ValueError("spin tests need parcel centroids on the sphere and their hemispheres")
            spins = spin_permutations(sphere, hemispheres, n_spins=n_surrogates, seed=seed,
                                      method=SPIN_ASSIGNMENT[settings.method], wall=wall)
        if spins.shape[0] < n_surrogates or spins.shape[1] != values.size:
            raise ValueError(f"spin resamplings {spins.shape} do not cover {n_surrogates} x {values.size}")
        return spun_maps(values, spins[:n_surrogates])
    distance = np.asarray(distance, dtype=float)
    per_hemisphere = settings.per_hemisphere or not np.isfinite(distance).all()
    groups = hemisphere_groups(hemispheres, per_hemisphere, values.size)
    for group in groups:
        if not np.isfinite(distance[np.ix_(group, group)]).all():
            raise ValueError("distances are not finite within a surrogate group (geodesic distances need every "
                             "parcel in the L or R hemisphere)")
    seeds = np.random.SeedSequence(seed).generate_state(len(groups))
    out = np.empty((n_surrogates, values.size))
    for group, group_seed in zip(groups, seeds):
        if group.size < 5:
            raise ValueError(f"only {group.size} parcels in a surrogate group; at least 5 are needed")
        if settings.method == "moran":
            out[:, group] = moran_surrogates(values[group], distance[np.ix_(group, group)],
                                             n_surrogates=n_surrogates, seed=int(group_seed))
            continue
        from brainsmash.mapgen.base import Base

        with warnings.catch_warnings():  # brainsmash 0.1.x calls numpy's deprecated row_stack
            warnings.simplefilter("ignore", DeprecationWarning)
            gen = Base(values[group], distance[np.ix_(group, group)], deltas=np.asarray(settings.deltas),
                       kernel=settings.kernel, pv=settings.pv, nh=settings.nh, resample=settings.resample,
                       seed=int(group_seed % (2 ** 31 - 1)), n_jobs=n_jobs)
            surr = gen(n=n_surrogates, batch_size=min(settings.batch_size, n_surrogates))
        out[:, group] = np.asarray(surr).reshape(n_surrogates, group.size)
    return out


def _hash_arrays(digest, *arrays) -> None:
    for a in arrays:
        if a is None:
            digest.update(b"none")
        else:
            a = np.ascontiguousarray(a)
            digest.update(repr((a.shape, a.dtype.str)).encode())
            digest.update(a.tobytes())


def surrogate_cache_key(values: np.ndarray, distance: np.ndarray | None, hemispheres: Sequence[str] | None,
                        settings: SurrogateSettings, seed: int, n_surrogates: int,
                        sphere: np.ndarray | None = None, spins: np.ndarray | None = None) -> str:
    digest = hashlib.sha256()
    _hash_arrays(digest, np.asarray(values, dtype=float),
                 None if distance is None else np.asarray(distance, dtype=float), sphere, spins)
    digest.update(repr((list(hemispheres) if hemispheres is not None else None, asdict(settings), int(seed),
                        int(n_surrogates))).encode())
    return digest.hexdigest()[:24]


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}_", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_surrogates(values: np.ndarray, distance: np.ndarray | None, *, n_surrogates: int, seed: int,
                      cache_dir: str | os.PathLike | None, hemispheres: Sequence[str] | None = None,
                      settings: SurrogateSettings = SurrogateSettings(), n_jobs: int = 1,
                      sphere: np.ndarray | None = None, spins: np.ndarray | None = None,
                      wall: dict | None = None) -> np.ndarray:
    """:func:`generate_surrogates`, read from / written to ``cache_dir`` when given (atomic write)."""
    kwargs = dict(n_surrogates=n_surrogates, seed=seed, hemispheres=hemispheres, settings=settings, n_jobs=n_jobs,
                  sphere=sphere, spins=spins, wall=wall)
    if cache_dir is None or settings.method in SPIN_METHODS:  # spin surrogates are an indexing of cached spins
        return generate_surrogates(values, distance, **kwargs)
    key = surrogate_cache_key(values, distance, hemispheres, settings, seed, n_surrogates, sphere, spins)
    path = Path(cache_dir) / f"surrogates_{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (n_surrogates, np.asarray(values).size):
            return cached
    surr = generate_surrogates(values, distance, **kwargs)
    _atomic_save(path, surr)
    return surr


def cached_spins(sphere: np.ndarray, hemispheres: Sequence[str], *, n_spins: int, seed: int, method: str,
                 cache_dir: str | os.PathLike | None, wall: dict | None = None) -> np.ndarray:
    """Spin-test resamplings of a parcellation (:func:`.spatial_nulls.spin_permutations`), cached: they depend on
    the parcellation, the method and the seed only, so every map and every re-run reuses them."""
    from bids_ketamine.connectivity.spatial_nulls import spin_permutations

    method = SPIN_ASSIGNMENT.get(method, method)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha256()
        _hash_arrays(digest, np.asarray(sphere, dtype=float),
                     *([np.asarray(wall[h]) for h in sorted(wall)] if wall else []))
        digest.update(repr((list(hemispheres), int(n_spins), int(seed), method)).encode())
        path = Path(cache_dir) / f"spins_{digest.hexdigest()[:24]}.npy"
        if path.is_file():
            cached = np.load(path)
            if cached.shape == (n_spins, len(hemispheres)):
                return cached
    spins = spin_permutations(sphere, hemispheres, n_spins=n_spins, seed=seed, method=method, wall=wall)
    if path is not None:
        _atomic_save(path, spins)
    return spins


# --------------------------------------------------------------------------------------------- statistics
def null_p_value(r: float | np.ndarray, r_null: np.ndarray) -> np.ndarray:
    """Two-sided p = (1 + #{|r_null| >= |r|}) / (1 + N); ``r_null`` is N (x genes). A null map for which r is
    undefined (NaN: too few parcels left in a spin) is not counted in N."""
    r = np.asarray(r, dtype=float)
    r_null = np.asarray(r_null, dtype=float)
    count = (np.abs(r_null) >= np.abs(r)[None, ...] - 1e-12).sum(axis=0)
    return (1.0 + count) / (1.0 + np.isfinite(r_null).sum(axis=0))


def fdr_bh(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values (monotone, capped at 1); NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return q
    order = np.argsort(p[ok])
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


def row_correlations(maps: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson r between each row of ``maps`` (k x parcels) and ``target`` (parcels)."""
    a = np.asarray(maps, dtype=float)
    a = a - a.mean(axis=-1, keepdims=True)
    b = np.asarray(target, dtype=float)
    b = b - b.mean()
    denom = np.linalg.norm(a, axis=-1) * np.linalg.norm(b)
    return np.divide(a @ b, denom, out=np.full(a.shape[:-1], np.nan), where=denom > 0)


def masked_correlations(maps: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``maps`` (k x parcels) with each column of ``targets`` (parcels x g) over the
    parcels where both are finite (NaN marks a parcel a surrogate or a gene has no value for). k x g."""
    maps = np.asarray(maps, dtype=float)
    targets = np.asarray(targets, dtype=float)
    if targets.ndim == 1:
        return masked_correlations(maps, targets[:, None])[:, 0]
    mx, mt = np.isfinite(maps), np.isfinite(targets)
    x = np.where(mx, maps - np.nanmean(np.where(mx, maps, np.nan), axis=1, keepdims=True), 0.0)
    y = np.where(mt, targets - np.nanmean(np.where(mt, targets, np.nan), axis=0, keepdims=True), 0.0)
    fx, ft = mx.astype(float), mt.astype(float)
    n = fx @ ft
    sx, sy = x @ ft, fx @ y
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = x @ y - sx * sy / n
        vx = (x * x) @ ft - sx ** 2 / n
        vy = fx @ (y * y) - sy ** 2 / n
        r = cov / np.sqrt(vx * vy)
    return np.where((n >= 3) & (vx > 0) & (vy > 0), np.clip(r, -1.0, 1.0), np.nan)


def _null_correlations(null: np.ndarray, z_genes: np.ndarray, genes: np.ndarray) -> np.ndarray:
    """r of every null map with every gene: one product of standardised rows, or the NaN-aware version when
    the null leaves parcels out (the ``spin`` null)."""
    if np.isfinite(null).all():
        return _standardise_rows(null) @ z_genes
    return masked_correlations(null, genes)


def _standardise_rows(a: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm, so a product of two such rows is their Pearson r (0 for a flat row)."""
    a = np.asarray(a, dtype=float)
    a = a - a.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def shuffled_maps(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random parcel permutations of a map (the naive null)."""
    batch = np.array(np.broadcast_to(np.asarray(values, dtype=float), (n, np.asarray(values).size)))
    rng.permuted(batch, axis=1, out=batch)
    return batch


def gene_correlations(brain_map: pd.Series, genes: pd.DataFrame, surrogates, *,
                      n_naive: int = 0, seed: int = 0) -> pd.DataFrame:
    """r of a brain map with every gene, its spatial-null p (and FDR q), and the naive shuffle p (and q).

    ``surrogates``: an array of surrogate maps (rows aligned with ``brain_map.index``), or a dict {null name:
    array} of several nulls, the first being the primary inference: ``p_spatial``/``q_spatial`` are the primary
    null's, and every null also gets ``p_<name>``/``q_<name>`` columns. ``genes`` is indexed by parcel name and may
    have NaN (a gene is then tested on the parcels where it is measured). ``n_naive`` = 0 skips the naive null.
    """
    nulls = dict(surrogates) if isinstance(surrogates, dict) else {"spatial": np.asarray(surrogates)}
    if not nulls:
        raise ValueError("no spatial null given")
    primary = next(iter(nulls))
    names = list(brain_map.index)
    missing = [n for n in names if n not in genes.index]
    if missing:
        raise ValueError(f"gene table lacks parcels {missing[:5]}")
    x = brain_map.to_numpy(dtype=float)
    expr = genes.loc[names].to_numpy(dtype=float)
    naive = shuffled_maps(x, n_naive, np.random.default_rng(seed)) if n_naive else None
    all_nulls = {**nulls, **({"naive": naive} if naive is not None else {})}
    complete = np.isfinite(expr).all(axis=0) & (np.ptp(np.nan_to_num(expr), axis=0) > 0)
    p = {name: np.full(len(genes.columns), np.nan) for name in [*nulls, "naive"]}
    r_all = np.full(len(genes.columns), np.nan)
    n_parcels = np.full(len(genes.columns), len(names))
    # complete genes: one standardised matrix product per chunk of genes (the same surrogates for every gene)
    idx = np.flatnonzero(complete)
    z_x = _standardise_rows(x[None, :])[0]
    for start in range(0, idx.size, GENE_CHUNK):
        cols = idx[start:start + GENE_CHUNK]
        z_g = _standardise_rows(expr[:, cols].T).T
        r = z_x @ z_g
        r_all[cols] = r
        for name, m in all_nulls.items():
            p[name][cols] = null_p_value(r, _null_correlations(m, z_g, expr[:, cols]))
    # genes with missing parcels: tested on the parcels where they are measured
    for j in np.flatnonzero(~complete):
        ok = np.isfinite(expr[:, j])
        n_parcels[j] = int(ok.sum())
        if ok.sum() >= 3 and np.ptp(expr[ok, j]) > 0:
            r = float(row_correlations(x[ok][None, :], expr[ok, j])[0])
            r_all[j] = r
            for name, m in all_nulls.items():
                p[name][j] = float(null_p_value(r, masked_correlations(m[:, ok], expr[ok, j])))
    table = pd.DataFrame({"gene": [str(g) for g in genes.columns], "n_parcels": n_parcels, "r": r_all,
                          "p_spatial": p[primary], "q_spatial": fdr_bh(p[primary]),
                          "p_naive": p["naive"], "q_naive": fdr_bh(p["naive"]),
                          "n_surrogates": nulls[primary].shape[0], "n_naive": n_naive})
    if isinstance(surrogates, dict):
        for name in nulls:
            table[f"p_{name}"] = p[name]
            table[f"q_{name}"] = fdr_bh(p[name])
    return table


# --------------------------------------------------------------------------------------------- calibration
def smooth_random_maps(xyz: np.ndarray, n_maps: int, *, length_mm: float, rng: np.random.Generator,
                       covariance: str = "gaussian") -> np.ndarray:
    """Gaussian random fields on parcel centroids (n_maps x parcels) with covariance exp(-d^2 / (2 length^2))
    ("gaussian": very smooth) or exp(-d / length) ("exponential": rough at short range, long-range trends)."""
    if covariance == "gaussian":
        cov = np.exp(-distance_matrix(xyz) ** 2 / (2.0 * length_mm ** 2))
    elif covariance == "exponential":
        cov = np.exp(-distance_matrix(xyz) / length_mm)
    else:
        raise ValueError(f"unknown covariance {covariance!r} (gaussian or exponential)")
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.clip(w, 0.0, None))
    return rng.standard_normal((n_maps, cov.shape[0])) @ root.T


@dataclass(frozen=True)
class CalibrationResult:
    table: pd.DataFrame                  # one row per null method
    pairs: pd.DataFrame = field(repr=False)  # one row per pair: r, p_spatial, p_naive


def _mode_name(settings: SurrogateSettings, hemispheres, n: int, geodesic: bool = False) -> str:
    if settings.method in SPIN_METHODS:
        return settings.method
    if geodesic:
        return "moran_geodesic" if settings.method == "moran" else "brainsmash_geodesic"
    per_hemi = len(hemisphere_groups(hemispheres, settings.per_hemisphere, n)) > 1
    prefix = "moran" if settings.method == "moran" else "surrogates"
    return f"{prefix}_per_hemisphere" if per_hemi else f"{prefix}_whole_brain"


def _calibration_pair(x: np.ndarray, y: np.ndarray, distance: np.ndarray, hemispheres, n_null: int, seed: int,
                      variants: tuple[SurrogateSettings, ...], spin_pools: dict | None = None) -> list[float]:
    r = float(row_correlations(x[None, :], y)[0])
    out = [r]
    for settings in variants:
        spins = None
        if settings.method in SPIN_METHODS:
            pool = spin_pools[settings.method]
            spins = pool[np.random.default_rng([seed, 2]).choice(pool.shape[0], n_null, replace=False)]
        surr = generate_surrogates(x, distance, n_surrogates=n_null, seed=seed, hemispheres=hemispheres,
                                   settings=settings, spins=spins)
        null = row_correlations(surr, y) if np.isfinite(surr).all() else masked_correlations(surr, y)
        out.append(float(null_p_value(r, null)))
    naive = shuffled_maps(x, n_null, np.random.default_rng([seed, 1]))
    out.append(float(null_p_value(r, row_correlations(naive, y))))
    return out


def null_calibration(xyz: np.ndarray | None, *, hemispheres: Sequence[str] | None = None, n_pairs: int = 200,
                     n_null: int = 500, length_mm: float = 30.0, alpha: float = 0.05, seed: int = 0,
                     settings: SurrogateSettings = SurrogateSettings(), both_hemisphere_modes: bool = False,
                     other_methods: Sequence[str] = (), covariance: str = "gaussian", n_jobs: int = 1,
                     maps: np.ndarray | None = None, distance: np.ndarray | None = None,
                     sphere: np.ndarray | None = None, geodesic: bool = False,
                     wall: dict | None = None) -> CalibrationResult:
    """False-positive rates of the spatial nulls and the naive shuffle on unrelated smooth map pairs.

    Each pair is two independent smooth maps (so any correlation is chance); the rate of p < ``alpha`` should be
    close to ``alpha`` for a calibrated null. Confidence intervals are Clopper-Pearson 95 %. The maps are Gaussian
    random fields on the parcel centroids ``xyz`` (Euclidean covariance), or ``maps`` (2 n_pairs x parcels, e.g.
    fields on the cortical surface averaged in parcels); ``distance`` replaces the Euclidean centroid distances
    (``geodesic``: surface distances, within hemispheres). Methods: the configured ``settings`` first (its row has
    ``configured`` true); with ``both_hemisphere_modes`` the other hemisphere mode too, where the parcels allow it;
    ``other_methods`` (moran, brainsmash, spin_vasa, spin_hungarian) add those nulls; ``naive_parcel_shuffle`` last.
    Spin tests draw each pair's ``n_null`` resamplings from one pool of spins of the parcellation (made once:
    spins depend on the parcellation only), which needs ``sphere`` centroids (and ``wall`` for ``spin``).
    """
    from dataclasses import replace

    from bids_ketamine.connectivity.spatial_nulls import spin_permutations

    n = int(np.asarray(maps).shape[1] if maps is not None else np.asarray(xyz).shape[0])
    variants = [settings]
    if both_hemisphere_modes:
        variants.append(replace(settings, per_hemisphere=not settings.per_hemisphere))
    for method in other_methods:
        if method != settings.method:
            variants += [replace(v, method=method) for v in list(variants) if v.method == settings.method]
    unique: dict[str, SurrogateSettings] = {}
    for v in variants:
        unique.setdefault(_mode_name(v, hemispheres, n, geodesic), v)
    names, variants = list(unique), list(unique.values())
    rng = np.random.default_rng(seed)
    if maps is None:
        maps = smooth_random_maps(xyz, 2 * n_pairs, length_mm=length_mm, rng=rng, covariance=covariance)
    maps = np.asarray(maps, dtype=float)
    if maps.shape[0] < 2 * n_pairs:
        raise ValueError(f"{maps.shape[0]} maps for {n_pairs} pairs")
    if distance is None and any(v.method not in SPIN_METHODS for v in variants):
        distance = distance_matrix(xyz)
    spin_pools = {}
    for v in variants:
        if v.method in SPIN_METHODS and v.method not in spin_pools:
            if sphere is None or hemispheres is None:
                raise ValueError("spin tests need parcel centroids on the sphere and their hemispheres")
            spin_pools[v.method] = spin_permutations(sphere, hemispheres, n_spins=max(500, 5 * n_null),
                                                     seed=int(np.random.SeedSequence([seed, 7]).generate_state(1)[0]),
                                                     method=SPIN_ASSIGNMENT[v.method], wall=wall)
    pair_seeds = [int(x) for x in np.random.SeedSequence(seed).generate_state(n_pairs)]
    args = [(maps[2 * i], maps[2 * i + 1], distance, hemispheres, n_null, pair_seeds[i], tuple(variants), spin_pools)
            for i in range(n_pairs)]
    if n_jobs == 1:
        results = [_calibration_pair(*a) for a in args]
    else:
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs)(delayed(_calibration_pair)(*a) for a in args)
    columns = ["r", *[f"p_{m}" for m in names], "p_naive_parcel_shuffle"]
    pairs = pd.DataFrame(results, columns=columns)
    return CalibrationResult(table=calibration_table(pairs, n_null=n_null, length_mm=length_mm, n_parcels=n,
                                                     alpha=alpha), pairs=pairs)


def calibration_table(pairs: pd.DataFrame, *, n_null: int, length_mm: float, n_parcels: int,
                      alpha: float = 0.05) -> pd.DataFrame:
    """One row per null method (the ``p_<method>`` columns of ``pairs``, the first one being the configured
    surrogates): rate of p < ``alpha`` with its Clopper-Pearson 95 % interval."""
    from scipy import stats

    methods = [c[2:] for c in pairs.columns if c.startswith("p_")]
    n_pairs = len(pairs)
    rows = []
    for i, method in enumerate(methods):
        k = int((pairs[f"p_{method}"] < alpha).sum())
        ci = stats.binomtest(k, n_pairs).proportion_ci(confidence_level=0.95, method="exact")
        rows.append({"method": method, "configured": i == 0, "n_pairs": n_pairs, "n_null": n_null,
                     "length_scale_mm": length_mm, "n_parcels": n_parcels, "alpha": alpha, "n_false_positive": k,
                     "false_positive_rate": k / n_pairs, "ci_low": float(ci.low), "ci_high": float(ci.high)})
    return pd.DataFrame(rows)


def cached_null_calibration(xyz: np.ndarray, *, cache_dir: str | os.PathLike | None, **kwargs) -> CalibrationResult:
    """:func:`null_calibration`, read from / written to ``cache_dir`` when given.

    Why a cache: the calibration depends only on the atlas (centroids, hemispheres), the settings and the seed,
    not on the data, so a re-run of the group level (new subjects, other drugs) reuses it. The per-pair p values
    are stored as JSON (floats round-trip exactly) and the table is recomputed from them. ``maps`` may be a
    callable that makes the maps (called only when the cache misses), identified in the key by ``maps_key``.
    """
    import json

    maker = kwargs.get("maps")
    maps_key = kwargs.pop("maps_key", None)
    n_maps_parcels = kwargs.pop("n_parcels", None)
    if callable(maker):
        if maps_key is None:
            raise ValueError("a callable maps needs a maps_key for the cache")
        kwargs = {k: v for k, v in kwargs.items() if k != "maps"}

    def compute() -> CalibrationResult:
        extra = {"maps": maker()} if callable(maker) else {}
        return null_calibration(xyz, **kwargs, **extra)

    if cache_dir is None:
        return compute()

    digest = hashlib.sha256()
    _hash_arrays(digest, None if xyz is None else np.asarray(xyz, dtype=float))
    settings = kwargs.get("settings", SurrogateSettings())
    hemis = kwargs.get("hemispheres")
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    arrays.update({f"{k}/{h}": np.asarray(a) for k, v in kwargs.items() if isinstance(v, dict)
                   for h, a in sorted(v.items())})
    for key in sorted(arrays):
        digest.update(key.encode())
        _hash_arrays(digest, arrays[key])
    arrays.update({k: v for k, v in kwargs.items() if isinstance(v, dict)})
    record = {k: v for k, v in kwargs.items()
              if k not in ("settings", "hemispheres", "n_jobs") and k not in arrays}
    digest.update(repr((sorted(record.items()), asdict(settings),
                        list(hemis) if hemis is not None else None, maps_key)).encode())
    path = Path(cache_dir) / f"nullcalibration_{digest.hexdigest()[:24]}.json"
    defaults = {"n_null": 500, "length_mm": 30.0, "alpha": 0.05}
    opts = {k: kwargs.get(k, v) for k, v in defaults.items()}
    if path.is_file():
        try:
            pairs = pd.DataFrame(json.loads(path.read_text()))
            if n_maps_parcels is not None:
                n_parcels = int(n_maps_parcels)
            elif kwargs.get("maps") is not None:
                n_parcels = int(np.asarray(kwargs["maps"]).shape[1])
            else:
                n_parcels = int(np.asarray(xyz).shape[0])
            return CalibrationResult(table=calibration_table(pairs, n_parcels=n_parcels, **opts), pairs=pairs)
        except (ValueError, KeyError):  # a damaged cache file is recomputed
            pass
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nullcalibration_", suffix=".json", dir=path.parent)
    os.close(fd)
    try:
        Path(tmp).write_text(json.dumps(result.pairs.to_dict(orient="list")))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result
