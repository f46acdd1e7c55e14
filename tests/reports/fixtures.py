"""A fixture output folder as the analyses and the orchestrator write it: real matplotlib figures, described tables,
sidecars with sources and parameters, completion records, run records, an inventory, a failure and an exclusion.

Written through the project's own writer (``DerivativesWriter``) and ``record_run``, so the formats stay those of a
real run. Used by the tests and by ``benchmarks/bench_reports.py``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bids_ketamine.io.derivatives import DerivativesWriter, atomic_write_bytes  # noqa: E402
from bids_ketamine.orchestrate import record_run  # noqa: E402

PARCELS = [f"{h}_{r}" for h in "LR" for r in ("superiorfrontal", "precuneus", "insula", "cuneus", "cerebellum")]

DEFAULT_PARAMETERS: dict[str, dict[str, Any]] = {
    "structural": {"features": {"source": "auto", "smoothing_fwhm": 4.0, "resolution_mm": 2.0},
                   "outer_folds": 5, "inner_folds": 5, "n_repeats": 10, "c_grid": [0.001, 0.01, 0.1, 1.0],
                   "n_permutations": 1000, "harmonize": True, "pca_components": None},
    "connectivity": {"participant": {"fd_threshold": 0.5, "dvars_ratio": 1.6, "neighbours": 1,
                                     "max_scrubbed_fraction": 0.5, "high_pass_hz": 0.008,
                                     "global_signal_regression": True},
                     "n_shuffles": 5000, "n_subsamples": 1000, "subsample_size": 22, "n_surrogates": 1000},
    "spectroscopy": {"fit": {"ppm_range": [0.2, 4.2], "baseline": "bspline", "macromolecules": "basis"},
                     "reject_transients": True},
}


def _fig(seed: int, kind: str):
    rng = np.random.default_rng(seed)
    fig, ax = plt.subplots(figsize=(6, 2.6))
    if kind == "fd":
        fd = np.abs(rng.normal(0.15, 0.1, 150))
        fd[[30, 31, 90]] = [0.9, 0.7, 1.1]
        ax.plot(fd, lw=0.8)
        ax.axhline(0.5, color="r", ls="--")
        for f in (29, 30, 31, 32, 89, 90, 91):
            ax.axvspan(f - 0.5, f + 0.5, color="r", alpha=0.2)
        ax.set(xlabel="frame", ylabel="FD (mm)")
    elif kind == "carpet":
        ax.imshow(rng.normal(size=(60, 150)), aspect="auto", cmap="gray")
        ax.set(xlabel="frame", ylabel="parcel")
    elif kind == "map":
        ax.bar(range(len(PARCELS)), rng.normal(size=len(PARCELS)))
        ax.set_xticks(range(len(PARCELS)), PARCELS, rotation=60, fontsize=6)
    elif kind == "spectrum":
        ppm = np.linspace(4.2, 0.2, 500)
        data = np.exp(-((ppm - 2.01) / 0.03) ** 2) + 0.6 * np.exp(-((ppm - 3.03) / 0.03) ** 2)
        noise = rng.normal(0, 0.03, ppm.size)
        ax.plot(ppm, data + noise, label="data")
        ax.plot(ppm, data, label="fit")
        ax.plot(ppm, 0.05 * np.sin(ppm), label="baseline")
        ax.plot(ppm, noise - 0.3, label="residual")
        ax.invert_xaxis()
        ax.legend(fontsize=6)
    elif kind == "roc":
        x = np.linspace(0, 1, 50)
        ax.plot(x, x ** 0.5)
        ax.fill_between(x, x ** 0.6, x ** 0.4, alpha=0.3)
        ax.plot([0, 1], [0, 1], "k--")
    elif kind == "hist":
        ax.hist(rng.normal(0.5, 0.05, 1000), bins=30)
        ax.axvline(0.72, color="r")
    else:
        ax.plot(rng.normal(size=(20, 3)).cumsum(axis=0))
    ax.set_title(kind)
    return fig


#: Rendered figures by (kind, seed mod 3, extension): drawing dominates the fixture's cost, and a report does not
#: care whether two participants' figures differ, so later participants reuse the bytes of earlier ones.
_FIGURE_BYTES: dict[tuple[str, int, str], bytes] = {}


def _write_fig(writer: DerivativesWriter, entities: dict, suffix: str, kind: str, seed: int,
               extension: str = ".svg") -> Path:
    rel = writer.relpath(entities, suffix, extension, "figures")
    if entities.get("ses"):  # as write_figure places session figures
        rel = Path(f"sub-{entities['sub']}") / "figures" / rel.name
    key = (kind, seed % 3, extension)
    if key in _FIGURE_BYTES:
        atomic_write_bytes(writer._target(rel), _FIGURE_BYTES[key])
        return writer.root / rel
    path = writer.write_figure(_fig(seed, kind), entities=entities, suffix=suffix, extension=extension)
    assert path == writer.root / rel
    _FIGURE_BYTES[key] = writer._target(rel).read_bytes()
    return path


def write_participant(writer: DerivativesWriter, sub: str, analyses: list[str], seed: int,
                      bids_dir: Path) -> list[dict[str, Any]]:
    """One participant's outputs, staged per analysis as a real run does; returns the job statuses."""
    statuses = []
    src = bids_dir / f"sub-{sub}"
    for analysis in analyses:
        if analysis == "spectroscopy" and sub.endswith("3"):  # a failure, as the node records it
            statuses.append({"subject": sub, "analysis": analysis, "ok": False, "exit_code": 65,
                             "message": f"{src}/ses-1/mrs/sub-{sub}_ses-1_svs.nii.gz: dwell time differs from the "
                                        "metabolite data. Fix: re-export the water reference."})
            continue
        with writer.staged(sub, analysis) as w:
            outputs = []
            if analysis == "structural":
                table = pd.DataFrame({"region": PARCELS, "gm_volume_mm3": np.linspace(4000, 9000, len(PARCELS))})
                outputs.append(w.write_table(table, entities={"sub": sub, "atlas": "DK"}, suffix="morph",
                                             datatype="anat", columns={"region": "atlas region",
                                                                       "gm_volume_mm3": {"Description": "GM volume",
                                                                                         "Units": "mm^3"}},
                                             sources=[src / "anat" / f"sub-{sub}_T1w.nii.gz"],
                                             parameters=DEFAULT_PARAMETERS["structural"]["features"]))
                outputs.append(w.write_table(pd.DataFrame({"tiv_mm3": [1.45e6]}), entities={"sub": sub,
                                                                                           "desc": "tiv"},
                                             suffix="morph", datatype="anat", columns={"tiv_mm3": "TIV"},
                                             sources=[src / "anat" / f"sub-{sub}_T1w.nii.gz"]))
                outputs.append(_write_fig(w, {"sub": sub, "desc": "gmqc"}, "T1w", "map", seed, ".png"))
                # what ``group --model`` writes for a scored participant (structural.apply)
                outputs.append(_write_fig(w, {"sub": sub, "atlas": "DK", "desc": "model"}, "prediction", "map", seed))
            elif analysis == "connectivity":
                for ses, cond in (("1", "placebo"), ("2", "ketamine")):
                    ent = {"sub": sub, "ses": ses, "task": "rest"}
                    gbc = pd.DataFrame({"parcel": PARCELS, "gbc": np.random.default_rng(seed).normal(size=10)})
                    outputs.append(w.write_table(gbc, entities={**ent, "atlas": "DK"}, suffix="gbc",
                                                 datatype="func", columns={"parcel": "parcel", "gbc": "GBC (z)"},
                                                 sources=[src / f"ses-{ses}" / "func"]))
                    outputs.append(_write_fig(w, {**ent, "desc": "fd"}, "bold", "fd", seed))
                    outputs.append(_write_fig(w, {**ent, "desc": "carpet"}, "bold", "carpet", seed, ".png"))
                    outputs.append(_write_fig(w, {**ent, "desc": "gbcmap"}, "bold", "map", seed))
                excluded = sub.endswith("1")  # ses-2 of the first participant moved too much (as CONN-A writes it)
                scrub = pd.DataFrame({"session": ["1", "2"], "run": ["n/a", "n/a"], "n_frames": [150, 150],
                                      "n_censored": [7, 93 if excluded else 9],
                                      "session_excluded": [False, excluded],
                                      "reason": ["n/a", "62.0 % of frames censored > 50 %" if excluded else "n/a"]})
                outputs.append(w.write_table(scrub, entities={"sub": sub, "desc": "scrubbing"}, suffix="stats",
                                             datatype="func", columns={
                                                 "session": "session label", "run": "run label",
                                                 "n_frames": "frames", "n_censored": "frames censored",
                                                 "session_excluded": "session excluded (censored fraction > 0.5)",
                                                 "reason": "why the session was excluded"}))
                delta = pd.DataFrame({"parcel": PARCELS, "delta_gbc": np.random.default_rng(seed + 1).normal(
                    size=10)})
                meta = {"ExcludedFrames": ["ses-2: 7 of 150 frames censored (FD > 0.5 mm and neighbours)"]}
                outputs.append(w.write_table(delta, entities={"sub": sub, "desc": "ketamineminusplacebo"},
                                             suffix="gbc", columns={"parcel": "parcel", "delta_gbc": "delta GBC"},
                                             sources=[], metadata=meta,
                                             parameters=DEFAULT_PARAMETERS["connectivity"]["participant"]))
                outputs.append(_write_fig(w, {"sub": sub, "desc": "ketamineminusplacebo"}, "gbc", "map", seed))
            elif analysis == "spectroscopy":
                if sub.endswith("1"):  # only where the header allows
                    outputs.append(_write_fig(w, {"sub": sub, "desc": "voxel"}, "svs", "map", seed))
                for ses in ("1", "2"):
                    ent = {"sub": sub, "ses": ses, "task": "infusion"}
                    fit = pd.DataFrame({"block": [1, 2, 3], "glx_tnaa": [0.61, 0.66, 0.70],
                                        "glx_crlb_percent": [6.1, 5.8, 6.4], "snr": [42.0, 40.0, 41.0]})
                    outputs.append(w.write_table(fit, entities=ent, suffix="mrsfit", datatype="mrs",
                                                 columns={c: c for c in fit.columns},
                                                 sources=[src / f"ses-{ses}" / "mrs"],
                                                 parameters=DEFAULT_PARAMETERS["spectroscopy"]["fit"]))
                    for block in ("1", "2", "3"):
                        outputs.append(_write_fig(w, {**ent, "block": block, "desc": "fit"}, "svs", "spectrum",
                                                  seed + int(block)))
                    outputs.append(_write_fig(w, {**ent, "desc": "glxtimecourse"}, "svs", "line", seed))
        statuses.append({"subject": sub, "analysis": analysis, "ok": True, "exit_code": 0,
                         "outputs": [str(o) for o in outputs]})
    return statuses


def _weight_map():
    """A small weight map in MNI space (2 mm grid): frontal positive, cerebellar negative."""
    import nibabel as nib

    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    data = np.zeros((91, 109, 91), dtype=np.float32)
    data[35:55, 80:95, 45:60] = 1.0
    data[30:60, 15:30, 15:30] = -0.8
    return nib.Nifti1Image(data, affine)


def write_group(writer: DerivativesWriter, analyses: list[str], seed: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for analysis in analyses:
        outs = []
        ent = {"desc": analysis}
        if analysis == "structural":  # names as the structural group level writes them
            base = {"atlas": "DK", "desc": "svm"}
            metrics = pd.DataFrame({"cohort": ["discovery", "external", "saline"], "bac": [0.72, 0.60, 0.41],
                                    "auc": [0.72, 0.65, 0.45], "p_permutation": [0.001, 0.01, 0.7]})
            outs.append(writer.write_table(metrics, entities=base, suffix="metrics",
                                           datatype="structural", columns={c: c for c in metrics.columns},
                                           parameters=DEFAULT_PARAMETERS["structural"]))
            weights = pd.DataFrame({"region": PARCELS, "activation": np.linspace(1, -1, 10)})
            outs.append(writer.write_table(weights, entities=base, suffix="weights", datatype="structural",
                                           columns={c: c for c in weights.columns}))
            outs.append(writer.write_nifti(_weight_map(), entities={"atlas": "DK", "desc": "haufe"},
                                           suffix="weights", datatype="structural"))
            for cohort in ("discovery", "external", "saline"):
                outs.append(_write_fig(writer, {**base, "cohort": cohort}, "roc", "roc", seed))
                outs.append(_write_fig(writer, {**base, "cohort": cohort}, "confusion", "map", seed))
            outs.append(_write_fig(writer, {**base, "cohort": "discovery"}, "null", "hist", seed))
        elif analysis == "connectivity":
            comp = pd.DataFrame({"component": [1, 2, 3], "explained_variance": [0.141, 0.104, 0.08],
                                 "null_p95": [0.09, 0.085, 0.08], "significant": [True, True, False]})
            outs.append(writer.write_table(comp, entities={"desc": "ketamine"}, suffix="components",
                                           datatype="connectivity", columns={c: c for c in comp.columns},
                                           parameters=DEFAULT_PARAMETERS["connectivity"]))
            outs.append(writer.write_json({"ketamine": {"NumberOfSignificantComponents": 2, "NumberOfSubjects": 20}},
                                          entities={"desc": "connectivity"}, suffix="summary"))
            for desc, kind in (("scree", "line"), ("pcmaps", "map"), ("scores", "line"),
                               ("participation", "hist"), ("genes", "hist")):
                outs.append(_write_fig(writer, {"desc": desc}, "connectivity", kind, seed))
        elif analysis == "spectroscopy":
            lmm = pd.DataFrame({"term": ["pretreatment:time", "sex:pretreatment:time"], "estimate": [-0.01, 0.004],
                                "ci_low": [-0.019, -0.002], "ci_high": [-0.001, 0.01], "p": [0.029, 0.2]})
            outs.append(writer.write_table(lmm, entities={"desc": "glxmodel"}, suffix="stats",
                                           datatype="spectroscopy", columns={c: c for c in lmm.columns}))
            for desc, kind in (("glxtimecourse", "line"), ("madrs", "line")):
                outs.append(_write_fig(writer, {"desc": desc}, "spectroscopy", kind, seed))
        del ent
        results[analysis] = {"ok": True, "outputs": [str(o) for o in outs]}
    return results


def make_output_folder(root: Path, *, subjects: tuple[str, ...] = ("01", "02", "03"),
                       analyses: tuple[str, ...] = ("structural", "connectivity", "spectroscopy"),
                       parameters: dict[str, dict[str, Any]] | None = None, seed: int = 7,
                       group: bool = True) -> Path:
    """Write a complete output folder under ``root/outputs`` (and a stand-in BIDS folder); return the output dir."""
    root = Path(root)
    bids_dir, out = root / "bids", root / "outputs"
    bids_dir.mkdir(parents=True, exist_ok=True)
    params = copy.deepcopy(parameters or DEFAULT_PARAMETERS)
    writer = DerivativesWriter(out, dataset_links={"raw": bids_dir})
    writer.init_dataset()
    jobs = []
    for i, sub in enumerate(subjects):
        rows = pd.DataFrame({"analysis": list(analyses), "runs": [True] * len(analyses),
                             "detail": [f"uses sub-{sub} inputs" for _ in analyses]})
        if sub.endswith("2") and "spectroscopy" in analyses:  # inputs missing: the inventory says why
            rows.loc[rows["analysis"] == "spectroscopy", ["runs", "detail"]] = [False, "no mrs/ svs data"]
        writer.write_table(rows, entities={"sub": sub}, suffix="inventory",
                           columns={"analysis": "analysis name", "runs": "whether it runs",
                                    "detail": "inputs used, or what is missing and why"},
                           sources=[bids_dir / f"sub-{sub}"])
        run = [a for a, r in zip(analyses, rows["runs"]) if r]
        jobs += write_participant(writer, sub, run, seed + i, bids_dir)
    cfg = SimpleNamespace(level="participant", output_dir=out)
    record = {"bids_dir": str(bids_dir), "output_dir": str(out), "random_seed": seed, "analyses": list(analyses),
              "design": {"response": {"kind": "madrs_reduction", "min_reduction": 0.5},
                         "fmrs": {"infusion_trial_type": "infusion", "block_seconds": 240.0}},
              "parameters": params}
    cfg.as_record = lambda: record
    from bids_ketamine.reports.boilerplate import software_versions

    record_run(cfg, writer, {"jobs": jobs, "software": software_versions()})
    if group:
        gcfg = SimpleNamespace(level="group", output_dir=out, as_record=lambda: record)
        record_run(gcfg, writer, {"group": write_group(writer, list(analyses), seed),
                                  "software": software_versions()})
    return out
