"""Linear SVM (hinge loss, class-weighted) solved in the dual by coordinate descent, for many label sets at once.

Why our own solver: a permutation test re-runs the whole nested cross-validation on ~1000 permuted label vectors,
while the features (and so the linear kernel ``K = X X^T`` of every fold) do not depend on the labels. Solving the
dual on the shared kernel for a block of label vectors at once turns ~10^6 separate fits into a few thousand
matrix passes. The problem is liblinear's L1-loss SVM with the bias as an extra regularised feature
(Hsieh et al., ICML 2008, dual coordinate descent):

    min_w  1/2 |w|^2 + sum_i C_i max(0, 1 - y_i (w . x_i + b)),   b = B * w_B  (B = ``intercept_scaling``)

whose dual is ``min_a 1/2 a^T Q a - sum a,  0 <= a_i <= C_i``, ``Q_ij = y_i y_j (K_ij + B^2)``. Each label set
stops on its own (no coordinate step larger than ``tol`` in gradient units during a sweep) and is then frozen, so
its result does not depend on the other label sets solved beside it.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from bids_ketamine.errors import BadDataError

#: Up to this many label sets are solved one by one in scalar arithmetic (faster than tiny numpy vectors).
SCALAR_PATH_MAX_SETS = 8
#: Coordinates whose gradients are computed together with one matrix product.
BLOCK = 16


def balanced_upper_bounds(labels: np.ndarray, c: float | np.ndarray) -> np.ndarray:
    """Per-sample box bounds ``C * n / (2 n_class)`` (scikit-learn's ``class_weight='balanced'``) per label set.

    ``labels`` is (m,) or (m, L) in {0, 1}; ``c`` a scalar or (L,). Returns an (m, L) array (float64).
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[:, None]
    m = labels.shape[0]
    n_pos = labels.sum(axis=0)
    n_neg = m - n_pos
    if np.any(n_pos == 0) or np.any(n_neg == 0):
        raise BadDataError("a training set holds only one class",
                           fix="use fewer folds or more subjects of the rarer class")
    w_pos = m / (2.0 * n_pos)
    w_neg = m / (2.0 * n_neg)
    weights = np.where(labels > 0, w_pos, w_neg)
    return weights * np.broadcast_to(np.asarray(c, dtype=float), (labels.shape[1],))


def solve_dual_batch(kernel: np.ndarray, signs: np.ndarray, upper: np.ndarray, *, tol: float = 1e-3,
                     max_sweeps: int = 5000, intercept_scaling: float = 1.0,
                     start: np.ndarray | None = None) -> np.ndarray:
    """Dual coefficients ``a`` (m, L) of L hinge-loss SVMs that share the linear kernel ``kernel`` (m, m).

    ``signs`` (m, L) holds the labels as -1/+1, ``upper`` (m, L) the box bounds (class-weighted C), ``start`` an
    optional feasible warm start. The decision function of label set l at a point with kernel row ``k`` is
    ``(k + B^2) @ (a[:, l] * signs[:, l])``. Coordinates are visited in a fixed order (the same for every label
    set); a label set stops after a sweep in which no coordinate moved by more than ``tol`` in gradient units
    (``|projected step| * Q_ii < tol``), so results are deterministic.

    Speed: the gradients of a block of coordinates are computed for all label sets with one matrix product and
    corrected for the updates made earlier in the block, which gives exactly the sequential coordinate descent.
    """
    q = np.asarray(kernel, dtype=np.float64) + intercept_scaling ** 2
    signs = np.asarray(signs, dtype=np.float64)
    upper = np.asarray(upper, dtype=np.float64)
    m, n_sets = signs.shape
    diag = np.diag(q).copy()
    if np.any(diag <= 0):
        raise BadDataError("a training sample has an all-zero feature vector",
                           fix="check the regional table for empty rows")
    alpha = np.zeros((m, n_sets)) if start is None else np.minimum(np.asarray(start, dtype=np.float64), upper)
    active = np.arange(n_sets)
    inv_diag = 1.0 / diag
    step_tol = tol / diag.max()
    sub_a, sub_y, sub_u = alpha.copy(), signs, upper
    for _ in range(max_sweeps):
        if active.size <= SCALAR_PATH_MAX_SETS:  # few label sets left: a scalar loop is faster
            for col in active:
                alpha[:, col] = _solve_one(q, diag, signs[:, col], upper[:, col], alpha[:, col], tol, max_sweeps)
            return alpha
        ay = sub_a * sub_y
        moved = np.zeros(active.size)
        for b0 in range(0, m, BLOCK):
            b1 = min(b0 + BLOCK, m)
            grads = q[b0:b1] @ ay
            qb = q[b0:b1, b0:b1]
            scaled_y = sub_y[b0:b1] * inv_diag[b0:b1, None]
            delta = np.zeros((b1 - b0, active.size))
            steps = np.empty_like(delta)
            for k in range(b1 - b0):
                i = b0 + k
                g = grads[k]
                if k:
                    g += qb[k, :k] @ delta[:k]
                ai = sub_a[i]
                # new = clip(ai - (y_i g - 1) / Q_ii, 0, U_i), written with few array passes
                new = g * scaled_y[k]
                np.subtract(ai, new, out=new)
                new += inv_diag[i]
                np.maximum(new, 0.0, out=new)
                np.minimum(new, sub_u[i], out=new)
                np.subtract(new, ai, out=steps[k])
                np.multiply(steps[k], sub_y[i], out=delta[k])
                sub_a[i] = new
            ay[b0:b1] += delta
            np.maximum(moved, np.abs(steps).max(axis=0), out=moved)
        alpha[:, active] = sub_a
        keep = moved >= step_tol
        if not keep.any():
            return alpha
        if not keep.all():
            active = active[keep]
            sub_a, sub_y, sub_u = alpha[:, active], signs[:, active], upper[:, active]
    raise RuntimeError(f"linear SVM did not converge in {max_sweeps} sweeps for {active.size} label sets")


def _solve_one(q: np.ndarray, diag: np.ndarray, signs: np.ndarray, upper: np.ndarray, start: np.ndarray,
               tol: float, max_sweeps: int) -> np.ndarray:
    """The same coordinate descent as ``solve_dual_batch`` for one label set, in scalar arithmetic."""
    m = signs.size
    y = signs.tolist()
    u = upper.tolist()
    inv_d = (1.0 / diag).tolist()
    step_tol = tol / float(diag.max())
    a = start.astype(np.float64).tolist()
    ay = start * signs
    rows = [q[i] for i in range(m)]
    for _ in range(max_sweeps):
        moved = 0.0
        for i in range(m):
            yi = y[i]
            ai = a[i]
            new = ai - (yi * float(rows[i] @ ay) - 1.0) * inv_d[i]
            new = 0.0 if new < 0.0 else new
            new = u[i] if new > u[i] else new
            step = abs(new - ai)
            moved = step if step > moved else moved
            a[i] = new
            ay[i] = new * yi
        if moved < step_tol:
            return np.asarray(a)
    raise RuntimeError(f"linear SVM did not converge in {max_sweeps} sweeps")


def solve_c_path(kernel: np.ndarray, signs: np.ndarray, c_grid, *, tol: float = 1e-3, max_sweeps: int = 5000,
                 intercept_scaling: float = 1.0) -> list[np.ndarray]:
    """Dual solutions for every C of an ascending grid, each warm-started from the previous one.

    Why it is exact to skip: when no coefficient of a label set sits at its upper bound, the same coefficients
    satisfy the optimality conditions for any larger C, so that label set is copied rather than re-solved.
    """
    binary = (np.asarray(signs) > 0).astype(float)
    out: list[np.ndarray] = []
    previous = None
    previous_upper = None
    for c in sorted(float(v) for v in c_grid):
        upper = balanced_upper_bounds(binary, c)
        if previous is None:
            alpha = solve_dual_batch(kernel, signs, upper, tol=tol, max_sweeps=max_sweeps,
                                     intercept_scaling=intercept_scaling)
        else:
            alpha = previous.copy()
            bounded = np.any(previous >= previous_upper, axis=0)
            if bounded.any():
                alpha[:, bounded] = solve_dual_batch(kernel, signs[:, bounded], upper[:, bounded], tol=tol,
                                                     max_sweeps=max_sweeps, intercept_scaling=intercept_scaling,
                                                     start=previous[:, bounded])
        out.append(alpha)
        previous, previous_upper = alpha, upper
    return out


def decision_from_dual(cross_kernel: np.ndarray, alpha: np.ndarray, signs: np.ndarray,
                       intercept_scaling: float = 1.0) -> np.ndarray:
    """Decision values (t, L) at test points with kernel rows ``cross_kernel`` (t, m) against the training set."""
    return (np.asarray(cross_kernel) + intercept_scaling ** 2) @ (alpha * signs)


def resolve_intercept_scaling(intercept_scaling: float | str, train_features: np.ndarray) -> float:
    """The constant B of the bias feature; ``'auto'``: the RMS of the training feature values.

    Why 'auto': the bias is then regularised like one typical feature (as in liblinear with standardised features
    and B = 1), whatever the feature scaling; it also keeps the dual well conditioned, so the solver is fast.
    """
    if intercept_scaling == "auto":
        rms = float(np.sqrt(np.mean(np.square(train_features))))
        return rms if rms > 0 else 1.0
    return float(intercept_scaling)


class LinearSVM(ClassifierMixin, BaseEstimator):
    """Linear hinge-loss SVM with balanced class weights (the estimator the fast nested CV reproduces).

    ``decision_function`` is positive towards ``classes_[1]`` (the responder class when labels are 0/1).
    """

    def __init__(self, C: float = 1.0, tol: float = 1e-2, intercept_scaling: float | str = "auto",
                 max_sweeps: int = 5000):
        self.C = C
        self.tol = tol
        self.intercept_scaling = intercept_scaling
        self.max_sweeps = max_sweeps

    def fit(self, X, y):
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if self.classes_.size != 2:
            raise BadDataError(f"the outcome has {self.classes_.size} class(es) in a training set; two are needed",
                               fix="check the outcome column and the number of folds")
        binary = (y == self.classes_[1]).astype(float)
        signs = 2.0 * binary - 1.0
        upper = balanced_upper_bounds(binary, self.C)
        self.intercept_scaling_ = resolve_intercept_scaling(self.intercept_scaling, X)
        alpha = solve_dual_batch(X @ X.T, signs[:, None], upper, tol=self.tol, max_sweeps=self.max_sweeps,
                                 intercept_scaling=self.intercept_scaling_)[:, 0]
        ay = alpha * signs
        self.coef_ = (X.T @ ay)[None, :]
        self.intercept_ = np.array([self.intercept_scaling_ ** 2 * ay.sum()])
        self.dual_coef_ = alpha
        return self

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float64) @ self.coef_[0] + self.intercept_[0]

    def predict(self, X):
        return self.classes_[(self.decision_function(X) > 0).astype(int)]
