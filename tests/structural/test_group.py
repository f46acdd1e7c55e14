"""Structural group level end to end on participant-level tables written the way the participant level writes them."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bids_ketamine.errors import BadDataError
from bids_ketamine.io.derivatives import DerivativesWriter
from bids_ketamine.structural.group import run_group
from bids_ketamine.structural.params import StructuralParams
from bids_ketamine.structural.simulate_features import simulate_cohort


def _write_participant_tables(out, cohort, ids):
    for i, sub in enumerate(ids):
        folder = out / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        tiv = float(cohort.covariates["tiv"].iloc[i])
        vol = cohort.features.iloc[i].to_numpy()
        pd.DataFrame({"region": cohort.features.columns, "hemisphere": "B", "structure": "cortex",
                      "gm_volume_mm3": vol, "gm_fraction_tiv": vol / tiv, "tiv_mm3": tiv}).to_csv(
            folder / f"sub-{sub}_atlas-toy_morph.tsv", sep="\t", index=False)


def _atlas(tmp_path, names):
    data = np.zeros((6, 6, len(names) + 1), dtype=np.int16)
    for k in range(len(names)):
        data[1:5, 1:5, k] = k + 1
    nib.Nifti1Image(data, np.eye(4)).to_filename(tmp_path / "toy.nii.gz")
    pd.DataFrame({"index": np.arange(1, len(names) + 1), "name": names}).to_csv(tmp_path / "toy.tsv", sep="\t",
                                                                                 index=False)
    return tmp_path / "toy.nii.gz", tmp_path / "toy.tsv"


def _study(tmp_path, n_disc=80, n_ext=30, n_sal=30, one_class=False):
    total = n_disc + n_ext + n_sal
    cohort = simulate_cohort(total, 30, mahalanobis=2.5, n_frontal=4, n_cerebellar=2, n_sites=2, seed=21)
    ids = [f"s{i:03d}" for i in range(total)]
    out = tmp_path / "out"
    _write_participant_tables(out, cohort, ids)
    labels = cohort.labels.astype(float)
    if one_class:
        labels[:] = 1.0
    participants = pd.DataFrame({
        "participant_id": ids, "site": cohort.sites, "sex": np.where(cohort.covariates["sex"] > 0, "M", "F"),
        "age": cohort.covariates["age"], "arm": ["ketamine"] * (n_disc + n_ext) + ["saline"] * n_sal,
        "cohort": ["discovery"] * n_disc + ["external"] * (n_ext + n_sal), "madrs_baseline": np.nan,
        "madrs_24h": np.nan, "outcome": labels})
    # the saline arm's outcome is unrelated to the brain: shuffle it
    sal = participants["arm"] == "saline"
    participants.loc[sal, "outcome"] = np.random.default_rng(0).permutation(
        participants.loc[sal, "outcome"].to_numpy().copy())
    nifti, tsv = _atlas(tmp_path, list(cohort.features.columns))
    params = StructuralParams(repeats=2, n_permutations=19, n_bootstrap=200,
                              anat={"atlas_nifti": nifti, "atlas_labels": tsv, "atlas_name": "toy"})
    return out, participants, params, cohort


def test_group_end_to_end(tmp_path):
    out, participants, params, cohort = _study(tmp_path)
    writer = DerivativesWriter(out)
    outputs = run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=writer, work_dir=tmp_path / "work", seed=3, n_jobs=1)
    names = {p.name for p in outputs}
    for suffix in ("predictions.tsv", "metrics.tsv", "weights.tsv", "weights.nii.gz"):
        assert any(n.endswith(suffix) for n in names), suffix
    assert any("roc" in n for n in names) and any("confusion" in n for n in names) and any("null" in n for n in names)
    metrics = pd.read_csv(next(p for p in outputs if p.name.endswith("_metrics.tsv")), sep="\t")
    bac = metrics.set_index(["cohort", "metric"])["value"]
    assert bac["discovery", "auc"] > 0.7  # n = 80, 30 regions (Bayes AUC 0.96)
    assert bac["external", "auc"] > 0.85  # same planted effect, frozen model
    assert 0.3 <= bac["saline", "bac"] <= 0.7  # outcome shuffled: chance (small n, wide band)
    p_disc = metrics.query("cohort == 'discovery' and metric == 'bac'")["p_permutation"].iloc[0]
    assert p_disc == pytest.approx(1 / 20)  # the minimum with 19 permutations: no permuted run does as well
    weights = pd.read_csv(next(p for p in outputs if p.name.endswith("_weights.tsv")), sep="\t")
    planted = cohort.shift[cohort.shift != 0]
    assert set(weights.head(4)["region"]) <= set(planted.index)
    by_region = weights.set_index("region")["activation"]
    assert np.all(np.sign(by_region[planted.index]) == np.sign(planted))  # frontal +, cerebellar -
    assert "frontal" in by_region.idxmax() and "cerebellum" in by_region.idxmin()
    sidecar = json.loads(next(p for p in outputs if p.name.endswith("_weights.tsv")).with_suffix(".json")
                         .read_text())
    assert "positive" in sidecar["activation"]["Description"]
    img = nib.load(next(p for p in outputs if p.name.endswith(".nii.gz")))
    assert np.asarray(img.dataobj)[2, 2, 0] == pytest.approx(weights.set_index("region")["activation"]
                                                             [cohort.features.columns[0]], rel=1e-5)
    predictions = pd.read_csv(next(p for p in outputs if p.name.endswith("_predictions.tsv")), sep="\t")
    assert len(predictions) == len(participants)


@pytest.mark.parametrize("case", ["one_class", "too_few"])
def test_bad_cohorts_fail_cleanly_and_write_nothing(tmp_path, case):
    if case == "one_class":
        out, participants, params, _ = _study(tmp_path, one_class=True)
        message = "single class"
    else:
        out, participants, params, _ = _study(tmp_path, n_disc=5, n_ext=0, n_sal=0)
        message = "smaller outcome class has 2 subject"
    with pytest.raises(BadDataError, match=message) as info:
        run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                  writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=3)
    assert info.value.exit_code == 65
    assert not (out / "group").exists()
