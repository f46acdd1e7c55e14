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
baseline alone gives about 0.85-0.9 x block-wise).

How it is solved: the single-spectrum fit of the session's weighted mean spectrum (:func:`.fit.fit_spectrum`)
gives the start and every model decision (components fitted including added lipids, sign convention, residual-water
lines), so the dynamic fit inherits the macromolecule/lipid model and water handling of the single fit. The
baseline is eliminated by variable projection on the stacked blocks; then all time-model coefficients and
nonlinear parameters are refined together by scipy's bounded trust-region least squares with an analytic Jacobian.
Time-model coefficients are not constrained to be non-negative (so their estimates are unbiased and their intervals
calibrated); a negative implied block concentration is flagged. Covariance: ``sigma^2 (J^T J)^-1`` over all free
parameters, ``sigma`` from the joint residual.

Why our own code: FSL-MRS (``fsl_dynmrs``) is non-commercial and carries first-level uncertainty to the group only
through FSL's FLAMEO; spant is R. The model reuses the single fit's preprocessing of the problem (window, basis
normalisation, line-shape groups, penalised baseline), so a change there applies to both fits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from bids_ketamine.errors import BadDataError
from bids_ketamine.spectroscopy.basis import canonical_name, is_macromolecule
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

    # ---------------------------------------------------------------------------------------------- lookups
    def _component_weights(self, name: str) -> np.ndarray:
        w = np.zeros(len(self.names))
        members = self.sums.get(name)
        if members is None:
            canon = canonical_name(name)
            hits = [i for i, n in enumerate(self.names) if n == name or canonical_name(n) == canon]
            if not hits:
                raise KeyError(f"{name!r} was not fitted (components: {', '.join(self.names)})")
            w[hits[0]] = 1
        else:
            for m in members:
                w[self.names.index(m)] = 1
        return w

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
def _single_problem(mean_fid: np.ndarray, dwell_time: float, central_frequency: float, start,
                    params: FitParams):
    """The single fit's problem set-up for the mean spectrum, with the start fit's model decisions.

    The one place that reaches into :mod:`.fit` internals: window, normalised basis FIDs, groups and baseline
    projector come from its ``_prepare`` (the components, sign convention and residual-water poles from the start
    fit's ``extras``), so both fits make the same modelling choices.
    """
    from bids_ketamine.spectroscopy import fit as single

    basis = start.extras["model_basis"]
    poles = start.extras.get("water_poles")
    fid = np.conj(mean_fid) if start.conjugated else mean_fid
    return single._prepare(fid, dwell_time, central_frequency, basis, params, conjugate=False, water_poles=poles)


def _stack_blocks(z: np.ndarray) -> np.ndarray:
    """(B, n, ...) complex -> (B * 2n, ...) real, each block as [real; imaginary] (the single fit's layout)."""
    st = np.concatenate([z.real, z.imag], axis=1)
    return st.reshape((-1,) + st.shape[2:])


class _JointModel:
    """Residual and analytic Jacobian of the stacked blocks for a parameter vector (one-entry cache)."""

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
        # line shape the same in every block: one set of FFTs serves them all
        self.shared_shape = qs == 1 and ql == 1 and np.allclose(self.ds, 1) and np.allclose(self.dl, 1)
        self.membership = (np.arange(g)[:, None] == pb.group_of[None, :]).astype(float)
        self.q = self._baseline_basis(d_base.matrix)
        self._key = None

    def _baseline_basis(self, d_base: np.ndarray) -> np.ndarray | None:
        """Orthonormal basis of the stacked baseline system: block b's rows of set j are ``D[b, j] w_b Q_data``."""
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
        rows_pen = np.kron(np.eye(r), qpen) if qpen.shape[0] else np.zeros((0, r * rank))
        system = np.vstack([rows_data, rows_pen])
        qq, rr = np.linalg.qr(system)
        keep = np.abs(np.diag(rr)) > 1e-10 * max(np.abs(np.diag(rr)).max(), 1e-300)
        return qq[:, keep]

    def project(self, stacked: np.ndarray) -> np.ndarray:
        if self.q is None:
            return stacked
        m = stacked.shape[0]
        pad = np.zeros((self.q.shape[0] - m,) + stacked.shape[1:])
        return np.concatenate([stacked, pad], axis=0) - self.q @ (self.q[:m].T @ stacked)

    def unpack(self, x: np.ndarray):
        g = self.g
        beta = x[self.sl_beta]
        shift = self.ds @ x[self.sl_shift].reshape(self.qs, g)
        lor = self.dl @ x[self.sl_lor].reshape(self.ql, g)
        gau = self.dl @ x[self.sl_gau].reshape(self.ql, g)
        phi0 = self.dp @ x[self.sl_phi]
        tau = self.dp @ x[self.sl_tau]
        return beta, shift, lor, gau, phi0, tau

    def _evaluate(self, x: np.ndarray):
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

    def residual(self, x: np.ndarray) -> np.ndarray:
        model = self._evaluate(x)[4]
        return self.project(_stack_blocks(self.w[:, None] * (self.y - model)))

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        pb = self.pb
        c, comp_fid, spec, phase, model = self._evaluate(x)
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
            # column (q, g): block b's derivative with respect to its own value, times D[b, q]
            block = deriv.transpose(0, 2, 1)[:, :, None, :] * dmat[:, None, :, None]  # (B, n, q, G)
            cols[:, :, sl] = block.reshape(b, n, -1)
        dphi = 1j * model
        dtau = 2j * np.pi * pb.f_hz[None, :] * model
        cols[:, :, self.sl_phi] = dphi[:, :, None] * self.dp[:, None, :]
        cols[:, :, self.sl_tau] = dtau[:, :, None] * self.dp[:, None, :]
        cols *= -self.w[:, None, None]
        return self.project(_stack_blocks(cols))

    def baseline(self, x: np.ndarray) -> np.ndarray:
        """Fitted baseline of each block (B, n), in the normalised data units."""
        if self.q is None:
            return np.zeros_like(self.y)
        model = self._evaluate(x)[4]
        st = _stack_blocks(self.w[:, None] * (self.y - model))
        base = (self.q[: st.size] @ (self.q[: st.size].T @ st)).reshape(self.n_blocks, 2 * self.n)
        return (base[:, : self.n] + 1j * base[:, self.n:]) / self.w[:, None]


def _value_rows(design: TimeDesign) -> np.ndarray:
    """Coefficient rows of a nuisance design that are values in blocks (bounded): all of a per-block design, the
    first (the value at the mean time) of a linear one."""
    return np.arange(design.n_columns) if design.kind == "per_block" else np.array([0])


def _bounds(model: _JointModel, params: FitParams, phi_start: float, max_tau: float):
    lo = np.full(model.n_par, -np.inf)
    hi = np.full(model.n_par, np.inf)
    g = model.g
    for sl, d, low, high in ((model.sl_shift, model.d_shift, -params.max_shift_hz, params.max_shift_hz),
                             (model.sl_lor, model.d_shape, 0.0, params.max_lorentzian_hz),
                             (model.sl_gau, model.d_shape, 0.0, params.max_gaussian_hz ** 2)):
        idx = np.arange(sl.start, sl.stop).reshape(d.n_columns, g)[_value_rows(d)].ravel()
        lo[idx], hi[idx] = low, high
    rows = _value_rows(model.d_phase)
    phi = np.arange(model.sl_phi.start, model.sl_phi.stop)[rows]
    lo[phi], hi[phi] = phi_start - 2 * np.pi, phi_start + 2 * np.pi
    tau = np.arange(model.sl_tau.start, model.sl_tau.stop)[rows]
    lo[tau], hi[tau] = -max_tau, max_tau
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


def fit_dynamic(block_fids: np.ndarray, dwell_time: float, central_frequency: float, basis, *,
                block_labels: np.ndarray, block_minutes: np.ndarray, n_transients: np.ndarray,
                design: TimeDesign | None = None, params: FitParams | None = None,
                dynamic: DynamicFitParams | None = None, conjugate: bool | None = None) -> DynamicFitResult:
    """Fit the block-averaged FIDs ``(blocks, points)`` of one session jointly; see the module docstring.

    ``block_minutes`` are the blocks' mean acquisition times from the infusion onset, ``n_transients`` the kept
    transients per block (weights). ``design`` is the concentration design (default: from ``dynamic``:
    the hinge time model, evaluated at the block times, or free per block).
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
    weights = np.sqrt(counts / counts.mean())
    mean_fid = (counts[:, None] * fids).sum(axis=0) / counts.sum()
    start = fit_spectrum(mean_fid, dwell_time, central_frequency, basis, params, conjugate=conjugate)
    pb = _single_problem(mean_fid, dwell_time, central_frequency, start, params)
    blocks = np.conj(fids) if start.conjugated else fids
    y = np.fft.fft(blocks, axis=1)[:, pb.raw_idx] / pb.scale
    names = start.extras["model_basis"].names
    designs = component_designs(names, design, dyn)
    d_shift = nuisance_design(dyn.shift, minutes, labels)
    d_shape = nuisance_design(dyn.lineshape, minutes, labels)
    d_phase = nuisance_design(dyn.phase, minutes, labels)
    d_base = nuisance_design(dyn.baseline, minutes, labels)
    model = _JointModel(pb, y, weights, designs, d_shift, d_shape, d_phase, d_base)

    # start: the mean spectrum's nonlinear parameters in every block, coefficients by linear least squares
    x0 = np.zeros(model.n_par)

    def put(sl, design: TimeDesign, values) -> None:
        block = np.zeros((design.n_columns, np.size(values)))
        block[_value_rows(design)] = values
        x0[sl] = block.ravel()

    put(model.sl_shift, d_shift, start.shifts_hz)
    put(model.sl_lor, d_shape, start.lorentzian_hz)
    put(model.sl_gau, d_shape, start.gaussian_hz**2)
    phi_start = np.deg2rad(start.phase0_deg)
    tau_start = start.phase1_deg_per_ppm / (360 * central_frequency)
    put(model.sl_phi, d_phase, phi_start)
    put(model.sl_tau, d_phase, tau_start)
    jb = model.jacobian(x0)[:, model.sl_beta]
    r0 = model.residual(np.where(np.arange(model.n_par) < model.n_beta, 0.0, x0))
    x0[model.sl_beta] = np.linalg.lstsq(jb, -r0, rcond=None)[0]  # linear in beta: r(beta) = r(0) + J_beta beta
    max_tau = 1.0 / (4 * max(np.ptp(pb.f_hz), 1.0)) * 4
    lo, hi = _bounds(model, params, phi_start, max_tau)
    if not params.first_order_phase:
        lo[model.sl_tau], hi[model.sl_tau] = -1e-15, 1e-15
        x0[model.sl_tau] = 0.0
    margin = 1e-9 * np.where(np.isfinite(hi - lo), hi - lo, 1.0)
    x0 = np.clip(x0, lo + margin, hi - margin)
    out = least_squares(model.residual, x0, jac=model.jacobian, bounds=(lo, hi), method="trf", x_scale="jac",
                        ftol=1e-10, xtol=1e-10, gtol=1e-10, max_nfev=dyn.max_nfev)
    x = out.x

    r = model.residual(x)
    jac = model.jacobian(x)
    free = np.ones(model.n_par, bool)
    if not params.first_order_phase:
        free[model.sl_tau] = False
    jf = jac[:, free]
    n_data = model.n_blocks * 2 * model.n
    dof = max(n_data - int(free.sum()) - (0 if model.q is None else model.q.shape[1]), 1)
    sigma2 = float(r @ r) / dof
    cov_all = np.zeros((model.n_par, model.n_par))
    cov_all[np.ix_(free, free)] = np.linalg.pinv(jf.T @ jf) * sigma2

    comp_of_coef = np.repeat(np.arange(model.k), [d.n_columns for d in designs])
    units = (pb.scale / pb.norms)[comp_of_coef]
    coef = x[model.sl_beta] * units
    cov = cov_all[model.sl_beta, model.sl_beta] * np.outer(units, units)

    beta, shift, lor, gau, phi0, tau = model.unpack(x)
    c, comp_fid, spec, phase, mspec = model._evaluate(x)
    base = model.baseline(x)
    derot = np.conj(phase)
    noise_sd = np.sqrt(sigma2) * pb.scale / weights
    snr = _block_snr(names, c, spec, params, pb, central_frequency, start) * pb.scale / noise_sd
    ppm_win = start.ppm
    return DynamicFitResult(
        names=names, sums=start.sums, design=design, component_designs=tuple(designs), coefficients=coef,
        covariance=cov, offsets=model.offsets, block_labels=labels, block_minutes=minutes, weights=weights,
        shifts_hz=shift, lorentzian_hz=lor, gaussian_hz=np.sqrt(np.clip(gau, 0, None)),
        phase0_deg=np.degrees(phi0) % 360, phase1_deg_per_ppm=360 * tau * central_frequency,
        group_names=start.group_names, ppm=ppm_win,
        data=y * derot * pb.scale, fit=(mspec + base) * derot * pb.scale, baseline=base * derot * pb.scale,
        noise_sd=noise_sd, snr=snr, fwhm_hz=start.fwhm_hz, degrees_of_freedom=dof, conjugated=start.conjugated,
        success=bool(out.success), message=str(out.message), n_evaluations=int(out.nfev) + start.n_evaluations,
        seconds=time.perf_counter() - t0,
        settings={"design": design.kind, "design_columns": list(design.columns), **dyn.model_dump(mode="json")},
    )


def _hinge_at_block_times(minutes: np.ndarray, labels: np.ndarray) -> TimeDesign:
    """The default time model at the block times (blocks are timed from the onset, so none straddles it)."""
    return hinge_design(minutes, np.arange(minutes.size), np.arange(minutes.size))


def _block_snr(names, c, spec, params: FitParams, pb, central_frequency: float, start) -> np.ndarray:
    """Height of the fitted NAA singlet in each block (normalised units; the single fit's SNR definition)."""
    canon = [canonical_name(n) for n in names]
    if "NAA" not in canon:
        return np.full(c.shape[0], np.nan)
    i = canon.index("NAA")
    ppm_win = start.ppm
    lo, hi = params.snr_peak_ppm
    sel = (ppm_win >= lo) & (ppm_win <= hi)
    heights = (c[:, i][:, None] * spec[:, i, :]).real[:, sel]
    return heights.max(axis=1) if sel.any() else np.full(c.shape[0], np.nan)
