"""The basis set: one noiseless FID per metabolite, and the metabolite groups and sums that reports use.

Sign convention (NIfTI-MRS): the spectrum is ``fftshift(fft(fid))`` on the frequency axis
``fftshift(fftfreq(n, dwell_time))`` and the chemical shift is ``ppm_reference + f / central_frequency``, so a
creatine singlet at 3.03 ppm sits at a *negative* offset from water. LCModel-style files hold the complex
conjugate; :mod:`bids_ketamine.spectroscopy.basis_io` conjugates them on reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from bids_ketamine.errors import BadDataError

#: Chemical shift of water relative to TMS/DSS at body temperature (ppm): the receiver frequency of 1H MRS.
WATER_PPM = 4.65

#: Spellings of the same metabolite used by different basis sets, mapped to one canonical name.
SYNONYMS: dict[str, str] = {
    "ins": "mI",
    "mi": "mI",
    "myo": "mI",
    "myo-inositol": "mI",
    "si": "sI",
    "sins": "sI",
    "scyllo": "sI",
    "pcho": "PCh",
    "pch": "PCh",
    "gpc": "GPC",
    "cr": "Cr",
    "pcr": "PCr",
    "naa": "NAA",
    "naag": "NAAG",
    "glu": "Glu",
    "gln": "Gln",
    "gaba": "GABA",
    "gsh": "GSH",
    "lac": "Lac",
    "asp": "Asp",
    "tau": "Tau",
    "glc": "Glc",
    "gly": "Gly",
    "pe": "PE",
    "ala": "Ala",
    "asc": "Asc",
    "ace": "Ace",
    "mac": "MM",
    "mm": "MM",
    "mmbl": "MM",
}

#: Sums that the literature reports because their members cannot be separated reliably at clinical field strengths.
METABOLITE_SUMS: dict[str, tuple[str, ...]] = {
    "tCr": ("Cr", "PCr"),
    "tNAA": ("NAA", "NAAG"),
    "tCho": ("GPC", "PCh"),
    "Glx": ("Glu", "Gln"),
    "tMI": ("mI", "Gly"),
}

#: Name prefixes that mark macromolecule / lipid components (their own line-shape group in the fit).
MACROMOLECULE_PREFIXES: tuple[str, ...] = ("MM", "Mac", "MMBL", "Lip")


def canonical_name(name: str) -> str:
    """Canonical spelling of a metabolite name (``Ins`` -> ``mI``, ``PCho`` -> ``PCh``); unknown names unchanged."""
    key = name.strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    return name.strip()


def is_macromolecule(name: str) -> bool:
    """True for macromolecule and lipid components (``MM09``, ``Mac``, ``Lip13`` ...)."""
    return any(name.startswith(p) or name.lower().startswith(p.lower()) for p in MACROMOLECULE_PREFIXES)


def frequency_axis(n_points: int, dwell_time: float) -> np.ndarray:
    """Frequency offsets (Hz) of ``fftshift(fft(fid))``, increasing."""
    return np.fft.fftshift(np.fft.fftfreq(n_points, dwell_time))


def ppm_axis(n_points: int, dwell_time: float, central_frequency: float, ppm_reference: float = WATER_PPM) -> np.ndarray:
    """Chemical-shift axis (ppm) of ``fftshift(fft(fid))`` in the NIfTI-MRS convention (increasing)."""
    return ppm_reference + frequency_axis(n_points, dwell_time) / central_frequency


def to_spectrum(fid: np.ndarray) -> np.ndarray:
    """Spectrum of an FID (last axis), NIfTI-MRS convention: ``fftshift(fft(fid))``."""
    return np.fft.fftshift(np.fft.fft(fid, axis=-1), axes=-1)


def sum_members(sum_name: str, available: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Members of a metabolite sum (``tCr``...) that are present in ``available`` (canonical names)."""
    return tuple(m for m in METABOLITE_SUMS[sum_name] if m in available)


@dataclass(frozen=True)
class BasisSet:
    """Noiseless FIDs of the model components, on one time grid.

    ``fids`` is ``(n_metabolites, n_points)`` complex in the NIfTI-MRS sign convention; the amplitude of a FID is
    that of the metabolite at unit concentration (the quantification assumes this, e.g. one proton = 1 per mM).
    """

    names: tuple[str, ...]
    fids: np.ndarray
    dwell_time: float
    central_frequency: float
    nucleus: str = "1H"
    ppm_reference: float = WATER_PPM
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        fids = np.asarray(self.fids)
        if fids.ndim != 2 or fids.shape[0] != len(self.names):
            raise BadDataError(
                f"basis set has {len(self.names)} names but FIDs of shape {fids.shape}",
                fix="give one FID row per metabolite name",
            )
        if len(set(self.names)) != len(self.names):
            raise BadDataError(f"basis set names are not unique: {self.names}", fix="rename the duplicates")
        if not np.all(np.isfinite(fids)):
            raise BadDataError("basis set contains NaN or infinite samples", fix="regenerate the basis set")
        if not (self.dwell_time > 0 and self.central_frequency > 0):
            raise BadDataError(
                f"basis set needs a positive dwell time and central frequency, got {self.dwell_time}, "
                f"{self.central_frequency}",
                fix="state the basis set's dwell time (s) and spectrometer frequency (MHz)",
            )
        fids = np.ascontiguousarray(fids, dtype=np.complex128)
        fids.setflags(write=False)
        object.__setattr__(self, "fids", fids)
        object.__setattr__(self, "names", tuple(self.names))

    # ---- axes -------------------------------------------------------------------------------------------------
    @property
    def n_points(self) -> int:
        return int(self.fids.shape[1])

    @property
    def n_metabolites(self) -> int:
        return int(self.fids.shape[0])

    @property
    def spectral_width(self) -> float:
        """Spectral width (Hz) = 1 / dwell time."""
        return 1.0 / self.dwell_time

    def time_axis(self) -> np.ndarray:
        return np.arange(self.n_points) * self.dwell_time

    def frequency_axis(self) -> np.ndarray:
        return frequency_axis(self.n_points, self.dwell_time)

    def ppm_axis(self) -> np.ndarray:
        return ppm_axis(self.n_points, self.dwell_time, self.central_frequency, self.ppm_reference)

    def spectra(self) -> np.ndarray:
        """Spectra of all components, ``(n_metabolites, n_points)``, on :meth:`ppm_axis`."""
        return to_spectrum(self.fids)

    # ---- names ------------------------------------------------------------------------------------------------
    def index(self, name: str) -> int:
        """Row of a component, accepting synonyms (``Ins`` finds ``mI``)."""
        if name in self.names:
            return self.names.index(name)
        canon = canonical_name(name)
        for i, n in enumerate(self.names):
            if canonical_name(n) == canon:
                return i
        raise KeyError(f"{name!r} is not in the basis set ({', '.join(self.names)})")

    def fid(self, name: str) -> np.ndarray:
        return self.fids[self.index(name)]

    def canonical(self) -> BasisSet:
        """The same basis with canonical names (``Ins`` -> ``mI``, ``Mac`` -> ``MM``)."""
        return replace(self, names=tuple(canonical_name(n) for n in self.names))

    def macromolecule_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if is_macromolecule(n))

    def metabolite_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names if not is_macromolecule(n))

    def sums(self) -> dict[str, tuple[str, ...]]:
        """Metabolite sums with at least two members in this basis, as tuples of this basis's own names."""
        canon = {canonical_name(n): n for n in self.names}
        out = {}
        for s, members in METABOLITE_SUMS.items():
            present = tuple(canon[m] for m in members if m in canon)
            if len(present) >= 2:
                out[s] = present
        return out

    def subset(self, names: tuple[str, ...] | list[str]) -> BasisSet:
        """Only the named components, in the given order (synonyms accepted)."""
        rows = [self.index(n) for n in names]
        return replace(self, names=tuple(self.names[i] for i in rows), fids=self.fids[rows])

    def without(self, names: tuple[str, ...] | list[str]) -> BasisSet:
        drop = {self.index(n) for n in names if self._has(n)}
        keep = [n for i, n in enumerate(self.names) if i not in drop]
        return self.subset(keep)

    def _has(self, name: str) -> bool:
        try:
            self.index(name)
        except KeyError:
            return False
        return True

    def has(self, name: str) -> bool:
        return self._has(name)

    # ---- resampling -------------------------------------------------------------------------------------------
    def resample_to(self, dwell_time: float, n_points: int) -> BasisSet:
        """The basis on another time grid, e.g. to match a measured spectrum.

        Same dwell time: truncation or zero-filling. Otherwise each FID is demodulated by its spectral centroid
        (so it oscillates slowly), interpolated with a cubic spline in time, and modulated back; like a real
        acquisition, a narrower spectral width aliases any signal outside it (a brain basis has none). An FID is smooth for t >= 0, so
        a spline avoids the ringing that band-limited (sinc) interpolation shows at the abrupt start of an FID.
        Samples past the end of the original acquisition are zero: nothing is known there.
        """
        from scipy.interpolate import CubicSpline

        if dwell_time <= 0 or n_points <= 0:
            raise ValueError("dwell_time and n_points must be positive")
        if np.isclose(dwell_time, self.dwell_time, rtol=1e-6, atol=0):
            out = np.zeros((self.n_metabolites, n_points), complex)
            m = min(n_points, self.n_points)
            out[:, :m] = self.fids[:, :m]
            return replace(self, fids=out, dwell_time=float(self.dwell_time))
        t_old = self.time_axis()
        t_new = np.arange(n_points) * dwell_time
        inside = t_new <= t_old[-1]
        freqs = np.fft.fftfreq(self.n_points, self.dwell_time)
        spec = np.fft.fft(self.fids, axis=1)
        power = np.abs(spec) ** 2
        centre = (power * freqs[None, :]).sum(axis=1) / np.maximum(power.sum(axis=1), 1e-300)
        fids = self.fids * np.exp(-2j * np.pi * centre[:, None] * t_old[None, :])
        spline = CubicSpline(t_old, fids, axis=1)
        out = np.zeros((self.n_metabolites, n_points), complex)
        out[:, inside] = spline(t_new[inside]) * np.exp(2j * np.pi * centre[:, None] * t_new[None, inside])
        return replace(self, fids=out, dwell_time=float(dwell_time))

    def conjugate(self) -> BasisSet:
        """Complex conjugate: converts between the LCModel/challenge and the NIfTI-MRS sign conventions."""
        return replace(self, fids=np.conj(self.fids))

    def scaled(self, factor: float) -> BasisSet:
        return replace(self, fids=self.fids * factor)


#: Lipid components as Gaussian lines: name -> ((ppm, FWHM ppm, relative amplitude), ...), after the positions and
#: widths published in the LCModel manual for its simulated lipid signals (Lip13 uses the narrower of its two).
LIPID_LINES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "Lip09": ((0.89, 0.14, 1.0),),
    "Lip13": ((1.28, 0.089, 1.0),),
    "Lip20": ((2.04, 0.15, 1.33), (2.25, 0.15, 0.67), (2.8, 0.2, 0.87)),
}


def lipid_components(n_points: int, dwell_time: float, central_frequency: float,
                     ppm_reference: float = WATER_PPM) -> BasisSet:
    """Broad lipid signals (:data:`LIPID_LINES`) as basis FIDs, one proton-unit amplitude per line."""
    t = np.arange(n_points) * dwell_time
    fids = []
    for lines in LIPID_LINES.values():
        fid = np.zeros(n_points, complex)
        for ppm, width_ppm, amp in lines:
            f = (ppm - ppm_reference) * central_frequency
            w = width_ppm * central_frequency
            fid += amp * np.exp(2j * np.pi * f * t - (np.pi * w * t) ** 2 / (4 * np.log(2)))
        fids.append(fid)
    return BasisSet(names=tuple(LIPID_LINES), fids=np.array(fids), dwell_time=dwell_time,
                    central_frequency=central_frequency, ppm_reference=ppm_reference,
                    metadata={"source": "bids_ketamine.spectroscopy.basis.lipid_components"})


def combine(first: BasisSet, second: BasisSet) -> BasisSet:
    """Components of both basis sets on the grid of the first (the second is resampled when needed)."""
    if not (np.isclose(first.dwell_time, second.dwell_time, rtol=1e-6) and first.n_points == second.n_points):
        second = second.resample_to(first.dwell_time, first.n_points)
    clash = set(first.names) & set(second.names)
    if clash:
        raise BadDataError(f"both basis sets contain {sorted(clash)}", fix="drop the duplicates from one of them")
    return replace(first, names=first.names + second.names, fids=np.vstack([first.fids, second.fids]))


#: Creatine's two singlets (ppm, protons): CH3 and CH2 (Govindaraju et al. 2000), TE-independent (no J coupling).
CREATINE_SINGLETS: tuple[tuple[float, int], ...] = ((3.027, 3), (3.913, 2))


@dataclass(frozen=True)
class BasisCalibration:
    """What :func:`calibrate_basis` measured on a basis set's creatine: its amplitude of one proton at unit
    concentration, and how far its creatine sits from 3.027 ppm (the offset of its ppm reference from 4.65)."""

    component: str
    proton_unit: float
    ppm_offset: float
    ch2_to_ch3: float

    def as_metadata(self) -> dict:
        return {"CalibrationComponent": self.component, "ProtonUnitOfSource": self.proton_unit,
                "PpmReferenceOffset": self.ppm_offset, "CreatineCH2toCH3": self.ch2_to_ch3}


def measure_creatine(basis: BasisSet) -> BasisCalibration | None:
    """Fit the basis's Cr (else PCr) FID with its two singlets under one Voigt line shape and a common shift.

    The model ``[a3 * 3 exp(2 pi i f3 t) + a2 * 2 exp(2 pi i f2 t)] exp(2 pi i d t - pi l t - k g t^2)`` has
    complex ``a3``, ``a2`` (solved linearly) and ``d``, ``l``, ``g`` (nonlinear); the first sample is skipped
    (some writers halve it). ``|a3|`` is the basis's amplitude of one proton at unit concentration: a basis file
    brings its own arbitrary scale (LCModel ``.BASIS`` files, FID folders), and water scaling needs the scale in
    which one proton of one mM has amplitude 1, which the simulated basis has by construction. None when the basis
    has no creatine.
    """
    from scipy.optimize import least_squares

    for name in ("Cr", "PCr"):
        if basis.has(name):
            fid = basis.fid(name)
            break
    else:
        return None
    t_all = basis.time_axis()
    stop = max(16, min(fid.size, int(round(0.2 / basis.dwell_time))))  # first 200 ms
    t, y = t_all[1:stop], fid[1:stop]
    freqs = [(ppm - basis.ppm_reference) * basis.central_frequency for ppm, _ in CREATINE_SINGLETS]
    cols0 = np.stack([n * np.exp(2j * np.pi * f * t) for (_, n), f in zip(CREATINE_SINGLETS, freqs)], axis=1)
    k = np.pi ** 2 / (4 * np.log(2))
    scale = float(np.abs(y).max()) or 1.0

    def design(p):
        d, lor, gau2 = p
        return cols0 * np.exp(2j * np.pi * d * t - np.pi * lor * t - k * gau2 * t * t)[:, None]

    def resid(p):
        a = design(p)
        coef = np.linalg.lstsq(a, y / scale, rcond=None)[0]
        r = y / scale - a @ coef
        return np.concatenate([r.real, r.imag])

    best = None
    for d0 in np.linspace(-0.1, 0.1, 9) * basis.central_frequency:  # the reference may sit up to 0.1 ppm away
        sol = least_squares(resid, [d0, 1.0, 1.0], bounds=([-0.15 * basis.central_frequency, 0, 0],
                                                           [0.15 * basis.central_frequency, 200, 200 ** 2]))
        if best is None or sol.cost < best.cost:
            best = sol
    a = np.linalg.lstsq(design(best.x), y / scale, rcond=None)[0] * scale
    return BasisCalibration(component=name, proton_unit=float(np.abs(a[0])),
                            ppm_offset=float(best.x[0] / basis.central_frequency),
                            ch2_to_ch3=float(np.abs(a[1]) / max(np.abs(a[0]), 1e-300)))


def calibrate_basis(basis: BasisSet) -> BasisSet:
    """A user basis set on the scale of the simulated one (one proton of one mM = 1) and referenced to 4.65 ppm.

    Both corrections come from :func:`measure_creatine`; the measurement is kept in ``metadata``. A basis without
    creatine is returned unchanged with ``metadata["ProtonUnit"]`` None (water scaling then cannot be trusted);
    otherwise ``ProtonUnit`` is 1 and ``ProtonUnitOfSource`` the file's own amplitude of one proton.
    """
    cal = measure_creatine(basis)
    if cal is None or not np.isfinite(cal.proton_unit) or cal.proton_unit <= 0:
        return replace(basis, metadata={**basis.metadata, "ProtonUnit": None})
    shift_hz = cal.ppm_offset * basis.central_frequency
    fids = basis.fids * np.exp(-2j * np.pi * shift_hz * basis.time_axis())[None, :] / cal.proton_unit
    return replace(basis, fids=fids, metadata={**basis.metadata, **cal.as_metadata(), "ProtonUnit": 1.0})
