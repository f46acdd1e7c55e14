"""Density-matrix basis simulation: peak positions, proton counts, agreement with the ISMRM challenge basis."""

from __future__ import annotations

import numpy as np
import pytest

from bids_ketamine.spectroscopy.basis import to_spectrum
from bids_ketamine.spectroscopy.simulate import (DEFAULT_METABOLITES, OPTIONAL_METABOLITES, SpinSystem, cache_dir, sequence_events,
                                                 simulate_basis, simulate_lines)

SF = 123.2


@pytest.fixture(scope="module")
def press30():
    return simulate_basis(spectrometer_frequency=SF, echo_time=0.030, sequence="PRESS", dwell_time=2.5e-4,
                          n_points=4096)


def _peaks(basis, name, lo, hi, broadening=1.0):
    fid = basis.fid(name) * np.exp(-np.pi * broadening * basis.time_axis())
    spec = to_spectrum(fid).real
    ppm = basis.ppm_axis()
    sel = (ppm > lo) & (ppm < hi)
    return ppm[sel][np.argmax(spec[sel])]


def test_default_basis_has_the_metabolites_and_no_macromolecules(press30):
    """Macromolecules and lipids are the fit's model (one MM model, with LCModel's soft constraints)."""
    assert len(DEFAULT_METABOLITES) >= 17
    assert set(DEFAULT_METABOLITES) == set(press30.names)
    assert press30.macromolecule_names() == ()


def test_singlets_at_published_shifts(press30):
    assert _peaks(press30, "NAA", 1.8, 2.2) == pytest.approx(2.008, abs=0.01)
    assert _peaks(press30, "Cr", 2.8, 3.2) == pytest.approx(3.027, abs=0.01)
    assert _peaks(press30, "Cr", 3.7, 4.1) == pytest.approx(3.913, abs=0.01)
    assert _peaks(press30, "GPC", 3.1, 3.3) == pytest.approx(3.212, abs=0.01)


def test_singlet_amplitude_is_its_proton_count(press30):
    # Cr: 3 (CH3) + 2 (CH2) protons, uncoupled, refocused at the echo: amplitude 5 at t = 0
    assert press30.fid("Cr")[0] == pytest.approx(5.0, abs=1e-6)
    assert press30.fid("sI")[0] == pytest.approx(6.0, abs=1e-6)


def test_weak_coupled_doublet_splits_by_j():
    # an AX system far from strong coupling: the A line is a doublet split by J
    system = SpinSystem(np.array([1.3, 4.1]), np.array([1.0, 1.0]), ((0, 1, 7.0),))
    freqs, amps = simulate_lines(system, SF, [("pulse", np.pi / 2, 0.0, -1)])
    a = np.sort(freqs[np.abs(freqs - (1.3 - 4.65) * SF) < 20])
    assert a.size == 2 and a[1] - a[0] == pytest.approx(7.0, abs=0.05)
    assert abs(np.sum(amps)) == pytest.approx(2 * 0.5, rel=1e-6)  # two protons, 1/2 each right after the 90


def test_sequences_refocus_chemical_shift():
    # an uncoupled spin off resonance gives the same (refocused) amplitude for PRESS, STEAM and sLASER
    system = SpinSystem(np.array([2.0]), np.array([1.0]), ())
    amps = {}
    for seq in ("PRESS", "STEAM", "sLASER"):
        _, a = simulate_lines(system, SF, sequence_events(seq, 0.03, 0.01))
        amps[seq] = complex(a.sum())
    assert abs(amps["PRESS"]) == pytest.approx(0.5, rel=1e-9)
    assert abs(amps["sLASER"]) == pytest.approx(0.5, rel=1e-9)
    assert abs(amps["STEAM"]) == pytest.approx(0.25, rel=1e-9)  # the stimulated echo carries half the signal


def test_agrees_with_ismrm_challenge_basis(shared_data):
    """Same sequence, field and TE as the ISMRM 2016 challenge (PRESS, 123.2 MHz, TE 30 ms, ideal pulses)."""
    from bids_ketamine.spectroscopy.basis_io import read_fid_folder

    challenge = read_fid_folder(shared_data / "ismrm2016_mrs" / "code" / "basis", dwell_time=2.5e-4,
                                central_frequency=SF)
    ours = simulate_basis(spectrometer_frequency=SF, echo_time=0.030, sequence="PRESS", dwell_time=2.5e-4,
                          n_points=challenge.n_points, metabolites=DEFAULT_METABOLITES + OPTIONAL_METABOLITES)
    t = ours.time_axis()
    ppm = ours.ppm_axis()
    win = (ppm > 0.2) & (ppm < 4.2)
    lb = np.exp(-np.pi * 4.0 * t)
    checked = 0
    for name in ("NAA", "NAAG", "Cr", "PCr", "GPC", "PCh", "mI", "sI", "Glu", "Gln", "GABA", "GSH", "Lac", "Asp",
                 "Tau", "Glc", "PE", "Gly", "Asc", "Ala"):
        a = to_spectrum(ours.fid(name) * lb)[win]
        c = to_spectrum(challenge.fid(name) * lb)[win]
        corr = abs(np.vdot(a, c)) / (np.linalg.norm(a) * np.linalg.norm(c))
        assert corr >= 0.9, f"{name}: correlation {corr:.3f} with the challenge basis"
        checked += 1
    assert checked == 20


def test_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_KETAMINE_CACHE", str(tmp_path))
    a = simulate_basis(spectrometer_frequency=SF, echo_time=0.02, n_points=512, metabolites=("NAA", "Cr"))
    assert list(cache_dir().glob("basis_*.npz"))
    b = simulate_basis(spectrometer_frequency=SF, echo_time=0.02, n_points=512, metabolites=("NAA", "Cr"))
    assert b.metadata["FromCache"] and not a.metadata["FromCache"]
    np.testing.assert_array_equal(a.fids, b.fids)


def test_unwritable_cache_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"  # a folder cannot be created below a file, even by root
    blocker.write_text("")
    monkeypatch.setenv("BIDS_KETAMINE_CACHE", str(blocker / "cache"))
    monkeypatch.setenv("HOME", str(blocker))
    folder = cache_dir()
    assert folder.is_dir() and not folder.is_relative_to(blocker)


@pytest.mark.realdata
def test_press_first_echo_time_matches_lcmodel_basis(shared_data):
    """LCModel's 3t.basis of lcmodel_test_lcm (spant, ideal PRESS, TE1/TE2 = 10/20 ms): our Glu and Gln simulated
    with te1 = 10 ms match its spectra far better than with the symmetric split (issue 17)."""
    from bids_ketamine.spectroscopy.basis import calibrate_basis
    from bids_ketamine.spectroscopy.basis_io import read_lcmodel_basis

    lcm = calibrate_basis(read_lcmodel_basis(shared_data / "lcmodel_test_lcm" / "code" / "basis" / "3t.basis"))
    kw = dict(spectrometer_frequency=lcm.central_frequency, echo_time=0.030, dwell_time=lcm.dwell_time,
              n_points=lcm.n_points, metabolites=("Glu", "Gln"), use_cache=False,
              intrinsic_linewidths=False)
    t, ppm = lcm.time_axis(), lcm.ppm_axis()
    win = (ppm > 0.2) & (ppm < 4.0)
    lb = np.exp(-np.pi * 2.0 * t)  # spant's 2 Hz line width

    def corr(basis, name):
        a, c = to_spectrum(basis.fid(name) * lb)[win], to_spectrum(lcm.fid(name))[win]
        return abs(np.vdot(a, c)) / (np.linalg.norm(a) * np.linalg.norm(c))

    symmetric, asymmetric = simulate_basis(**kw, te1=0.015), simulate_basis(**kw, te1=0.010)
    for name in ("Glu", "Gln"):
        assert corr(asymmetric, name) > 0.99 > corr(symmetric, name) + 0.02, name
    # the default split (min(11 ms, TE/2)) is the asymmetric one of real PRESS sequences, not TE/2
    default = simulate_basis(**{k: v for k, v in kw.items()})
    assert default.metadata["PressTE1"] == pytest.approx(0.011)
    for name in ("Glu", "Gln"):
        assert corr(default, name) > corr(symmetric, name) + 0.02, name


def test_intrinsic_linewidth_is_one_over_pi_t2(press30):
    """Each metabolite decays with its T2 from quantify's relaxation table: the NAA singlet's FWHM is 1/(pi T2)
    and its area (amplitude at t = 0) stays its proton count."""
    from bids_ketamine.spectroscopy.quantify import RELAXATION_3T

    t2 = RELAXATION_3T.metabolite("NAA")[1]
    fid = press30.fid("NAA")
    t = press30.time_axis()
    assert press30.metadata["IntrinsicLinewidthHz"]["NAA"] == pytest.approx(1 / (np.pi * t2), rel=1e-3)
    plain = simulate_basis(spectrometer_frequency=SF, echo_time=0.030, sequence="PRESS", dwell_time=2.5e-4,
                           n_points=4096, metabolites=("NAA",), intrinsic_linewidths=False)
    assert np.allclose(fid, plain.fid("NAA") * np.exp(-t / t2), atol=1e-9)


def test_press_first_echo_time_is_decided_in_one_place():
    from bids_ketamine.spectroscopy.simulate import press_first_echo_time

    assert press_first_echo_time(0.030) == pytest.approx(0.011)
    assert press_first_echo_time(0.020) == pytest.approx(0.010)  # never longer than TE/2
    assert press_first_echo_time(0.144) == pytest.approx(0.011)
    assert press_first_echo_time(0.030, 0.012) == pytest.approx(0.012)
    with pytest.raises(ValueError, match="first echo time"):
        press_first_echo_time(0.030, 0.030)
