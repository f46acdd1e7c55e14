"""Connectivity group level end to end on delta tables in the participant level's format (default atlas)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import group
from bids_ketamine.connectivity.params import ConnectivityParams
from bids_ketamine.errors import BadDataError
from bids_ketamine.io.derivatives import DerivativesWriter

N_KETAMINE, N_LSD = 30, 24


@pytest.fixture(scope="module")
def atlas():
    from bids_ketamine.atlas import load_default_atlas

    return load_default_atlas()


@pytest.fixture(scope="module")
def planted(atlas):
    return make_planted(atlas)


def make_planted(atlas) -> dict:
    """Two smooth planted components for ketamine, one for lsd; parcel names of the default atlas."""
    rng = np.random.default_rng(11)
    names = atlas.names
    xyz = atlas.centroids_mm().loc[names].to_numpy()
    d2 = ((xyz[:, None] - xyz[None]) ** 2).sum(-1)
    raw = np.exp(-d2 / (2 * 30.0 ** 2)) @ rng.standard_normal((len(names), 2))
    raw -= raw.mean(axis=0)
    maps = np.linalg.qr(raw)[0].T * np.sqrt(len(names))
    mean = rng.normal(0.02, 0.01, len(names))
    ket = mean + (rng.standard_normal((N_KETAMINE, 2)) * [0.05, 0.035]) @ maps \
        + 0.012 * rng.standard_normal((N_KETAMINE, len(names)))
    lsd = mean + (rng.standard_normal((N_LSD, 1)) * 0.05) @ maps[:1] + 0.012 * rng.standard_normal((N_LSD, len(names)))
    return {"names": names, "maps": maps, "ketamine": ket, "lsd": lsd}


def write_tables(root: Path, planted, atlas, *, column_seed: int | None = None, drop: tuple[str, str] | None = None):
    info = atlas.labels.set_index("name")
    rng = np.random.default_rng(column_seed) if column_seed is not None else None
    for drug in ("ketamine", "lsd"):
        for i, values in enumerate(planted[drug]):
            sub = f"{drug[:1]}{i:02d}"
            names = planted["names"]
            table = pd.DataFrame({"parcel": names, "hemisphere": info.loc[names, "hemisphere"].values,
                                  "structure": info.loc[names, "structure"].values, "delta_gbc": values})
            if rng is not None:
                table = table.iloc[rng.permutation(len(table))]
            if drop == (sub, drug):
                table = table.iloc[1:]
            path = root / f"sub-{sub}" / "func" / f"sub-{sub}_desc-{drug}minusplacebo_gbc.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            table.to_csv(path, sep="\t", index=False)


def gene_table(path: Path, planted, atlas) -> Path:
    rng = np.random.default_rng(4)
    cortex = atlas.labels.query("structure == 'cortex'")["name"].tolist()
    pos = [planted["names"].index(n) for n in cortex]
    genes = pd.DataFrame({"parcel": cortex, "LIKEPC1": planted["maps"][0][pos] + 0.3 * rng.standard_normal(len(pos))})
    for g in range(4):
        genes[f"RANDOM{g}"] = rng.standard_normal(len(pos))
    genes.to_csv(path, sep="\t", index=False)
    return path


def small_params(**extra) -> ConnectivityParams:
    return ConnectivityParams(n_shuffles=200, dimensionality_n_subsamples=50, dimensionality_n_permutations=99,
                              dimensionality_test_subsamples=20, n_surrogates=99, n_naive_shuffles=99,
                              n_map_components=1, **extra)


def run(root: Path, params: ConnectivityParams, tmp: Path) -> list[Path]:
    writer = DerivativesWriter(root)
    return group.run_group(root, participants=None, sessions=None, params=params, design=None, writer=writer,
                           work_dir=tmp / "work", seed=7)


def test_group_level_outputs_planted_structure_and_genes(tmp_path: Path, planted, atlas):
    root = tmp_path / "out"
    write_tables(root, planted, atlas)
    genes_tsv = gene_table(tmp_path / "genes.tsv", planted, atlas)
    written = run(root, small_params(gene_table=genes_tsv, null_calibration_pairs=6, null_calibration_n_null=19),
                  tmp_path)
    g = root / "group"
    ket = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepca_stats.tsv", sep="\t")
    lsd = pd.read_csv(g / f"atlas-{atlas.name}_desc-lsdpca_stats.tsv", sep="\t")
    assert int(ket["significant"].sum()) == 2 and int(lsd["significant"].sum()) == 1
    comps = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepca_components.tsv", sep="\t").set_index("parcel")
    assert list(comps.index) == planted["names"]
    for k in range(2):
        assert abs(np.corrcoef(comps[f"pc{k + 1}"], planted["maps"][k])[0, 1]) >= 0.9
    scores = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepca_scores.tsv", sep="\t", dtype={"participant_id": str})
    assert len(scores) == N_KETAMINE and scores["pc1"].abs().max() <= 1
    projections = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepcaprojection_scores.tsv", sep="\t",
                              dtype={"participant_id": str})
    assert list(projections["participant_id"]) == list(scores["participant_id"])
    assert projections["pc1"].abs().max() > 1       # in Fisher-z units, not bounded like a correlation
    null = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepca_null.tsv", sep="\t")
    assert null.shape == (200, 1 + N_KETAMINE - 1)
    assert (g / f"atlas-{atlas.name}_stat-z_desc-ketaminepc2_statmap.nii.gz").is_file()
    assert (g / "figures" / f"atlas-{atlas.name}_desc-ketaminescree_pca.svg").is_file()
    sidecar = json.loads((g / f"atlas-{atlas.name}_desc-ketaminepca_stats.json").read_text())
    assert sidecar["NumberOfSignificantComponents"] == 2 and "p_value" in sidecar
    dim = pd.read_csv(g / "desc-dimensionality_stats.tsv", sep="\t").set_index("drug")
    assert dim.loc["ketamine", "pr_mean"] > dim.loc["lsd", "pr_mean"]
    assert dim.loc["ketamine", "subsample_size"] == N_LSD - 1      # one below the smallest group
    pairwise = pd.read_csv(g / "desc-dimensionalitypairwise_stats.tsv", sep="\t").iloc[0]
    assert pairwise["difference"] > 0 and 0 < pairwise["p_holm"] <= 1    # ketamine: 2 planted PCs, lsd: 1
    assert not (g / "desc-dimensionalitysubsampleanova_stats.tsv").exists()
    genes = pd.read_csv(g / f"atlas-{atlas.name}_desc-ketaminepc1genes_stats.tsv", sep="\t").set_index("gene")
    assert abs(genes.loc["LIKEPC1", "r"]) > 0.8 and genes.loc["LIKEPC1", "p_spatial"] <= 0.02
    assert genes.loc["LIKEPC1", "n_parcels"] == (atlas.labels["structure"] == "cortex").sum()
    calib = pd.read_csv(g / f"atlas-{atlas.name}_desc-nullcalibration_stats.tsv", sep="\t")
    assert list(calib["method"]) == ["moran_whole_brain", "moran_per_hemisphere", "naive_parcel_shuffle"]
    assert list(calib["configured"]) == [True, False, False] and (calib["n_pairs"] == 6).all()
    assert (g / "figures" / f"atlas-{atlas.name}_desc-genenullcalibration_fpr.svg").is_file()
    assert (g / "figures" / f"atlas-{atlas.name}_desc-ketaminepc1genes_null.svg").is_file()
    assert all(p.exists() for p in written)
    assert list((tmp_path / "work" / "surrogates").glob("surrogates_*.npy"))  # cached for reuse


def test_parcel_column_order_does_not_change_results(tmp_path: Path, planted, atlas):
    a, b = tmp_path / "a", tmp_path / "b"
    write_tables(a, planted, atlas)
    write_tables(b, planted, atlas, column_seed=3)
    params = small_params()
    run(a, params, tmp_path / "wa")
    run(b, params, tmp_path / "wb")
    for name in ("desc-ketaminepca_stats", "desc-ketaminepca_components", "desc-ketaminepca_null",
                 "desc-lsdpca_scores"):
        fname = f"atlas-{atlas.name}_{name.split('_')[0]}_{name.split('_')[1]}.tsv"
        assert (a / "group" / fname).read_bytes() == (b / "group" / fname).read_bytes(), fname
    assert (a / "group" / "desc-dimensionality_stats.tsv").read_bytes() == \
        (b / "group" / "desc-dimensionality_stats.tsv").read_bytes()


def test_table_with_missing_parcel_is_refused(tmp_path: Path, planted, atlas):
    root = tmp_path / "out"
    write_tables(root, planted, atlas, drop=("k05", "ketamine"))
    with pytest.raises(BadDataError, match="sub-k05_desc-ketamineminusplacebo_gbc.tsv.*missing") as err:
        run(root, small_params(), tmp_path)
    assert err.value.exit_code == 65


def test_bad_tables_refused(tmp_path: Path):
    path = tmp_path / "sub-01" / "func" / "sub-01_desc-ketamineminusplacebo_gbc.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("parcel\tdelta_gbc\nA\t0.1\nB\tn/a\n")
    with pytest.raises(BadDataError, match="'B' has no finite"):
        group.read_delta_table(path)
    path.write_text("parcel\tgbc\nA\t0.1\n")
    with pytest.raises(BadDataError, match="lacks column"):
        group.read_delta_table(path)
    path.write_text("parcel\tdelta_gbc\nA\t0.1\nA\t0.2\n")
    with pytest.raises(BadDataError, match="appears twice"):
        group.read_delta_table(path)


def test_atlas_regions_sharing_a_centroid_are_refused_with_the_atlas_named(atlas):
    """Two cortical regions emptied from the volume both sit at the origin: no inverse-distance weight exists."""
    import dataclasses

    import nibabel as nib

    data = atlas.data().copy()
    cortex = atlas.labels.query("structure == 'cortex'")
    for index in cortex["index"].iloc[:2]:
        data[data == index] = 0
    broken = dataclasses.replace(atlas, image=nib.Nifti1Image(data, atlas.image.affine))
    with pytest.raises(BadDataError, match="share one centroid") as err:
        group._gene_parcels(broken, broken.names, ["cortex"])
    message = str(err.value)
    assert cortex["name"].iloc[0] in message and cortex["name"].iloc[1] in message and err.value.exit_code == 65
    chosen, xyz, _ = group._gene_parcels(atlas, atlas.names, ["cortex"])  # the intact atlas passes
    assert len(chosen) == len(cortex) and np.isfinite(xyz).all()
