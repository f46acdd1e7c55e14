"""The synthetic study: three cohorts in one BIDS dataset, with fMRIPrep-style derivatives and a ground-truth file.

- structural: a discovery ketamine cohort (several sites), an external ketamine cohort at unseen sites and a saline
  cohort; responders (>= 50 % MADRS reduction at 24 h) have more frontal and less cerebellar grey matter, saline
  responders do not differ;
- connectivity: healthy volunteers with placebo and ketamine resting BOLD whose delta-GBC maps carry a known number
  of individual-difference components;
- spectroscopy: a naltrexone/placebo crossover with fMRS during the ketamine infusion, where Glx rises less after
  naltrexone, and MADRS improves less; each subject has a T1w with sMRIPrep-style tissue maps, and the MRS voxel
  sits in its pregenual anterior cingulate with the planted tissue fractions.
Every planted effect is written to ``code/ground_truth.json``; the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm

from bids_ketamine.__about__ import __version__

PARTS = {"anat": "bids_ketamine.synthetic.anat", "bold": "bids_ketamine.synthetic.bold",
         "mrs": "bids_ketamine.synthetic.mrs"}
FMRIPREP = "derivatives/fmriprep"


@dataclass(frozen=True)
class StudySize:
    """How many participants each cohort has (``demo`` for the README's demo, ``small`` for the tests)."""

    discovery_sites: tuple[str, ...]
    external_sites: tuple[str, ...]
    saline_sites: tuple[str, ...]
    n_discovery: int
    n_external: int
    n_saline: int
    n_connectivity: int
    n_fmrs: int
    n_components: int = 2
    n_volumes: int = 150
    n_transients: int = 128


SIZES = {
    # the README demo (at most 300 s on 2 cores with both levels): 60 discovery T1w keep the planted signature's
    # permutation p well under 0.05; the external and saline cohorts are kept to 12 each (6 per site, over the
    # harmonisation's min_unseen_site_size), which is enough to show them but not to test them with power
    "demo": StudySize(("siteA", "siteB", "siteC"), ("siteD", "siteE"), ("siteA", "siteB"), 60, 12, 12, 20, 10),
    "small": StudySize(("siteA", "siteB"), ("siteD",), ("siteA",), 24, 10, 10, 8, 4, n_volumes=120,
                       n_transients=64),
}
#: Separation (in SD of the latent grey-matter score) between ketamine responders and non-responders.
GM_SEPARATION = 1.5
#: Fractional GM shift per site (site effect), drawn once per site.
SITE_SD = 0.04


def part_available(part: str) -> bool:
    """Whether this installation has the writer of a study part (anat, bold, mrs)."""
    try:
        importlib.import_module(PARTS[part])
    except ModuleNotFoundError:
        return False
    return True


def derived_seed(seed: int, *keys: str) -> int:
    """A stable 32-bit seed for one component of the study (independent of order and of Python's hash salt)."""
    digest = hashlib.sha256(":".join([str(seed), *keys]).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _tsv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "n/a"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    return "\n".join(["\t".join(columns), *("\t".join(fmt(r.get(c)) for c in columns) for r in rows)]) + "\n"


PARTICIPANT_SIDECAR = {
    "participant_id": {"Description": "participant label"},
    "study": {"Description": "which synthetic cohort the participant belongs to",
              "Levels": {"structural": "T1w prediction cohorts", "connectivity": "placebo/ketamine BOLD",
                         "spectroscopy": "naltrexone/placebo fMRS crossover"}},
    "site": {"Description": "acquisition site"},
    "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
    "age": {"Description": "age", "Units": "year"},
    "arm": {"Description": "treatment arm of the prediction cohorts",
            "Levels": {"ketamine": "ketamine 0.5 mg/kg", "saline": "saline infusion"}},
    "cohort": {"Description": "prediction cohort", "Levels": {"discovery": "model training", "external": "held out"}},
    "madrs_baseline": {"Description": "MADRS before the infusion"},
    "madrs_24h": {"Description": "MADRS 24 h after the infusion"},
}


def _madrs(rng: np.random.Generator, responder: bool) -> tuple[float, float]:
    baseline = float(np.clip(np.round(rng.normal(31, 5)), 20, 50))
    reduction = rng.uniform(0.55, 0.95) if responder else rng.uniform(0.0, 0.42)
    return baseline, float(np.round(baseline * (1 - reduction)))


def _write_anats(write, root: Path, fmriprep: Path, jobs: list[tuple[str, dict[str, Any]]], n_jobs: int
                 ) -> list[dict[str, Any]]:
    """``write(root, fmriprep, label, **kwargs)`` for every job, on ``n_jobs`` processes, results in job order.

    Each T1w has its own derived seed and its own files, so the order they are written in does not change a byte.
    """
    if n_jobs <= 1 or len(jobs) < 2:
        return [write(root, fmriprep, label, **kwargs) for label, kwargs in jobs]
    from joblib import Parallel, delayed

    return Parallel(n_jobs=n_jobs)(delayed(write)(root, fmriprep, label, **kwargs) for label, kwargs in jobs)


def write_study(root: str | Path, *, seed: int = 20240601, size: str = "demo",
                parts: tuple[str, ...] = ("anat", "bold", "mrs"), n_jobs: int = 1) -> dict[str, Any]:
    """Write the synthetic BIDS study under ``root`` and return its ground truth (also in code/ground_truth.json).

    Parts whose writer this installation lacks raise ``ModuleNotFoundError``; ask ``part_available`` first.
    ``n_jobs`` processes write the T1w images (the same bytes for any ``n_jobs``).
    """
    root = Path(root)
    spec = SIZES[size]
    rng = np.random.default_rng(derived_seed(seed, "study"))
    root.mkdir(parents=True, exist_ok=True)
    _write(root / "dataset_description.json", json.dumps({
        "Name": "bids_ketamine synthetic ketamine study", "BIDSVersion": "1.10.0", "DatasetType": "raw",
        "License": "CC0", "Authors": ["bids_ketamine synthetic generator"],
        "GeneratedBy": [{"Name": "bids_ketamine.synthetic", "Version": __version__}],
    }, indent=2) + "\n")
    _write(root / "README", "Synthetic study written by bids_ketamine.synthetic.study (seed "
                            f"{seed}, size {size}). Planted effects: code/ground_truth.json.\n")
    fmriprep = root / FMRIPREP
    _write(fmriprep / "dataset_description.json", json.dumps({
        "Name": "fMRIPrep-style derivatives (synthetic)", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bids_ketamine.synthetic", "Version": __version__,
                         "Description": "written in the layout and naming of fMRIPrep/sMRIPrep outputs"}],
        "SourceDatasets": [{"URL": "bids::"}],
    }, indent=2) + "\n")
    truth: dict[str, Any] = {"seed": seed, "size": size, "version": __version__}
    rows: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- structural cohorts
    if "anat" in parts:
        anat = importlib.import_module(PARTS["anat"])
        sites = sorted({*spec.discovery_sites, *spec.external_sites, *spec.saline_sites})
        site_offset = {s: float(rng.normal(0, SITE_SD)) for s in sites}
        anat_truth: dict[str, Any] = {"subjects": {}, "site_offset": site_offset}
        cohorts = [("d", "discovery", "ketamine", spec.discovery_sites, spec.n_discovery),
                   ("x", "external", "ketamine", spec.external_sites, spec.n_external),
                   ("s", "discovery", "saline", spec.saline_sites, spec.n_saline)]
        anat_jobs: list[tuple[str, dict[str, Any]]] = []
        for prefix, cohort, arm, cohort_sites, n in cohorts:
            for i in range(n):
                label = f"{prefix}{i + 1:03d}"
                site = cohort_sites[i % len(cohort_sites)]
                if arm == "ketamine":
                    responder = bool(rng.random() < 0.55)
                    gm_effect = float(rng.normal(GM_SEPARATION / 2 * (1 if responder else -1), 1))
                else:  # saline: response unrelated to grey matter
                    responder = bool(rng.random() < 0.3)
                    gm_effect = float(rng.normal(0, 1))
                base, after = _madrs(rng, responder)
                rows.append({"participant_id": f"sub-{label}", "study": "structural", "site": site,
                             "sex": "F" if rng.random() < 0.6 else "M", "age": float(np.round(rng.uniform(20, 65))),
                             "arm": arm, "cohort": cohort, "madrs_baseline": base, "madrs_24h": after})
                anat_jobs.append((label, {"gm_effect": gm_effect, "site_offset": site_offset[site],
                                          "seed": derived_seed(seed, "anat", label)}))
                anat_truth["subjects"][label] = {"responder": responder, "gm_effect": gm_effect, "arm": arm,
                                                 "cohort": cohort, "site": site}
        infos = _write_anats(anat.write_synthetic_anat, root, fmriprep, anat_jobs, n_jobs)
        if infos:  # the planted effect is the same for everyone; keep it once, without this machine's file paths
            anat_truth["effect"] = {k: v for k, v in infos[0].items() if k != "files"}
        anat_truth["gm_separation_sd"] = GM_SEPARATION
        anat_truth["bayes_auc_latent"] = float(norm.cdf(GM_SEPARATION / np.sqrt(2)))
        anat_truth["bayes_auc_note"] = ("AUC of the optimal classifier that sees the latent grey-matter score exactly "
                                        "(responders N(+d/2,1), non-responders N(-d/2,1)); image noise lowers the "
                                        "attainable AUC")
        anat_truth["saline_expected_auc"] = 0.5
        truth["structural"] = anat_truth

    # ---------------------------------------------------------------- connectivity cohort
    if "bold" in parts:
        bold = importlib.import_module(PARTS["bold"])
        labels = [f"h{i + 1:03d}" for i in range(spec.n_connectivity)]
        conditions = {"placebo": "placebo", "ketamine": "ketamine"}
        for label in labels:
            rows.append({"participant_id": f"sub-{label}", "study": "connectivity", "site": "siteH",
                         "sex": "F" if rng.random() < 0.5 else "M", "age": float(np.round(rng.uniform(20, 45)))})
            sess = [{"session_id": f"ses-{s}", "condition": c} for s, c in conditions.items()]
            _write(root / f"sub-{label}" / f"sub-{label}_sessions.tsv", _tsv(sess, ["session_id", "condition"]))
        truth["connectivity"] = bold.write_synthetic_bold_cohort(
            root, fmriprep, labels, conditions, n_components=spec.n_components,
            seed=derived_seed(seed, "bold"), n_volumes=spec.n_volumes)
        truth["connectivity"]["n_components"] = spec.n_components
        # a synthetic parcels x genes table (one gene follows planted component C1) so the gene analysis has input
        truth["connectivity"]["genes"] = bold.write_synthetic_gene_table(
            root / "code" / "genes.tsv", truth["connectivity"], seed=derived_seed(seed, "genes"))

    # ---------------------------------------------------------------- spectroscopy crossover
    if "mrs" in parts:
        mrs = importlib.import_module(PARTS["mrs"])
        labels = [f"m{i + 1:03d}" for i in range(spec.n_fmrs)]
        sexes = {label: ("F" if i % 2 else "M") for i, label in enumerate(labels)}
        sessions = {"placebo": "placebo", "naltrexone": "naltrexone"}
        improvement = {"placebo": 12.0, "naltrexone": 12.0 * (1 - 0.28)}
        madrs_truth = {
            "mean_improvement": improvement,
            "improvement_difference_naltrexone_minus_placebo": improvement["naltrexone"] - improvement["placebo"],
            # on the MADRS score (time 0 = baseline, 1 = 24 h; naltrexone = 1): the score falls less after naltrexone
            "pretreatment_x_time_score": improvement["placebo"] - improvement["naltrexone"],
        }
        for i, label in enumerate(labels):
            rows.append({"participant_id": f"sub-{label}", "study": "spectroscopy", "site": "siteM",
                         "sex": sexes[label], "age": float(np.round(rng.uniform(20, 60)))})
            # crossover order balanced within each sex (sex alternates with i), so period is estimable
            order = ["placebo", "naltrexone"] if (i // 2) % 2 == 0 else ["naltrexone", "placebo"]
            sess = []
            for period, ses in enumerate(order, start=1):
                base = float(np.clip(np.round(rng.normal(30, 4)), 20, 45))
                after = float(np.round(base - improvement[ses] + rng.normal(0, 2.5)))
                sess.append({"session_id": f"ses-{ses}", "condition": "ketamine", "pretreatment": sessions[ses],
                             "period": period, "madrs_baseline": base, "madrs_24h": after})
            sess.sort(key=lambda r: r["session_id"])
            _write(root / f"sub-{label}" / f"sub-{label}_sessions.tsv",
                   _tsv(sess, ["session_id", "condition", "pretreatment", "period", "madrs_baseline", "madrs_24h"]))
        # a T1w with sMRIPrep-style derivatives (T1w-space tissue maps included) per subject, and the MRS voxel in
        # the pregenual ACC of that anatomy: the tissue fractions of the water scaling come from its segmentation
        voxels: dict[str, dict] = {}
        if "anat" in parts:
            anat = importlib.import_module(PARTS["anat"])
            infos = _write_anats(anat.write_synthetic_anat, root, fmriprep, [
                (label, {"gm_effect": 0.0, "site_offset": 0.0, "seed": derived_seed(seed, "anat", label),
                         "mrs_voxel_mni": anat.MRS_VOXEL_MNI}) for label in labels], n_jobs)
            voxels = {label: info["mrs_voxel"] for label, info in zip(labels, infos)}
        truth["spectroscopy"] = mrs.write_synthetic_fmrs_cohort(root, sexes, sessions,
                                                                seed=derived_seed(seed, "mrs"),
                                                                n_transients=spec.n_transients, voxels=voxels)
        truth["spectroscopy"]["voxels"] = voxels
        truth["spectroscopy"]["madrs"] = madrs_truth

    columns = ["participant_id", "study", "site", "sex", "age", "arm", "cohort", "madrs_baseline", "madrs_24h"]
    rows.sort(key=lambda r: r["participant_id"])
    _write(root / "participants.tsv", _tsv(rows, columns))
    _write(root / "participants.json", json.dumps(PARTICIPANT_SIDECAR, indent=2) + "\n")
    _write(root / "code" / "ground_truth.json", json.dumps(truth, indent=2, sort_keys=True, default=float) + "\n")
    return truth
