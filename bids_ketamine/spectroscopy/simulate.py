"""Density-matrix simulation of a brain basis set for PRESS, STEAM and semi-LASER with ideal pulses.

Why simulate: users rarely have a basis set for their exact field strength, echo time and sequence, and using the
wrong one biases every coupled metabolite (Glu, Gln, GABA, mI). Spin systems (chemical shifts, J couplings) are
package data (``bids_ketamine/data/spin_systems.json``, Govindaraju et al. 2000 with the 2015 corrigendum).

How it stays fast: each spin system is small (at most 7 spins, a 128 x 128 Hilbert space); the full (strong
coupling) Hamiltonian is diagonalised once, free evolution is a phase in its eigenbasis, ideal pulses are Kronecker
products of 2 x 2 rotations, and the acquired signal is a list of lines (frequency, complex amplitude) read off the
final density matrix in the eigenbasis, evaluated on the time grid in one matrix product. Crusher gradients are
modelled by keeping only the coherence order of the selected echo pathway after each pulse. Results are cached on
disk (``BIDS_KETAMINE_CACHE`` or ``~/.cache/bids_ketamine``, else a temporary folder).

Convention (NIfTI-MRS): a spin at chemical shift d (ppm) rotates at ``+(d - 4.65) x SF`` Hz; the FID is scaled so
that one proton of an uncoupled singlet has amplitude 1 at t = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from bids_ketamine.spectroscopy.basis import WATER_PPM, BasisSet

Sequence = Literal["PRESS", "STEAM", "sLASER"]
#: Version of the simulation code; part of the cache key so a change never serves stale spectra.
SIMULATION_VERSION = "3"
GAMMA_1H_MHZ_PER_T = 42.577478
#: The default metabolite set: the 17 of LCModel's recommended brain basis sets (Ala, Asp, Cr, PCr, GABA, Glc,
#: Gln, Glu, GPC, PCh, GSH, Ins, Lac, NAA, NAAG, Scyllo, Tau; Provencher's basis-set README), so the default fit
#: has the components LCModel's default fit has.
DEFAULT_METABOLITES = ("NAA", "NAAG", "Cr", "PCr", "GPC", "PCh", "mI", "sI", "Glu", "Gln", "GABA", "GSH", "Lac",
                       "Asp", "Tau", "Ala", "Glc")
#: Further metabolites with spin systems in the package, simulated on request (``spectroscopy.basis.metabolites``).
#: Not in the default: LCModel ships them only in its "all" basis sets, to be omitted unless expected in the
#: spectrum, and LCModel has no soft constraint for them; with them in the fit, PE (0.63 x tCr), Gly and Asc took
#: choline and myo-inositol signal on lcmodel_test_lcm (tCho -20 %, mI -20 % of LCModel's).
OPTIONAL_METABOLITES = ("PE", "Gly", "Asc")
#: PRESS first echo time (s) when neither the config nor the sidecar gives one: real PRESS sequences are
#: asymmetric with a short first echo (ISMRM 2016 challenge: TE1/TE2 = 11/19 ms; spant's default, with which
#: LCModel's ``3t.basis`` of lcmodel_test_lcm was made, 10/20 ms), and at TE 30 ms the split changes the
#: Glu/Gln/mI multiplets. NIfTI-MRS defines no sidecar key for it.
DEFAULT_PRESS_TE1 = 0.011


def press_first_echo_time(echo_time: float, te1: float | None = None) -> float:
    """The PRESS first echo time TE1 (s) a simulation uses: ``te1`` when given, else min(11 ms, TE/2).

    The one place this is decided: the CLI's basis (``spectroscopy.basis.press_te1``), the synthetic study and
    the benchmarks all simulate through :func:`simulate_basis`, which calls this."""
    if te1 is None:
        return min(DEFAULT_PRESS_TE1, echo_time / 2)
    if not 0 < te1 < echo_time:
        raise ValueError(f"PRESS first echo time {te1} s must lie between 0 and the echo time {echo_time} s")
    return float(te1)


@lru_cache(maxsize=1)
def load_spin_systems() -> dict:
    """The packaged spin-system table (``bids_ketamine/data/spin_systems.json``)."""
    text = resources.files("bids_ketamine").joinpath("data", "spin_systems.json").read_text(encoding="utf-8")
    return json.loads(text)


# ------------------------------------------------------------------------------------------------ spin operators
def _single_ops() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ix = np.array([[0, 0.5], [0.5, 0]], complex)
    iy = np.array([[0, -0.5j], [0.5j, 0]], complex)
    iz = np.array([[0.5, 0], [0, -0.5]], complex)
    return ix, iy, iz


def _embed(op: np.ndarray, k: int, n: int) -> np.ndarray:
    """Operator ``op`` acting on spin k of n (identity elsewhere), in the product (Zeeman) basis."""
    out = np.ones((1, 1), complex)
    for i in range(n):
        out = np.kron(out, op if i == k else np.eye(2))
    return out


@dataclass(frozen=True)
class SpinSystem:
    """Chemical shifts (ppm), proton weights and couplings (Hz) of one independent spin system."""

    shifts: np.ndarray
    weights: np.ndarray
    couplings: tuple[tuple[int, int, float], ...]
    scale: float = 1.0

    @property
    def n_spins(self) -> int:
        return int(len(self.shifts))


def spin_systems_of(name: str) -> list[SpinSystem]:
    table = load_spin_systems()["metabolites"]
    if name not in table:
        raise KeyError(f"no spin system for {name!r}; known: {', '.join(sorted(table))}")
    out = []
    for sysd in table[name]["systems"]:
        spins = np.asarray(sysd["spins"], float)
        out.append(SpinSystem(spins[:, 0], spins[:, 1], tuple((int(i), int(j), float(J))
                                                             for i, j, J in sysd["couplings"]),
                              float(sysd.get("scale", 1.0))))
    return out


def hamiltonian(system: SpinSystem, spectrometer_frequency: float) -> np.ndarray:
    """Full (strong-coupling) Hamiltonian in rad/s, rotating frame at 4.65 ppm, NIfTI-MRS sign convention."""
    n = system.n_spins
    ops = [[_embed(o, k, n) for o in _single_ops()] for k in range(n)]
    h = np.zeros((2**n, 2**n), complex)
    for k in range(n):
        h += 2 * np.pi * (system.shifts[k] - WATER_PPM) * spectrometer_frequency * ops[k][2]
    for i, j, coupling in system.couplings:
        h += 2 * np.pi * coupling * sum(ops[i][a] @ ops[j][a] for a in range(3))
    return h


def _rotation(n: int, angle: float, phase: float) -> np.ndarray:
    """Ideal hard pulse on all spins: rotation by ``angle`` about the transverse axis at ``phase`` (rad)."""
    ix, iy, _ = _single_ops()
    axis = np.cos(phase) * ix + np.sin(phase) * iy
    # exp(-i angle axis) for spin 1/2: cos(a/2) I - 2i sin(a/2) axis
    r1 = np.cos(angle / 2) * np.eye(2) - 2j * np.sin(angle / 2) * axis
    out = np.ones((1, 1), complex)
    for _ in range(n):
        out = np.kron(out, r1)
    return out


def _coherence_order(n: int) -> np.ndarray:
    m = np.array([sum(0.5 - b for b in ((s >> (n - 1 - k)) & 1 for k in range(n))) for s in range(2**n)])
    return (m[:, None] - m[None, :]).round().astype(int)


def sequence_events(sequence: str, echo_time: float, mixing_time: float | None = None,
                    te1: float | None = None) -> list[tuple]:
    """Timeline of ideal pulses ``('pulse', angle, phase, kept coherence order)`` and delays ``('delay', s)``.

    PRESS: 90 - TE1/2 - 180 - (TE1+TE2)/2 - 180 - TE2/2 (TE1 = TE2 = TE/2 unless ``te1`` is given).
    STEAM: 90 - TE/2 - 90 - TM - 90 - TE/2; the stimulated echo is the pathway +1 -> 0 -> -1.
    sLASER: 90 then four 180s, spacing TE/8, TE/4, TE/4, TE/4, TE/8 (a CPMG-like train; ideal refocusing).
    """
    seq = sequence.upper().replace("-", "").replace("SEMILASER", "SLASER")
    p90, p180 = np.pi / 2, np.pi
    if seq == "PRESS":
        t1 = echo_time / 2 if te1 is None else te1
        t2 = echo_time - t1
        return [("pulse", p90, 0.0, -1), ("delay", t1 / 2), ("pulse", p180, np.pi / 2, +1),
                ("delay", (t1 + t2) / 2), ("pulse", p180, np.pi / 2, -1), ("delay", t2 / 2)]
    if seq == "STEAM":
        tm = 0.0 if mixing_time is None else mixing_time
        return [("pulse", p90, 0.0, +1), ("delay", echo_time / 2), ("pulse", p90, 0.0, 0), ("delay", tm),
                ("pulse", p90, 0.0, -1), ("delay", echo_time / 2)]
    if seq == "SLASER":
        q = echo_time / 8
        ev: list[tuple] = [("pulse", p90, 0.0, -1), ("delay", q)]
        order = -1
        for k in range(4):
            order = -order
            ev += [("pulse", p180, np.pi / 2, order), ("delay", 2 * q if k < 3 else q)]
        return ev
    raise ValueError(f"unknown sequence {sequence!r}; use PRESS, STEAM or sLASER")


def simulate_lines(system: SpinSystem, spectrometer_frequency: float, events: list[tuple]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Frequencies (Hz) and complex amplitudes of the lines acquired after the sequence ``events``."""
    n = system.n_spins
    h = hamiltonian(system, spectrometer_frequency)
    energies, vecs = np.linalg.eigh(h)
    ops = [[_embed(o, k, n) for o in _single_ops()] for k in range(n)]
    rho = sum(w * ops[k][2] for k, w in enumerate(system.weights))
    fplus = sum(ops[k][0] + 1j * ops[k][1] for k in range(n))  # weights enter once, via the initial state
    order = _coherence_order(n)
    for ev in events:
        if ev[0] == "pulse":
            _, angle, phase, keep = ev
            r = _rotation(n, angle, phase)
            rho = r @ rho @ r.conj().T
            rho = np.where(order == keep, rho, 0)
        else:
            u = (vecs * np.exp(-1j * energies * ev[1])) @ vecs.conj().T
            rho = u @ rho @ u.conj().T
    rho_e = vecs.conj().T @ rho @ vecs
    f_e = vecs.conj().T @ fplus @ vecs
    # s(t) = sum_rc rho'_rc F'_cr exp(-i (E_r - E_c) t)
    amp = rho_e * f_e.T
    freq = (energies[None, :] - energies[:, None]) / (2 * np.pi)
    keep = np.abs(amp) > 1e-9 * max(np.abs(amp).max(), 1e-300)
    # the trace over 2^n states counts each single-spin coherence 2^(n-1) times
    return freq[keep], amp[keep] * system.scale / 2 ** (n - 1)


def _lines_to_fid(freqs: np.ndarray, amps: np.ndarray, time: np.ndarray) -> np.ndarray:
    out = np.zeros(time.size, complex)
    for start in range(0, freqs.size, 256):
        f, a = freqs[start:start + 256], amps[start:start + 256]
        out += a @ np.exp(2j * np.pi * np.outer(f, time))
    return out


def _reference_phase_and_gain(spectrometer_frequency: float, events: list[tuple]) -> complex:
    """Signal of one uncoupled proton on resonance: divides every FID so a singlet proton has amplitude 1."""
    one = SpinSystem(np.array([WATER_PPM]), np.array([1.0]), ())
    _, amps = simulate_lines(one, spectrometer_frequency, events)
    return complex(amps.sum())


def simulate_metabolite(name: str, *, spectrometer_frequency: float, dwell_time: float, n_points: int,
                        sequence: str = "PRESS", echo_time: float = 0.030, mixing_time: float | None = None,
                        linewidth_hz: float = 0.0, te1: float | None = None) -> np.ndarray:
    """FID of one metabolite (all its spin systems), amplitude 1 per proton of a singlet at t = 0.

    ``te1`` (s): PRESS first echo time (None = TE/2); see :func:`sequence_events`."""
    events = sequence_events(sequence, echo_time, mixing_time, te1)
    ref = _reference_phase_and_gain(spectrometer_frequency, events)
    time = np.arange(n_points) * dwell_time
    fid = np.zeros(n_points, complex)
    for system in spin_systems_of(name):
        freqs, amps = simulate_lines(system, spectrometer_frequency, events)
        fid += _lines_to_fid(freqs, amps / ref, time)
    if linewidth_hz > 0:
        fid *= np.exp(-np.pi * linewidth_hz * time)
    return fid


def intrinsic_linewidths_hz(metabolites: tuple[str, ...], spectrometer_frequency: float) -> dict[str, float]:
    """Homogeneous line width (Lorentzian FWHM, Hz) of each metabolite, 1/(pi T2).

    The T2s are those of water scaling (:func:`bids_ketamine.spectroscopy.quantify.relaxation_times_for_field`,
    the one table of relaxation times), at the field of ``spectrometer_frequency``: at 3T NAA 1.29 Hz,
    Cr 1.96 Hz, Cho 1.54 Hz, the others 1.99 Hz (T2 160 ms)."""
    from bids_ketamine.spectroscopy.quantify import relaxation_times_for_field

    relax = relaxation_times_for_field(spectrometer_frequency / GAMMA_1H_MHZ_PER_T)
    return {name: 1.0 / (np.pi * relax.metabolite(name)[1]) for name in metabolites}


# ------------------------------------------------------------------------------------------------ cache and API
def cache_dir() -> Path:
    """Writable cache folder: ``$BIDS_KETAMINE_CACHE``, else ``~/.cache/bids_ketamine``, else a temporary folder."""
    candidates = []
    if os.environ.get("BIDS_KETAMINE_CACHE"):
        candidates.append(Path(os.environ["BIDS_KETAMINE_CACHE"]))
    candidates.append(Path.home() / ".cache" / "bids_ketamine")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    candidates.append(Path(tempfile.gettempdir()) / f"bids_ketamine_cache_{uid}")
    for c in candidates:
        try:
            d = c / "basis"
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".probe{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            return d
        except OSError:
            continue
    raise OSError("no writable cache folder")  # pragma: no cover - the temp dir is always tried


def simulate_basis(*, field_strength: float | None = None, spectrometer_frequency: float | None = None,
                   echo_time: float = 0.030, sequence: str = "PRESS", mixing_time: float | None = None,
                   dwell_time: float = 2.5e-4, n_points: int = 2048,
                   metabolites: tuple[str, ...] = DEFAULT_METABOLITES,
                   linewidth_hz: float = 0.0, use_cache: bool = True, te1: float | None = None,
                   intrinsic_linewidths: bool = True) -> BasisSet:
    """Simulated brain basis set for one acquisition, cached on disk after the first call.

    Give ``spectrometer_frequency`` (MHz) or ``field_strength`` (T). ``echo_time`` and ``mixing_time`` in seconds.
    ``te1`` (s): PRESS first echo time; None = :func:`press_first_echo_time`'s default, min(11 ms, TE/2)
    (real PRESS sequences are asymmetric). Ignored for STEAM and sLASER.
    ``intrinsic_linewidths``: each metabolite's FID decays with its homogeneous (T2) line width, a Lorentzian
    of FWHM 1/(pi T2) (:func:`intrinsic_linewidths_hz`), so NAA is narrower than creatine as in a brain
    spectrum; the amplitude at t = 0 (one proton = 1) is unchanged. Without it every line is a delta and the
    fit's one shared broadening makes NAA as broad as creatine (tNAA/tCr +15-19 % on lcmodel_test_lcm).

    The basis has metabolites only: macromolecules and lipids are the fit's model
    (:mod:`bids_ketamine.spectroscopy.macromolecules`, LCModel's components with its soft constraints), the one
    MM model of the app. (Until simulation version 3 this basis carried its own MM09-MM38 Gaussians; MM23 and
    MM38 had no constraint and took Glu/Gln signal: Glx/tCr -21 % on lcmodel_test_lcm.)
    """
    if spectrometer_frequency is None:
        if field_strength is None:
            raise ValueError("give spectrometer_frequency (MHz) or field_strength (T)")
        spectrometer_frequency = field_strength * GAMMA_1H_MHZ_PER_T
    if sequence.upper() == "STEAM" and mixing_time is None:
        mixing_time = 0.0
    te1 = press_first_echo_time(echo_time, te1) if sequence.upper() == "PRESS" else None
    table = load_spin_systems()
    widths = intrinsic_linewidths_hz(metabolites, spectrometer_frequency) if intrinsic_linewidths else {}
    key_src = json.dumps({"v": SIMULATION_VERSION, "table": table, "sf": round(spectrometer_frequency, 6),
                          "te": echo_time, "tm": mixing_time, "seq": sequence.upper(), "dt": dwell_time,
                          "n": n_points, "m": list(metabolites), "lw": linewidth_hz,
                          "te1": te1, "t2lw": widths},
                         sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    path = None
    if use_cache:
        try:
            path = cache_dir() / f"basis_{key}.npz"
        except OSError:
            path = None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return BasisSet(tuple(str(n) for n in z["names"]), z["fids"], dwell_time, spectrometer_frequency,
                                metadata=_metadata(sequence, echo_time, mixing_time, linewidth_hz, True, te1, widths))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is recomputed
    names, fids = [], []
    for name in metabolites:
        names.append(name)
        fids.append(simulate_metabolite(name, spectrometer_frequency=spectrometer_frequency, dwell_time=dwell_time,
                                        n_points=n_points, sequence=sequence, echo_time=echo_time,
                                        mixing_time=mixing_time, linewidth_hz=linewidth_hz + widths.get(name, 0.0),
                                        te1=te1))
    arr = np.asarray(fids)
    if path is not None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, names=np.asarray(names), fids=arr)
            os.replace(tmp, path)
        except OSError:
            Path(tmp).unlink(missing_ok=True)
    return BasisSet(tuple(names), arr, dwell_time, spectrometer_frequency,
                    metadata=_metadata(sequence, echo_time, mixing_time, linewidth_hz, False, te1, widths))


def _metadata(sequence, echo_time, mixing_time, linewidth_hz, cached, te1, widths) -> dict:
    return {"Source": "simulated (bids_ketamine density-matrix simulation, ideal pulses)",
            "Sequence": sequence, "EchoTime": echo_time, "MixingTime": mixing_time, "PressTE1": te1,
            "IntrinsicLinewidthHz": {k: round(v, 4) for k, v in widths.items()},
            "LinewidthHz": linewidth_hz, "SpinSystems": "Govindaraju et al. 2000; Govind et al. 2015",
            "FromCache": cached}
