"""Small real-sized samples (8 subjects, 4 per class, as in the 8-T1w ds002748 run) must not kill the group level
(issue 14 item 6): fold counts that do not fit are lowered with a note naming the setting (or refused naming it when
the user set it), and permutations that would leave a training fold with one class are redrawn."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.errors import BadDataError
from bids_ketamine.structural.validation import feasible_folds, make_splits, permuted_label_sets

LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def one_class_training_sets(labels: np.ndarray, splits) -> int:
    """Count, by a plain loop, the outer and inner training sets holding a single class."""
    count = 0
    for split in splits:
        for rows in [split.train] + [train for train, _ in split.inner]:  # inner rows are absolute row numbers
            if len(set(labels[rows].tolist())) < 2:
                count += 1
    return count


def test_default_fold_counts_are_lowered_with_notes_naming_each_setting():
    outer, inner, notes = feasible_folds(LABELS, 5, 5)
    assert (outer, inner) == (4, 3)
    assert any(n.startswith("structural.outer_folds lowered from 5 to 4") for n in notes)
    assert any(n.startswith("structural.inner_folds lowered from 5 to 3") for n in notes)


@pytest.mark.parametrize("setting", ["outer_folds", "inner_folds"])
def test_a_fold_count_the_user_set_is_refused_naming_that_setting(setting):
    with pytest.raises(BadDataError) as info:
        feasible_folds(LABELS, 5 if setting == "outer_folds" else 4, 5, explicit={setting})
    assert f"structural.{setting} = 5" in str(info.value)
    other = "inner_folds" if setting == "outer_folds" else "outer_folds"
    assert f"structural.{other} =" not in str(info.value)


def test_permutations_are_redrawn_until_every_training_fold_has_both_classes():
    outer, inner, _ = feasible_folds(LABELS, 5, 5)
    splits = make_splits(LABELS, outer_folds=outer, inner_folds=inner, repeats=3, seed=1)
    plain = permuted_label_sets(LABELS, 300, seed=1)
    redrawn = permuted_label_sets(LABELS, 300, seed=1, splits=splits)

    def bad_columns(sets):
        return [k for k in range(sets.shape[1])
                if one_class_training_sets(sets[:, k].astype(int), splits) > 0]
    assert bad_columns(plain), "the test needs permutations that the fixed folds cannot analyse"
    assert bad_columns(redrawn) == []
    np.testing.assert_array_equal(redrawn[:, 0], LABELS)  # observed labels untouched
    assert (redrawn.sum(axis=0) == 4).all()  # still permutations of the labels
    good = [k for k in range(1, 301) if k not in bad_columns(plain)]
    np.testing.assert_array_equal(redrawn[:, good], plain[:, good])  # only the unanalysable ones were redrawn
    np.testing.assert_array_equal(redrawn, permuted_label_sets(LABELS, 300, seed=1, splits=splits))


def test_lowered_fold_counts_reach_the_reports_warnings_section(tmp_path):
    """8 subjects with the default 5 folds: the group level lowers them, and the notes are warnings of the
    predictions table's sidecar, which is what the report's "Exclusions and warnings" lists (one line each)."""
    import json

    import pandas as pd

    from bids_ketamine.io.derivatives import DerivativesWriter
    from bids_ketamine.reports.collect import exclusion_notes
    from bids_ketamine.structural.group import run_group
    from bids_ketamine.structural.params import StructuralParams
    from bids_ketamine.structural.simulate_features import simulate_cohort

    cohort = simulate_cohort(8, 6, mahalanobis=2.0, n_frontal=2, n_cerebellar=1, n_sites=1, seed=4)
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    out = tmp_path / "out"
    ids = [f"s{i}" for i in range(8)]
    tiv = cohort.covariates["tiv"].to_numpy()
    for i, sub in enumerate(ids):
        folder = out / f"sub-{sub}" / "anat"
        folder.mkdir(parents=True)
        vol = cohort.features.iloc[i].to_numpy()
        pd.DataFrame({"region": cohort.features.columns, "hemisphere": "B", "structure": "cortex",
                      "gm_volume_mm3": vol, "gm_fraction_tiv": vol / tiv[i], "tiv_mm3": tiv[i]}).to_csv(
            folder / f"sub-{sub}_atlas-toy_morph.tsv", sep="\t", index=False)
    participants = pd.DataFrame({"participant_id": ids, "site": "site1", "sex": "F", "age": 30.0,
                                 "arm": "ketamine", "cohort": "discovery", "outcome": labels.astype(float)})
    params = StructuralParams(repeats=1, n_permutations=0, n_bootstrap=0, calibration_bootstrap=10,
                              anat={"atlas_name": "toy"})
    outputs = run_group(out, participants=participants, sessions=pd.DataFrame(), params=params, design=None,
                        writer=DerivativesWriter(out), work_dir=tmp_path / "work", seed=1)
    table = next(p for p in outputs if p.name.endswith("desc-svm_predictions.tsv"))
    notes = exclusion_notes(json.loads(table.with_suffix(".json").read_text()))
    assert any("structural.outer_folds lowered from 5 to 4" in n for n in notes), notes
    assert any("structural.inner_folds lowered from 5 to 3" in n for n in notes), notes
    # the other tables carry the notes only as Notes (not warnings), so the report lists each note once
    metrics = next(p for p in outputs if p.name.endswith("_metrics.tsv"))
    assert exclusion_notes(json.loads(metrics.with_suffix(".json").read_text())) == []
