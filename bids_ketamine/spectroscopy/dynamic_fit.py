"""Dynamic fit of an fMRS session: all block spectra fitted at once, concentrations following a time model.

Model, for block ``b`` of a session (same notation as :mod:`bids_ketamine.spectroscopy.fit`):

    Y_b(f) = exp(i (phi0_b + 2 pi f tau_b)) * FFT[ sum_m c_mb b_m(t) exp((2 pi i d_gb - pi l_gb) t - k e_gb t^2) ] + B_b(f)

Each parameter family has a design (:mod:`.time_model`): concentrations ``c_mb = X_b @ beta_m`` with the
concentration design ``X`` (default: constant before the infusion onset, linear after it; or free per block; or a
user's design), and line shape (``l``, ``e``), shift ``d``, phases (``phi0``, ``tau``) and baseline ``B`` shared by
all blocks, free per block, or linear in time. The blocks are weighted by the square root of their number of
transients (the noise SD of an average falls as 1/sqrt(n)).

Why this gains precision over fitting blocks one by one and regressing afterwards: a nuisance parameter shared by
the blocks is estimated from all of them; and a shared baseline (or line shape) adds the same to every block, so it
cannot mimic a change over time: a slope is a contrast between blocks, which a shared baseline does not enter.
Fitting block by block, each block's baseline trades off against its own Glx (Tal 2023, MRM, reports about 20 %
better precision from joint fitting). The largest gain here comes from the macromolecules: by default
(``DynamicFitParams.nuisance_concentrations = "shared"``) the macromolecule and lipid components have one amplitude
for the session, since they do not change over minutes, while a block-wise fit lets the macromolecules under
Glx trade off against Glx in every block (on simulated sessions this halves the slope's SD; sharing line shape and
baseline alone gives about 0.85-0.9 x block-wise). The phases are the exception, free per block by default
(``DynamicFitParams.phase = "per_block"``): the preprocessed block averages differ in phase, and one phase for the
session biased the slope low by about 1.6 of its SEs on simulated sessions (docs/fmrs_dynamic_validation.md).

How it is solved: the single fit of the session's weighted mean spectrum (:func:`.fit.fit_spectrum`) gives the
start and every model decision: components fitted with the macromolecule/lipid model and its ratio priors, the
baseline stiffness it chose, each metabolite's own small shift, and whether residual water is removed (then every
block gets its own HLSVD removal in the same band). So the dynamic fit inherits the real-spectra model of the single
fit. The baseline is eliminated by variable projection on the stacked blocks; the ratio priors act on the blocks'
mean concentrations; then all time-model coefficients and nonlinear parameters are refined together by scipy's
bounded trust-region least squares with an analytic Jacobian, within the single fit's bounds. Time-model
coefficients are not constrained to be non-negative (so their estimates are unbiased and their intervals
calibrated); a reference whose implied block concentration is not positive fails QC. Covariance:
``sigma^2 (J^T J)^-1`` over all free parameters (prior rows included), ``sigma`` from the joint residual.

Why our own code: FSL-MRS (``fsl_dynmrs``) is non-commercial and carries first-level uncertainty to the group only
through FSL's FLAMEO; spant is R. The model reuses the single fit's preprocessing of the problem (window, basis
normalisation, line-shape groups, penalised baseline), so a change there applies to both fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from bids_ketamine.errors import BadDataError
from bids_ketamine.spectroscopy.basis import canonical_name, is_macromolecule
from bids_ketamine.spectroscopy.fit import component_weights, penalised_covariance
from bids_ketamine.spectroscopy.dynamic_params import DynamicFitParams
from bids_ketamine.spectroscopy.fit_params import FitParams
from bids_ketamine.spectroscopy.time_model import (
    TimeDesign,
    hinge_design,
    nuisance_design,
    per_block_design,
    projection,
)

GAUSS_K = np.pi**2 / (4 * np.log(2))


@dataclass(frozen=True)
class DynamicFitResult:
    """Time-model coefficients (basis units) with their joint covariance, and what they imply per block."""

    names: tuple[str, ...]
    sums: dict[str, tuple[str, ...]]
    #: concentration design of the metabolites (blocks x columns)
    design: TimeDesign
    #: design of each component (metabolites: ``design``; macromolecules/lipids possibly shared)
    component_designs: tuple[TimeDesign, ...]
    #: all time-model coefficients, component-major (offsets in ``offsets``), basis units
    coefficients: np.ndarray
    covariance: np.ndarray
    offsets: np.ndarray
    block_labels: np.ndarray
    block_minutes: np.ndarray
    weights: np.ndarray
    #: per block: shift (B, G), Lorentzian (B, G), Gaussian FWHM (B, G) in Hz, phases (B,) in degrees
    shifts_hz: np.ndarray
    lorentzian_hz: np.ndarray
    gaussian_hz: np.ndarray
    phase0_deg: np.ndarray
    phase1_deg_per_ppm: np.ndarray
    group_names: tuple[str, ...]
    ppm: np.ndarray
    #: per block, over the fit window, phase corrected: data, fit (incl. baseline), baseline
    data: np.ndarray
    fit: np.ndarray
    baseline: np.ndarray
    noise_sd: np.ndarray
    snr: np.ndarray
    fwhm_hz: float
    degrees_of_freedom: int
    conjugated: bool
    success: bool
    message: str
    n_evaluations: int
    seconds: float
    settings: dict = field(default_factory=dict)
    #: QC reasons of the single fit of the session's mean spectrum (the start)
    start_qc_reasons: tuple[str, ...] = ()
    #: why the dynamic fit cannot be trusted (:func:`dynamic_qc_reasons`); empty = it can
    qc_reasons: tuple[str, ...] = ()

    @property
    def qc_pass(self) -> bool:
        return not self.qc_reasons

    # ---------------------------------------------------------------------------------------------- lookups
    def _component_weights(self, name: str) -> np.ndarray:
        return component_weights(self.names, self.sums, name)

    def _block_map(self, name: str) -> np.ndarray:
        """(blocks, n_coefficients): maps all coefficients to the block concentrations of ``name``."""
        w = self._component_weights(name)
        a = np.zeros((len(self.block_labels), self.coefficients.size))
        for k in np.flatnonzero(w):
            d = self.component_designs[k]
            a[:, self.offsets[k]:self.offsets[k] + d.n_columns] += w[k] * d.matrix
        return a

    def block_concentrations(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Concentration of a component or sum in every block, and its (blocks x blocks) covariance."""
        a = self._block_map(name)
        return a @ self.coefficients, a @ self.covariance @ a.T

    def time_coefficients(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients of the concentration design for a component or sum (members must share the design)."""
        w = self._component_weights(name)
        members = np.flatnonzero(w)
        if any(self.component_designs[k] is not self.design for k in members):
            raise KeyError(f"{name!r} does not follow the concentration design")
        p = self.design.n_columns
        m = np.zeros((p, self.coefficients.size))
        for k in members:
            m[:, self.offsets[k]:self.offsets[k] + p] += w[k] * np.eye(p)
        return m @ self.coefficients, m @ self.covariance @ m.T

    def ratio_time_model(self, numerator: str, denominator: str, design: TimeDesign | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients of ``design`` (default: the concentration design) fitted to the implied block ratios
        numerator / denominator (weighted by transients), with their covariance by the delta method.

        When the ratio follows the design exactly (e.g. a constant denominator), these are its own time-model
        coefficients; this is the quantity that block-wise fitting estimates by regressing block ratios on time.
        """
        design = design or self.design
        a_num, a_den = self._block_map(numerator), self._block_map(denominator)
        num, den = a_num @ self.coefficients, a_den @ self.coefficients
        if np.any(den <= 0):
            raise ValueError(f"{denominator} is not positive in every block")
        rho = num / den
        lmat = projection(design, self.weights**2)
        grad = a_num / den[:, None] - a_den * (num / den**2)[:, None]  # d rho_b / d coefficients
        jac = lmat @ grad
        return lmat @ rho, jac @ self.covariance @ jac.T

    def block_ratios(self, numerator: str, denominator: str) -> tuple[np.ndarray, np.ndarray]:
        """Implied block ratios and their standard errors (delta method)."""
        a_num, a_den = self._block_map(numerator), self._block_map(denominator)
        num, den = a_num @ self.coefficients, a_den @ self.coefficients
        grad = a_num / den[:, None] - a_den * (num / den**2)[:, None]
        cov = grad @ self.covariance @ grad.T
        return num / den, np.sqrt(np.clip(np.diag(cov), 0, None))

    def coefficient_table(self) -> pd.DataFrame:
        """One row per component or sum x design column: estimate and standard error (basis units)."""
        rows = []
        for name in list(self.names) + list(self.sums):
            try:
                est, cov = self.time_coefficients(name)
                cols = self.design.columns
            except KeyError:
                k = self.names.index(name) if name in self.names else None
                if k is None:
                    continue
                d = self.component_designs[k]
                sl = slice(self.offsets[k], self.offsets[k] + d.n_columns)
                est, cov, cols = self.coefficients[sl], self.covariance[sl, sl], d.columns
            se = np.sqrt(np.clip(np.diag(cov), 0, None))
            for j, col in enumerate(cols):
                rows.append({"metabolite": name, "parameter": col, "estimate": float(est[j]), "se": float(se[j]),
                             "is_sum": name in self.sums})
        return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------- the joint model
def _problem(blocks: np.ndarray, weights: np.ndarray, dwell_time: float, central_frequency: float, start,
             params: FitParams):
    """The single fit's problem set-up for the blocks' weighted mean, with the start fit's model decisions.

    The one place that reaches into :mod:`.fit`: the prepared basis (components, macromolecule/lipid model, ratio
    priors), baseline stiffness and each metabolite's own shift come from the start fit's ``extras``; window,
    normalised basis FIDs, line-shape groups and baseline projector from :func:`.fit.build_problem`. Each
    metabolite's own shift is fixed at the start fit's value (it is a property of the spectrum, not of the block).
    """
    from bids_ketamine.spectroscopy.fit import build_problem

    prepared = start.extras["prepared"]
    mean = (weights[:, None] ** 2 * blocks).sum(axis=0) / (weights**2).sum()
    pb = build_problem(mean, dwell_time, central_frequency, prepared.basis, params,
                       smoothness=float(start.extras["baseline_smoothness"]))
    pb.tie_groups = prepared.macromolecules == "model"
    own = np.asarray(start.extras.get("own_shifts_hz", np.zeros(pb.n_comp)), float)
    pb.fids = pb.fids * np.exp(2j * np.pi * own[:, None] * pb.t[None, :])
    return pb, prepared


def _remove_water(fids: np.ndarray, mean_fid: np.ndarray, dwell_time: float, central_frequency: float, start,
                  params: FitParams, ppm_reference: float) -> tuple[np.ndarray, list]:
    """Residual water removed from every block (its own HLSVD, in the band the single fit chose for the mean),
    when the single fit of the mean removed water."""
    from bids_ketamine.spectroscopy.fit import water_band
    from bids_ketamine.spectroscopy.water_removal import remove_residual_water

    if not start.extras.get("water_removal"):
        return fids, []
    band = water_band(mean_fid, dwell_time, central_frequency, params, ppm_reference)
    out, summaries = [], []
    for fid in fids:
        removal = remove_residual_water(fid, dwell_time, central_frequency, band_ppm=band,
                                        ppm_reference=ppm_reference, n_components=params.water_components)
        out.append(removal.fid)
        summaries.append(removal.summary())
    return np.stack(out), summaries


def _stack_blocks(z: np.ndarray) -> np.ndarray:
    """(B, n, ...) complex -> (B * 2n, ...) real, each block as [real; imaginary] (the single fit's layout)."""
    st = np.concatenate([z.real, z.imag], axis=1)
    return st.reshape((-1,) + st.shape[2:])


class _JointModel:
    """Residual and analytic Jacobian of the stacked blocks for a parameter vector (one-entry cache).

    Parameter vector: time-model coefficients of all components (normalised units), then the design coefficients
    of shift, Lorentzian and Gaussian^2 per line-shape group, then of phi0 and tau. As in the single fit, groups
    after the first carry the metabolites' line shape plus their own offsets when ``pb.tie_groups``. The residual
    is the baseline-projected weighted data misfit followed by the ratio-prior rows (on the blocks' mean
    concentrations).
    """

    def __init__(self, pb, y: np.ndarray, weights: np.ndarray, comp_designs: list[TimeDesign],
                 d_shift: TimeDesign, d_shape: TimeDesign, d_phase: TimeDesign, d_base: TimeDesign):
        self.pb, self.y, self.w = pb, y, weights
        self.n_blocks, self.n = y.shape
        k, g = pb.n_comp, pb.n_groups
        self.k, self.g = k, g
        widths = [d.n_columns for d in comp_designs]
        self.offsets = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int)
        self.n_beta = int(sum(widths))
        xc = np.zeros((self.n_blocks, k, self.n_beta))
        for i, d in enumerate(comp_designs):
            xc[:, i, self.offsets[i]:self.offsets[i] + d.n_columns] = d.matrix
        self.xc = xc
        self.d_shift, self.d_shape, self.d_phase = d_shift, d_shape, d_phase
        self.ds, self.dl, self.dp = d_shift.matrix, d_shape.matrix, d_phase.matrix
        qs, ql, qp = self.ds.shape[1], self.dl.shape[1], self.dp.shape[1]
        o = self.n_beta
        self.sl_beta = slice(0, o)
        self.sl_shift = slice(o, o + qs * g)
        self.sl_lor = slice(o + qs * g, o + (qs + ql) * g)
        self.sl_gau = slice(o + (qs + ql) * g, o + (qs + 2 * ql) * g)
        self.sl_phi = slice(o + (qs + 2 * ql) * g, o + (qs + 2 * ql) * g + qp)
        self.sl_tau = slice(self.sl_phi.stop, self.sl_phi.stop + qp)
        self.n_par = self.sl_tau.stop
        self.qs, self.ql, self.qp = qs, ql, qp
        self.tie = bool(pb.tie_groups) and g > 1
        # line shape the same in every block: one set of FFTs serves them all
        self.shared_shape = qs == 1 and ql == 1 and np.allclose(self.ds, 1) and np.allclose(self.dl, 1)
        self.membership = (np.arange(g)[:, None] == pb.group_of[None, :]).astype(float)
        self.q = self._baseline_basis(d_base.matrix)
        self.n_rows_data = self.n_blocks * 2 * self.n
        self.prior_rows = np.zeros((0, self.n_beta))
        self._key = None

    def _baseline_basis(self, d_base: np.ndarray) -> np.ndarray | None:
        """Orthonormal basis of the stacked baseline system: block b's data rows of baseline set j are
        ``D[b, j] w_b Q_data``; set j's penalty rows are scaled by ``sqrt(sum_b (D[b, j] w_b)^2)``, so a baseline
        shared by the blocks is as stiff relative to their data as the single fit's is relative to one spectrum."""
        q1 = self.pb.q
        if q1 is None:
            return None
        n2 = 2 * self.n
        qd, qpen = q1[:n2], q1[n2:]
        b, r = d_base.shape
        rank = q1.shape[1]
        rows_data = np.zeros((b * n2, r * rank))
        for i in range(b):
            for j in range(r):
                rows_data[i * n2:(i + 1) * n2, j * rank:(j + 1) * rank] = d_base[i, j] * self.w[i] * qd
        strength = np.sqrt(((d_base * self.w[:, None]) ** 2).sum(axis=0))
        rows_pen = (np.kron(np.diag(strength), qpen) if qpen.shape[0] else np.zeros((0, r * rank)))
        system = np.vstack([rows_data, rows_pen])
        qq, rr = np.linalg.qr(system)
        keep = np.abs(np.diag(rr)) > 1e-10 * max(np.abs(np.diag(rr)).max(), 1e-300)
        return qq[:, keep]

    def set_priors(self, rows_per_component: np.ndarray) -> None:
        """Ratio-prior rows (on normalised concentrations, one column per component) applied to the blocks' mean
        concentrations (weighted by transients)."""
        if rows_per_component.shape[0] == 0:
            self.prior_rows = np.zeros((0, self.n_beta))
            return
        w2 = self.w**2 / (self.w**2).sum()
        mean_map = np.einsum("b,bkj->kj", w2, self.xc)  # (K, n_beta)
        self.prior_rows = rows_per_component @ mean_map

    def project(self, stacked: np.ndarray) -> np.ndarray:
        if self.q is None:
            return stacked
        m = stacked.shape[0]
        pad = np.zeros((self.q.shape[0] - m,) + stacked.shape[1:])
        return np.concatenate([stacked, pad], axis=0) - self.q @ (self.q[:m].T @ stacked)

    def unpack(self, x: np.ndarray):
        """Per block: coefficients, and the effective shift, Lorentzian and Gaussian^2 per group, phi0, tau."""
        g = self.g
        beta = x[self.sl_beta]
        shift = self.ds @ x[self.sl_shift].reshape(self.qs, g)
        lor = self.dl @ x[self.sl_lor].reshape(self.ql, g)
        gau = self.dl @ x[self.sl_gau].reshape(self.ql, g)
        if self.tie:
            shift[:, 1:] += shift[:, :1]
            lor[:, 1:] += lor[:, :1]
            gau[:, 1:] += gau[:, :1]
        phi0 = self.dp @ x[self.sl_phi]
        tau = self.dp @ x[self.sl_tau]
        return beta, shift, lor, gau, phi0, tau

    def evaluate(self, x: np.ndarray):
        key = x.tobytes()
        if key == self._key:
            return self._cache
        pb = self.pb
        beta, shift, lor, gau, phi0, tau = self.unpack(x)
        c = self.xc @ beta  # (B, K)
        rows = 1 if self.shared_shape else self.n_blocks
        t = pb.t
        rate = (2j * np.pi * shift[:rows] - np.pi * lor[:rows])[:, :, None] * t
        mod = np.exp(rate - GAUSS_K * gau[:rows][:, :, None] * (t * t))  # (R, G, N)
        comp_fid = pb.fids[None] * mod[:, pb.group_of]  # (R, K, N)
        spec = np.fft.fft(comp_fid, axis=-1)[..., pb.raw_idx]  # (R, K, n)
        if rows == 1:
            spec = np.broadcast_to(spec, (self.n_blocks,) + spec.shape[1:])
        phase = np.exp(1j * (phi0[:, None] + 2 * np.pi * pb.f_hz[None, :] * tau[:, None]))  # (B, n)
        model = phase * np.einsum("bk,bkn->bn", c, spec)
        self._key, self._cache = key, (c, comp_fid, spec, phase, model)
        return self._cache

    def data_residual(self, x: np.ndarray) -> np.ndarray:
        model = self.evaluate(x)[4]
        return self.project(_stack_blocks(self.w[:, None] * (self.y - model)))

    def residual(self, x: np.ndarray) -> np.ndarray:
        r = self.data_residual(x)
        if self.prior_rows.shape[0]:
            r = np.concatenate([r, self.prior_rows @ x[self.sl_beta]])
        return r

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        pb = self.pb
        c, comp_fid, spec, phase, model = self.evaluate(x)
        b, n, g = self.n_blocks, self.n, self.g
        t = pb.t
        t1 = np.fft.fft(t * comp_fid, axis=-1)[..., pb.raw_idx]
        t2 = np.fft.fft(t * t * comp_fid, axis=-1)[..., pb.raw_idx]
        if t1.shape[0] == 1:
            t1 = np.broadcast_to(t1, (b,) + t1.shape[1:])
            t2 = np.broadcast_to(t2, (b,) + t2.shape[1:])
        cols = np.zeros((b, n, self.n_par), complex)
        cols[:, :, self.sl_beta] = np.einsum("bkj,bkn->bnj", self.xc, spec) * phase[:, :, None]
        cg = c[:, None, :] * self.membership[None]  # (B, G, K)
        ds = np.einsum("bgk,bkn->bgn", cg, t1) * phase[:, None, :]
        de = np.einsum("bgk,bkn->bgn", cg, t2) * phase[:, None, :]
        for sl, dmat, deriv in ((self.sl_shift, self.ds, 2j * np.pi * ds), (self.sl_lor, self.dl, -np.pi * ds),
                                (self.sl_gau, self.dl, -GAUSS_K * de)):
            if self.tie:  # group 0's parameter moves every group (the others are offsets from it)
                deriv = deriv.copy()
                deriv[:, 0] = deriv.sum(axis=1)
            # column (q, g): block b's derivative with respect to its own value, times D[b, q]
            block = deriv.transpose(0, 2, 1)[:, :, None, :] * dmat[:, None, :, None]  # (B, n, q, G)
            cols[:, :, sl] = block.reshape(b, n, -1)
        dphi = 1j * model
        dtau = 2j * np.pi * pb.f_hz[None, :] * model
        cols[:, :, self.sl_phi] = dphi[:, :, None] * self.dp[:, None, :]
        cols[:, :, self.sl_tau] = dtau[:, :, None] * self.dp[:, None, :]
        cols *= -self.w[:, None, None]
        jac = self.project(_stack_blocks(cols))
        if self.prior_rows.shape[0]:
            rows = np.zeros((self.prior_rows.shape[0], self.n_par))
            rows[:, self.sl_beta] = self.prior_rows
            jac = np.vstack([jac, rows])
        return jac

    def baseline(self, x: np.ndarray) -> np.ndarray:
        """Fitted baseline of each block (B, n), in the normalised data units."""
        if self.q is None:
            return np.zeros_like(self.y)
        model = self.evaluate(x)[4]
        st = _stack_blocks(self.w[:, None] * (self.y - model))
        base = (self.q[: st.size] @ (self.q[: st.size].T @ st)).reshape(self.n_blocks, 2 * self.n)
        return (base[:, : self.n] + 1j * base[:, self.n:]) / self.w[:, None]


def _value_rows(design: TimeDesign) -> np.ndarray:
    """Coefficient rows of a nuisance design that are values in blocks (bounded): all of a per-block design, the
    first (the value at the mean time) of a linear one."""
    return np.arange(design.n_columns) if design.kind == "per_block" else np.array([0])


def _bounds(model: _JointModel, params: FitParams, phi_start: float):
    """The single fit's bounds (:func:`.fit.shift_bounds_hz`, :func:`.fit.gaussian_bound_hz`,
    :func:`.fit.max_delay`) on every block value of a nuisance parameter; slopes of linear designs are free."""
    from bids_ketamine.spectroscopy.fit import gaussian_bound_hz, max_delay, shift_bounds_hz

    pb = model.pb
    lo = np.full(model.n_par, -np.inf)
    hi = np.full(model.n_par, np.inf)
    g = model.g
    shift_lo, shift_hi = zip(*(shift_bounds_hz(pb, params, j) for j in range(g)))
    gau_hi = [gaussian_bound_hz(pb, params, j) ** 2 for j in range(g)]
    for sl, d, low, high in ((model.sl_shift, model.d_shift, shift_lo, shift_hi),
                             (model.sl_lor, model.d_shape, [0.0] * g, [params.max_lorentzian_hz] * g),
                             (model.sl_gau, model.d_shape, [0.0] * g, gau_hi)):
        idx = np.arange(sl.start, sl.stop).reshape(d.n_columns, g)[_value_rows(d)]
        lo[idx], hi[idx] = np.asarray(low)[None, :], np.asarray(high)[None, :]
    rows = _value_rows(model.d_phase)
    phi = np.arange(model.sl_phi.start, model.sl_phi.stop)[rows]
    lo[phi], hi[phi] = phi_start - 2 * np.pi, phi_start + 2 * np.pi
    tau = np.arange(model.sl_tau.start, model.sl_tau.stop)[rows]
    lo[tau], hi[tau] = -max_delay(pb), max_delay(pb)
    return lo, hi


def component_designs(names: tuple[str, ...], design: TimeDesign, dyn: DynamicFitParams) -> list[TimeDesign]:
    """Design of each component: the concentration design, or one amplitude for the session (components not in
    ``dyn.time_varying``; macromolecules/lipids when ``dyn.nuisance_concentrations`` is 'shared')."""
    shared = nuisance_design("shared", np.zeros(design.matrix.shape[0]), np.arange(design.matrix.shape[0]))
    varying = None if dyn.time_varying is None else {canonical_name(n) for n in dyn.time_varying}
    out = []
    for n in names:
        nuisance = is_macromolecule(n) or n.startswith("Lip")
        if nuisance:
            constant = dyn.nuisance_concentrations == "shared"
        else:
            constant = varying is not None and canonical_name(n) not in varying
        out.append(shared if constant else design)
    return out


def _start_vector(model: _JointModel, start, d_shift, d_shape, d_phase, central_frequency: float) -> np.ndarray:
    """The mean spectrum's nonlinear parameters in every block (tied groups as offsets from group 0)."""
    x0 = np.zeros(model.n_par)

    def put(sl, design: TimeDesign, values) -> None:
        block = np.zeros((design.n_columns, np.size(values)))
        block[_value_rows(design)] = values
        x0[sl] = block.ravel()

    shift, lor, gau = (np.asarray(start.shifts_hz, float), np.asarray(start.lorentzian_hz, float),
                       np.asarray(start.gaussian_hz, float) ** 2)
    if model.tie:
        shift, lor, gau = (np.concatenate([v[:1], v[1:] - v[0]]) for v in (shift, lor, gau))
    put(model.sl_shift, d_shift, shift)
    put(model.sl_lor, d_shape, lor)
    put(model.sl_gau, d_shape, gau)
    put(model.sl_phi, d_phase, np.deg2rad(start.phase0_deg))
    put(model.sl_tau, d_phase, start.phase1_deg_per_ppm / (360 * central_frequency))
    return x0


def fit_dynamic(block_fids: np.ndarray, dwell_time: float, central_frequency: float, basis, *,
                block_labels: np.ndarray, block_minutes: np.ndarray, n_transients: np.ndarray,
                design: TimeDesign | None = None, params: FitParams | None = None,
                dynamic: DynamicFitParams | None = None, conjugate: bool = False,
                echo_time: float | None = None) -> DynamicFitResult:
    """Fit the block-averaged FIDs ``(blocks, points)`` of one session jointly; see the module docstring.

    The FIDs are in the NIfTI-MRS sign convention (``conjugate=True`` conjugates LCModel-convention data, as for
    :func:`.fit.fit_spectrum`). ``block_minutes`` are the blocks' mean acquisition times from the infusion onset,
    ``n_transients`` the kept transients per block (weights). ``design`` is the concentration design (default:
    from ``dynamic``: the hinge time model at the block times, or free per block).
    """
    from bids_ketamine.spectroscopy.fit import fit_spectrum

    t0 = time.perf_counter()
    params = params or FitParams()
    dyn = dynamic or DynamicFitParams()
    fids = np.asarray(block_fids, complex)
    labels = np.asarray(block_labels)
    minutes = np.asarray(block_minutes, float)
    counts = np.asarray(n_transients, float)
    if fids.ndim != 2 or fids.shape[0] != labels.size or minutes.size != labels.size or counts.size != labels.size:
        raise BadDataError(f"fit_dynamic needs one FID per block: got {fids.shape} for {labels.size} blocks",
                           fix="give (blocks, points) FIDs with one label, time and transient count per block")
    if not np.all(np.isfinite(fids)) or not np.all(np.isfinite(minutes)) or np.any(counts <= 0):
        raise BadDataError("a block FID, time or transient count is missing or not finite",
                           fix="check the fMRS blocks (events.tsv onset, RepetitionTime)")
    if design is None:
        design = (per_block_design(labels) if dyn.concentrations == "per_block" else
                  _hinge_at_block_times(minutes, labels))
    if design.matrix.shape[0] != labels.size:
        raise BadDataError(f"the concentration design has {design.matrix.shape[0]} rows for {labels.size} blocks",
                           fix="give one design row per block")
    if not design.has_full_rank():
        raise BadDataError(f"the concentration design ({design.kind}: {', '.join(design.columns)}) is not of full "
                           f"rank over blocks at {np.round(minutes, 1).tolist()} min",
                           fix="use blocks on both sides of the infusion onset, or another design")
    if conjugate:
        fids = np.conj(fids)
    weights = np.sqrt(counts / counts.mean())
    mean_fid = (counts[:, None] * fids).sum(axis=0) / counts.sum()
    start = fit_spectrum(mean_fid, dwell_time, central_frequency, basis, params, echo_time=echo_time)
    ppm_reference = start.extras["prepared"].basis.ppm_reference
    blocks, removals = _remove_water(fids, mean_fid, dwell_time, central_frequency, start, params, ppm_reference)
    pb, prepared = _problem(blocks, weights, dwell_time, central_frequency, start, params)
    y = np.fft.fft(blocks, axis=1)[:, pb.raw_idx] / pb.scale
    names = prepared.basis.names
    designs = component_designs(names, design, dyn)
    d_shift = nuisance_design(dyn.shift, minutes, labels)
    d_shape = nuisance_design(dyn.lineshape, minutes, labels)
    d_phase = nuisance_design(dyn.phase, minutes, labels)
    d_base = nuisance_design(dyn.baseline, minutes, labels)
    model = _JointModel(pb, y, weights, designs, d_shift, d_shape, d_phase, d_base)

    # start: the mean spectrum's nonlinear parameters in every block, coefficients by linear least squares
    x0 = _start_vector(model, start, d_shift, d_shape, d_phase, central_frequency)
    jb = model.jacobian(x0)[:, model.sl_beta]
    r0 = model.residual(x0)  # beta = 0 in x0: r(beta) = r(0) + J_beta beta (linear in beta)
    x0[model.sl_beta] = np.linalg.lstsq(jb, -r0, rcond=None)[0]
    # ratio priors (the macromolecule/lipid model's), weighted by the joint fit's noise at the start
    n_free_lin = model.n_par
    sigma0 = float(np.sqrt(np.sum(model.data_residual(x0) ** 2) / max(model.n_rows_data - n_free_lin, 1)))
    if prepared.priors:
        pb.set_priors(prepared.priors, np.asarray(start.concentrations) / pb.units, sigma0)
        model.set_priors(pb.prior_rows)
    phi_start = float(np.deg2rad(start.phase0_deg))
    lo, hi = _bounds(model, params, phi_start)
    if not params.first_order_phase:
        lo[model.sl_tau], hi[model.sl_tau] = -1e-15, 1e-15
        x0[model.sl_tau] = 0.0
    margin = 1e-9 * np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    x0 = np.clip(x0, lo + margin, hi - margin)
    out = least_squares(model.residual, x0, jac=model.jacobian, bounds=(lo, hi), method="trf", x_scale="jac",
                        ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=dyn.max_nfev)
    x = out.x

    r = model.data_residual(x)
    jac = model.jacobian(x)
    free = np.ones(model.n_par, bool)
    if not params.first_order_phase:
        free[model.sl_tau] = False
    jf = jac[:, free]
    baseline_dim = 0.0 if model.q is None else float(np.sum(model.q[: model.n_rows_data] ** 2))
    dof = max(int(round(model.n_rows_data - int(free.sum()) - baseline_dim)), 1)
    sigma2 = float(r @ r) / dof
    cov_all = np.zeros((model.n_par, model.n_par))
    cov_all[np.ix_(free, free)] = penalised_covariance(jf, sigma2)

    comp_of_coef = np.repeat(np.arange(model.k), [d.n_columns for d in designs])
    units = pb.units[comp_of_coef]
    coef = x[model.sl_beta] * units
    cov = cov_all[model.sl_beta, model.sl_beta] * np.outer(units, units)

    beta, shift, lor, gau, phi0, tau = model.unpack(x)
    c, comp_fid, spec, phase, mspec = model.evaluate(x)
    base = model.baseline(x)
    derot = np.conj(phase)
    noise_sd = np.sqrt(sigma2) * pb.scale / weights
    snr = _block_snr(names, c, spec, params, pb) * pb.scale / noise_sd
    ppm_win = prepared.basis.ppm_reference + pb.f_hz / central_frequency
    result = DynamicFitResult(
        names=names, sums=prepared.basis.sums(), design=design, component_designs=tuple(designs),
        coefficients=coef, covariance=cov, offsets=model.offsets, block_labels=labels, block_minutes=minutes,
        weights=weights, shifts_hz=shift, lorentzian_hz=lor, gaussian_hz=np.sqrt(np.clip(gau, 0, None)),
        phase0_deg=np.degrees(phi0) % 360, phase1_deg_per_ppm=360 * tau * central_frequency,
        group_names=tuple(pb.group_names), ppm=ppm_win,
        data=y * derot * pb.scale, fit=(mspec + base) * derot * pb.scale, baseline=base * derot * pb.scale,
        noise_sd=noise_sd, snr=snr, fwhm_hz=start.fwhm_hz, degrees_of_freedom=dof, conjugated=bool(conjugate),
        success=bool(out.success) and out.status > 0, message=str(out.message),
        n_evaluations=int(out.nfev) + start.n_evaluations, seconds=0.0,
        settings={"design": design.kind, "design_columns": list(design.columns), **dyn.model_dump(mode="json"),
                  "macromolecules": prepared.macromolecules, "priors": [p.label for p, _, _ in prepared.priors],
                  "baseline_smoothness": start.extras.get("baseline_smoothness"),
                  "water_removal": removals},
        start_qc_reasons=tuple(start.qc_reasons),
    )
    return replace(result, qc_reasons=dynamic_qc_reasons(result), seconds=time.perf_counter() - t0)


def dynamic_qc_reasons(result: DynamicFitResult, references: tuple[str, ...] = ("tNAA", "tCr", "Glx")
                       ) -> tuple[str, ...]:
    """Why a dynamic fit cannot be trusted (empty = it can): the joint optimiser did not converge, the single
    fit of the session's mean spectrum failed QC, or a reference's implied block concentration is not positive."""
    reasons = []
    if not result.success:
        reasons.append(f"joint fit did not converge ({result.message.strip() or 'no message'})")
    reasons += [f"mean spectrum: {r}" for r in result.start_qc_reasons]
    for name in references:
        try:
            values, _ = result.block_concentrations(name)
        except KeyError:
            continue
        bad = [int(b) for b, v in zip(result.block_labels, values) if not v > 0]
        if bad:
            reasons.append(f"{name} implied concentration not positive in blocks {bad}")
    return tuple(reasons)


def _hinge_at_block_times(minutes: np.ndarray, labels: np.ndarray) -> TimeDesign:
    """The default time model at the block times (blocks are timed from the onset, so none straddles it)."""
    return hinge_design(minutes, np.arange(minutes.size), np.arange(minutes.size))


def _block_snr(names, c, spec, params: FitParams, pb) -> np.ndarray:
    """Height of the fitted NAA singlet in each block (normalised units; the single fit's SNR definition)."""
    canon = [canonical_name(n) for n in names]
    if "NAA" not in canon:
        return np.full(c.shape[0], np.nan)
    i = canon.index("NAA")
    ppm_win = pb.baseline_x
    lo, hi = params.snr_peak_ppm
    sel = (ppm_win >= lo) & (ppm_win <= hi)
    heights = (c[:, i][:, None] * spec[:, i, :]).real[:, sel]
    return heights.max(axis=1) if sel.any() else np.full(c.shape[0], np.nan)
