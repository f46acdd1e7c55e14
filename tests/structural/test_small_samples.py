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
