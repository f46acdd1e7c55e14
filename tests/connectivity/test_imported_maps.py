"""Imported delta maps as a first-class input: the documented one-command group run on a folder whose
participants.tsv has only participant_id, parcels named another way mapped by an alias table, methods text that
names the maps as supplied, and a loud result (warning, flag column, report) when no atlas matches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bids_ketamine.cli.run import main
from bids_ketamine.connectivity import group
from bids_ketamine.errors import BadDataError

SUBJECTS = [f"{i:02d}" for i in range(1, 11)]
PROVENANCE = {"Description": "delta GBC of the published ketamine study", "GeneratedBy": [{"Name": "QuNex",
                                                                                            "Version": "0.9.9"}]}


def _write_study(root: Path, rename=lambda n: n) -> tuple[Path, Path, Path]:
    from bids_ketamine.surface_atlas import builtin_surface_atlas

    names = builtin_surface_atlas("Glasser").names
    rng = np.random.default_rng(5)
    study, maps = root / "study", root / "maps"
    study.mkdir(parents=True)
    (study / "dataset_description.json").write_text(json.dumps({"Name": "imported", "BIDSVersion": "1.9.0"}))
    pd.DataFrame({"participant_id": [f"sub-{s}" for s in SUBJECTS]}).to_csv(study / "participants.tsv", sep="\t",
                                                                           index=False)
    planted = rng.standard_normal(len(names))
    for s in SUBJECTS:
        func = maps / f"sub-{s}" / "func"
        func.mkdir(parents=True)
        values = 0.05 * rng.standard_normal() * planted + 0.01 * rng.standard_normal(len(names))
        pd.DataFrame({"parcel": [rename(n) for n in names], "delta_gbc": values}).to_csv(
            func / f"sub-{s}_desc-ketamineminusplacebo_gbc.tsv", sep="\t", index=False)
        (func / f"sub-{s}_desc-ketamineminusplacebo_gbc.json").write_text(json.dumps(PROVENANCE))
    config = root / "study.toml"
    config.write_text("[connectivity]\nn_shuffles = 100\nnull_calibration_pairs = 0\n"
                      "dimensionality_n_permutations = 100\n")
    return study, maps, config


def _run(study: Path, maps: Path, config: Path, work: Path) -> int:
    return main([str(study), str(maps), "group", "--analyses", "connectivity", "--skip-bids-validation",
                 "--config-file", str(config), "-w", str(work)])


def test_imported_maps_with_aliases_run_with_one_command(tmp_path):
    study, maps, config = _write_study(tmp_path, rename=lambda n: f"{n}_ROI")  # the HCP dlabel's naming
    aliases = tmp_path / "aliases.tsv"
    from bids_ketamine.surface_atlas import builtin_surface_atlas

    names = builtin_surface_atlas("Glasser").names
    pd.DataFrame({"alias": [f"{n}_ROI" for n in names], "parcel": names}).to_csv(aliases, sep="\t", index=False)
    config.write_text(config.read_text() + f'parcel_aliases = "{aliases}"\n')
    assert _run(study, maps, config, tmp_path / "work") == 0
    stats = pd.read_csv(maps / "group" / "atlas-Glasser_desc-ketaminepca_stats.tsv", sep="\t")
    assert stats["atlas_matched"].all()
    assert (maps / "group" / "atlas-Glasser_stat-z_desc-ketaminepc1_statmap.pscalar.nii").is_file()
    methods = (maps / "methods.md").read_text()
    assert "10 delta-GBC maps on the Glasser parcellation were supplied" in methods
    assert "QuNex 0.9.9" in methods and "published ketamine study" in methods
    assert "preprocessed by fMRIPrep" not in methods and "Frames were censored" not in methods


def test_maps_without_a_matching_atlas_are_loud(tmp_path):
    study, maps, config = _write_study(tmp_path, rename=lambda n: n.replace("L_", "Left_"))
    assert _run(study, maps, config, tmp_path / "work") == 0   # the PCA itself is valid
    stats_path = next((maps / "group").glob("*desc-ketaminepca_stats.tsv"))
    assert not pd.read_csv(stats_path, sep="\t")["atlas_matched"].any()
    warnings = json.loads(stats_path.with_suffix(".json").read_text())["Warnings"]
    assert any("match no known atlas" in w and "sub-01_desc-ketamineminusplacebo_gbc.tsv" in w
               and "Glasser (180 of 360 names shared)" in w for w in warnings)
    assert not list((maps / "group").glob("*statmap*"))
    report = (maps / "group.html").read_text()
    assert "match no known atlas" in report


def test_alias_table_mapping_two_parcels_to_one_is_refused(tmp_path):
    aliases = tmp_path / "aliases.tsv"
    pd.DataFrame({"alias": ["a", "b"], "parcel": ["x", "x"]}).to_csv(aliases, sep="\t", index=False)
    m = group.DeltaMap(subject="01", drug="ketamine", path=tmp_path / "m.tsv",
                       values=pd.Series([1.0, 2.0], index=["a", "b"]), parcel_info=pd.DataFrame(index=["a", "b"]))
    with pytest.raises(BadDataError, match="both become 'x'"):
        group.apply_aliases(m, group.read_parcel_aliases(aliases))
