"""Synthetic fMRS crossover: raw NIfTI-MRS (coils x transients) with a planted Glx rise during a ketamine infusion.

Each subject has one session per pretreatment (placebo, naltrexone). Spectra are built from the package's own
simulated basis (3T PRESS, TE 30 ms), with per-subject line broadening, a slow frequency drift, phase noise per
transient, an eddy-current phase shared with the water reference, complex coil sensitivities and white noise.
Glx/tNAA is flat before the infusion onset and rises linearly after it; the slope is smaller after naltrexone and
larger in men. Metabolite and water signals carry T1/T2 attenuation with the stated 3T relaxation times of
:mod:`bids_ketamine.spectroscopy.quantify` and the voxel's tissue fractions (planted by :mod:`.anat` when the subject
has a T1w, else the stated defaults), so water scaling with those fractions returns the planted molar
concentrations; the Glx/tNAA time course is planted on the ratio of fitted amplitudes (what the group model reads).
The returned ground truth states the planted coefficients in the units and coding of the group
model (:mod:`bids_ketamine.spectroscopy.group`): Glx/tNAA per minute since infusion onset, pretreatment coded
naltrexone = 1 / placebo = 0, sex coded male = +0.5 / female = -0.5.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np

#: Concentrations (mM) of the simulated brain (typical grey-matter values, e.g. de Graaf, In Vivo NMR Spectroscopy).
BRAIN_MM = {"NAA": 11.0, "NAAG": 1.5, "Cr": 4.5, "PCr": 4.0, "GPC": 1.2, "PCh": 0.4, "mI": 6.0, "sI": 0.3,
            "Glu": 10.0, "Gln": 3.5, "GABA": 1.5, "GSH": 2.0, "Lac": 0.6, "Asp": 2.0, "Tau": 1.5, "Ala": 0.4,
            "Glc": 1.0, "PE": 1.4, "Gly": 0.5, "Asc": 1.0}
#: Macromolecule amplitudes (basis units of the fit's MM model, :mod:`bids_ketamine.spectroscopy.macromolecules`,
#: the app's one MM model), at the centres of LCModel's ratio priors relative to MM09 (MM20/MM09 1.5,
#: MM12 0.3, MM14 0.75, MM17 0.375).
MM_AMPLITUDE = {"MM09": 2.5, "MM12": 0.75, "MM14": 1.875, "MM17": 0.9375, "MM20": 3.75}
#: Planted Glx/tNAA slopes per minute after infusion onset, by (pretreatment, sex).
SLOPES = {("placebo", "F"): 0.004, ("placebo", "M"): 0.006, ("naltrexone", "F"): 0.002, ("naltrexone", "M"): 0.0016}
SPECTROMETER_MHZ = 123.2
DWELL = 2.5e-4
ECHO_TIME = 0.030
BLOCK_SECONDS = 240.0
N_BLOCKS = 6
N_BASELINE_BLOCKS = 2
INFUSION_SECONDS = 2400.0
NOISE_SD = 8.0  #: white noise SD per coil and transient (real and imaginary parts), basis units


def planted_coefficients() -> dict[str, float]:
    """The group model's coefficients implied by :data:`SLOPES` (sex +/-0.5, naltrexone 0/1, per minute)."""
    pf, pm = SLOPES[("placebo", "F")], SLOPES[("placebo", "M")]
    nf, nm = SLOPES[("naltrexone", "F")], SLOPES[("naltrexone", "M")]
    return {"time": (pf + pm) / 2, "pretreatment_x_time": (nf + nm) / 2 - (pf + pm) / 2,
            "sex_x_time": pm - pf, "sex_x_pretreatment_x_time": (nm - nf) - (pm - pf)}


def _write_gz(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=1, mtime=0))


def _nifti_bytes(fid: np.ndarray, dim_tags: tuple[str, ...], metadata: dict, affine: np.ndarray | None = None
                 ) -> bytes:
    from bids_ketamine.spectroscopy.nifti_io import make_nifti_mrs

    img = make_nifti_mrs(fid, dwell_time=DWELL, spectrometer_frequency=SPECTROMETER_MHZ, dim_tags=dim_tags,
                         metadata=metadata)
    if affine is not None:  # the voxel's position, size and orientation in scanner mm
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    return img.to_bytes()


class FmrsSimulator:
    """One synthetic fMRS acquisition at a time, in memory: what :func:`write_synthetic_fmrs_cohort` writes.

    Built once per acquisition layout (transients, coils, points); :meth:`subject` draws a subject's baseline
    Glx/tNAA offset and line shape, :meth:`session` one session's raw coil x transient data and water reference.
    Benchmarks draw many sessions from it without writing files; the same generator state gives the same arrays.
    """

    def __init__(self, *, n_transients: int = 128, n_coils: int = 4, n_points: int = 2048):
        from bids_ketamine.spectroscopy.basis import combine
        from bids_ketamine.spectroscopy.macromolecules import mm_lipid_basis
        from bids_ketamine.spectroscopy.quantify import QuantParams, RELAXATION_3T, attenuation
        from bids_ketamine.spectroscopy.simulate import simulate_basis

        self.n_transients, self.n_coils, self.n_points = n_transients, n_coils, n_points
        #: the metabolite basis the app's fit uses for these data (its MM model is added by the fit)
        self.basis = simulate_basis(spectrometer_frequency=SPECTROMETER_MHZ, echo_time=ECHO_TIME, sequence="PRESS",
                                    dwell_time=DWELL, n_points=n_points)
        #: what the spectra are made of: the metabolites plus the macromolecules of the fit's MM model
        self._planted = combine(self.basis, mm_lipid_basis(n_points, DWELL, SPECTROMETER_MHZ,
                                                           names=tuple(MM_AMPLITUDE)))
        self.names = list(self._planted.names)
        self.repetition_time = N_BLOCKS * BLOCK_SECONDS / n_transients
        self.onset_seconds = N_BASELINE_BLOCKS * BLOCK_SECONDS
        self.t = np.arange(n_points) * DWELL
        #: acquisition time of each transient relative to the infusion onset (min)
        self.minutes = (np.arange(n_transients) * self.repetition_time - self.onset_seconds) / 60.0
        tr = self.repetition_time

        def r_met(name: str) -> float:
            t1, t2 = RELAXATION_3T.metabolite(name)
            return attenuation(ECHO_TIME, tr, t1, t2) if name in BRAIN_MM else 1.0

        relax = np.array([r_met(n) for n in self.names])
        #: fitted amplitudes (basis units) of every component before the infusion
        self.base_amp = np.array([BRAIN_MM.get(n, MM_AMPLITUDE.get(n, 0.0)) for n in self.names]) * relax
        self._i_glu, self._i_gln = self.names.index("Glu"), self.names.index("Gln")
        self.tnaa = self.base_amp[self.names.index("NAA")] + self.base_amp[self.names.index("NAAG")]
        self.glx0 = self.base_amp[self._i_glu] + self.base_amp[self._i_gln]
        self._content = QuantParams().water_content
        self._relax_water = (RELAXATION_3T, attenuation)

    def water_amplitude(self, fractions: dict[str, float]) -> float:
        """Water signal (basis units) of the voxel's tissue mix: 2 protons x visible water (Near et al. 2021)."""
        from bids_ketamine.spectroscopy.quantify import PURE_WATER_MM

        relax, attenuation = self._relax_water
        return 2 * PURE_WATER_MM * sum(
            fractions[k] * self._content[k] * attenuation(ECHO_TIME, self.repetition_time, relax.water_t1[k],
                                                          relax.water_t2[k]) for k in fractions)

    def subject(self, rng: np.random.Generator) -> tuple[float, np.ndarray]:
        """A subject's baseline Glx/tNAA offset and time-domain line shape (Lorentzian 3-5 Hz, Gaussian 2-4 Hz)."""
        r_subject = rng.normal(0.0, 0.03)
        lor = rng.uniform(3.0, 5.0)  # Lorentzian FWHM (Hz)
        gau = rng.uniform(2.0, 4.0)  # Gaussian FWHM (Hz)
        t = self.t
        return r_subject, np.exp(-np.pi * lor * t - (np.pi * gau * t) ** 2 / (4 * np.log(2)))

    def session(self, rng: np.random.Generator, subject: tuple[float, np.ndarray], slope: float,
                water_amp: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Raw data (coils, transients, points), water reference (coils, 4, points) and the planted baseline
        Glx/tNAA of one session whose Glx/tNAA rises by ``slope`` per minute after the onset."""
        r_subject, lineshape = subject
        n_transients, n_coils, t = self.n_transients, self.n_coils, self.t
        base_amp, i_glu, i_gln, glx0 = self.base_amp, self._i_glu, self._i_gln, self.glx0
        r0 = glx0 / self.tnaa + r_subject + rng.normal(0.0, 0.01)
        ratio = r0 + slope * np.clip(self.minutes, 0.0, None)
        glx = ratio * self.tnaa  # Glx amplitude per transient
        conc = np.tile(base_amp, (n_transients, 1))
        conc[:, i_glu] = glx * base_amp[i_glu] / glx0
        conc[:, i_gln] = glx * base_amp[i_gln] / glx0
        drift = np.cumsum(rng.normal(0.0, 0.15, n_transients)) + rng.normal(0.0, 1.0)  # Hz
        phase = rng.normal(0.0, np.deg2rad(8.0), n_transients) + rng.uniform(-np.pi, np.pi)
        eddy = 0.4 * np.exp(-t / 0.04) * rng.choice([-1.0, 1.0])  # rad, shared with the water reference
        coil = (rng.uniform(0.5, 1.0, n_coils) * np.exp(1j * rng.uniform(-np.pi, np.pi, n_coils)))
        noise_scale = rng.uniform(0.8, 1.2, n_coils)
        clean = (conc @ self._planted.fids) * lineshape * np.exp(1j * (2 * np.pi * drift[:, None] * t
                                                                    + phase[:, None] + eddy))
        data = coil[:, None, None] * clean[None]
        data += NOISE_SD * noise_scale[:, None, None] * (rng.standard_normal(data.shape)
                                                          + 1j * rng.standard_normal(data.shape))
        n_ref = 4
        water = water_amp * lineshape * np.exp(1j * (2 * np.pi * drift[0] * t + eddy))
        ref = coil[:, None, None] * np.tile(water, (n_ref, 1))[None]
        ref += NOISE_SD * noise_scale[:, None, None] * (rng.standard_normal(ref.shape)
                                                         + 1j * rng.standard_normal(ref.shape))
        return data, ref, float(r0)


def write_synthetic_fmrs_cohort(bids_root: Path, subjects: dict[str, str], sessions: dict[str, str], *,
                                seed: int, n_transients: int = 128, n_coils: int = 4,
                                n_points: int = 2048, voxels: dict[str, dict] | None = None) -> dict:
    """Write ``sub-X/ses-Y/mrs/`` svs, mrsref, events and sidecars; return the planted ground truth.

    ``subjects`` maps label -> sex (``F``/``M``); ``sessions`` maps session label -> pretreatment. The session
    spans six blocks of 240 s (two before the infusion onset), so TR = 1440 s / ``n_transients``. ``voxels`` maps
    a label to its voxel (``affine`` in scanner mm and tissue ``fractions``, as ``synthetic.anat`` plants them):
    the NIfTI-MRS files carry that affine and the water reference that tissue mix; subjects without one get the
    default fractions of :mod:`bids_ketamine.spectroscopy.quantify` and an identity affine.
    """
    bids_root = Path(bids_root)
    sim = FmrsSimulator(n_transients=n_transients, n_coils=n_coils, n_points=n_points)
    tr, onset = sim.repetition_time, sim.onset_seconds
    from bids_ketamine.spectroscopy.quantify import DEFAULT_FRACTIONS

    default_fractions = {"gm": DEFAULT_FRACTIONS.gm, "wm": DEFAULT_FRACTIONS.wm, "csf": DEFAULT_FRACTIONS.csf}
    voxels = voxels or {}
    rng = np.random.default_rng(seed)
    truth_sessions = {}
    sidecar = {"ResonantNucleus": "1H", "SpectrometerFrequency": SPECTROMETER_MHZ, "SpectralWidth": 1 / DWELL,
               "EchoTime": ECHO_TIME, "RepetitionTime": tr, "MagneticFieldStrength": 2.89,
               "PulseSequenceType": "PRESS", "TaskName": "infusion", "Manufacturer": "synthetic (bids_ketamine)"}
    for label in sorted(subjects):
        sex = subjects[label]
        if sex not in ("F", "M"):
            raise ValueError(f"sex of {label} must be 'F' or 'M', got {sex!r}")
        voxel = voxels.get(label)
        water_amp = sim.water_amplitude(voxel["fractions"] if voxel else default_fractions)
        voxel_affine = np.asarray(voxel["affine"], float) if voxel else None
        subject = sim.subject(rng)
        for ses in sorted(sessions):
            pre = sessions[ses]
            if pre not in ("placebo", "naltrexone"):
                raise ValueError(f"pretreatment of session {ses} must be placebo or naltrexone, got {pre!r}")
            slope = SLOPES[(pre, sex)]
            data, ref, r0 = sim.session(rng, subject, slope, water_amp)
            folder = bids_root / f"sub-{label}" / f"ses-{ses}" / "mrs"
            stem = f"sub-{label}_ses-{ses}_task-infusion"
            # NIfTI-MRS layout: time first, then DIM_COIL, DIM_DYN
            _write_gz(folder / f"{stem}_svs.nii.gz",
                      _nifti_bytes(np.transpose(data, (2, 0, 1)), ("DIM_COIL", "DIM_DYN"),
                                   {"EchoTime": ECHO_TIME, "RepetitionTime": tr}, voxel_affine))
            _write_gz(folder / f"{stem}_mrsref.nii.gz",
                      _nifti_bytes(np.transpose(ref, (2, 0, 1)), ("DIM_COIL", "DIM_DYN"),
                                   {"EchoTime": ECHO_TIME, "RepetitionTime": tr}, voxel_affine))
            for suffix, suppressed in (("svs", True), ("mrsref", False)):
                meta = {**sidecar, "WaterSuppression": suppressed}
                (folder / f"{stem}_{suffix}.json").write_text(json.dumps(meta, indent=2) + "\n")
            (folder / f"{stem}_events.tsv").write_text(
                "onset\tduration\ttrial_type\n" f"{onset:.1f}\t{INFUSION_SECONDS:.1f}\tinfusion\n")
            truth_sessions[f"sub-{label}_ses-{ses}"] = {"pretreatment": pre, "sex": sex,
                                                        "glx_tnaa_baseline": float(r0),
                                                        "glx_tnaa_per_minute": slope}
    return {
        "description": "Glx/tNAA = baseline + slope x minutes since infusion onset (flat before onset); the "
                       "coefficients are those of the group model with pretreatment coded naltrexone = 1, "
                       "placebo = 0 and sex coded male = +0.5, female = -0.5, fitted on blocks at or after onset.",
        "glx_tnaa_per_minute": planted_coefficients(),
        "slopes": {f"{p}_{s}": v for (p, s), v in SLOPES.items()},
        "repetition_time": tr,
        "infusion_onset_seconds": onset,
        "block_seconds": BLOCK_SECONDS,
        "n_transients": n_transients,
        "basis": {"sequence": "PRESS", "echo_time": ECHO_TIME, "spectrometer_frequency": SPECTROMETER_MHZ},
        "concentrations_mM": BRAIN_MM,
        "molar_concentrations_note": "water scaling with the voxel's tissue fractions (voxel_tissue_fractions; "
                                     "the default fractions of spectroscopy.quantify for subjects without) and the "
                                     "3T relaxation times of spectroscopy.quantify returns concentrations_mM "
                                     "(before the infusion for Glu, Gln)",
        "voxel_tissue_fractions": {label: dict(voxels[label]["fractions"]) if label in voxels else
                                   dict(default_fractions) for label in sorted(subjects)},
        "sessions": truth_sessions,
    }
