"""A synthetic study written as fMRIPrep fsLR CIFTI outputs runs the participant and the group level on a surface
parcellation (built-in Glasser, 360 parcels) without any volumetric atlas: CIFTI PC maps, surface figures, and the
gene analysis with the spin test (primary) and geodesic Moran nulls beside it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.connectivity import group
from bids_ketamine.connectivity.params import ConnectivityParams
from bids_ketamine.connectivity.participant import run_participant
from bids_ketamine.connectivity.participant_params import ConnectivityParticipantParams
from bids_ketamine.design import StudyDesign
from bids_ketamine.inputs import BoldRun, ParticipantInputs
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.synthetic.bold import write_synthetic_gene_table
from bids_ketamine.synthetic.cifti_bold import write_synthetic_cifti_cohort

SUBJECTS = [f"{i:02d}" for i in range(1, 11)]
CONDITIONS = {"a": "placebo", "b": "ketamine"}


@pytest.fixture(scope="module")
def surface_study(tmp_path_factory):
    from bids_ketamine.surface_atlas import builtin_surface_atlas

    root = tmp_path_factory.mktemp("fslr")
    atlas = builtin_surface_atlas("Glasser")
    fmriprep = root / "fmriprep"
    truth = write_synthetic_cifti_cohort(fmriprep, SUBJECTS, CONDITIONS, atlas, n_components=1, seed=3,
                                         n_volumes=240, component_sd=0.045)
    genes = write_synthetic_gene_table(root / "genes.tsv", truth, seed=3, atlas=atlas)
    out = root / "out"
    part = ConnectivityParticipantParams(space="fsLR", cifti_dlabel="Glasser", global_signal_regression=False)
    writer = DerivativesWriter(out)
    for subject in SUBJECTS:
        runs = []
        for ses, cond in CONDITIONS.items():
            func = fmriprep / f"sub-{subject}" / f"ses-{ses}" / "func"
            stem = f"sub-{subject}_ses-{ses}_task-rest"
            runs.append(BoldRun(bold=func / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii",
                                confounds=func / f"{stem}_desc-confounds_timeseries.tsv", mask=None, space="fsLR",
                                session=ses, run=None, task="rest", condition=cond, repetition_time=2.0))
        run_participant(ParticipantInputs(subject=subject, bold=tuple(runs)), params=part, design=StudyDesign(),
                        writer=writer, work_dir=root / "work", seed=0)
    params = ConnectivityParams(participant=part, gene_table=root / "genes.tsv", n_shuffles=200,
                                n_surrogates=300, n_naive_shuffles=300, null_calibration_pairs=20,
                                null_calibration_n_null=49, gene_structures=["cortex"])
    written = group.run_group(out, participants=None, sessions=None, params=params, design=None, writer=writer,
                              work_dir=root / "work", seed=0)
    return {"root": root, "out": out, "truth": truth, "genes": genes, "written": written, "atlas": atlas}


def test_participant_delta_maps_recover_the_planted_maps(surface_study):
    truth = surface_study["truth"]
    out = surface_study["out"]
    rs, got, want = [], [], []
    for subject in SUBJECTS:
        table = pd.read_csv(out / f"sub-{subject}" / "func" / f"sub-{subject}_desc-ketamineminusplacebo_gbc.tsv",
                            sep="\t").set_index("parcel")
        expected = pd.Series(truth["expected_delta"][subject]["ketamine"])
        assert set(table.index) == set(expected.index)
        rs.append(np.corrcoef(table.loc[expected.index, "delta_gbc"], expected)[0, 1])
        got.append(table.loc[expected.index, "delta_gbc"].to_numpy())
        want.append(expected.to_numpy())
    # 240 volumes: subjects with small planted weights have noisy maps, so judge the pooled and median agreement
    pooled = np.corrcoef(np.concatenate(got), np.concatenate(want))[0, 1]
    assert pooled > 0.6 and np.median(rs) > 0.55, (pooled, rs)
    # the participant figures are drawn on the surface (one image per session and the delta map)
    figures = sorted((out / "sub-01" / "figures").glob("*.png")) + sorted((out / "sub-01" / "figures").glob("*.svg"))
    assert any("minusplacebo" in f.name for f in figures)


def test_group_writes_cifti_maps_and_surface_figures_without_a_volume(surface_study):
    out, atlas = surface_study["out"], surface_study["atlas"]
    written = surface_study["written"]
    assert not [p for p in written if p.name.endswith(".nii.gz")], "no volumetric image on a surface atlas"
    pscalar = [p for p in written if p.name.endswith("desc-ketaminepc1_statmap.pscalar.nii")]
    dscalar = [p for p in written if p.name.endswith("desc-ketaminepc1_statmap.dscalar.nii")]
    assert len(pscalar) == 1 and len(dscalar) == 1
    assert "atlas-Glasser" in pscalar[0].name
    pimg, dimg = nib.load(pscalar[0]), nib.load(dscalar[0])
    parcels = list(pimg.header.get_axis(1).name)
    values = pd.Series(np.asarray(pimg.dataobj)[0], index=parcels)
    assert len(parcels) == 360
    # each grayordinate of the dense map carries its parcel's value
    brain = dimg.header.get_axis(1)
    dense = np.asarray(dimg.dataobj)[0]
    left = np.flatnonzero(np.asarray(brain.name) == "CIFTI_STRUCTURE_CORTEX_LEFT")
    labels = atlas.vertex_labels("L")[np.asarray(brain.vertex)[left]]
    index_to_name = dict(zip(atlas.labels["index"], atlas.labels["name"]))
    for vertex_pos in left[:: 997]:
        name = index_to_name[int(atlas.vertex_labels("L")[brain.vertex[vertex_pos]])]
        assert dense[vertex_pos] == pytest.approx(values[name], rel=1e-5)
    assert labels.min() > 0
    # PC1 map recovers the planted first component (sign-free)
    c1 = pd.Series(surface_study["truth"]["components"]["C1"])
    assert abs(np.corrcoef(values[c1.index], c1)[0, 1]) > 0.8
    surface_figs = [p for p in written if p.name.endswith("_surface.png")]
    assert any("ketaminepc1" in p.name for p in surface_figs)


def test_gene_analysis_uses_spin_primary_and_geodesic_moran(surface_study):
    written = surface_study["written"]
    table_path = next(p for p in written if p.name.endswith("desc-ketaminepc1genes_stats.tsv"))
    table = pd.read_csv(table_path, sep="\t").set_index("gene")
    meta = json.loads(table_path.with_suffix(".json").read_text())
    assert meta["PrimaryNull"] == "spin" and meta["NullsRun"] == ["spin", "spin_vasa", "moran"]
    assert meta["Distances"].startswith("geodesic")
    for col in ("p_spin", "p_spin_vasa", "p_moran", "p_spatial", "p_naive"):
        assert col in table.columns
    np.testing.assert_array_equal(table["p_spatial"], table["p_spin"])
    planted = table.loc["PLANTED_C1"]
    assert abs(planted["r"]) > 0.5
    assert planted["p_spin"] < 0.02 and planted["p_moran"] < 0.02
    summary = json.loads(next(p for p in written if p.name.endswith("desc-connectivity_summary.json")).read_text())
    assert summary["atlas"] == "Glasser" and summary["atlas_kind"] == "surface"
    assert summary["gene_nulls"] == {"primary": "spin", "run": ["spin", "spin_vasa", "moran"]}
    calibration = next(p for p in written if p.name.endswith("desc-nullcalibration_stats.tsv"))
    methods = set(pd.read_csv(calibration, sep="\t")["method"])
    assert {"spin", "spin_vasa", "spin_hungarian", "moran_geodesic", "naive_parcel_shuffle"} <= methods
