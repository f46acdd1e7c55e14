"""Repeated nested cross-validation with a permutation test that re-runs the whole nested CV on permuted labels.

Why it is fast and still exact: nothing label-dependent enters the preprocessing (ComBat with label-free
covariates, scaling, PCA), so for every (repeat, outer fold, inner fold) the preprocessed training and test
matrices -- and their linear kernels -- are computed once and shared by the observed labels and all permutations.
The linear SVMs of all label sets are then solved together on the shared kernel (``svm_solver``), along the C grid.

Fold partitions are drawn once per repeat (stratified on the observed outcome, or one site per outer fold) and the
same partitions are used for every permuted label set, as the shared preprocessing requires. Each permutation has
its own seed (``default_rng([seed, k])``) and each (repeat, outer fold) is one joblib task whose result does not
depend on how many workers run, so results are identical for any ``n_jobs``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold

from bids_ketamine.errors import BadDataError
from bids_ketamine.progress import progress
from bids_ketamine.structural.metrics import balanced_accuracy
from bids_ketamine.structural.svm_solver import balanced_upper_bounds, decision_from_dual, \
    resolve_intercept_scaling, solve_c_path, solve_dual_batch


@dataclass(frozen=True)
class OuterSplit:
    """One outer fold: its train and test rows, and the inner (train, test) rows within the outer train set."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray
    inner: tuple[tuple[np.ndarray, np.ndarray], ...]


def check_cohort(labels: np.ndarray, n_folds: int, *, what: str, path=None) -> None:
    """Refuse an outcome with one class, or a class with fewer subjects than folds (a fold would miss it)."""
    y = np.asarray(labels, dtype=float)
    if np.isnan(y).any():
        raise BadDataError(f"{what}: {int(np.isnan(y).sum())} subject(s) have no outcome", path=path,
                           fix="drop them or fill the outcome column")
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise BadDataError(f"{what}: the outcome has a single class ({classes.tolist()}) in {y.size} subjects",
                           path=path, fix="check the outcome definition (design.response) and the cohort columns")
    if counts.min() < n_folds:
        raise BadDataError(f"{what}: the smaller class has {int(counts.min())} subjects, fewer than the "
                           f"{n_folds} cross-validation folds", path=path,
                           fix="lower structural.outer_folds/inner_folds or add subjects")


def make_splits(labels: np.ndarray, *, outer_folds: int, inner_folds: int, repeats: int, seed: int,
                scheme: str = "stratified", sites: np.ndarray | None = None) -> list[OuterSplit]:
    """Outer and inner fold partitions for every repeat, drawn once from ``seed``.

    ``scheme='stratified'``: stratified k-fold on the outcome, reshuffled per repeat. ``'leave-site-out'``: each
    outer fold holds out one site (one repeat: the partition is not random); inner folds are stratified k-fold.
    """
    y = np.asarray(labels).astype(int)
    n = y.size
    out: list[OuterSplit] = []
    if scheme == "leave-site-out":
        if sites is None or np.unique(sites).size < 2:
            raise BadDataError("leave-site-out cross-validation needs at least two sites",
                               fix="use structural.cv = 'stratified' or give the site column (design)")
        outer = list(LeaveOneGroupOut().split(np.zeros(n), y, groups=np.asarray(sites).astype(str)))
        repeats = 1
    elif scheme == "stratified":
        outer = None
    else:
        raise ValueError(f"unknown cross-validation scheme {scheme!r}")
    for r in range(repeats):
        rng_seed = np.random.SeedSequence([seed, r]).generate_state(1)[0]
        if outer is None:
            splits = list(StratifiedKFold(outer_folds, shuffle=True, random_state=int(rng_seed)).split(np.zeros(n), y))
        else:
            splits = outer
        for f, (train, test) in enumerate(splits):
            inner_seed = np.random.SeedSequence([seed, r, f, 1]).generate_state(1)[0]
            y_train = y[train]
            if np.unique(y_train).size < 2 or np.bincount(y_train).min() < inner_folds:
                raise BadDataError(f"outer fold {f + 1} leaves a class with fewer training subjects than the "
                                   f"{inner_folds} inner folds (structural.inner_folds)",
                                   fix="lower structural.inner_folds or add subjects")
            inner = tuple((train[a], train[b]) for a, b in StratifiedKFold(
                inner_folds, shuffle=True, random_state=int(inner_seed)).split(np.zeros(train.size), y_train))
            out.append(OuterSplit(repeat=r, fold=f, train=train, test=test, inner=inner))
    return out


def feasible_folds(labels: np.ndarray, outer_folds: int, inner_folds: int, *, explicit: frozenset[str] | set[str] = frozenset(),
                   path=None) -> tuple[int, int, list[str]]:
    """Stratified fold counts this cohort allows, and a note for each lowered count.

    With ``m`` subjects in the smaller class, an outer fold needs one of them (``outer <= m``) and the inner folds
    need one in every inner test set of the outer training set (``inner <= m - ceil(m / outer)``). A count the user
    set (named in ``explicit``) that does not fit is refused naming that setting; a default is lowered, with a note
    naming the setting, so a small real sample runs instead of failing.
    """
    y = np.asarray(labels).astype(int)
    m = int(np.bincount(y, minlength=2).min())
    if m < 3:
        raise BadDataError(f"the smaller outcome class has {m} subject(s); nested cross-validation needs at least 3",
                           path=path, fix="add subjects of the smaller class")
    notes = []
    outer = outer_folds
    if outer > m:
        if "outer_folds" in explicit:
            raise BadDataError(f"structural.outer_folds = {outer_folds} but the smaller class has {m} subjects, "
                               "so an outer test fold would miss it", path=path,
                               fix=f"set structural.outer_folds to at most {m} or add subjects")
        outer = m
        notes.append(f"structural.outer_folds lowered from {outer_folds} to {outer}: the smaller class has {m} "
                     "subjects")
    room = m - int(np.ceil(m / outer))
    inner = inner_folds
    if inner > room:
        if "inner_folds" in explicit:
            raise BadDataError(f"structural.inner_folds = {inner_folds} but an outer training set holds only {room} "
                               f"subjects of the smaller class", path=path,
                               fix=f"set structural.inner_folds to at most {room} or add subjects")
        inner = room
        notes.append(f"structural.inner_folds lowered from {inner_folds} to {inner}: an outer training set holds "
                     f"{room} subjects of the smaller class")
    return outer, inner, notes


def _training_sets(splits: list[OuterSplit]) -> list[np.ndarray]:
    return [s.train for s in splits] + [train for s in splits for train, _ in s.inner]


def _unanalysable(label_sets: np.ndarray, training_sets: list[np.ndarray]) -> np.ndarray:
    """Label sets (columns) that leave some training set with a single class."""
    bad = np.zeros(label_sets.shape[1], dtype=bool)
    for rows in training_sets:
        positives = label_sets[rows].sum(axis=0)
        bad |= (positives == 0) | (positives == rows.size)
    return bad


def permuted_label_sets(labels: np.ndarray, n_permutations: int, seed: int,
                        splits: list[OuterSplit] | None = None, max_redraws: int = 1000) -> np.ndarray:
    """(n, 1 + N) array: the observed labels, then permutation k drawn with its own seed ``[seed, k]``.

    With ``splits``, a permutation that leaves an outer or inner training set with a single class (possible in
    small samples, where the folds were stratified on the observed labels) is redrawn with seed
    ``[seed, k, attempt]`` until every training set holds both classes: the null is then drawn among the label
    arrangements the fixed folds can analyse, instead of the whole group level failing.
    """
    y = np.asarray(labels).astype(float)
    cols = [y] + [np.random.default_rng([seed, 7919, k]).permutation(y) for k in range(1, n_permutations + 1)]
    sets = np.stack(cols, axis=1)
    if splits is None or n_permutations == 0:
        return sets
    training = _training_sets(splits)
    for attempt in range(1, max_redraws + 1):
        bad = np.flatnonzero(_unanalysable(sets, training))
        bad = bad[bad > 0]
        if bad.size == 0:
            return sets
        for k in bad:
            sets[:, k] = np.random.default_rng([seed, 7919, int(k), attempt]).permutation(y)
    raise BadDataError(f"{bad.size} permutation(s) still leave a training fold with one class after "
                       f"{max_redraws} redraws", fix="lower structural.inner_folds or add subjects")


def _kernels(data, make_preprocessor: Callable, train: np.ndarray, test: np.ndarray, intercept_scaling):
    """Linear kernels of a fold's preprocessed training (m, m) and test-by-training (t, m) data, and the bias
    constant the SVM uses on that training set."""
    pre = clone(make_preprocessor())
    z_train = np.asarray(pre.fit_transform(_rows(data, train)), dtype=np.float64)
    z_test = np.asarray(pre.transform(_rows(data, test)), dtype=np.float64)
    return z_train @ z_train.T, z_test @ z_train.T, resolve_intercept_scaling(intercept_scaling, z_train)


def _rows(data, idx):
    return data.iloc[idx] if isinstance(data, pd.DataFrame) else np.asarray(data)[idx]


def select_c(inner_scores: np.ndarray, inner_labels: np.ndarray) -> np.ndarray:
    """Index of the best C per label set from pooled inner-test scores (n_c, n_inner, L): highest BAC, the
    smallest C among ties (the most regularised model)."""
    bac = np.stack([balanced_accuracy(inner_labels, s) for s in inner_scores])
    return np.argmax(np.round(bac, 12), axis=0)


def _outer_fold_scores(split: OuterSplit, data, make_preprocessor: Callable, label_sets: np.ndarray,
                       c_grid: np.ndarray, tol: float, intercept_scaling: float | str):
    """Test-set decision scores (t, L) and chosen C index (L,) of one outer fold, for all label sets."""
    n_sets = label_sets.shape[1]
    inner_rows = np.concatenate([test for _, test in split.inner])
    inner_scores = np.zeros((c_grid.size, inner_rows.size, n_sets))
    pos = 0
    for train, test in split.inner:
        kernel, cross, bias = _kernels(data, make_preprocessor, train, test, intercept_scaling)
        signs = 2.0 * label_sets[train] - 1.0
        for c_index, alpha in enumerate(solve_c_path(kernel, signs, c_grid, tol=tol, intercept_scaling=bias)):
            inner_scores[c_index, pos: pos + test.size] = decision_from_dual(cross, alpha, signs, bias)
        pos += test.size
    chosen = select_c(inner_scores, label_sets[inner_rows])
    kernel, cross, bias = _kernels(data, make_preprocessor, split.train, split.test, intercept_scaling)
    signs = 2.0 * label_sets[split.train] - 1.0
    scores = np.zeros((split.test.size, n_sets))
    for c_index in np.unique(chosen):
        cols = np.flatnonzero(chosen == c_index)
        upper = balanced_upper_bounds(label_sets[split.train][:, cols], c_grid[c_index])
        alpha = solve_dual_batch(kernel, signs[:, cols], upper, tol=tol, intercept_scaling=bias)
        scores[:, cols] = decision_from_dual(cross, alpha, signs[:, cols], bias)
    return scores, chosen


@dataclass(frozen=True)
class NestedCVResult:
    """Outer-test scores of every repeat, pooled per subject, for the observed labels (column 0) and each
    permutation (columns 1..N)."""

    scores: np.ndarray  # (repeats, n, L) outer-test decision scores
    chosen_c: np.ndarray  # (repeats, outer folds, L) chosen C value
    label_sets: np.ndarray  # (n, L)
    splits: list[OuterSplit]

    @property
    def pooled(self) -> np.ndarray:
        """Mean decision score per subject over repeats (n, L)."""
        return self.scores.mean(axis=0)


def nested_cv(data, labels: np.ndarray, make_preprocessor: Callable, *, c_grid, splits: list[OuterSplit],
              n_permutations: int = 0, seed: int = 0, tol: float = 1e-2, intercept_scaling: float | str = "auto",
              n_jobs: int = 1) -> NestedCVResult:
    """Repeated nested CV of preprocessing + linear SVM (C from ``c_grid`` chosen by inner-CV BAC), re-run on
    ``n_permutations`` permuted label sets with the same fold partitions.

    ``data`` is what ``make_preprocessor()`` (an unfitted scikit-learn transformer, e.g. ComBat -> scaler -> PCA)
    takes; it must not see the labels. Scores are positive towards class 1.
    """
    label_sets = permuted_label_sets(labels, n_permutations, seed, splits)
    c_grid = np.sort(np.asarray(c_grid, dtype=float))
    tasks = (delayed(_outer_fold_scores)(split, data, make_preprocessor, label_sets, c_grid, tol, intercept_scaling)
             for split in splits)
    results = []
    n_repeats = max(s.repeat for s in splits) + 1
    desc = f"nested CV, {n_repeats} repeats" + (f" x {n_permutations} permutations" if n_permutations else "")
    with progress(total=len(splits), desc=desc, unit="outer folds") as bar:  # counts only: results are unchanged
        for split, result in zip(splits, Parallel(n_jobs=n_jobs, return_as="generator")(tasks)):
            results.append(result)
            bar.update(1)
            bar.set_postfix(repeat=split.repeat + 1, fold=split.fold + 1)
    n_folds = max(s.fold for s in splits) + 1
    scores = np.full((n_repeats, label_sets.shape[0], label_sets.shape[1]), np.nan)
    chosen = np.full((n_repeats, n_folds, label_sets.shape[1]), np.nan)
    for split, (fold_scores, fold_chosen) in zip(splits, results):
        scores[split.repeat, split.test] = fold_scores
        chosen[split.repeat, split.fold] = c_grid[fold_chosen]
    return NestedCVResult(scores=scores, chosen_c=chosen, label_sets=label_sets, splits=splits)


def nested_cv_straightforward(data, labels: np.ndarray, make_pipeline: Callable[[float], object], *, c_grid,
                              splits: list[OuterSplit]) -> tuple[np.ndarray, np.ndarray]:
    """The plain loop the fast path must reproduce: a full scikit-learn pipeline fitted per fold and per C.

    ``make_pipeline(C)`` returns an unfitted pipeline ending in a classifier with ``decision_function``.
    Returns (scores (repeats, n), chosen C (repeats, folds)). For tests and documentation; slow by design.
    """
    y = np.asarray(labels).astype(int)
    c_grid = np.sort(np.asarray(c_grid, dtype=float))
    n_repeats = max(s.repeat for s in splits) + 1
    n_folds = max(s.fold for s in splits) + 1
    scores = np.full((n_repeats, y.size), np.nan)
    chosen = np.full((n_repeats, n_folds), np.nan)
    for split in splits:
        inner_rows = np.concatenate([test for _, test in split.inner])
        inner_scores = np.zeros((c_grid.size, inner_rows.size, 1))
        for c_index, c in enumerate(c_grid):
            inner_scores[c_index, :, 0] = np.concatenate([
                make_pipeline(c).fit(_rows(data, tr), y[tr]).decision_function(_rows(data, te))
                for tr, te in split.inner])
        best = c_grid[select_c(inner_scores, y[inner_rows])[0]]
        model = make_pipeline(best).fit(_rows(data, split.train), y[split.train])
        scores[split.repeat, split.test] = model.decision_function(_rows(data, split.test))
        chosen[split.repeat, split.fold] = best
    return scores, chosen


def choose_c_by_cv(data, labels: np.ndarray, make_preprocessor: Callable, *, c_grid, folds: int, seed: int,
                   tol: float = 1e-2, intercept_scaling: float | str = "auto") -> tuple[float, np.ndarray]:
    """C for a final model on all of ``data``: stratified ``folds``-fold CV BAC per C (ties: the smallest C).

    Returns (best C, BAC per C of the ascending grid).
    """
    y = np.asarray(labels).astype(float)
    c_grid = np.sort(np.asarray(c_grid, dtype=float))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=int(
        np.random.SeedSequence([seed, 99]).generate_state(1)[0])).split(np.zeros(y.size), y.astype(int)))
    rows = np.concatenate([test for _, test in splits])
    scores = np.zeros((c_grid.size, rows.size, 1))
    pos = 0
    for train, test in splits:
        kernel, cross, bias = _kernels(data, make_preprocessor, train, test, intercept_scaling)
        signs = (2.0 * y[train] - 1.0)[:, None]
        for c_index, alpha in enumerate(solve_c_path(kernel, signs, c_grid, tol=tol, intercept_scaling=bias)):
            scores[c_index, pos: pos + test.size] = decision_from_dual(cross, alpha, signs, bias)
        pos += test.size
    bac = np.array([balanced_accuracy(y[rows], s)[0] for s in scores])
    return float(c_grid[select_c(scores, y[rows][:, None])[0]]), bac


def fixed_c_oof_scores(data, labels: np.ndarray, make_preprocessor: Callable, *, c: float,
                       splits: list[OuterSplit], tol: float = 1e-2,
                       intercept_scaling: float | str = "auto") -> np.ndarray:
    """Out-of-fold decision scores of the final model's recipe (fixed ``c``) over the outer splits, mean over
    repeats: what the calibration map is fitted on.

    Why not the nested CV's scores: C changes from fold to fold there, and a linear SVM's score scale moves with C,
    so a map fitted on them would mis-scale the final model's scores (measured: ECE 0.06-0.18 instead of < 0.01).
    These scores come from the same recipe as the final model, each from a model that did not see the subject.
    Each fold's C is ``c * n / n_train``: the hinge term sums over subjects, so at a fixed C the weights (and the
    score scale) grow with the training size; scaled so, a fold model on 80 % of the subjects weighs data against
    the penalty as the final model does on all of them (measured: without it the map's slope was 1.25x too steep,
    exactly n / n_train).
    """
    y = np.asarray(labels).astype(float)
    n_repeats = max(s.repeat for s in splits) + 1
    scores = np.full((n_repeats, y.size), np.nan)
    for split in splits:
        kernel, cross, bias = _kernels(data, make_preprocessor, split.train, split.test, intercept_scaling)
        signs = (2.0 * y[split.train] - 1.0)[:, None]
        upper = balanced_upper_bounds(y[split.train], c * y.size / split.train.size)
        alpha = solve_dual_batch(kernel, signs, upper, tol=tol, intercept_scaling=bias)
        scores[split.repeat, split.test] = decision_from_dual(cross, alpha, signs, bias)[:, 0]
    return scores.mean(axis=0)
