"""Our fit against LCModel 6.3 on the same simulated spectra, with truth known from the planted concentrations.

Spectra are made from LCModel's own basis ``3t.basis`` (3T PRESS, TE 30 ms) with typical brain concentrations,
LCModel's macromolecule and lipid components (amplitudes near its ratio priors), residual water of 1-100 x the NAA
peak height, Lorentzian + Gaussian broadening, a shift, a phase and noise. Both tools fit each spectrum with that
basis (LCModel adds its own MM/lipid components by default; we add ours). Errors are of ratios (to tCr; tCr to
tNAA), so no unit convention between the tools enters. 20 spectra here (CI); the benchmark runs more.
"""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.spectroscopy.basis import calibrate_basis, canonical_name
from bids_ketamine.spectroscopy.basis_io import read_lcmodel_basis
from bids_ketamine.spectroscopy.fit import fit_spectrum
from bids_ketamine.spectroscopy.fit_params import FitParams
from bids_ketamine.spectroscopy.lcmodel_peer import run_lcmodel
from bids_ketamine.spectroscopy.peer_simulation import (TARGETS, lcmodel_ratio, make_peer_spectrum, our_ratio,
                                                        true_ratio)

pytestmark = pytest.mark.realdata

N_SPECTRA = 20
DWELL, CF, N = 5e-4, 127.786142, 1024


@pytest.fixture(scope="module")
def peer_setup(shared_data):
    folder = shared_data / "lcmodel_test_lcm" / "code"
    basis = calibrate_basis(read_lcmodel_basis(folder / "basis" / "3t.basis"))
    return basis, folder / "basis" / "3t.basis", folder / "lcmodel" / "run_lcmodel.sh"


@pytest.fixture(scope="module")
def comparison(peer_setup, tmp_path_factory):
    basis, basis_file, runner = peer_setup
    rng = np.random.default_rng(17)
    errors = {"ours": {t: [] for t in TARGETS}, "lcmodel": {t: [] for t in TARGETS}}
    work = tmp_path_factory.mktemp("lcm")
    params = FitParams()  # the defaults: LCModel's ratio priors, as LCModel fits
    for _ in range(N_SPECTRA):
        spec = make_peer_spectrum(basis, rng, water_times_naa=10 ** rng.uniform(0, 2))
        ours = fit_spectrum(spec.fid, DWELL, CF, basis, params, echo_time=0.03)
        theirs = run_lcmodel(runner, spec.fid, dwell_time=DWELL, central_frequency=CF, basis_file=basis_file,
                             workdir=work)
        for t in TARGETS:
            truth = true_ratio(spec.concentrations, t)
            errors["ours"][t].append(abs(our_ratio(ours, t) - truth) / truth)
            errors["lcmodel"][t].append(abs(lcmodel_ratio(theirs, t) - truth) / truth)
    return {tool: {t: float(np.median(v)) for t, v in d.items()} for tool, d in errors.items()}


def test_our_median_error_is_no_worse_than_lcmodels(comparison):
    for t in TARGETS:
        # a 1 % (absolute) allowance: both tools reach about the noise level on the strong metabolites
        assert comparison["ours"][t] <= comparison["lcmodel"][t] + 0.01, (t, comparison)


def test_crlbs_track_the_empirical_spread(peer_setup):
    """20 noise realisations of one spectrum (with residual water, MM and lipids): median CRLB / SD in 1/1.5-1.5."""
    basis, _, _ = peer_setup
    rng = np.random.default_rng(3)
    spec = make_peer_spectrum(basis, rng, water_times_naa=10.0, snr=1e9)
    sd = spec.noise_sd_for_snr(30.0)
    names = ("tNAA", "tCr", "tCho", "Glu", "Glx")
    est = {n: [] for n in names}
    crlb = {n: [] for n in names}
    for _ in range(20):
        fid = spec.fid + sd * (rng.standard_normal(N) + 1j * rng.standard_normal(N))
        res = fit_spectrum(fid, DWELL, CF, basis, echo_time=0.03)
        for n in names:
            key = n if n in res.sums or n.startswith("t") or n == "Glx" else n
            est[n].append(res.concentration(key))
            crlb[n].append(res.crlb(key))
    for n in names:
        ratio = np.nanmedian(crlb[n]) / np.std(est[n], ddof=1)
        assert 1 / 1.5 <= ratio <= 1.5, (n, ratio)


def test_canonical_targets_exist_in_the_basis(peer_setup):
    basis, _, _ = peer_setup
    canon = {canonical_name(n) for n in basis.names}
    assert {"NAA", "Cr", "PCr", "GPC", "mI", "Glu", "Gln"} <= canon
