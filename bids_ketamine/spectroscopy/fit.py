"""Linear-combination model fit of a single-voxel spectrum, with Cramer-Rao lower bounds and QC.

Model, in the frequency domain over ``FitParams.ppm_range`` (stacked real and imaginary parts):

    Y(f) = exp(i (phi0 + 2 pi f tau)) * FFT[ sum_m c_m b_m(t) exp((2 pi i d_g - pi l_g) t - k e_g t^2) ](f) + B(f)

with concentrations ``c_m >= 0``, per line-shape group ``g`` (metabolites, macromolecules) a shift ``d_g`` (Hz),
an extra Lorentzian FWHM ``l_g`` (Hz) and an extra Gaussian FWHM ``sqrt(e_g)`` (Hz) (``k = pi^2 / (4 ln 2)``), a
zero-order phase ``phi0`` and a first-order phase written as a delay ``tau``, and a smooth complex baseline ``B``.

How it is solved:
1. The baseline is eliminated exactly by variable projection (it is linear and penalised: its projector is fixed).
2. Start: a grid over the common shift and the zero-order phase (and then a few broadenings) where, for each grid
   point, the concentrations are the non-negative least-squares solution (NNLS in Gram form, so a grid point costs
   microseconds). The same search, run on the conjugated data, decides the sign convention when asked to.
3. Refinement: all concentrations and nonlinear parameters together by ``lmfit.Minimizer`` with
   ``method="least_squares"`` (scipy's bounded trust-region reflective solver) and an analytic Jacobian: each
   model evaluation is a handful of FFTs of the basis (one per line-shape group for the residual, one per component
   for the Jacobian), so no Python loop runs over points.
4. CRLBs: ``sigma^2 (J^T J)^-1`` with the baseline-projected Jacobian ``J`` at the solution (the Fisher information
   with the baseline profiled out), ``sigma`` from the fit residual (or a signal-free window); sums such as Glx
   use the covariance between their members.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import lmfit
import numpy as np
import pandas as pd
from scipy.optimize import nnls

from bids_ketamine.errors import BadDataError, UsageError
from bids_ketamine.spectroscopy.basis import (
    BasisSet,
    canonical_name,
    combine,
    is_macromolecule,
    lipid_components,
    ppm_axis,
)
from bids_ketamine.spectroscopy.baseline import (
    baseline_projector_basis,
    bspline_design,
    complex_baseline_system,
    legendre_design,
    second_difference,
)
from bids_ketamine.spectroscopy.fit_params import FitParams
from bids_ketamine.spectroscopy.water_removal import band_peak_ratio, water_poles

#: Converts a Gaussian FWHM^2 (Hz^2) into the time-domain decay rate of exp(-k e t^2).
GAUSS_K = np.pi**2 / (4 * np.log(2))


@dataclass(frozen=True)
class FitResult:
    """Everything the fit estimated, in basis units (a component's basis FID has unit concentration)."""

    names: tuple[str, ...]
    concentrations: np.ndarray
    #: Covariance of the concentrations (CRLB matrix), basis units squared.
    covariance: np.ndarray
    #: Metabolite sums (e.g. ``Glx``) present in the basis: name -> member names.
    sums: dict[str, tuple[str, ...]]
    ppm: np.ndarray
    #: Data, fit, baseline and residual over the fit window, complex and phase corrected (real part = absorption).
    data: np.ndarray
    fit: np.ndarray
    baseline: np.ndarray
    residual: np.ndarray
    phase0_deg: float
    #: First-order phase in degrees per ppm (= 360 * tau * central frequency).
    phase1_deg_per_ppm: float
    group_names: tuple[str, ...]
    shifts_hz: np.ndarray
    lorentzian_hz: np.ndarray
    gaussian_hz: np.ndarray
    #: Standard deviation of the noise (real part) in data units, from the residual or ``noise_ppm``.
    noise_sd: float
    snr: float
    fwhm_hz: float
    fwhm_ppm: float
    conjugated: bool
    success: bool
    message: str
    n_evaluations: int
    seconds: float
    central_frequency: float
    extras: dict = field(default_factory=dict)

    def concentration(self, name: str) -> float:
        """Concentration of a component or of a sum (``Glx``), basis units."""
        return float(self._weights(name) @ self.concentrations)

    def crlb(self, name: str) -> float:
        """Cramer-Rao lower bound (standard deviation) of a component or sum, basis units."""
        w = self._weights(name)
        return float(np.sqrt(max(w @ self.covariance @ w, 0.0)))

    def crlb_percent(self, name: str) -> float:
        c = self.concentration(name)
        return float(100 * self.crlb(name) / c) if c > 0 else float("inf")

    def _weights(self, name: str) -> np.ndarray:
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

    def table(self) -> pd.DataFrame:
        """One row per component and per sum: concentration, CRLB (SD) and CRLB %."""
        rows = []
        for name in list(self.names) + list(self.sums):
            c, sd = self.concentration(name), self.crlb(name)
            rows.append({"metabolite": name, "concentration": c, "crlb": sd,
                         "crlb_percent": 100 * sd / c if c > 0 else np.inf,
                         "is_sum": name in self.sums})
        return pd.DataFrame(rows)


@dataclass
class _Problem:
    """Precomputed pieces of one fit: normalised data and basis, axes, baseline projector."""

    y: np.ndarray  # complex window of the normalised data spectrum
    fids: np.ndarray  # (K, N) basis FIDs, each scaled to unit norm over the window
    norms: np.ndarray  # (K,) scaling applied to each basis FID
    scale: float  # data scaling
    t: np.ndarray
    raw_idx: np.ndarray  # positions of the window in the unshifted FFT
    f_hz: np.ndarray  # frequency (Hz) of the window
    group_of: np.ndarray  # (K,) group index of each component
    n_groups: int
    q: np.ndarray | None  # orthonormal basis of the augmented baseline system
    n_aug: int
    first_order: bool

    @property
    def n_comp(self) -> int:
        return self.fids.shape[0]

    def _fft_window(self, x: np.ndarray) -> np.ndarray:
        return np.fft.fft(x, axis=-1)[..., self.raw_idx]

    def modulation(self, shifts, lor, gau) -> np.ndarray:
        t = self.t
        rate = (2j * np.pi * np.asarray(shifts) - np.pi * np.asarray(lor))[:, None] * t[None, :]
        return np.exp(rate - GAUSS_K * np.asarray(gau)[:, None] * (t * t)[None, :])

    def project(self, stacked: np.ndarray) -> np.ndarray:
        """Residual of the best penalised baseline: ``P_aug [v; 0]`` for a vector or a matrix of columns."""
        if self.q is None:
            return stacked
        n2 = stacked.shape[0]
        pad = np.zeros((self.n_aug - n2,) + stacked.shape[1:])
        full = np.concatenate([stacked, pad], axis=0)
        return full - self.q @ (self.q[:n2].T @ stacked)

    def baseline_coefficients(self, stacked_residual: np.ndarray) -> np.ndarray:
        return self.q[: stacked_residual.shape[0]].T @ stacked_residual


def _stack(z: np.ndarray) -> np.ndarray:
    return np.concatenate([z.real, z.imag], axis=0)


def _select_components(basis: BasisSet, params: FitParams) -> BasisSet:
    asked = tuple(params.include or ()) + tuple(params.exclude)
    unknown = [n for n in asked if not basis.has(n)]
    if params.include is not None and unknown:
        raise UsageError(f"FitParams names components the basis set does not have: {', '.join(unknown)}",
                         fix=f"choose among {', '.join(basis.names)}")
    if params.include is not None:
        basis = basis.subset(params.include)
    if params.exclude:
        basis = basis.without(params.exclude)
    if params.macromolecules == "none":
        basis = basis.subset(basis.metabolite_names())
    if basis.n_metabolites == 0:
        raise UsageError("no basis component left to fit", fix="check FitParams.include/exclude")
    return basis


def _groups(names: tuple[str, ...], params: FitParams) -> tuple[tuple[str, ...], np.ndarray]:
    if params.lineshape_groups:
        gnames = tuple(params.lineshape_groups)
        lookup = {}
        for gi, members in enumerate(params.lineshape_groups.values()):
            for m in members:
                lookup[canonical_name(m)] = gi
        group_of = np.array([lookup.get(canonical_name(n), 0) for n in names])
        return gnames, group_of
    lip = np.array([n.startswith("Lip") for n in names])
    mm = np.array([is_macromolecule(n) for n in names]) & ~lip
    kinds = [("metabolites", ~(mm | lip)), ("macromolecules", mm), ("lipids", lip)]
    present = [(name, mask) for name, mask in kinds if mask.any()]
    group_of = np.zeros(len(names), int)
    for gi, (_, mask) in enumerate(present):
        group_of[mask] = gi
    return tuple(name for name, _ in present), group_of


def _prepare(fid: np.ndarray, dwell_time: float, central_frequency: float, basis: BasisSet,
             params: FitParams, *, conjugate: bool, water_poles: np.ndarray | None = None) -> _Problem:
    n = fid.size
    ppm = ppm_axis(n, dwell_time, central_frequency, basis.ppm_reference)
    lo, hi = params.ppm_range
    win = np.flatnonzero((ppm >= lo) & (ppm <= hi))
    if win.size < 16:
        raise BadDataError(f"only {win.size} points fall in the fit window {lo}-{hi} ppm",
                           fix="widen FitParams.ppm_range or check the spectral width")
    raw_idx = np.fft.ifftshift(np.arange(n))[win]
    data = np.conj(fid) if conjugate else fid
    y = np.fft.fft(data)[raw_idx]
    scale = float(np.abs(y).max())
    if not np.isfinite(scale) or scale == 0:
        raise BadDataError("the spectrum is zero or not finite in the fit window", fix="check the FID")
    fids = basis.fids
    spec = np.fft.fft(fids, axis=1)[:, raw_idx]
    norms = np.linalg.norm(spec, axis=1)
    if np.any(norms == 0):
        empty = [basis.names[i] for i in np.flatnonzero(norms == 0)]
        raise BadDataError(f"basis components {empty} have no signal in {lo}-{hi} ppm",
                           fix="exclude them with FitParams.exclude")
    gnames, group_of = _groups(basis.names, params)
    f_hz = (ppm[win] - basis.ppm_reference) * central_frequency
    x = ppm[win]
    if params.baseline == "none":
        system = np.zeros((2 * win.size, 0))
    else:
        if params.baseline == "bspline":
            design = bspline_design(x, params.baseline_knot_spacing_ppm)
            penalty = second_difference(design.shape[1])
            weight = params.baseline_smoothness * win.size
        else:
            design = legendre_design(x, params.baseline_order)
            penalty, weight = np.zeros((0, design.shape[1])), 0.0
        system = complex_baseline_system(design, penalty, weight)
    if water_poles is not None and water_poles.size:
        # Residual-water lines join the baseline with free complex amplitudes (real and imaginary columns).
        lines = np.fft.fft(water_poles[:, None] ** np.arange(n)[None, :], axis=1)[:, raw_idx].T
        lines = lines / np.abs(lines).max(axis=0)
        cols = np.vstack([np.hstack([lines.real, -lines.imag]), np.hstack([lines.imag, lines.real])])
        cols = np.vstack([cols, np.zeros((system.shape[0] - cols.shape[0], cols.shape[1]))])
        system = np.hstack([system, cols])
    if system.shape[1] == 0:
        q, n_aug = None, 2 * win.size
    else:
        q, n_aug = baseline_projector_basis(system), system.shape[0]
    return _Problem(y=y / scale, fids=fids / norms[:, None], norms=norms, scale=scale,
                    t=np.arange(n) * dwell_time, raw_idx=raw_idx, f_hz=f_hz, group_of=group_of,
                    n_groups=len(gnames), q=q, n_aug=n_aug, first_order=params.first_order_phase)


def nnls_gram_batch(gram: np.ndarray, rhs: np.ndarray, n_iter: int = 200) -> np.ndarray:
    """Non-negative least squares in Gram form for stacks of problems at once.

    For each problem ``b`` and right-hand side ``p`` minimises ``c^T G_b c - 2 h_bp^T c`` subject to ``c >= 0``
    (``gram`` is ``(B, K, K)``, ``rhs`` is ``(B, K, P)``) by accelerated projected gradient (FISTA). Vectorised over
    problems, so a start grid of hundreds of points costs milliseconds; it only ranks start points, where a few
    digits of accuracy suffice (the refinement then solves the problem exactly).
    """
    lip = np.linalg.eigvalsh(gram)[:, -1]
    step = (1.0 / np.maximum(lip, 1e-300))[:, None, None]
    c = np.zeros_like(rhs)
    z = c
    tk = 1.0
    for _ in range(n_iter):
        c_new = np.maximum(z - step * (gram @ z - rhs), 0.0)
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * tk * tk))
        z = c_new + ((tk - 1) / t_new) * (c_new - c)
        c, tk = c_new, t_new
    return c


def _grid_start(pb: _Problem, params: FitParams, lw_hz: float) -> tuple[float, float, float, np.ndarray]:
    """Best (residual, shift, phase0, concentrations) over the shift x phase start grid, NNLS at each point."""
    # Shifts by whole frequency bins: multiplying the FID by exp(2 pi i k n / N) rolls its DFT by k bins exactly,
    # so one FFT of the broadened basis serves every shift of the grid.
    n_pts = pb.t.size
    bin_hz = 1.0 / (n_pts * (pb.t[1] - pb.t[0]))
    step = max(1, int(round(params.start_shift_step_hz / bin_hz)))
    k_max = int(params.max_shift_hz // bin_hz)
    bins = np.arange(-k_max, k_max + 1, step)
    shifts = bins * bin_hz
    phases = np.linspace(0, 2 * np.pi, params.start_phase_steps, endpoint=False)
    pv0 = pb.project(_stack(pb.y))
    pv1 = pb.project(_stack(-1j * pb.y))  # rotating the data by -phi gives cos(phi) v0 + sin(phi) v1
    const = float(pv0 @ pv0)
    n_s, k = shifts.size, pb.n_comp
    full = np.fft.fft(pb.fids * np.exp(-np.pi * lw_hz * pb.t)[None, :], axis=1)
    spectra = full[:, (pb.raw_idx[None, :] - bins[:, None]) % n_pts].transpose(1, 0, 2)  # (S, K, n)
    stacked = np.concatenate([spectra.real, spectra.imag], axis=2)  # (S, K, 2n)
    a = pb.project(stacked.reshape(n_s * k, -1).T).T.reshape(n_s, k, -1)  # rows are projected columns
    gram = a @ a.transpose(0, 2, 1)  # (S, K, K)
    hv = a @ np.stack([pv0, pv1], axis=1)  # (S, K, 2)
    rot = np.stack([np.cos(phases), np.sin(phases)])  # (2, P)
    h = hv @ rot  # (S, K, P)
    c = nnls_gram_batch(gram, h)
    res = const - 2 * np.einsum("skp,skp->sp", c, h) + np.einsum("skp,skp->sp", c, gram @ c)
    si, pj = np.unravel_index(int(np.argmin(res)), res.shape)
    return float(res[si, pj]), float(shifts[si]), float(phases[pj]), c[si, :, pj].copy()


def _linewidth_start(pb: _Problem, params: FitParams, shift: float, phi: float):
    best = (np.inf, params.start_linewidths_hz[0], np.zeros(pb.n_comp))
    g = pb.n_groups
    v = pb.project(_stack(np.exp(-1j * phi) * pb.y))
    for lw in params.start_linewidths_hz:
        mod = pb.modulation(np.full(g, shift), np.full(g, lw), np.zeros(g))
        a = pb.project(_stack(pb._fft_window(pb.fids * mod[pb.group_of]).T))
        c, rnorm = nnls(a, v)
        if rnorm**2 < best[0]:
            best = (rnorm**2, lw, c)
    return best


class _Model:
    """Residual and analytic Jacobian of the full problem for a parameter vector (with a one-entry cache)."""

    def __init__(self, pb: _Problem):
        self.pb = pb
        k, g = pb.n_comp, pb.n_groups
        self.sl_c = slice(0, k)
        self.sl_d = slice(k, k + g)
        self.sl_l = slice(k + g, k + 2 * g)
        self.sl_e = slice(k + 2 * g, k + 3 * g)
        self.i_phi0 = k + 3 * g
        self.i_tau = k + 3 * g + 1
        self.n_par = k + 3 * g + 2
        self.membership = (np.arange(g)[:, None] == pb.group_of[None, :]).astype(float)  # (G, K)
        self._key = None

    def _evaluate(self, x: np.ndarray):
        key = x.tobytes()
        if key == self._key:
            return self._cache
        pb = self.pb
        c = x[self.sl_c]
        mod = pb.modulation(x[self.sl_d], x[self.sl_l], x[self.sl_e])
        comp_fid = pb.fids * mod[pb.group_of]  # (K, N)
        group_fid = self.membership @ (c[:, None] * comp_fid)
        phase = np.exp(1j * (x[self.i_phi0] + 2 * np.pi * pb.f_hz * x[self.i_tau]))
        model = phase * pb._fft_window(group_fid).sum(axis=0)
        self._key, self._cache = key, (comp_fid, group_fid, phase, model)
        return self._cache

    def residual_vector(self, x: np.ndarray) -> np.ndarray:
        model = self._evaluate(x)[3]
        return self.pb.project(_stack(self.pb.y - model))

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        pb = self.pb
        comp_fid, group_fid, phase, model = self._evaluate(x)
        t = pb.t
        n = pb.y.size
        cols = np.empty((n, self.n_par), complex)
        cols[:, self.sl_c] = (phase[:, None] * pb._fft_window(comp_fid).T)
        derivs = np.concatenate([2j * np.pi * t * group_fid, -np.pi * t * group_fid,
                                 -GAUSS_K * t * t * group_fid], axis=0)
        d = phase[:, None] * pb._fft_window(derivs).T
        g = pb.n_groups
        cols[:, self.sl_d] = d[:, :g]
        cols[:, self.sl_l] = d[:, g:2 * g]
        cols[:, self.sl_e] = d[:, 2 * g:]
        cols[:, self.i_phi0] = 1j * model
        cols[:, self.i_tau] = 2j * np.pi * pb.f_hz * model
        return -pb.project(_stack(cols))


def mirror_energy_ratio(fid: np.ndarray, dwell_time: float, central_frequency: float,
                        window: tuple[float, float] = (0.2, 4.2), ppm_reference: float = 4.65) -> float:
    """Summed spectral magnitude in ``window`` over that in its mirror image about the receiver frequency.

    Conjugating an FID mirrors its spectrum about the receiver frequency, so this ratio is > 1 for NIfTI-MRS
    convention brain spectra (metabolites below water) and < 1 for LCModel-convention ones.
    """
    spec = np.abs(np.fft.fftshift(np.fft.fft(fid)))
    ppm = ppm_axis(fid.size, dwell_time, central_frequency, ppm_reference)
    lo, hi = window
    inside = spec[(ppm >= lo) & (ppm <= hi)].sum()
    mirror = spec[(ppm >= 2 * ppm_reference - hi) & (ppm <= 2 * ppm_reference - lo)].sum()
    return float(inside / max(mirror, 1e-300))


class _Minimizer(lmfit.Minimizer):
    """lmfit's Minimizer without its post-fit standard-error bookkeeping, which builds correlated ``uncertainties``
    variables (tens of ms per fit); the fit computes its CRLBs itself from the analytic Jacobian."""

    def _calculate_uncertainties_correlations(self):
        self.result.errorbars = False


def lipid_peak_ratio(fid: np.ndarray, dwell_time: float, central_frequency: float,
                     ppm_reference: float = 4.65) -> float:
    """Largest spectral magnitude at 1.1-1.5 ppm (lipid, lactate) over that at 1.9-2.1 ppm (NAA)."""
    spec = np.abs(np.fft.fftshift(np.fft.fft(fid)))
    ppm = ppm_axis(fid.size, dwell_time, central_frequency, ppm_reference)
    lip = spec[(ppm >= 1.1) & (ppm <= 1.5)]
    naa = spec[(ppm >= 1.9) & (ppm <= 2.1)]
    if lip.size == 0 or naa.size == 0:
        return 0.0
    return float(lip.max() / max(naa.max(), 1e-300))


def detect_conjugation(fid: np.ndarray, dwell_time: float, central_frequency: float, basis: BasisSet,
                       params: FitParams | None = None) -> bool:
    """True when the data are in the LCModel (conjugate) convention.

    Decided by :func:`mirror_energy_ratio` when it is clear (outside 0.67-1.5); otherwise by which convention the
    start grid of the fit matches better.
    """
    params = params or FitParams()
    fid = np.asarray(fid, complex)
    ratio = mirror_energy_ratio(fid, dwell_time, central_frequency, params.ppm_range, basis.ppm_reference)
    if ratio > 1.5 or ratio < 1 / 1.5:
        return bool(ratio < 1)
    basis = _select_components(basis, params)
    if not (np.isclose(basis.dwell_time, dwell_time, rtol=1e-4) and basis.n_points == fid.size):
        basis = basis.resample_to(dwell_time, fid.size)
    res = []
    for conj in (False, True):
        pb = _prepare(fid, dwell_time, central_frequency, basis, params, conjugate=conj)
        res.append(_grid_start(pb, params, float(np.median(params.start_linewidths_hz)))[0])
    return bool(res[1] < res[0])


def fit_spectrum(fid: np.ndarray, dwell_time: float, central_frequency: float, basis: BasisSet,
                 params: FitParams | None = None, *, conjugate: bool | None = None) -> FitResult:
    """Fit one averaged FID with a basis set (NIfTI-MRS convention); see the module docstring for the model.

    ``conjugate`` overrides ``params.conjugate`` (True for LCModel-convention data). The basis is resampled to the
    data's dwell time and length when they differ. Strong residual water in ``params.residual_water_ppm`` is
    modelled by HSVD lines with free complex amplitudes that join the baseline (``FitResult.baseline`` includes
    them; ``extras["water_lines"]`` counts them).
    """
    t0 = time.perf_counter()
    params = params or FitParams()
    fid = np.asarray(fid)
    if fid.ndim != 1:
        fid = np.squeeze(fid)
        if fid.ndim != 1:
            raise BadDataError(f"fit_spectrum needs one averaged FID, got shape {np.shape(fid)}",
                               fix="coil-combine and average the transients first")
    fid = fid.astype(complex)
    if not np.all(np.isfinite(fid)) or not np.any(fid):
        raise BadDataError("the FID is all zero or contains NaN/inf", fix="check the raw data and preprocessing")
    if basis.nucleus != "1H":
        raise BadDataError(f"the basis is for {basis.nucleus}; only 1H spectra are fitted", fix="use a 1H basis")
    basis = _select_components(basis, params)
    if not (np.isclose(basis.dwell_time, dwell_time, rtol=1e-4) and basis.n_points == fid.size):
        basis = basis.resample_to(dwell_time, fid.size)
    if conjugate is None:
        conjugate = {"yes": True, "no": False}.get(params.conjugate)
    if conjugate is None:
        conjugate = detect_conjugation(fid, dwell_time, central_frequency, basis, params)
    if conjugate:
        fid = np.conj(fid)
    lipids = params.lipids
    if lipids == "auto":
        lipids = lipid_peak_ratio(fid, dwell_time, central_frequency, basis.ppm_reference) > params.lipid_threshold
    if lipids:
        basis = combine(basis, lipid_components(fid.size, dwell_time, central_frequency, basis.ppm_reference))
    poles = np.zeros(0, complex)
    if params.residual_water_ppm is not None and band_peak_ratio(
        fid, dwell_time, central_frequency, params.residual_water_ppm, params.ppm_range, basis.ppm_reference
    ) > params.residual_water_threshold:
        poles = water_poles(fid, dwell_time, central_frequency, params.residual_water_ppm, basis.ppm_reference)
    pb = _prepare(fid, dwell_time, central_frequency, basis, params, conjugate=False, water_poles=poles)

    # 1-2: variable-projection start.
    lw0 = float(np.median(params.start_linewidths_hz))
    _, s0, phi0, _ = _grid_start(pb, params, lw0)
    _, lw_best, c0 = _linewidth_start(pb, params, s0, phi0)

    # 3: joint refinement with lmfit (scipy least_squares, analytic Jacobian).
    model = _Model(pb)
    g = pb.n_groups
    x0 = np.zeros(model.n_par)
    x0[model.sl_c] = c0
    x0[model.sl_d] = s0
    x0[model.sl_l] = lw_best
    x0[model.i_phi0] = phi0
    lp = lmfit.Parameters()
    for i in range(pb.n_comp):
        lp.add(f"c{i}", value=x0[i], min=0.0)
    for j in range(g):
        lp.add(f"shift{j}", value=s0, min=-params.max_shift_hz, max=params.max_shift_hz)
    for j in range(g):
        lp.add(f"lor{j}", value=lw_best, min=0.0, max=params.max_lorentzian_hz)
    for j in range(g):
        lp.add(f"gau{j}", value=0.0, min=0.0, max=params.max_gaussian_hz**2)
    lp.add("phi0", value=phi0, min=phi0 - 2 * np.pi, max=phi0 + 2 * np.pi)
    max_tau = 1.0 / (4 * max(np.ptp(pb.f_hz), 1.0)) * 4  # at most ~2 pi of phase across the window
    lp.add("tau", value=0.0, min=-max_tau, max=max_tau, vary=pb.first_order)
    order = list(lp)

    def vec(p: lmfit.Parameters) -> np.ndarray:
        return np.array([p[k].value for k in order])

    free = [i for i, k in enumerate(order) if lp[k].vary]

    def resid(p):
        return model.residual_vector(vec(p))

    def jac(p):
        return model.jacobian(vec(p))[:, free]

    mini = _Minimizer(resid, lp)
    out = mini.minimize(method="least_squares", jac=jac, x_scale="jac", max_nfev=params.max_nfev,
                        ftol=1e-10, xtol=1e-10, gtol=1e-10)
    x = vec(out.params)

    # 4: uncertainties and outputs.
    r = model.residual_vector(x)
    jfull = model.jacobian(x)[:, free]
    n_data = 2 * pb.y.size
    dof = max(n_data - len(free) - (0 if pb.q is None else pb.q.shape[1]), 1)
    rss = float(r @ r)
    sigma2 = rss / dof
    cov_all = np.linalg.pinv(jfull.T @ jfull) * sigma2
    comp_fid, group_fid, phase, model_spec = model._evaluate(x)
    stacked_res = _stack(pb.y - model_spec)
    if pb.q is not None:
        coef = pb.baseline_coefficients(stacked_res)
        base_stacked = (pb.q[:n_data] @ coef)
        baseline = base_stacked[: pb.y.size] + 1j * base_stacked[pb.y.size:]
    else:
        baseline = np.zeros_like(pb.y)
    derot = np.conj(phase)
    data_w = pb.y * derot * pb.scale
    fit_w = (model_spec + baseline) * derot * pb.scale
    base_w = baseline * derot * pb.scale
    resid_w = data_w - fit_w

    ppm = ppm_axis(fid.size, dwell_time, central_frequency, basis.ppm_reference)
    ppm_win = basis.ppm_reference + pb.f_hz / central_frequency

    units = pb.scale / pb.norms  # normalised concentration -> basis units
    conc = x[model.sl_c] * units
    k = pb.n_comp
    cov_c = cov_all[:k, :k] * np.outer(units, units)

    if params.noise_ppm is not None:
        noise_sd = _noise_sd(fid, ppm, params.noise_ppm)
    else:
        noise_sd = float(np.sqrt(rss / dof)) * pb.scale
    if params.noise_ppm is not None:
        # CRLBs follow the chosen noise estimate.
        cov_c = cov_c * (noise_sd / pb.scale) ** 2 / sigma2

    # SNR as the consensus reports it (MRSinMRS, Lin et al. 2021; Kreis et al. 2020): the height of the fitted NAA
    # singlet alone, without the NAAG, macromolecules and baseline beneath it; with no NAA in the basis, the
    # largest height of the fitted metabolite spectrum in the window
    canon = [canonical_name(n) for n in basis.names]
    if "NAA" in canon:
        i_naa = canon.index("NAA")
        c_naa = x[model.sl_c][i_naa]
        signal_spec = pb._fft_window(c_naa * comp_fid[i_naa][None, :]).sum(axis=0) * pb.scale
    else:
        signal_spec = model_spec * derot * pb.scale
    lo, hi = params.snr_peak_ppm
    in_peak = (ppm_win >= lo) & (ppm_win <= hi)
    signal = float(signal_spec.real[in_peak].max()) if in_peak.any() else float("nan")
    snr = signal / noise_sd if noise_sd > 0 else float("inf")
    fwhm_hz = _singlet_fwhm(pb, x, model, basis.names, dwell_time, central_frequency, basis.ppm_reference)

    gnames, _ = _groups(basis.names, params)
    return FitResult(
        names=basis.names,
        concentrations=conc,
        covariance=cov_c,
        sums=basis.sums(),
        ppm=ppm_win,
        data=data_w,
        fit=fit_w,
        baseline=base_w,
        residual=resid_w,
        phase0_deg=float(np.degrees(x[model.i_phi0]) % 360),
        phase1_deg_per_ppm=float(360 * x[model.i_tau] * central_frequency),
        group_names=gnames,
        shifts_hz=x[model.sl_d].copy(),
        lorentzian_hz=x[model.sl_l].copy(),
        gaussian_hz=np.sqrt(x[model.sl_e]),
        noise_sd=noise_sd,
        snr=snr,
        fwhm_hz=fwhm_hz,
        fwhm_ppm=fwhm_hz / central_frequency,
        conjugated=bool(conjugate),
        success=bool(out.success) if out.success is not None else True,
        message=str(getattr(out, "message", "")),
        n_evaluations=int(out.nfev),
        seconds=time.perf_counter() - t0,
        central_frequency=central_frequency,
        extras={"reduced_chi2_normalised": sigma2, "degrees_of_freedom": dof, "water_lines": int(poles.size),
                "lipids": bool(lipids),
                # the model decisions of this fit, so a joint fit of several spectra can make the same ones
                "model_basis": basis, "water_poles": poles},
    )


def _noise_sd(fid: np.ndarray, ppm: np.ndarray, window: tuple[float, float]) -> float:
    """SD of the real spectrum in a signal-free window after removing a straight line (baseline drift)."""
    spec = np.fft.fftshift(np.fft.fft(fid))
    sel = (ppm >= window[0]) & (ppm <= window[1])
    if sel.sum() < 8:
        raise BadDataError(f"noise window {window} ppm holds fewer than 8 points", fix="widen FitParams.noise_ppm")
    xs, ys = ppm[sel], spec.real[sel]
    trend = np.polyval(np.polyfit(xs, ys, 1), xs)
    return float(np.std(ys - trend, ddof=2))


def _singlet_fwhm(pb: _Problem, x: np.ndarray, model: _Model, names: tuple[str, ...], dwell_time: float,
                  central_frequency: float, ppm_reference: float) -> float:
    """FWHM (Hz) of the fitted NAA 2.01 ppm singlet (else the creatine 3.03 ppm one), on an 8x zero-filled grid."""
    canon = [canonical_name(n) for n in names]
    for name, centre in (("NAA", 2.01), ("Cr", 3.03), ("PCr", 3.03)):
        if name in canon:
            i = canon.index(name)
            break
    else:
        return float("nan")
    comp_fid = model._evaluate(x)[0][i]
    n = comp_fid.size * 8
    # The component before the fitted zero- and first-order phases is the absorption line itself (the basis is in
    # phase); applying the first-order phase again would mix in dispersion and distort the width.
    spec = np.fft.fftshift(np.fft.fft(comp_fid, n=n)).real
    f = np.fft.fftshift(np.fft.fftfreq(n, dwell_time))
    ppm = ppm_reference + f / central_frequency
    sel = np.flatnonzero(np.abs(ppm - centre) < 0.15)
    seg = spec[sel]
    top = int(np.argmax(seg))
    half = seg[top] / 2
    if half <= 0:
        return float("nan")
    below = np.flatnonzero(seg <= half)
    left_side, right_side = below[below < top], below[below > top]
    if left_side.size == 0 or right_side.size == 0:
        return float("nan")
    left, right = int(left_side[-1]), int(right_side[0])
    fl = np.interp(half, [seg[left], seg[left + 1]], [f[sel][left], f[sel][left + 1]])
    fr = np.interp(half, [seg[right], seg[right - 1]], [f[sel][right], f[sel][right - 1]])
    return float(fr - fl)
