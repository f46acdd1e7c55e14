"""Smooth baseline models of the linear-combination fit: design matrices and roughness penalties.

The baseline is linear in its coefficients, so the fit eliminates it exactly (variable projection): for any
metabolite model, the best penalised baseline is a least-squares solution, and only the projector onto what the
baseline cannot explain enters the nonlinear problem.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import BSpline


def bspline_design(x: np.ndarray, spacing: float, degree: int = 3) -> np.ndarray:
    """Uniform B-spline basis on the span of ``x`` with knots about ``spacing`` apart, ``(len(x), n_basis)``.

    The knots extend ``degree`` intervals beyond each end so every basis function has the same shape (a uniform
    spline), which keeps the second-difference penalty meaningful at the edges.
    """
    x = np.asarray(x, float)
    lo, hi = float(x.min()), float(x.max())
    n_int = max(1, int(round((hi - lo) / spacing)))
    h = (hi - lo) / n_int
    knots = lo + h * np.arange(-degree, n_int + degree + 1)
    return BSpline.design_matrix(np.clip(x, lo, hi), knots, degree).toarray()


def second_difference(n_basis: int) -> np.ndarray:
    """Second-difference operator on spline coefficients: its squared norm is a discrete roughness."""
    if n_basis < 3:
        return np.zeros((0, n_basis))
    return np.diff(np.eye(n_basis), 2, axis=0)


def legendre_design(x: np.ndarray, order: int) -> np.ndarray:
    """Legendre polynomials up to ``order`` on ``x`` mapped to [-1, 1] (well conditioned, unlike raw powers)."""
    x = np.asarray(x, float)
    u = 2 * (x - x.min()) / max(x.max() - x.min(), 1e-12) - 1
    return np.polynomial.legendre.legvander(u, order)


def complex_baseline_system(design: np.ndarray, penalty: np.ndarray, weight: float) -> np.ndarray:
    """Augmented real design of a complex baseline, for residuals stacked as ``[real; imaginary]``.

    Rows: ``2 n`` data rows then the penalty rows (``sqrt(weight) * penalty`` for the real and the imaginary
    coefficients); columns: real-part then imaginary-part coefficients.
    """
    n, k = design.shape
    zeros = np.zeros_like(design)
    top = np.block([[design, zeros], [zeros, design]])
    if penalty.shape[0] == 0 or weight == 0:
        return top
    pz = np.zeros_like(penalty)
    pen = np.sqrt(weight) * np.block([[penalty, pz], [pz, penalty]])
    return np.vstack([top, pen])


def baseline_projector_basis(system: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``Q`` of the columns of an augmented baseline system (its projector is ``Q Q^T``)."""
    q, r = np.linalg.qr(system)
    keep = np.abs(np.diag(r)) > 1e-10 * max(np.abs(np.diag(r)).max(), 1e-300)
    return q[:, keep]
