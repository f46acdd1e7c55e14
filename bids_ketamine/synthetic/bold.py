"""Synthetic resting BOLD with planted individual drug signatures, written as raw BIDS plus fMRIPrep derivatives.

The model (one subject, one session), on an MNI152NLin2009cAsym grid at ``resolution_mm`` built on the default atlas
(labels resampled by nearest neighbour, exactly as the analysis does):

* parcel signals ``x_p(t) = s_p * sum_k L0[p, k] f_k(t) + u_p e_p(t)``: three network factors ``f_k`` with fixed
  loadings ``L0`` (0.5 on the parcel's own network, 0.25 on the others; networks = nearest of three anchors), a
  per-parcel gain ``s_p`` and unique noise ``e_p`` scaled so every ``x_p`` has unit variance;
* voxel values ``1000 + offset_v + 10 * (x_p(t) + 0.5 * eps_v(t))`` + a global artefact, CSF and white-matter
  signals and motion-locked signals with voxel-specific weights, + motion spikes;
* the brain mask is the labelled voxels plus a one-voxel shell; shell voxels carry ``-sum`` of the parcel signals
  (divided over the shell), so the mean over the mask of the neural signal is exactly 0 at every frame. Hence the
  confounds' ``global_signal`` (the exact mask mean of the written BOLD) holds only artefacts, and global signal
  regression removes them without touching the planted correlations. The ``csf`` and ``white_matter`` columns are
  the planted physiological signals themselves (there is no tissue segmentation in this world).

Population correlation of parcel means: ``R[p, q] = s_p s_q (L0 L0')[p, q] / sqrt(v_p v_q)``, ``v_p = 1 + 0.25 /
n_p`` (voxel noise averaged over the parcel's ``n_p`` voxels); the expected GBC is ``mean_q artanh R[p, q]``.
Placebo gains are ``1 + 0.05 N(0, 1)`` per subject and parcel; the drug gains are solved (Newton, analytic
Jacobian) so that expected GBC(drug) - GBC(placebo) equals the planted map ``sum_k w[s, k] C_k + noise``, with
smooth orthonormal component maps ``C_k`` scaled to ``component_sd`` across parcels.

Motion: small random-walk rigid-body parameters (FD about 0.05 mm) plus 2-4 spikes per run; a spike at frame t
displaces the head for that frame only (FD > 0.5 mm at t and t+1) and corrupts the image at t, so the published
criteria flag frames t and t+1 and scrubbing censors t-1 .. t+2. ``high_motion`` sessions get a spike every 5 frames
(> 50 % censored: the session must be excluded).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SPACE = "MNI152NLin2009cAsym"
#: fMRIPrep's 1 mm MNI152NLin2009cAsym grid: origin and shape; coarser grids share the origin.
GRID_ORIGIN = (-96.0, -132.0, -78.0)
GRID_SHAPE_1MM = (193, 229, 193)
SIGNAL_SCALE = 10.0
BASELINE = 1000.0
VOXEL_NOISE = 0.5
PRIMARY_LOADING, OTHER_LOADING = 0.5, 0.25
PLACEBO_GAIN_SD = 0.05
SPIKE_IMAGE_SD = 150.0
#: Subject weights are N(0, 1) truncated to +-WEIGHT_LIMIT (redrawn), so every planted map is reachable.
WEIGHT_LIMIT = 2.0
#: Independent noise of the brain-edge shell voxels: it dominates the frame-to-frame intensity change, as
#: thermal and CSF partial-volume noise do in real data, so the change is stable outside spikes.
SHELL_NOISE = 60.0


def _res_label(resolution_mm: float) -> str:
    return f"{resolution_mm:g}".replace(".", "p")


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _write_json(path: Path, obj: dict) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _nifti_gz(data: np.ndarray, affine: np.ndarray, tr: float | None = None, slope: float | None = None) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(affine, code=4)
    img.header.set_sform(affine, code=4)
    if tr is not None:
        zooms = img.header.get_zooms()
        img.header.set_zooms((*zooms[:3], tr))
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    return _gz(img.to_bytes())


def synthetic_grid(atlas, resolution_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """(label grid, affine) of the default atlas on a ``resolution_mm`` grid; every parcel keeps >= 1 voxel."""
    from bids_ketamine.connectivity.parcellate import labels_on_grid

    shape = tuple(int(np.ceil(s / resolution_mm)) for s in GRID_SHAPE_1MM)
    for shift in (0.0, 0.25, 0.5):
        affine = np.diag([resolution_mm] * 3 + [1.0])
        affine[:3, 3] = np.asarray(GRID_ORIGIN) + shift * resolution_mm
        grid = labels_on_grid(atlas.data(), atlas.image.affine, shape, affine)
        counts = np.bincount(grid.ravel(), minlength=int(atlas.labels["index"].max()) + 1)
        if (counts[atlas.labels["index"].to_numpy()] > 0).all():
            return grid, affine
    raise ValueError(f"at {resolution_mm} mm some parcels of the atlas vanish; use a finer resolution")


def smooth_components(centroids: np.ndarray, n_components: int, rng: np.random.Generator,
                      length_mm: float = 35.0) -> np.ndarray:
    """Orthonormal, spatially smooth, zero-mean parcel maps (n_components x parcels), unit SD across parcels."""
    d2 = ((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    kernel = np.exp(-d2 / (2 * length_mm**2))
    raw = kernel @ rng.standard_normal((centroids.shape[0], n_components))
    raw -= raw.mean(axis=0)
    q, _ = np.linalg.qr(raw)
    maps = q.T * np.sqrt(centroids.shape[0])
    return maps / maps.std(axis=1, keepdims=True)


def network_loadings(centroids: np.ndarray) -> np.ndarray:
    """Three networks (frontal, posterior, temporal/ventral anchors): primary loading on the nearest anchor."""
    anchors = np.array([[0.0, 40.0, 20.0], [0.0, -65.0, 30.0], [0.0, -15.0, -20.0]])
    pos = centroids.copy()
    pos[:, 0] = np.abs(pos[:, 0]) * 0.3  # both hemispheres join the same networks
    nearest = np.argmin(((pos[:, None, :] - anchors[None]) ** 2).sum(-1), axis=1)
    loadings = np.full((centroids.shape[0], 3), OTHER_LOADING)
    loadings[np.arange(centroids.shape[0]), nearest] = PRIMARY_LOADING
    return loadings


def expected_correlation(gain: np.ndarray, loadings: np.ndarray, parcel_var: np.ndarray) -> np.ndarray:
    """Population correlation of parcel means (see the module docstring)."""
    shared = loadings @ loadings.T
    r = np.outer(gain, gain) * shared / np.sqrt(np.outer(parcel_var, parcel_var))
    np.fill_diagonal(r, 1.0)
    return r


def expected_gbc(gain: np.ndarray, loadings: np.ndarray, parcel_var: np.ndarray) -> np.ndarray:
    from bids_ketamine.connectivity.gbc import analytic_gbc

    return analytic_gbc(expected_correlation(gain, loadings, parcel_var))


def solve_gains(target_gbc: np.ndarray, start: np.ndarray, loadings: np.ndarray, parcel_var: np.ndarray,
                tol: float = 1e-10, max_iter: int = 100) -> np.ndarray:
    """Gains whose expected GBC equals ``target_gbc`` (damped Newton with the analytic Jacobian).

    The unknowns are ``u_p = log(s_p)`` with gain ``g_p = s_p / sqrt(1 + s_p^2 |L0_p|^2)``: any real ``u`` gives a
    valid model (gain below the unit-variance bound), so the solver needs no clipping.
    """
    norm2 = (loadings**2).sum(axis=1)
    shared = loadings @ loadings.T / np.sqrt(np.outer(parcel_var, parcel_var))
    np.fill_diagonal(shared, 0.0)
    n = target_gbc.size
    start = np.clip(start, 1e-6, 0.999 / np.sqrt(norm2))
    u = np.log(start / np.sqrt(1 - start**2 * norm2))

    def gbc_of(u_: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s_ = np.exp(np.clip(u_, -30.0, 30.0))
        g_ = s_ / np.sqrt(1 + s_**2 * norm2)
        r_ = np.outer(g_, g_) * shared
        return g_, r_, np.arctanh(r_).sum(axis=1) / (n - 1)

    gain, r, g = gbc_of(u)
    for _ in range(max_iter):
        resid = target_gbc - g
        if np.max(np.abs(resid)) < tol:
            return gain
        w = shared / (1 - r**2)
        jac = w * gain[:, None]  # d gbc_p / d g_q (q != p) = g_p k_pq / (1 - r_pq^2)
        jac[np.diag_indices(n)] = (w * gain[None, :]).sum(axis=1)
        s = np.exp(np.clip(u, -30.0, 30.0))
        jac = jac * (s * (1 + s**2 * norm2) ** -1.5)[None, :] / (n - 1)
        step = np.linalg.solve(jac, resid)
        for damping in (1.0, 0.5, 0.25, 0.125, 0.0625):
            trial = u + damping * step
            gain_t, r_t, g_t = gbc_of(trial)
            if np.max(np.abs(target_gbc - g_t)) < np.max(np.abs(resid)):
                u, gain, r, g = trial, gain_t, r_t, g_t
                break
        else:
            break
    raise ValueError("cannot plant the requested delta-GBC map: it leaves the range the model can reach; lower "
                     "component_sd or noise_sd")


def orthonormal_series(rng: np.random.Generator, n_series: int, n_volumes: int, repetition_time: float,
                       nuisance: np.ndarray | None = None, keep: np.ndarray | None = None,
                       high_pass_hz: float = 0.008) -> np.ndarray:
    """Random series (n_series x n_volumes) whose sample correlation over the ``keep`` frames is exactly zero, with
    unit variance there, and orthogonal there to the intercept, the cosine high-pass and ``nuisance``.

    So the planted correlation is exactly what a perfect pipeline sees after scrubbing and nuisance regression,
    instead of holding only in expectation. When the kept frames cannot hold that many series, the nuisance
    signals are dropped from the constraint, then the scrubbing, and finally plain white noise is returned.
    Censored frames get white noise.
    """
    from bids_ketamine.connectivity.denoise import cosine_basis

    white = rng.standard_normal((n_volumes, n_series))
    keep = np.ones(n_volumes, bool) if keep is None else np.asarray(keep, bool)
    basis = np.column_stack([np.ones(n_volumes), cosine_basis(n_volumes, repetition_time, high_pass_hz)])
    full = basis if nuisance is None else np.column_stack([basis, nuisance])
    for design, rows in ((full, keep), (basis, keep), (basis, np.ones(n_volumes, bool))):
        if n_series + design.shape[1] <= int(rows.sum()):
            break
    else:
        return white.T
    sub = white[rows]
    q_basis, _ = np.linalg.qr(design[rows])
    sub -= q_basis @ (q_basis.T @ sub)
    q, r = np.linalg.qr(sub)
    q *= np.sign(np.diag(r))
    out = white.copy()
    out[rows] = q * np.sqrt(int(rows.sum()))
    return out.T


def _ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    e = rng.standard_normal(n)
    out = np.empty(n)
    out[0] = e[0]
    for t in range(1, n):
        out[t] = phi * out[t - 1] + np.sqrt(1 - phi**2) * e[t]
    return sd * out


def spike_frames(rng: np.random.Generator, n_volumes: int, high_motion: bool) -> np.ndarray:
    """Frames of motion spikes: 2-4 per run at least 6 frames apart (every 5th frame when ``high_motion``)."""
    if high_motion:
        return np.arange(3, n_volumes - 2, 5)
    n = int(rng.integers(2, 5))
    candidates = np.arange(3, n_volumes - 3)
    chosen: list[int] = []
    for t in rng.permutation(candidates):
        if all(abs(int(t) - c) >= 6 for c in chosen):
            chosen.append(int(t))
        if len(chosen) == n:
            break
    return np.sort(np.asarray(chosen, dtype=int))


def expected_censored(spikes: np.ndarray, n_volumes: int, neighbours: int = 1) -> np.ndarray:
    """Frames the published rule censors for these spikes: flagged t and t+1, each with ``neighbours`` around."""
    flagged = np.zeros(n_volumes, bool)
    flagged[spikes] = True
    flagged[np.minimum(spikes + 1, n_volumes - 1)] = True
    cens = flagged.copy()
    for s in range(1, neighbours + 1):
        cens[s:] |= flagged[:-s]
        cens[:-s] |= flagged[s:]
    return np.flatnonzero(cens)


def _motion(rng: np.random.Generator, n_volumes: int, spikes: np.ndarray) -> np.ndarray:
    trans = np.cumsum(rng.normal(0, 0.008, (n_volumes, 3)), axis=0)
    rot = np.cumsum(rng.normal(0, 0.00015, (n_volumes, 3)), axis=0)
    motion = np.column_stack([trans, rot])
    for t in spikes:
        axis = int(rng.integers(0, 3))
        motion[t, axis] += rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
    return motion


def _confounds_table(motion: np.ndarray, csf: np.ndarray, wm: np.ndarray, global_signal: np.ndarray) -> pd.DataFrame:
    from bids_ketamine.connectivity.scrubbing import framewise_displacement

    cols: dict[str, np.ndarray] = {}
    base = {"global_signal": global_signal, "csf": csf, "white_matter": wm}
    for name, values in base.items():
        cols[name] = values
        cols[f"{name}_derivative1"] = np.concatenate([[np.nan], np.diff(values)])
    for i, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        cols[name] = motion[:, i]
        cols[f"{name}_derivative1"] = np.concatenate([[np.nan], np.diff(motion[:, i])])
    fd = framewise_displacement(motion)
    fd[0] = np.nan
    cols["framewise_displacement"] = fd
    return pd.DataFrame(cols)


CONFOUNDS_SIDECAR = {
    "global_signal": {"Description": "mean over the brain mask of the preprocessed BOLD"},
    "csf": {"Description": "planted CSF physiological signal (synthetic: no tissue segmentation)"},
    "white_matter": {"Description": "planted white-matter physiological signal (synthetic)"},
    "framewise_displacement": {"Description": "Power framewise displacement (50 mm head radius)", "Units": "mm"},
}


def write_synthetic_bold_cohort(bids_root: Path, fmriprep_root: Path, subjects: list[str],
                                conditions: dict[str, str], *, n_components: int, seed: int,
                                n_volumes: int = 150, resolution_mm: float = 8.0, repetition_time: float = 2.0,
                                component_sd: float = 0.035, noise_sd: float = 0.01,
                                high_motion: tuple[tuple[str, str], ...] = ()) -> dict[str, Any]:
    """Write raw BOLD and fMRIPrep-style derivatives for ``subjects`` x sessions; return the ground truth.

    ``conditions`` maps session label -> condition and must include ``placebo``; every other condition is a drug
    whose delta-GBC map per subject is ``sum_k weights[s][k] * components[k] + noise`` (``component_sd``: SD of a
    unit-weight component across parcels; ``noise_sd``: SD of the subject's own planted noise map). Subject
    weights are N(0, 1) truncated to [-2, 2], scaled by 1, 0.8, 0.64, ... per component. ``high_motion`` lists (subject, session) pairs
    that get so many spikes that scrubbing must exclude them.
    """
    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.connectivity.gbc import analytic_gbc
    from scipy import ndimage

    bids_root, fmriprep_root = Path(bids_root), Path(fmriprep_root)
    if "placebo" not in conditions.values():
        raise ValueError("conditions must include a 'placebo' session")
    drugs = sorted({c for c in conditions.values() if c != "placebo"})
    atlas = load_default_atlas()
    grid, affine = synthetic_grid(atlas, resolution_mm)
    names = atlas.names
    index = atlas.labels["index"].to_numpy()
    n_parcels = len(names)
    lookup = np.full(int(index.max()) + 1, -1)
    lookup[index] = np.arange(n_parcels)
    mask = ndimage.binary_dilation(grid > 0) | (grid > 0)
    mask_flat = np.flatnonzero(mask.ravel(order="F"))
    vox_parcel = lookup[grid.ravel(order="F")[mask_flat]]
    in_atlas = vox_parcel >= 0
    n_mask, n_shell = mask_flat.size, int((~in_atlas).sum())
    counts = np.bincount(vox_parcel[in_atlas], minlength=n_parcels)
    parcel_var = 1 + VOXEL_NOISE**2 / counts
    centroids = atlas.centroids_mm().loc[names].to_numpy()
    loadings = network_loadings(centroids)

    root_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    components = smooth_components(centroids, n_components, root_rng) * component_sd
    comp_scale = 0.8 ** np.arange(n_components)
    res = _res_label(resolution_mm)
    shape = grid.shape
    mask_bytes = _nifti_gz(mask.astype(np.uint8), affine)

    truth: dict[str, Any] = {
        "atlas": atlas.name, "parcels": names, "space": SPACE, "resolution_mm": resolution_mm,
        "n_volumes": n_volumes, "repetition_time": repetition_time, "drugs": drugs,
        "component_sd": component_sd, "noise_sd": noise_sd,
        "components": {f"C{k + 1}": dict(zip(names, components[k].round(8).tolist())) for k in range(n_components)},
        "weights": {}, "planted_delta": {}, "expected_gbc": {}, "expected_delta": {}, "spikes": {},
        "expected_censored": {}, "excluded_sessions": [],
        "model": __doc__.split("\n\n", 1)[1].strip(),
        "analytic_expectation": "expected_gbc[sub][ses] = mean_q artanh R[p,q] of the population correlation of "
                                "parcel means; expected_delta = expected GBC(drug) - GBC(placebo) = planted_delta "
                                "(to 1e-10); estimates differ from it by sampling noise of finite n_volumes",
    }
    for s_index, subject in enumerate(subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, s_index]))
        placebo_gain = 1 + PLACEBO_GAIN_SD * rng.standard_normal(n_parcels)
        g_placebo = expected_gbc(placebo_gain, loadings, parcel_var)
        gains = {"placebo": placebo_gain}
        truth["weights"][subject], truth["planted_delta"][subject] = {}, {}
        truth["expected_delta"][subject] = {}
        for drug in drugs:
            weights = rng.standard_normal(n_components)
            while np.abs(weights).max() > WEIGHT_LIMIT:  # truncated normal: extreme maps may leave the model
                weights = rng.standard_normal(n_components)
            weights = weights * comp_scale
            delta = weights @ components + noise_sd * rng.standard_normal(n_parcels)
            gains[drug] = solve_gains(g_placebo + delta, placebo_gain, loadings, parcel_var)
            achieved = expected_gbc(gains[drug], loadings, parcel_var) - g_placebo
            truth["weights"][subject][drug] = weights.round(8).tolist()
            truth["planted_delta"][subject][drug] = dict(zip(names, delta.round(8).tolist()))
            truth["expected_delta"][subject][drug] = dict(zip(names, achieved.round(8).tolist()))
        offsets = rng.normal(0, 50, n_mask)
        truth["expected_gbc"][subject], truth["spikes"][subject], truth["expected_censored"][subject] = {}, {}, {}
        for session, condition in sorted(conditions.items()):
            srng = np.random.default_rng(np.random.SeedSequence([seed, 2, s_index, sorted(conditions).index(session)]))
            gain = gains[condition]
            truth["expected_gbc"][subject][session] = dict(zip(
                names, analytic_gbc(expected_correlation(gain, loadings, parcel_var)).round(8).tolist()))
            artefact = _ar1(srng, n_volumes, 0.7, 8.0)
            csf, wm = _ar1(srng, n_volumes, 0.5, 5.0), _ar1(srng, n_volumes, 0.5, 5.0)
            spikes = spike_frames(srng, n_volumes, (subject, session) in set(map(tuple, high_motion)))
            motion = _motion(srng, n_volumes, spikes)
            keep = np.ones(n_volumes, bool)
            keep[expected_censored(spikes, n_volumes)] = False
            nuisance = np.column_stack([artefact, csf, wm, motion])
            nuisance = np.column_stack([nuisance, np.vstack([np.zeros((1, nuisance.shape[1])),
                                                             np.diff(nuisance, axis=0)])])
            latent = orthonormal_series(srng, 3 + n_parcels, n_volumes, repetition_time, nuisance, keep)
            factors, own = latent[:3], latent[3:]
            unique = np.sqrt(np.clip(1 - gain**2 * (loadings**2).sum(1), 0, None))
            x = (gain[:, None] * loadings) @ factors + unique[:, None] * own
            data = np.empty((n_mask, n_volumes))
            data[in_atlas] = SIGNAL_SCALE * x[vox_parcel[in_atlas]]
            neural_sum = data[in_atlas].sum(axis=0)
            data[~in_atlas] = -neural_sum / n_shell
            data[in_atlas] += SIGNAL_SCALE * VOXEL_NOISE * srng.standard_normal((int(in_atlas.sum()), n_volumes))
            data[~in_atlas] += SHELL_NOISE * srng.standard_normal((n_shell, n_volumes))
            data += BASELINE + offsets[:, None]
            data += artefact[None, :]
            data += srng.normal(0.5, 0.3, n_mask)[:, None] * csf + srng.normal(0.5, 0.3, n_mask)[:, None] * wm
            data += srng.normal(0, 2.0, (n_mask, 6)) @ (motion - motion[0]).T
            for t in spikes:
                data[:, t] += SPIKE_IMAGE_SD * srng.standard_normal(n_mask)
            data = data.astype(np.float32)
            volume = np.zeros((int(np.prod(shape)), n_volumes), dtype=np.float32)
            volume[mask_flat] = data
            volume = volume.reshape((*shape, n_volumes), order="F")
            global_signal = data.astype(np.float64).mean(axis=0)
            truth["spikes"][subject][session] = spikes.tolist()
            censored = expected_censored(spikes, n_volumes)
            truth["expected_censored"][subject][session] = censored.tolist()
            if censored.size > 0.5 * n_volumes:
                truth["excluded_sessions"].append([subject, session])

            stem = f"sub-{subject}_ses-{session}_task-rest"
            raw_dir = bids_root / f"sub-{subject}" / f"ses-{session}" / "func"
            raw_bold = np.rint(volume).astype(np.int16)
            _write_bytes(raw_dir / f"{stem}_bold.nii.gz", _nifti_gz(raw_bold, affine, repetition_time))
            _write_json(raw_dir / f"{stem}_bold.json", {"RepetitionTime": repetition_time, "TaskName": "rest"})
            der_dir = fmriprep_root / f"sub-{subject}" / f"ses-{session}" / "func"
            prefix = f"{stem}_space-{SPACE}_res-{res}"
            _write_bytes(der_dir / f"{prefix}_desc-preproc_bold.nii.gz", _nifti_gz(volume, affine, repetition_time))
            _write_json(der_dir / f"{prefix}_desc-preproc_bold.json",
                        {"RepetitionTime": repetition_time, "TaskName": "rest", "SkullStripped": False,
                         "Sources": [f"bids:raw:sub-{subject}/ses-{session}/func/{stem}_bold.nii.gz"]})
            _write_bytes(der_dir / f"{prefix}_desc-brain_mask.nii.gz", mask_bytes)
            _write_json(der_dir / f"{prefix}_desc-brain_mask.json", {"Type": "Brain"})
            table = _confounds_table(motion, csf, wm, global_signal)
            text = table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g", lineterminator="\n")
            _write_bytes(der_dir / f"{stem}_desc-confounds_timeseries.tsv", text.encode())
            _write_json(der_dir / f"{stem}_desc-confounds_timeseries.json", CONFOUNDS_SIDECAR)
    return truth


def write_synthetic_gene_table(path: Path, truth: dict[str, Any], *, seed: int, n_random: int = 4,
                               planted_r: float = 0.8, atlas=None) -> dict[str, Any]:
    """A parcels x genes table for the cortex of the default atlas (or of ``atlas``, e.g. a surface parcellation),
    the demo's stand-in for AHBA expression.

    ``PLANTED_C1`` follows the first planted delta-GBC component (correlation ``planted_r`` in expectation, the rest
    independent noise); ``RANDOM1..`` are smooth Gaussian fields (30 mm) unrelated to anything. Written so the demo
    exercises the gene analysis end to end; the values are synthetic, not expression data. Returns its ground truth.
    """
    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.connectivity.genes import smooth_random_maps

    atlas = load_default_atlas() if atlas is None else atlas
    cortex = [p for p in atlas.labels.query("structure == 'cortex'")["name"] if p in truth["components"]["C1"]]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    c1 = np.array([truth["components"]["C1"][p] for p in cortex])
    c1 = (c1 - c1.mean()) / c1.std()
    planted = planted_r * c1 + np.sqrt(1 - planted_r ** 2) * rng.standard_normal(c1.size)
    xyz = atlas.centroids_mm().loc[cortex].to_numpy()
    table = pd.DataFrame({"parcel": cortex, "PLANTED_C1": planted.round(6)})
    for k, values in enumerate(smooth_random_maps(xyz, n_random, length_mm=30.0, rng=rng), start=1):
        table[f"RANDOM{k}"] = values.round(6)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_bytes(path, table.to_csv(sep="\t", index=False, lineterminator="\n").encode())
    return {"table": path.name, "planted_gene": "PLANTED_C1", "planted_component": "C1",
            "planted_r_expected": planted_r, "random_genes": [f"RANDOM{k}" for k in range(1, n_random + 1)]}
