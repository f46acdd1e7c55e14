"""Linear-combination model fit of a single-voxel spectrum, with Cramer-Rao lower bounds and QC.

Model, in the frequency domain over ``FitParams.ppm_range`` (stacked real and imaginary parts):

    Y(f) = exp(i (phi0 + 2 pi f tau)) * FFT[ sum_m c_m b_m(t) exp((2 pi i d_g - pi l_g) t - k e_g t^2) ](f) + B(f)

with concentrations ``c_m >= 0``, per line-shape group ``g`` (metabolites, macromolecules, lipids) a shift ``d_g``
(Hz), an extra Lorentzian FWHM ``l_g`` (Hz) and an extra Gaussian FWHM ``sqrt(e_g)`` (Hz)
(``k = pi^2 / (4 ln 2)``), a zero-order phase ``phi0`` and a first-order phase written as a delay ``tau``, and a
smooth complex baseline ``B``.

How it is solved:
0. The data arrive in the NIfTI-MRS sign convention (decided once per acquisition by
   :mod:`bids_ketamine.spectroscopy.sign_convention`; the fit never decides it). Residual water is removed by
   HLSVD (:mod:`.water_removal`); the basis gets the macromolecule and lipid model of :mod:`.macromolecules` when it
   has none (:func:`prepare_basis`), with LCModel's ratio priors as extra residual rows.
1. The baseline is eliminated exactly by variable projection (it is linear and penalised: its projector is fixed).
2. Start: a grid over the common shift and the zero-order phase (and then a few broadenings) where, for each grid
   point, the concentrations are the non-negative least-squares solution (NNLS in Gram form, so a grid point costs
   microseconds).
3. Refinement: all concentrations and nonlinear parameters together by ``scipy.optimize.least_squares``
   (bounded trust-region reflective solver) on a packed parameter vector with an analytic Jacobian: each
   model evaluation is a handful of FFTs of the basis (one per line-shape group for the residual, one per component
   for the Jacobian), so no Python loop runs over points.
4. Baseline stiffness from the data (``baseline_smoothness="auto"``): at the refined nonlinear parameters, each
   candidate penalty weight gets its NNLS concentrations and an Akaike score ``N log(RSS / N) + 2 (ED + K)`` with
   the baseline's effective dimension ``ED`` (trace of its hat matrix); the best weight is refined once more.
5. CRLBs: ``sigma^2 (J^T J)^-1`` with the baseline-projected Jacobian ``J`` (prior rows included: the posterior
   covariance, :func:`penalised_covariance`) at the solution,
   ``sigma`` from the fit residual (or a signal-free window); sums such as Glx use the covariance between members.
6. QC (:func:`fit_quality`): optimiser not converged, nonlinear parameters at their bounds, tNAA/tCr CRLB, linewidth
   and SNR limits; every failure is a reason string in ``FitResult.qc_reasons``.

The pieces (:func:`prepare_basis`, :class:`Problem`, :class:`LinearCombinationModel`, :func:`remove_residual_water`)
are public so a multi-spectrum (dynamic) fit can share them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, nnls

from bids_ketamine.errors import BadDataError, UsageError
from bids_ketamine.spectroscopy.basis import (
    BasisSet,
    canonical_name,
    combine,
    is_macromolecule,
    measure_creatine,
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
from bids_ketamine.spectroscopy.macromolecules import RatioPrior, mm_lipid_basis, priors_for
from bids_ketamine.spectroscopy.water_removal import WaterRemoval, remove_residual_water

#: Converts a Gaussian FWHM^2 (Hz^2) into the time-domain decay rate of exp(-k e t^2).
GAUSS_K = np.pi**2 / (4 * np.log(2))

#: A fitted amplitude below this fraction of the largest one is reported as exactly 0 (with CRLB n/a).
ZERO_FRACTION = 1e-9

#: Fraction of a bound's range within which a nonlinear parameter counts as "at its bound" for QC.
AT_BOUND = 0.01



def component_weights(names: Sequence[str], sums: Mapping[str, Sequence[str]], name: str) -> np.ndarray:
    """0/1 weights over the fitted components that make up ``name``: a sum's members, or the one component whose
    name (or canonical name) it is. One rule for the single and the dynamic fit's results."""
    w = np.zeros(len(names))
    members = sums.get(name)
    if members is None:
        canon = canonical_name(name)
        hits = [i for i, n in enumerate(names) if n == name or canonical_name(n) == canon]
        if not hits:
            raise KeyError(f"{name!r} was not fitted (components: {', '.join(names)})")
        w[hits[0]] = 1
    else:
        for m in members:
            w[list(names).index(m)] = 1
    return w

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
    #: Fitted spectrum of each nuisance group (``macromolecules``, ``lipids``) over the window, phase corrected.
    group_spectra: dict = field(default_factory=dict)
    #: Display range (ppm, ascending) with the data before water removal and the removed water, phase corrected.
    display: dict = field(default_factory=dict)
    qc_pass: bool = True
    qc_reasons: tuple[str, ...] = ()
    extras: dict = field(default_factory=dict)

    def concentration(self, name: str) -> float:
        """Concentration of a component or of a sum (``Glx``), basis units."""
        return float(self._weights(name) @ self.concentrations)

    def crlb(self, name: str) -> float:
        """Cramer-Rao lower bound (standard deviation) of a component or sum, basis units; NaN for a component
        fitted at zero (its relative bound is undefined)."""
        w = self._weights(name)
        if self.concentration(name) <= 0:
            return float("nan")
        return float(np.sqrt(max(w @ self.covariance @ w, 0.0)))

    def crlb_percent(self, name: str) -> float:
        c = self.concentration(name)
        return float(100 * self.crlb(name) / c) if c > 0 else float("nan")

    def _weights(self, name: str) -> np.ndarray:
        return component_weights(self.names, self.sums, name)

    def table(self) -> pd.DataFrame:
        """One row per component and per sum: concentration, CRLB (SD) and CRLB % (NaN = n/a at zero)."""
        rows = []
        for name in list(self.names) + list(self.sums):
            c, sd = self.concentration(name), self.crlb(name)
            rows.append({"metabolite": name, "concentration": c, "crlb": sd,
                         "crlb_percent": 100 * sd / c if c > 0 else np.nan,
                         "is_sum": name in self.sums})
        return pd.DataFrame(rows)


@dataclass(frozen=True)
class PreparedBasis:
    """The basis a fit uses on the data's grid: selected components plus the macromolecule/lipid model."""

    basis: BasisSet
    #: (prior, numerator weights, denominator weights) over ``basis.names``.
    priors: list
    #: Where the macromolecules come from: "basis", "model" or "none".
    macromolecules: str
    lipids: bool


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
    if basis.n_metabolites == 0 or not basis.metabolite_names():
        raise UsageError("no basis component left to fit", fix="check FitParams.include/exclude")
    return basis


def prepare_basis(basis: BasisSet, n_points: int, dwell_time: float, central_frequency: float,
                  params: FitParams, *, echo_time: float | None = None, fid: np.ndarray | None = None
                  ) -> PreparedBasis:
    """Select components, resample to the data grid and add the macromolecule/lipid model where it applies.

    ``fid`` (NIfTI-MRS convention, water removed) is only needed for ``lipids="auto"`` with the basis's own MM.
    The model's components get the basis's own proton amplitude (:func:`measure_creatine`), so their amplitudes
    and ratio priors are on the metabolites' concentration scale.
    """
    basis = _select_components(basis, params)
    if not (np.isclose(basis.dwell_time, dwell_time, rtol=1e-4) and basis.n_points == n_points):
        basis = basis.resample_to(dwell_time, n_points)
    own_mm = basis.macromolecule_names()
    mode = params.macromolecules
    if mode == "auto":
        mode = "basis" if own_mm else "model"
    lipids = False
    if mode == "none":
        basis = basis.subset(basis.metabolite_names())
    elif mode == "model":
        unit = basis.metadata.get("ProtonUnit")
        if not unit:
            cal = measure_creatine(basis)
            unit = cal.proton_unit if cal is not None else 1.0
        basis = combine(basis.subset(basis.metabolite_names()),
                        mm_lipid_basis(n_points, dwell_time, central_frequency, ppm_reference=basis.ppm_reference,
                                       proton_unit=float(unit)))
        lipids = True
    else:
        lipids = params.lipids
        if lipids == "auto":
            lipids = fid is not None and lipid_peak_ratio(fid, dwell_time, central_frequency,
                                                         basis.ppm_reference) > params.lipid_threshold
        if lipids:
            unit = basis.metadata.get("ProtonUnit") or getattr(measure_creatine(basis), "proton_unit", 1.0)
            lip_names = tuple(n for n in ("Lip09", "Lip13a", "Lip13b", "Lip20") if not basis.has(n))
            basis = combine(basis, mm_lipid_basis(n_points, dwell_time, central_frequency,
                                                  ppm_reference=basis.ppm_reference, proton_unit=float(unit),
                                                  names=lip_names))
    priors = []
    if params.ratio_priors != "none":
        priors = priors_for(basis.names, echo_time=echo_time)
        if params.ratio_priors == "macromolecules":
            priors = [p for p in priors if all(is_macromolecule(n) for n in p[0].numerator + p[0].denominator)]
    return PreparedBasis(basis=basis, priors=priors, macromolecules=mode, lipids=bool(lipids))


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


@dataclass
class Problem:
    """Precomputed pieces of one fit: normalised data and basis, axes, baseline projector, prior rows."""

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
    #: Prior rows on the normalised concentrations, (n_priors, K); zero rows until :meth:`set_priors`.
    prior_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    baseline_x: np.ndarray | None = None  # ppm of the window (for rebuilding the baseline)
    group_names: tuple[str, ...] = ()
    central_frequency: float = 0.0
    #: Prior SD (Hz) of each component's own shift; 0 = no own shift (macromolecules, lipids, or switched off).
    shift_sd_hz: np.ndarray | None = None
    #: Noise SD of the normalised data used to weight prior rows (set by :meth:`set_priors`).
    prior_sigma: float = 0.0
    #: Groups after the first carry group 0's line shape plus their own offsets (the macromolecule model); False
    #: for a basis's own (measured) macromolecules, which keep a line shape of their own.
    tie_groups: bool = True

    @property
    def n_comp(self) -> int:
        return self.fids.shape[0]

    @property
    def units(self) -> np.ndarray:
        """Normalised concentration -> basis units."""
        return self.scale / self.norms

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

    def baseline_dimension(self) -> float:
        """Effective number of baseline parameters: trace of its hat matrix on the data rows."""
        if self.q is None:
            return 0.0
        n2 = 2 * self.y.size
        return float(np.sum(self.q[:n2] ** 2))

    def set_priors(self, priors: list, c_start: np.ndarray, sigma: float) -> None:
        """Rows ``sigma (a - r b) / (s b0)`` of each ratio prior ``a / b = r +- s`` in normalised concentrations.

        ``b0`` is the denominator at the start values (the linearisation LCModel uses); a prior whose
        denominator starts at (nearly) zero is left out: it has nothing to constrain against, and its row would
        be so heavy that it swamps the Fisher information of everything else.
        """
        rows = []
        self.prior_sigma = float(sigma)
        u = self.units
        c0 = c_start * u
        floor = 1e-3 * float(np.max(c0)) if c0.size else 0.0
        for prior, num, den in priors:
            b0 = float(den @ c0)
            if not b0 > floor:
                continue
            rows.append(sigma * (num - prior.ratio * den) * u / (prior.sd * b0))
        self.prior_rows = np.array(rows) if rows else np.zeros((0, self.n_comp))


def _stack(z: np.ndarray) -> np.ndarray:
    return np.concatenate([z.real, z.imag], axis=0)


def _baseline_system(x: np.ndarray, params: FitParams, smoothness: float) -> np.ndarray:
    if params.baseline == "none":
        return np.zeros((2 * x.size, 0))
    if params.baseline == "bspline":
        design = bspline_design(x, params.baseline_knot_spacing_ppm)
        penalty = second_difference(design.shape[1])
        weight = smoothness * x.size
    else:
        design = legendre_design(x, params.baseline_order)
        penalty, weight = np.zeros((0, design.shape[1])), 0.0
    return complex_baseline_system(design, penalty, weight)


#: Baseline projectors already built, by (window ppm, baseline model, smoothness): the stiffness search and the
#: final refinement revisit the same weights, and spectra of one acquisition geometry share their window, so
#: each QR is done once per process. Bounded (each entry is ~0.3 MB for a 3T window); oldest dropped first.
_PROJECTOR_CACHE: dict[tuple, tuple[np.ndarray | None, int]] = {}
_PROJECTOR_CACHE_SIZE = 64


def _baseline_projector(x: np.ndarray, params: FitParams, smoothness: float) -> tuple[np.ndarray | None, int]:
    key = (np.asarray(x, float).tobytes(), params.baseline, float(params.baseline_knot_spacing_ppm),
           int(params.baseline_order), float(smoothness))
    hit = _PROJECTOR_CACHE.get(key)
    if hit is None:
        system = _baseline_system(x, params, smoothness)
        if system.shape[1] == 0:
            hit = (None, 2 * x.size)
        else:
            q = baseline_projector_basis(system)
            q.setflags(write=False)  # shared between problems
            hit = (q, system.shape[0])
        if len(_PROJECTOR_CACHE) >= _PROJECTOR_CACHE_SIZE:
            _PROJECTOR_CACHE.pop(next(iter(_PROJECTOR_CACHE)))
        _PROJECTOR_CACHE[key] = hit
    return hit


def set_baseline(pb: Problem, params: FitParams, smoothness: float) -> None:
    """(Re)build the baseline projector of a problem for one smoothness weight (cached per weight)."""
    pb.q, pb.n_aug = _baseline_projector(pb.baseline_x, params, smoothness)


def build_problem(fid: np.ndarray, dwell_time: float, central_frequency: float, basis: BasisSet,
                  params: FitParams, *, smoothness: float) -> Problem:
    """The fit problem of one FID (NIfTI-MRS convention, water removed) with a prepared basis."""
    n = fid.size
    ppm = ppm_axis(n, dwell_time, central_frequency, basis.ppm_reference)
    lo, hi = params.ppm_range
    win = np.flatnonzero((ppm >= lo) & (ppm <= hi))
    if win.size < 16:
        raise BadDataError(f"only {win.size} points fall in the fit window {lo}-{hi} ppm",
                           fix="widen FitParams.ppm_range or check the spectral width")
    raw_idx = np.fft.ifftshift(np.arange(n))[win]
    y = np.fft.fft(fid)[raw_idx]
    scale = float(np.abs(y).max())
    if not np.isfinite(scale) or scale == 0:
        raise BadDataError("the spectrum is zero or not finite in the fit window", fix="check the FID")
    spec = np.fft.fft(basis.fids, axis=1)[:, raw_idx]
    norms = np.linalg.norm(spec, axis=1)
    if np.any(norms == 0):
        empty = [basis.names[i] for i in np.flatnonzero(norms == 0)]
        raise BadDataError(f"basis components {empty} have no signal in {lo}-{hi} ppm",
                           fix="exclude them with FitParams.exclude")
    gnames, group_of = _groups(basis.names, params)
    f_hz = (ppm[win] - basis.ppm_reference) * central_frequency
    pb = Problem(y=y / scale, fids=basis.fids / norms[:, None], norms=norms, scale=scale,
                 t=np.arange(n) * dwell_time, raw_idx=raw_idx, f_hz=f_hz, group_of=group_of,
                 n_groups=len(gnames), q=None, n_aug=2 * win.size, first_order=params.first_order_phase,
                 prior_rows=np.zeros((0, basis.n_metabolites)), baseline_x=ppm[win], group_names=gnames,
                 central_frequency=central_frequency)
    set_baseline(pb, params, smoothness)
    pb.shift_sd_hz = component_shift_sd_hz(basis.names, params, central_frequency)
    return pb


def component_shift_sd_hz(names: tuple[str, ...], params: FitParams, central_frequency: float) -> np.ndarray:
    """Prior SD (Hz) of each metabolite's own shift about its group's (LCModel fits one per metabolite with a
    Gaussian prior: 0.004 ppm, 0.002 ppm for NAA and NAAG); 0 for macromolecules and lipids."""
    from bids_ketamine.spectroscopy.macromolecules import OWN_SHIFT_SD_PPM

    out = np.zeros(len(names))
    if params.metabolite_shift_sd_ppm <= 0:
        return out
    for i, n in enumerate(names):
        if not is_macromolecule(n):
            out[i] = OWN_SHIFT_SD_PPM.get(canonical_name(n), params.metabolite_shift_sd_ppm) * central_frequency
    return out


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


def _grid_start(pb: Problem, params: FitParams, lw_hz: float) -> tuple[float, float, float, np.ndarray]:
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


def _nnls_via_qr(a: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, float]:
    """``scipy.optimize.nnls(a, v)`` for a tall ``a``, solved on the K x K triangle of the QR of ``[a, v]``.

    Same minimiser (``|a c - v|^2 = |R c - Q^T v|^2 + |R[K, K]|^2``), at a fraction of the cost; the residual norm
    adds back the part of ``v`` that no column reaches."""
    k = a.shape[1]
    qr_r = np.linalg.qr(np.column_stack([a, v]), mode="r")
    c, rnorm_tri = nnls(qr_r[:k, :k], qr_r[:k, -1], maxiter=50 * k)
    return c, float(np.hypot(rnorm_tri, qr_r[k, k])) if qr_r.shape[0] > k else float(rnorm_tri)


def _linewidth_start(pb: Problem, params: FitParams, shift: float, phi: float):
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


class LinearCombinationModel:
    """Residual and analytic Jacobian of the full problem for a parameter vector (with a one-entry cache).

    Parameter vector: concentrations (normalised), then per group shift, Lorentzian, Gaussian^2, then phi0, tau.
    The residual is the baseline-projected data misfit followed by the prior rows.
    """

    def __init__(self, pb: Problem):
        self.pb = pb
        k, g = pb.n_comp, pb.n_groups
        self.sl_c = slice(0, k)
        self.sl_d = slice(k, k + g)
        self.sl_l = slice(k + g, k + 2 * g)
        self.sl_e = slice(k + 2 * g, k + 3 * g)
        self.i_phi0 = k + 3 * g
        self.i_tau = k + 3 * g + 1
        self.sl_s = slice(k + 3 * g + 2, 2 * k + 3 * g + 2)  # each component's own shift (Hz)
        self.n_par = 2 * k + 3 * g + 2
        sd = pb.shift_sd_hz if pb.shift_sd_hz is not None else np.zeros(k)
        self.own_shift = np.flatnonzero(sd > 0)
        self.membership = (np.arange(g)[:, None] == pb.group_of[None, :]).astype(float)  # (G, K)
        self._key = None

    def effective(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-group shift, Lorentzian and Gaussian^2: group 0's own, the others' relative to group 0's.

        Macromolecule and lipid groups carry the metabolites' line shape plus their own small extra shift and
        broadening (as LCModel convolves its simulated MM with the common line shape), so ``x`` holds, for groups
        after the first, offsets from group 0.
        """
        d, lor, gau = x[self.sl_d].copy(), x[self.sl_l].copy(), x[self.sl_e].copy()
        if not self.pb.tie_groups:
            return d, lor, gau
        d[1:] += d[0]
        lor[1:] += lor[0]
        gau[1:] += gau[0]
        return d, lor, gau

    def evaluate(self, x: np.ndarray):
        """(component FIDs after line shape, group FIDs, phase factor over the window, model spectrum)."""
        key = x.tobytes()
        if key == self._key:
            return self._cache
        pb = self.pb
        c = x[self.sl_c]
        mod = pb.modulation(*self.effective(x))
        comp_fid = pb.fids * mod[pb.group_of]  # (K, N)
        if self.own_shift.size:
            own = x[self.sl_s][self.own_shift]
            comp_fid[self.own_shift] *= np.exp(2j * np.pi * own[:, None] * pb.t[None, :])
        group_fid = self.membership @ (c[:, None] * comp_fid)
        phase = np.exp(1j * (x[self.i_phi0] + 2 * np.pi * pb.f_hz * x[self.i_tau]))
        model = phase * pb._fft_window(group_fid).sum(axis=0)
        self._key, self._cache = key, (comp_fid, group_fid, phase, model)
        return self._cache

    def residual_vector(self, x: np.ndarray) -> np.ndarray:
        model = self.evaluate(x)[3]
        data = self.pb.project(_stack(self.pb.y - model))
        return np.concatenate([data, *self._prior_residuals(x)])

    def _prior_residuals(self, x: np.ndarray) -> list[np.ndarray]:
        out = []
        pb = self.pb
        if pb.prior_rows.shape[0]:
            out.append(pb.prior_rows @ x[self.sl_c])
        if self.own_shift.size:
            out.append(pb.prior_sigma * x[self.sl_s][self.own_shift] / pb.shift_sd_hz[self.own_shift])
        return out

    def component_columns(self, x: np.ndarray) -> np.ndarray:
        """Unprojected stacked spectra of each component at ``x``'s line shape and phase, (2n, K)."""
        comp_fid, _, phase, _ = self.evaluate(x)
        return _stack(phase[:, None] * self.pb._fft_window(comp_fid).T)

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        pb = self.pb
        comp_fid, group_fid, phase, model = self.evaluate(x)
        t = pb.t
        n = pb.y.size
        cols = np.empty((n, self.n_par), complex)
        cols[:, self.sl_c] = (phase[:, None] * pb._fft_window(comp_fid).T)
        derivs = np.concatenate([2j * np.pi * t * group_fid, -np.pi * t * group_fid,
                                 -GAUSS_K * t * t * group_fid], axis=0)
        d = phase[:, None] * pb._fft_window(derivs).T
        g = pb.n_groups
        for sl, block in ((self.sl_d, d[:, :g]), (self.sl_l, d[:, g:2 * g]), (self.sl_e, d[:, 2 * g:])):
            cols[:, sl] = block
            if pb.tie_groups:
                cols[:, sl.start] = block.sum(axis=1)  # group 0's parameter moves every group (offsets above)
        cols[:, self.i_phi0] = 1j * model
        cols[:, self.i_tau] = 2j * np.pi * pb.f_hz * model
        cols[:, self.sl_s] = 0
        if self.own_shift.size:
            c = x[self.sl_c][self.own_shift]
            own = (2j * np.pi * t)[None, :] * comp_fid[self.own_shift] * c[:, None]
            cols[:, self.sl_s.start + self.own_shift] = phase[:, None] * pb._fft_window(own).T
        jac = -pb.project(_stack(cols))
        blocks = [jac]
        if pb.prior_rows.shape[0]:
            rows = np.zeros((pb.prior_rows.shape[0], self.n_par))
            rows[:, self.sl_c] = pb.prior_rows
            blocks.append(rows)
        if self.own_shift.size:
            rows = np.zeros((self.own_shift.size, self.n_par))
            rows[np.arange(self.own_shift.size), self.sl_s.start + self.own_shift] = (
                pb.prior_sigma / pb.shift_sd_hz[self.own_shift])
            blocks.append(rows)
        return np.vstack(blocks) if len(blocks) > 1 else jac


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


@dataclass
class RefineOutcome:
    """What the optimiser reports: converged or not, its message and the number of residual evaluations."""

    success: bool
    message: str
    nfev: int


def refine_bounds(model: LinearCombinationModel, params: FitParams, phi0: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower and upper bounds of every parameter, and which ones vary (tau only with a first-order phase, each
    component's own shift only where it has a prior)."""
    pb = model.pb
    g, k = pb.n_groups, pb.n_comp
    lo, hi = np.empty(model.n_par), np.empty(model.n_par)
    lo[model.sl_c], hi[model.sl_c] = 0.0, np.inf
    for j in range(g):
        lo[model.sl_d.start + j], hi[model.sl_d.start + j] = shift_bounds_hz(pb, params, j)
        lo[model.sl_l.start + j], hi[model.sl_l.start + j] = 0.0, params.max_lorentzian_hz
        lo[model.sl_e.start + j], hi[model.sl_e.start + j] = 0.0, gaussian_bound_hz(pb, params, j) ** 2
    lo[model.i_phi0], hi[model.i_phi0] = phi0 - 2 * np.pi, phi0 + 2 * np.pi
    max_tau = max_delay(pb)
    lo[model.i_tau], hi[model.i_tau] = -max_tau, max_tau
    sd = pb.shift_sd_hz if pb.shift_sd_hz is not None else np.zeros(k)
    top = np.where(sd > 0, 4 * sd, 1.0)
    lo[model.sl_s], hi[model.sl_s] = -top, top
    vary = np.ones(model.n_par, bool)
    vary[model.i_tau] = bool(pb.first_order)
    vary[model.sl_s] = sd > 0
    return lo, hi, vary


#: Convergence tolerances (ftol, xtol, gtol) of the refinement. 1e-8 instead of 1e-10 saves about a fifth of the
#: solver's iterations; concentrations and CRLBs move by < 1e-4 relative (real 3T spectrum and simulated spectra).
REFINE_TOLERANCE = 1e-8


def _refine(model: LinearCombinationModel, x0: np.ndarray, params: FitParams, phi0: float):
    """Joint refinement from ``x0`` by variable projection: the concentrations are linear, so for any nonlinear
    parameters (shifts, widths, phases, own shifts) their best non-negative values are an NNLS solution of the
    baseline-projected component columns stacked on the prior rows (:func:`_conditional_amplitudes`). scipy's
    bounded trust-region reflective solver (``least_squares(method="trf")``) then sees only the ~10-15 nonlinear
    parameters, with Kaufman's reduced Jacobian (the analytic Jacobian of the nonlinear parameters projected off
    the active concentration columns; its gradient is exact at the conditional optimum). This is the same optimum
    as the joint problem's (same residual, same bounds, ``c >= 0``), found with a ~60 x 12 instead of a ~60 x 60
    trust-region step; the CRLBs are computed from the full Jacobian at the solution, as before.

    Called directly on a packed vector (formerly through ``lmfit.Minimizer``, whose per-call Parameter bookkeeping
    cost about a tenth of the fit)."""
    lo, hi, vary = refine_bounds(model, params, phi0)
    x = np.clip(np.asarray(x0, float), lo, hi)
    x[model.sl_s] = np.where(vary[model.sl_s], x[model.sl_s], 0.0)
    free = np.flatnonzero(vary)
    k = model.pb.n_comp
    nonlin = free[free >= k]
    full = x.copy()
    cache: dict = {}

    def solve(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = z.tobytes()
        if cache.get("key") != key:
            full[nonlin] = z
            full[model.sl_c] = 0.0
            full[model.sl_c], r = _conditional_amplitudes(model, full)
            if model.own_shift.size:
                r = np.concatenate([r, model._prior_residuals(full)[-1]])
            cache.update(key=key, x=full.copy(), r=r)
        return cache["x"], cache["r"]

    def resid(z):
        return solve(z)[1]

    def jac(z):
        xz = solve(z)[0]
        j = model.jacobian(xz)
        active = np.flatnonzero(xz[model.sl_c] > 0)
        jn = j[:, nonlin]
        if active.size:
            q, _ = np.linalg.qr(j[:, active])
            jn = jn - q @ (q.T @ jn)
        return jn

    ret = least_squares(resid, x[nonlin], jac=jac, bounds=(lo[nonlin], hi[nonlin]), method="trf", x_scale="jac",
                        max_nfev=params.max_nfev, ftol=REFINE_TOLERANCE, xtol=REFINE_TOLERANCE,
                        gtol=REFINE_TOLERANCE)
    out = RefineOutcome(success=bool(ret.success), message=str(ret.message), nfev=int(ret.nfev))
    return solve(ret.x)[0].copy(), out, [int(i) for i in free]


def _conditional_amplitudes(model: LinearCombinationModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best non-negative normalised concentrations at ``x``'s nonlinear parameters: NNLS of the projected
    component columns (and the prior rows, which act on the concentrations only) against the projected data.
    Also returns the residual there (data rows, then prior rows: :meth:`LinearCombinationModel.residual_vector`
    without the own-shift rows), so the solver's residual costs no second model evaluation."""
    pb = model.pb
    a = pb.project(model.component_columns(x))
    v = pb.project(_stack(pb.y))
    if pb.prior_rows.shape[0]:
        a = np.vstack([a, -pb.prior_rows])
        v = np.concatenate([v, np.zeros(pb.prior_rows.shape[0])])
    # QR first: NNLS on the K x K triangle has the same solution as on the tall system, at a fraction of the cost
    c, _ = _nnls_via_qr(a, v)
    return c, v - a @ c


def gaussian_bound_hz(pb: Problem, params: FitParams, group: int) -> float:
    """Bound on a group's extra Gaussian FWHM: ``max_gaussian_hz`` for group 0, ``nuisance_max_gaussian_ppm``
    (relative to group 0) for the others: LCModel lets its simulated MM widen only a little past their published
    widths, so that they keep their shape and cannot turn into a second baseline."""
    if group == 0 or not pb.tie_groups:
        return params.max_gaussian_hz
    return min(params.max_gaussian_hz, params.nuisance_max_gaussian_ppm * pb.central_frequency)


def shift_bounds_hz(pb: Problem, params: FitParams, group: int) -> tuple[float, float]:
    """Bounds on group 0's shift (``max_shift_hz``) and on the other groups' shift relative to it
    (``nuisance_max_shift_ppm``, LCModel's position tolerance of its simulated MM and lipids)."""
    if group == 0 or not pb.tie_groups:
        return -params.max_shift_hz, params.max_shift_hz
    top = min(params.max_shift_hz, params.nuisance_max_shift_ppm * pb.central_frequency)
    return -top, top


def max_delay(pb: Problem) -> float:
    """Bound of the first-order phase delay: at most about 2 pi of phase across the window."""
    return 1.0 / max(np.ptp(pb.f_hz), 1.0)


def _start(pb: Problem, params: FitParams, model: LinearCombinationModel) -> tuple[np.ndarray, float]:
    lw0 = float(np.median(params.start_linewidths_hz))
    _, s0, phi0, _ = _grid_start(pb, params, lw0)
    _, lw_best, c0 = _linewidth_start(pb, params, s0, phi0)
    x0 = np.zeros(model.n_par)
    x0[model.sl_c] = c0
    if pb.tie_groups:
        x0[model.sl_d.start] = s0  # the other groups start at zero offset from group 0
        x0[model.sl_l.start] = lw_best
    else:
        x0[model.sl_d] = s0
        x0[model.sl_l] = lw_best
    x0[model.i_phi0] = phi0
    return x0, phi0


def penalised_covariance(jacobian: np.ndarray, sigma2: float) -> np.ndarray:
    """Covariance ``sigma^2 (J^T J)^+`` of the penalised least-squares fit: the inverse Fisher information of the
    objective the fit minimises, data rows and soft-constraint rows (ratio priors, shift priors) alike.

    ``jacobian`` is the full residual Jacobian over the free parameters, data rows followed by the prior rows; the
    prior rows are already weighted by the data noise SD (:meth:`Problem.set_priors`), so one ``sigma^2`` scales
    both. This is the posterior covariance, as LCModel's SDs include its prior information: where a prior dominates
    a component, it is wider than that component's spread over noise realisations (the prior also holds the estimate
    near the prior ratio, a bias the spread does not show). Static and dynamic fits both use it.
    """
    return np.linalg.pinv(jacobian.T @ jacobian) * sigma2


def _data_sigma(model: LinearCombinationModel, x: np.ndarray) -> float:
    """Noise SD per stacked point of the normalised data from the data rows of the residual."""
    n2 = 2 * model.pb.y.size
    r = model.residual_vector(x)[:n2]
    return float(np.sqrt(r @ r / max(n2 - model.pb.n_comp - model.pb.baseline_dimension(), 1)))


def residual_autocorrelation(model: LinearCombinationModel, x: np.ndarray) -> float:
    """Lag-1 autocorrelation of the data residual (real and imaginary parts along the frequency axis), >= 0."""
    n = model.pb.y.size
    r = model.residual_vector(x)[: 2 * n]
    rho = []
    for part in (r[:n], r[n:]):
        part = part - part.mean()
        den = float(part @ part)
        if den > 0:
            rho.append(float(part[1:] @ part[:-1]) / den)
    return float(np.clip(np.mean(rho), 0.0, 0.95)) if rho else 0.0


def choose_smoothness(model: LinearCombinationModel, x: np.ndarray, params: FitParams) -> tuple[float, dict]:
    """Baseline penalty weight chosen by the Akaike criterion at fixed nonlinear parameters ``x``.

    For each candidate weight the concentrations are re-solved (NNLS on the projected columns and prior rows) and
    ``N_eff log(RSS / N) + 2 (ED + K_active)`` is scored: RSS over the data rows and the baseline penalty, ``ED``
    the baseline's effective dimension (trace of its hat matrix), ``K_active`` the nonzero amplitudes. ``N_eff =
    N (1 - rho) / (1 + rho)`` counts the data points as independent only as far as the residual at ``x`` is
    (``rho`` its lag-1 autocorrelation): a real spectrum's misfit is smooth (line-shape and model error), and
    points that move together carry less evidence for a more flexible baseline than white noise would (with white
    noise, ``rho = 0`` and this is plain AIC). Returns the weight and the scores (for the sidecar).
    """
    pb = model.pb
    cols = model.component_columns(x)
    y = _stack(pb.y)
    n2 = y.size
    rho = residual_autocorrelation(model, x)
    n_eff = n2 * (1 - rho) / (1 + rho)
    scores = {}
    saved = (pb.q, pb.n_aug)
    for w in params.baseline_smoothness_grid:
        set_baseline(pb, params, w)
        a = pb.project(cols)
        v = pb.project(y)
        if pb.prior_rows.shape[0]:
            a = np.vstack([a, pb.prior_rows])
            v = np.concatenate([v, np.zeros(pb.prior_rows.shape[0])])
        c, rnorm = _nnls_via_qr(a, v)
        k_active = int(np.count_nonzero(c))
        scores[float(w)] = float(n_eff * np.log(max(rnorm**2, 1e-300) / n2)
                                 + 2 * (pb.baseline_dimension() + k_active))
    pb.q, pb.n_aug = saved
    best = min(scores, key=scores.get)
    return best, {"residual_autocorrelation": rho, "scores": scores}


def fit_quality(res: FitResult, params: FitParams, at_bounds: list[str]) -> tuple[bool, tuple[str, ...]]:
    """Why a fit cannot be trusted (empty = it can): convergence, bounds, reference CRLBs, linewidth, SNR."""
    reasons = []
    if not res.success:
        reasons.append(f"optimiser did not converge ({res.message.strip() or 'no message'})")
    reasons += [f"{b} at its bound" for b in at_bounds]
    for ref in ("tNAA", "tCr"):
        try:
            pct = res.crlb_percent(ref)
        except KeyError:
            continue
        if not (np.isfinite(pct) and pct <= params.qc_max_reference_crlb_percent):
            shown = "n/a" if not np.isfinite(pct) else f"{pct:.0f} %"
            reasons.append(f"{ref} CRLB {shown} > {params.qc_max_reference_crlb_percent:g} %")
    if not (np.isfinite(res.fwhm_ppm) and res.fwhm_ppm <= params.qc_max_fwhm_ppm):
        shown = "n/a" if not np.isfinite(res.fwhm_ppm) else f"{res.fwhm_ppm:.3f} ppm"
        reasons.append(f"linewidth {shown} > {params.qc_max_fwhm_ppm:g} ppm")
    if not (np.isfinite(res.snr) and res.snr >= params.qc_min_snr):
        reasons.append(f"SNR {res.snr:.1f} < {params.qc_min_snr:g}")
    return not reasons, tuple(reasons)


def _parameters_at_bounds(model: LinearCombinationModel, x: np.ndarray, params: FitParams,
                          gnames: tuple[str, ...]) -> list[str]:
    """Nonlinear parameters of the metabolite group (group 0) within AT_BOUND of a bound."""
    out = []
    if abs(x[model.sl_d][0]) >= (1 - AT_BOUND) * params.max_shift_hz:
        out.append(f"{gnames[0]} frequency shift ({x[model.sl_d][0]:+.1f} Hz)")
    if x[model.sl_l][0] >= (1 - AT_BOUND) * params.max_lorentzian_hz:
        out.append(f"{gnames[0]} Lorentzian width ({x[model.sl_l][0]:.1f} Hz)")
    if np.sqrt(x[model.sl_e][0]) >= (1 - AT_BOUND) * params.max_gaussian_hz:
        out.append(f"{gnames[0]} Gaussian width ({np.sqrt(x[model.sl_e][0]):.1f} Hz)")
    if model.pb.first_order and abs(x[model.i_tau]) >= (1 - AT_BOUND) * max_delay(model.pb):
        out.append("first-order phase")
    return out


def residual_water_ratio(fid: np.ndarray, dwell_time: float, central_frequency: float, params: FitParams,
                         ppm_reference: float = 4.65) -> float:
    """Largest spectral magnitude in the water band over the largest in the fit window (outside the band)."""
    spec = np.abs(np.fft.fftshift(np.fft.fft(fid)))
    ppm = ppm_axis(fid.size, dwell_time, central_frequency, ppm_reference)
    band = (ppm >= params.water_band_ppm[0]) & (ppm <= params.water_band_ppm[1])
    window = (ppm >= params.ppm_range[0]) & (ppm <= params.ppm_range[1]) & ~band
    if not band.any() or not window.any():
        return 0.0
    return float(spec[band].max() / max(spec[window].max(), 1e-300))


def water_band(fid: np.ndarray, dwell_time: float, central_frequency: float, params: FitParams,
               ppm_reference: float = 4.65) -> tuple[float, float]:
    """``water_band_ppm``, its lower edge moved to 0.15 ppm below the water peak when that peak sits lower:
    the largest magnitude between 3.95 ppm and the band's top, if it is more than twice every peak of the fit
    window below 3.95 ppm (so a metabolite line such as myo-inositol's 4.05 ppm is never taken for water)."""
    lo, hi = params.water_band_ppm
    spec = np.abs(np.fft.fftshift(np.fft.fft(fid)))
    ppm = ppm_axis(fid.size, dwell_time, central_frequency, ppm_reference)
    sel = (ppm >= 3.95) & (ppm <= hi)
    below = (ppm >= params.ppm_range[0]) & (ppm < 3.95)
    if not sel.any() or not below.any():
        return lo, hi
    if spec[sel].max() <= 2 * spec[below].max():
        return lo, hi
    peak = float(ppm[sel][np.argmax(spec[sel])])
    return min(lo, peak - 0.15), hi


def fit_spectrum(fid: np.ndarray, dwell_time: float, central_frequency: float, basis: BasisSet,
                 params: FitParams | None = None, *, conjugate: bool = False,
                 echo_time: float | None = None) -> FitResult:
    """Fit one averaged FID with a basis set; see the module docstring for the model.

    The data must be in the NIfTI-MRS sign convention; ``conjugate=True`` conjugates LCModel-convention data first
    (the caller decides, once per acquisition: :func:`bids_ketamine.spectroscopy.sign_convention.decide`). The basis
    is resampled to the data's dwell time and length when they differ. ``echo_time`` (s) drops the short-TE-only
    priors above 50 ms. ``FitResult.qc_pass`` / ``qc_reasons`` say whether the fit can be trusted.
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
    if conjugate:
        fid = np.conj(fid)
    original = fid
    removal: WaterRemoval | None = None
    if params.water_removal and residual_water_ratio(fid, dwell_time, central_frequency, params,
                                                     basis.ppm_reference) > params.water_removal_threshold:
        band = water_band(fid, dwell_time, central_frequency, params, basis.ppm_reference)
        removal = remove_residual_water(fid, dwell_time, central_frequency, band_ppm=band,
                                        ppm_reference=basis.ppm_reference, n_components=params.water_components)
        fid = removal.fid
    prepared = prepare_basis(basis, fid.size, dwell_time, central_frequency, params, echo_time=echo_time, fid=fid)
    basis = prepared.basis
    auto = params.baseline_smoothness == "auto"
    first_w = 10.0 if auto else float(params.baseline_smoothness)  # a middle start; step 4 then chooses
    pb = build_problem(fid, dwell_time, central_frequency, basis, params, smoothness=first_w)
    pb.tie_groups = prepared.macromolecules == "model"
    model = LinearCombinationModel(pb)

    # 1-2: variable-projection start; 3: refinement (priors enter once a noise level is known).
    x0, phi0 = _start(pb, params, model)
    sigma = _data_sigma(model, x0)
    pb.set_priors(prepared.priors, x0[model.sl_c], sigma)
    x, out, free = _refine(model, x0, params, phi0)
    smoothness, scores = first_w, {}
    if auto and params.baseline != "none":
        # 4: baseline stiffness from the data
        smoothness, scores = choose_smoothness(model, x, params)
    sigma_now = _data_sigma(model, x) if prepared.priors else sigma
    if smoothness != first_w or not 0.8 <= sigma_now / max(sigma, 1e-300) <= 1.25:
        # one more refinement with the chosen baseline, and priors weighted by the noise of the refined fit
        # (the start's misfit overstates it)
        set_baseline(pb, params, smoothness)
        model = LinearCombinationModel(pb)
        pb.set_priors(prepared.priors, x[model.sl_c], _data_sigma(model, x))
        x, out2, free = _refine(model, x, params, phi0)
        out2.nfev += out.nfev
        out = out2
    return _result(model, x, out, free, params, basis, prepared, removal, original, fid, dwell_time,
                   central_frequency, conjugate, smoothness, scores, t0)


def _result(model, x, out, free, params, basis, prepared, removal, original, fid, dwell_time, central_frequency,
            conjugate, smoothness, scores, t0) -> FitResult:
    pb = model.pb
    r = model.residual_vector(x)
    jfull = model.jacobian(x)[:, free]
    n_data = 2 * pb.y.size
    dof = max(n_data - len(free) - pb.baseline_dimension(), 1)
    rss = float(r[:n_data] @ r[:n_data])
    sigma2 = rss / dof
    cov_all = penalised_covariance(jfull, sigma2)
    comp_fid, group_fid, phase, model_spec = model.evaluate(x)
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

    units = pb.units
    conc = x[model.sl_c] * units
    k = pb.n_comp
    cov_c = cov_all[:k, :k] * np.outer(units, units)
    zero = conc <= ZERO_FRACTION * max(float(conc.max()), 1e-300)
    conc = np.where(zero, 0.0, conc)

    if params.noise_ppm is not None:
        noise_sd = _noise_sd(fid, ppm, params.noise_ppm)
        cov_c = cov_c * (noise_sd / pb.scale) ** 2 / sigma2
    else:
        noise_sd = float(np.sqrt(sigma2)) * pb.scale

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
    group_spectra = {}
    c = x[model.sl_c]
    for gi, gname in enumerate(gnames):
        if gname == "metabolites" or gi >= pb.n_groups:
            continue
        members = pb.group_of == gi
        spec = pb._fft_window((c[members][:, None] * comp_fid[members]).sum(axis=0))
        group_spectra[gname] = spec * pb.scale
    display = {}
    if removal is not None:
        full_ppm = ppm
        sel = (full_ppm >= params.ppm_range[0]) & (full_ppm <= max(params.water_band_ppm[1] + 0.3, 5.5))
        idx = np.fft.ifftshift(np.arange(fid.size))[sel]
        f_disp = (full_ppm[sel] - basis.ppm_reference) * central_frequency
        rot = np.exp(-1j * (x[model.i_phi0] + 2 * np.pi * f_disp * x[model.i_tau]))
        display = {"ppm": full_ppm[sel], "data_before_removal": np.fft.fft(original)[idx] * rot,
                   "removed_water": np.fft.fft(removal.removed)[idx] * rot}
    at_bounds = _parameters_at_bounds(model, x, params, gnames)
    res = FitResult(
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
        shifts_hz=model.effective(x)[0],
        lorentzian_hz=model.effective(x)[1],
        gaussian_hz=np.sqrt(model.effective(x)[2]),
        noise_sd=noise_sd,
        snr=snr,
        fwhm_hz=fwhm_hz,
        fwhm_ppm=fwhm_hz / central_frequency,
        conjugated=bool(conjugate),
        success=bool(out.success) if out.success is not None else True,
        message=str(getattr(out, "message", "")),
        n_evaluations=int(out.nfev),
        seconds=0.0,
        central_frequency=central_frequency,
        group_spectra=group_spectra,
        display=display,
        extras={"reduced_chi2_normalised": sigma2, "degrees_of_freedom": dof,
                "lipids": prepared.lipids, "macromolecules": prepared.macromolecules,
                "priors": [p.label for p, _, _ in prepared.priors],
                "baseline_smoothness": smoothness, "baseline_scores": scores,
                "baseline_effective_dimension": pb.baseline_dimension(),
                "water_removal": removal.summary() if removal is not None else None,
                # the model decisions of this fit, so a joint fit of several spectra can make the same ones
                "prepared": prepared, "own_shifts_hz": x[model.sl_s].copy()},
    )
    ok, reasons = fit_quality(res, params, at_bounds)
    from dataclasses import replace as _replace

    return _replace(res, qc_pass=ok, qc_reasons=reasons, seconds=time.perf_counter() - t0)


def _noise_sd(fid: np.ndarray, ppm: np.ndarray, window: tuple[float, float]) -> float:
    """SD of the real spectrum in a signal-free window after removing a straight line (baseline drift)."""
    spec = np.fft.fftshift(np.fft.fft(fid))
    sel = (ppm >= window[0]) & (ppm <= window[1])
    if sel.sum() < 8:
        raise BadDataError(f"noise window {window} ppm holds fewer than 8 points", fix="widen FitParams.noise_ppm")
    xs, ys = ppm[sel], spec.real[sel]
    trend = np.polyval(np.polyfit(xs, ys, 1), xs)
    return float(np.std(ys - trend, ddof=2))


def _singlet_fwhm(pb: Problem, x: np.ndarray, model: LinearCombinationModel, names: tuple[str, ...], dwell_time: float,
                  central_frequency: float, ppm_reference: float) -> float:
    """FWHM (Hz) of the fitted NAA 2.01 ppm singlet (else the creatine 3.03 ppm one), on an 8x zero-filled grid."""
    canon = [canonical_name(n) for n in names]
    for name, centre in (("NAA", 2.01), ("Cr", 3.03), ("PCr", 3.03)):
        if name in canon:
            i = canon.index(name)
            break
    else:
        return float("nan")
    comp_fid = model.evaluate(x)[0][i]
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
