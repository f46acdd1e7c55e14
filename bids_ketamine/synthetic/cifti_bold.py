"""Synthetic fMRIPrep fsLR CIFTI outputs (``space-fsLR_den-91k_bold.dtseries.nii``) with planted delta-GBC maps on a
surface parcellation: the input of the surface path of the connectivity analysis, end to end, without any volume.

The model is that of :mod:`bids_ketamine.synthetic.bold` on parcels of a surface parcellation (parcel positions: its
surface centroids on the fsLR midthickness): parcel signals ``x_p(t) = s_p * sum_k L0[p, k] f_k(t) + u_p e_p(t)``
with network factors, gains solved so that the expected GBC(drug) - GBC(placebo) equals the planted map
``sum_k w[s, k] C_k + noise``, and grayordinate values ``1000 + offset_v + 10 * (x_p(t) + 0.5 eps_v(t))`` plus CSF,
white-matter and motion-locked signals with grayordinate-specific weights. The latent series are exactly orthogonal
to the nuisance signals and the cosine high-pass (:func:`bids_ketamine.synthetic.bold.orthonormal_series`), so
nuisance regression without global-signal regression recovers the planted correlations. No motion spikes.

To stay small the dense series hold ``vertices_per_parcel`` fsLR 32k vertices of each parcel (a CIFTI brain model
may list any subset of a surface's vertices); the parcellation is matched to them vertex by vertex, as to fMRIPrep's
full 91k grayordinates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bids_ketamine.synthetic import bold as sb


def write_synthetic_cifti_cohort(fmriprep_root: Path, subjects: list[str], conditions: dict[str, str], atlas, *,
                                 n_components: int, seed: int, n_volumes: int = 120, repetition_time: float = 2.0,
                                 vertices_per_parcel: int = 2, component_sd: float = 0.035,
                                 noise_sd: float = 0.01) -> dict[str, Any]:
    """Write fMRIPrep-style fsLR dtseries and confounds for ``subjects`` x sessions on the cortical parcels of the
    surface parcellation ``atlas`` (:class:`bids_ketamine.surface_atlas.SurfaceAtlas`); return the ground truth
    (parcel names, planted components and per-subject planted and expected delta maps)."""
    from nibabel import cifti2

    from bids_ketamine.connectivity.gbc import analytic_gbc
    from bids_ketamine.surface import FSLR_32K_VERTICES

    fmriprep_root = Path(fmriprep_root)
    if "placebo" not in conditions.values():
        raise ValueError("conditions must include a 'placebo' session")
    drugs = sorted({c for c in conditions.values() if c != "placebo"})
    names = atlas.with_geometry()
    hemis = atlas.hemispheres(names)
    chosen: dict[str, list[tuple[int, int]]] = {"L": [], "R": []}       # (vertex, parcel position)
    for p, name in enumerate(names):
        hemi, vertices = atlas.parcel_vertices(name)
        for v in vertices[:: max(1, vertices.size // vertices_per_parcel)][:vertices_per_parcel]:
            chosen[hemi].append((int(v), p))
    parts, vox_parcel = [], []
    for hemi, structure in (("L", "CortexLeft"), ("R", "CortexRight")):
        pairs = sorted(chosen[hemi])
        if pairs:
            parts.append(cifti2.BrainModelAxis.from_surface(np.array([v for v, _ in pairs]), FSLR_32K_VERTICES,
                                                            structure))
            vox_parcel += [p for _, p in pairs]
    brain = parts[0] if len(parts) == 1 else parts[0] + parts[1]
    vox_parcel = np.asarray(vox_parcel)
    n_parcels, n_vox = len(names), vox_parcel.size
    counts = np.bincount(vox_parcel, minlength=n_parcels)
    parcel_var = 1 + sb.VOXEL_NOISE**2 / counts
    centroids = atlas.centroids_mm(names).to_numpy()
    loadings = sb.network_loadings(centroids)
    root_rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    components = sb.smooth_components(centroids, n_components, root_rng) * component_sd
    comp_scale = 0.8 ** np.arange(n_components)
    truth: dict[str, Any] = {
        "atlas": atlas.name, "parcels": names, "hemispheres": hemis, "space": "fsLR", "n_volumes": n_volumes,
        "repetition_time": repetition_time, "drugs": drugs, "vertices_per_parcel": vertices_per_parcel,
        "components": {f"C{k + 1}": dict(zip(names, components[k].round(8).tolist())) for k in range(n_components)},
        "weights": {}, "planted_delta": {}, "expected_delta": {},
    }
    for s_index, subject in enumerate(subjects):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1, s_index]))
        placebo_gain = 1 + sb.PLACEBO_GAIN_SD * rng.standard_normal(n_parcels)
        g_placebo = sb.expected_gbc(placebo_gain, loadings, parcel_var)
        gains = {"placebo": placebo_gain}
        for key in ("weights", "planted_delta", "expected_delta"):
            truth[key][subject] = {}
        for drug in drugs:
            weights = rng.standard_normal(n_components)
            while np.abs(weights).max() > sb.WEIGHT_LIMIT:
                weights = rng.standard_normal(n_components)
            weights = weights * comp_scale
            delta = weights @ components + noise_sd * rng.standard_normal(n_parcels)
            gains[drug] = sb.solve_gains(g_placebo + delta, placebo_gain, loadings, parcel_var)
            achieved = sb.expected_gbc(gains[drug], loadings, parcel_var) - g_placebo
            truth["weights"][subject][drug] = weights.round(8).tolist()
            truth["planted_delta"][subject][drug] = dict(zip(names, delta.round(8).tolist()))
            truth["expected_delta"][subject][drug] = dict(zip(names, achieved.round(8).tolist()))
        offsets = rng.normal(0, 50, n_vox)
        for session, condition in sorted(conditions.items()):
            srng = np.random.default_rng(np.random.SeedSequence([seed, 2, s_index, sorted(conditions).index(session)]))
            gain = gains[condition]
            csf, wm = sb._ar1(srng, n_volumes, 0.5, 5.0), sb._ar1(srng, n_volumes, 0.5, 5.0)
            motion = sb._motion(srng, n_volumes, np.array([], dtype=int))
            nuisance = np.column_stack([csf, wm, motion])
            nuisance = np.column_stack([nuisance, np.vstack([np.zeros((1, nuisance.shape[1])),
                                                             np.diff(nuisance, axis=0)])])
            latent = sb.orthonormal_series(srng, 3 + n_parcels, n_volumes, repetition_time, nuisance)
            factors, own = latent[:3], latent[3:]
            unique = np.sqrt(np.clip(1 - gain**2 * (loadings**2).sum(1), 0, None))
            x = (gain[:, None] * loadings) @ factors + unique[:, None] * own
            data = sb.SIGNAL_SCALE * (x[vox_parcel] + sb.VOXEL_NOISE * srng.standard_normal((n_vox, n_volumes)))
            data += sb.BASELINE + offsets[:, None]
            data += srng.normal(0.5, 0.3, n_vox)[:, None] * csf + srng.normal(0.5, 0.3, n_vox)[:, None] * wm
            data += srng.normal(0, 2.0, (n_vox, 6)) @ (motion - motion[0]).T
            global_signal = data.mean(axis=0)
            stem = f"sub-{subject}_ses-{session}_task-rest"
            der_dir = fmriprep_root / f"sub-{subject}" / f"ses-{session}" / "func"
            der_dir.mkdir(parents=True, exist_ok=True)
            img = cifti2.Cifti2Image(data.T.astype(np.float32),
                                     header=(cifti2.SeriesAxis(0.0, repetition_time, n_volumes), brain))
            img.to_filename(der_dir / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii")
            (der_dir / f"{stem}_space-fsLR_den-91k_bold.json").write_text(
                json.dumps({"RepetitionTime": repetition_time, "TaskName": "rest"}, indent=1) + "\n")
            table = sb._confounds_table(motion, csf, wm, global_signal)
            (der_dir / f"{stem}_desc-confounds_timeseries.tsv").write_text(
                table.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g", lineterminator="\n"))
            truth.setdefault("expected_gbc", {}).setdefault(subject, {})[session] = dict(zip(
                names, analytic_gbc(sb.expected_correlation(gain, loadings, parcel_var)).round(8).tolist()))
    return truth
