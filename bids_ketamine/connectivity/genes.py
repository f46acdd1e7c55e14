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


def hemisphere_groups(hemispheres: Sequence[str] | None, per_hemisphere: bool, n: int) -> list[np.ndarray]:
    """Index groups to generate surrogates in: L and R separately when every parcel is L or R, else one group."""
    if per_hemisphere and hemispheres is not None:
        hemi = np.asarray([str(h) for h in hemispheres])
        if set(hemi) <= {"L", "R"} and min((hemi == "L").sum(), (hemi == "R").sum()) >= 3:
            return [np.flatnonzero(hemi == "L"), np.flatnonzero(hemi == "R")]
    return [np.arange(n)]


def generate_surrogates(values: np.ndarray, distance: np.ndarray, *, n_surrogates: int, seed: int,
                        hemispheres: Sequence[str] | None = None,
                        settings: SurrogateSettings = SurrogateSettings(), n_jobs: int = 1) -> np.ndarray:
    """Surrogate maps (n_surrogates x parcels) with the spatial autocorrelation of ``values`` (Moran spectral
    randomisation or brainsmash variogram matching, see ``settings``), over all parcels or per hemisphere."""
    from bids_ketamine.connectivity.spatial_nulls import moran_surrogates

    if settings.method not in ("moran", "brainsmash"):
        raise ValueError(f"unknown surrogate method {settings.method!r} (moran or brainsmash)")
    values = np.asarray(values, dtype=float)
    distance = np.asarray(distance, dtype=float)
    if not np.isfinite(values).all():
        raise ValueError("brain map has NaN values; restrict it to parcels with values first")
    groups = hemisphere_groups(hemispheres, settings.per_hemisphere, values.size)
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


def surrogate_cache_key(values: np.ndarray, distance: np.ndarray, hemispheres: Sequence[str] | None,
                        settings: SurrogateSettings, seed: int, n_surrogates: int) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(values, dtype=float).tobytes())
    digest.update(np.ascontiguousarray(distance, dtype=float).tobytes())
    digest.update(repr((list(hemispheres) if hemispheres is not None else None, asdict(settings), int(seed),
                        int(n_surrogates))).encode())
    return digest.hexdigest()[:24]


def cached_surrogates(values: np.ndarray, distance: np.ndarray, *, n_surrogates: int, seed: int,
                      cache_dir: str | os.PathLike | None, hemispheres: Sequence[str] | None = None,
                      settings: SurrogateSettings = SurrogateSettings(), n_jobs: int = 1) -> np.ndarray:
    """:func:`generate_surrogates`, read from / written to ``cache_dir`` when given (atomic write)."""
    if cache_dir is None:
        return generate_surrogates(values, distance, n_surrogates=n_surrogates, seed=seed, hemispheres=hemispheres,
                                   settings=settings, n_jobs=n_jobs)
    cache_dir = Path(cache_dir)
    key = surrogate_cache_key(values, distance, hemispheres, settings, seed, n_surrogates)
    path = cache_dir / f"surrogates_{key}.npy"
    if path.is_file():
        cached = np.load(path)
        if cached.shape == (n_surrogates, np.asarray(values).size):
            return cached
    surr = generate_surrogates(values, distance, n_surrogates=n_surrogates, seed=seed, hemispheres=hemispheres,
                               settings=settings, n_jobs=n_jobs)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".surrogates_", suffix=".npy", dir=cache_dir)
    os.close(fd)
    try:
        np.save(tmp, surr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return surr


# --------------------------------------------------------------------------------------------- statistics
def null_p_value(r: float | np.ndarray, r_null: np.ndarray) -> np.ndarray:
    """Two-sided p = (1 + #{|r_null| >= |r|}) / (1 + N); ``r_null`` is N (x genes)."""
    r = np.asarray(r, dtype=float)
    r_null = np.asarray(r_null, dtype=float)
    count = (np.abs(r_null) >= np.abs(r)[None, ...] - 1e-12).sum(axis=0)
    return (1.0 + count) / (1.0 + r_null.shape[0])


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


def gene_correlations(brain_map: pd.Series, genes: pd.DataFrame, surrogates: np.ndarray, *,
                      n_naive: int = 0, seed: int = 0) -> pd.DataFrame:
    """r of a brain map with every gene, its spatial-surrogate p (and FDR q), and the naive shuffle p (and q).

    ``surrogates`` are rows aligned with ``brain_map.index``; ``genes`` is indexed by parcel name and may have NaN
    (a gene is then tested on the parcels where it is measured). ``n_naive`` = 0 skips the naive null.
    """
    names = list(brain_map.index)
    missing = [n for n in names if n not in genes.index]
    if missing:
        raise ValueError(f"gene table lacks parcels {missing[:5]}")
    x = brain_map.to_numpy(dtype=float)
    expr = genes.loc[names].to_numpy(dtype=float)
    naive = shuffled_maps(x, n_naive, np.random.default_rng(seed)) if n_naive else None
    complete = np.isfinite(expr).all(axis=0) & (np.ptp(np.nan_to_num(expr), axis=0) > 0)
    rows: list[dict] = [{} for _ in genes.columns]
    # complete genes: one standardised matrix product per chunk of genes (the same surrogates for every gene)
    idx = np.flatnonzero(complete)
    z_maps = {"spatial": _standardise_rows(surrogates)}
    if naive is not None:
        z_maps["naive"] = _standardise_rows(naive)
    z_x = _standardise_rows(x[None, :])[0]
    for start in range(0, idx.size, GENE_CHUNK):
        cols = idx[start:start + GENE_CHUNK]
        z_g = _standardise_rows(expr[:, cols].T).T
        r = z_x @ z_g
        p_sp = null_p_value(r, z_maps["spatial"] @ z_g)
        p_nv = null_p_value(r, z_maps["naive"] @ z_g) if naive is not None else np.full(cols.size, np.nan)
        for j, rj, ps, pn in zip(cols, r, p_sp, p_nv):
            rows[j] = {"n_parcels": len(names), "r": float(rj), "p_spatial": float(ps), "p_naive": float(pn)}
    # genes with missing parcels: tested on the parcels where they are measured
    for j in np.flatnonzero(~complete):
        ok = np.isfinite(expr[:, j])
        row = {"n_parcels": int(ok.sum()), "r": np.nan, "p_spatial": np.nan, "p_naive": np.nan}
        if ok.sum() >= 3 and np.ptp(expr[ok, j]) > 0:
            r = float(row_correlations(x[ok][None, :], expr[ok, j])[0])
            row["r"] = r
            row["p_spatial"] = float(null_p_value(r, row_correlations(surrogates[:, ok], expr[ok, j])))
            if naive is not None:
                row["p_naive"] = float(null_p_value(r, row_correlations(naive[:, ok], expr[ok, j])))
        rows[j] = row
    for gene, row in zip(genes.columns, rows):
        row["gene"] = str(gene)
    table = pd.DataFrame(rows)
    table["q_spatial"] = fdr_bh(table["p_spatial"].to_numpy())
    table["q_naive"] = fdr_bh(table["p_naive"].to_numpy())
    table["n_surrogates"] = surrogates.shape[0]
    table["n_naive"] = n_naive
    return table[["gene", "n_parcels", "r", "p_spatial", "q_spatial", "p_naive", "q_naive", "n_surrogates",
                  "n_naive"]]


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


def _mode_name(settings: SurrogateSettings, hemispheres, n: int) -> str:
    per_hemi = len(hemisphere_groups(hemispheres, settings.per_hemisphere, n)) > 1
    prefix = "moran" if settings.method == "moran" else "surrogates"
    return f"{prefix}_per_hemisphere" if per_hemi else f"{prefix}_whole_brain"


def _calibration_pair(x: np.ndarray, y: np.ndarray, distance: np.ndarray, hemispheres, n_null: int, seed: int,
                      variants: tuple[SurrogateSettings, ...]) -> list[float]:
    r = float(row_correlations(x[None, :], y)[0])
    out = [r]
    for settings in variants:
        surr = generate_surrogates(x, distance, n_surrogates=n_null, seed=seed, hemispheres=hemispheres,
                                   settings=settings)
        out.append(float(null_p_value(r, row_correlations(surr, y))))
    naive = shuffled_maps(x, n_null, np.random.default_rng([seed, 1]))
    out.append(float(null_p_value(r, row_correlations(naive, y))))
    return out


def null_calibration(xyz: np.ndarray, *, hemispheres: Sequence[str] | None = None, n_pairs: int = 200,
                     n_null: int = 500, length_mm: float = 30.0, alpha: float = 0.05, seed: int = 0,
                     settings: SurrogateSettings = SurrogateSettings(), both_hemisphere_modes: bool = False,
                     other_methods: Sequence[str] = (), covariance: str = "gaussian",
                     n_jobs: int = 1) -> CalibrationResult:
    """False-positive rates of the spatial-surrogate and naive-shuffle tests on unrelated smooth map pairs.

    Each pair is two independent smooth Gaussian fields on the parcel centroids (so any correlation is chance);
    the rate of p < ``alpha`` should be close to ``alpha`` for a calibrated null. Confidence intervals are
    Clopper-Pearson 95 %. Methods: ``surrogates_per_hemisphere`` or ``surrogates_whole_brain`` (the mode of
    ``settings``; with ``both_hemisphere_modes`` the other mode too, where the parcels allow it; the row of
    ``settings`` has ``configured`` true) and ``naive_parcel_shuffle``; ``other_methods`` (e.g. ``["brainsmash"]``)
    adds the same modes made with another surrogate method (``moran_*`` / ``surrogates_*`` rows).
    """
    from dataclasses import replace

    n = int(np.asarray(xyz).shape[0])
    variants = [settings]
    if both_hemisphere_modes:
        other = replace(settings, per_hemisphere=not settings.per_hemisphere)
        if _mode_name(other, hemispheres, n) != _mode_name(settings, hemispheres, n):
            variants.append(other)
    for method in other_methods:
        if method != settings.method:
            variants += [replace(v, method=method) for v in list(variants) if v.method == settings.method]
    names = [_mode_name(v, hemispheres, n) for v in variants]
    rng = np.random.default_rng(seed)
    maps = smooth_random_maps(xyz, 2 * n_pairs, length_mm=length_mm, rng=rng, covariance=covariance)
    distance = distance_matrix(xyz)
    pair_seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_pairs)]
    args = [(maps[2 * i], maps[2 * i + 1], distance, hemispheres, n_null, pair_seeds[i], tuple(variants))
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
    are stored as JSON (floats round-trip exactly) and the table is recomputed from them.
    """
    if cache_dir is None:
        return null_calibration(xyz, **kwargs)
    import json

    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(xyz, dtype=float).tobytes())
    settings = kwargs.get("settings", SurrogateSettings())
    hemis = kwargs.get("hemispheres")
    record = {k: v for k, v in kwargs.items() if k not in ("settings", "hemispheres", "n_jobs")}
    digest.update(repr((sorted(record.items()), asdict(settings),
                        list(hemis) if hemis is not None else None)).encode())
    path = Path(cache_dir) / f"nullcalibration_{digest.hexdigest()[:24]}.json"
    defaults = {"n_null": 500, "length_mm": 30.0, "alpha": 0.05}
    opts = {k: kwargs.get(k, v) for k, v in defaults.items()}
    if path.is_file():
        try:
            pairs = pd.DataFrame(json.loads(path.read_text()))
            return CalibrationResult(table=calibration_table(pairs, n_parcels=int(np.asarray(xyz).shape[0]),
                                                             **opts), pairs=pairs)
        except (ValueError, KeyError):  # a damaged cache file is recomputed
            pass
    result = null_calibration(xyz, **kwargs)
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
