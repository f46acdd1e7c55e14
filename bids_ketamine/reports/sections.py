"""Which output file goes in which report section, with which caption: one table, read by both reports.

Why one table: the analyses name their figures and tables themselves, so the reports discover them from the
output folder. Each row is one item a reader expects (the list of issue 6); a row's ``pattern`` is a regular
expression searched (case-insensitive) in the file's path relative to the output folder. The first matching row of
the file's analysis wins, so specific rows come before general ones. A file that matches no row still appears, under
"Other outputs" of its analysis, so nothing an analysis writes is hidden. Which analysis wrote a file is taken from
the writer's completion records and the run records when they name it, and from ``ANALYSIS_HINTS`` otherwise.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ItemRule:
    """One expected report item: a figure or a table of an analysis at one level."""

    level: str  # "participant" or "group"
    analysis: str  # "inventory", "structural", "connectivity", "spectroscopy"
    kind: str  # "figure" or "table"
    key: str  # stable identifier (used as an HTML id)
    pattern: str  # regular expression searched in the relative path (case-insensitive)
    caption: str
    #: produced only when the data allow (e.g. a voxel position needs an MRS header with an orientation)
    optional: bool = False
    #: for a table item: columns (regular expression) of the analysis' other tables that hold the same content
    #: (TIV as a column of the regional table, QC columns in the fit table); then the item is shown from there
    column: str = ""
    #: for a figure item: NIfTI outputs (regular expression on their content words) the report may draw on a glass
    #: brain when the analysis wrote no figure of its own (drawing a written map is display, not recomputation)
    image: str = ""

    def matches(self, relpath: str) -> bool:
        return re.search(self.pattern, relpath, flags=re.IGNORECASE) is not None


#: Report sections in order: id, title, analysis whose outputs fill it (None: built from the run records).
PARTICIPANT_SECTIONS = (
    ("qc", "QC verdict", None),
    ("inventory", "Input inventory", "inventory"),
    ("anatomy", "Anatomy", "structural"),
    ("connectivity", "Connectivity", "connectivity"),
    ("spectroscopy", "Spectroscopy", "spectroscopy"),
    ("errors", "Errors and exclusions", None),
    ("methods", "Methods", None),
)
GROUP_SECTIONS = (
    ("prediction", "Outcome prediction (structural)", "structural"),
    ("heterogeneity", "Heterogeneity of the functional response (connectivity)", "connectivity"),
    ("spectroscopy", "Glutamate during the infusion (spectroscopy)", "spectroscopy"),
    ("errors", "Errors and exclusions", None),
    ("methods", "Methods", None),
)

_FIG = r"\.(svg|png)$"
_TSV = r"\.tsv$"

#: The mapping: every item the reports look for (order matters: first match of an analysis wins).
ITEM_RULES: tuple[ItemRule, ...] = (
    # ------------------------------------------------------------------ participant: inventory
    ItemRule("participant", "inventory", "table", "inventory", r"(^|_)inventory" + _TSV,
             "What each analysis uses for this participant, or what is missing and why"),
    # ------------------------------------------------------------------ participant: anatomy
    # before the general anatomy figure rule, which a figure name with an atlas or site word could match
    ItemRule("participant", "structural", "figure", "model-prediction", r"desc-model_prediction" + _FIG,
             "Saved model applied to this patient: probability on the calibration map (with interval), score "
             "among the training classes, regions that drove the score (summary, flags and limitations below)",
             optional=True),
    ItemRule("participant", "structural", "figure", "gm-over-t1w",
             r"(gm|grey|gray|probseg|segment|mosaic|anat|t1w|structural|qc)[^/]*" + _FIG,
             "Modulated grey-matter map over the T1w in MNI space"),
    ItemRule("participant", "structural", "table", "tiv", r"(tiv|intracranial)[^/]*" + _TSV,
             "Total intracranial volume", column=r"^(e?tiv|.*intracranial).*"),
    ItemRule("participant", "structural", "table", "regional-gm", r"(^|_)morph" + _TSV,
             "Regional grey-matter volumes (and TIV where the table carries it)"),
    # ------------------------------------------------------------------ participant: connectivity
    ItemRule("participant", "connectivity", "figure", "fd",
             r"(fd|framewise|motion|scrub|censor)[^/]*" + _FIG,
             "Framewise displacement with the scrubbed frames marked"),
    ItemRule("participant", "connectivity", "figure", "carpet", r"carpet[^/]*" + _FIG, "Carpet plot"),
    ItemRule("participant", "connectivity", "figure", "delta-gbc",
             r"(minus|delta|diff|change)[^/]*" + _FIG, "Delta-GBC map (drug minus placebo)"),
    ItemRule("participant", "connectivity", "figure", "gbc-map", r"(gbc|connectivity|conn)[^/]*" + _FIG,
             "Global brain connectivity map per session"),
    ItemRule("participant", "connectivity", "table", "delta-gbc-table", r"(minus|delta)[^/]*gbc" + _TSV,
             "Delta-GBC per parcel (drug minus placebo)"),
    ItemRule("participant", "connectivity", "table", "gbc-table", r"(^|_)gbc" + _TSV, "GBC per parcel per session"),
    ItemRule("participant", "connectivity", "table", "scrubbing",
             r"(scrub|censor|motion|outlier|qc)[^/]*" + _TSV, "Scrubbing and motion summary"),
    ItemRule("participant", "connectivity", "table", "relmat", r"(^|_)relmat" + _TSV,
             "Connectivity matrix (Fisher z)", optional=True),
    ItemRule("participant", "connectivity", "table", "timeseries", r"(^|_)timeseries" + _TSV,
             "Parcel time series", optional=True),
    # ------------------------------------------------------------------ participant: spectroscopy
    ItemRule("participant", "spectroscopy", "figure", "voxel",
             r"(voxel|position|placement|svsloc|location|roi)[^/]*" + _FIG, "Voxel position on the T1w", optional=True),
    ItemRule("participant", "spectroscopy", "figure", "timecourse",
             r"(glx|time|course|infusion|dynamic|tnaa)[^/]*" + _FIG, "Glx/tNAA over the infusion"),
    ItemRule("participant", "spectroscopy", "figure", "fit",
             r"(fit|spec|svs|mrs|block)[^/]*" + _FIG,
             "Fit per spectrum or block: data, fit, baseline and residual"),
    ItemRule("participant", "spectroscopy", "table", "qc", r"(qc|quality)[^/]*" + _TSV, "Spectral quality control",
             column=r"(crlb|snr|fwhm|linewidth|qc|flag)"),
    ItemRule("participant", "spectroscopy", "table", "mrsfit", r"(^|_)mrsfit" + _TSV,
             "Fitted concentrations with CRLB and QC columns"),
    # ------------------------------------------------------------------ group: prediction
    ItemRule("group", "structural", "figure", "roc", r"roc[^/]*" + _FIG, "ROC curve with confidence band"),
    ItemRule("group", "structural", "figure", "confusion", r"confusion[^/]*" + _FIG, "Confusion matrix"),
    ItemRule("group", "structural", "figure", "permutation", r"(perm|null|histogram)[^/]*" + _FIG,
             "Permutation distribution with the observed value"),
    ItemRule("group", "structural", "figure", "cohorts", r"(cohorts|external|saline|compar)[^/]*" + _FIG,
             "External and saline cohorts side by side (else: the per-cohort figures above)", optional=True),
    ItemRule("group", "structural", "figure", "weights", r"(weight|glass|haufe|pattern|brain)[^/]*" + _FIG,
             "Weight map (Haufe pattern) on a glass brain", image=r"(haufe|weight)"),
    ItemRule("group", "structural", "table", "metrics", r"(^|_)metrics" + _TSV,
             "Performance per cohort (BAC, sensitivity, specificity, AUC, permutation p)"),
    ItemRule("group", "structural", "table", "weights-table", r"(^|_)weights" + _TSV, "Regional weight table"),
    ItemRule("group", "structural", "table", "predictions", r"(^|_)predictions" + _TSV, "Per-subject predictions"),
    # ------------------------------------------------------------------ group: heterogeneity
    ItemRule("group", "connectivity", "figure", "scree", r"(scree|explained|variance)[^/]*" + _FIG,
             "Scree plot against the permutation null band"),
    ItemRule("group", "connectivity", "figure", "gene", r"(gene|sst|pvalb|ahba|expression)[^/]*" + _FIG,
             "Gene correlation with its spatial null distribution"),
    ItemRule("group", "connectivity", "figure", "participation",
             r"(participation|dimension|desc-pr|_pr[_.])[^/]*" + _FIG, "Participation ratio across drugs"),
    ItemRule("group", "connectivity", "figure", "scores", r"(score|subject)[^/]*" + _FIG, "Subject score plot"),
    ItemRule("group", "connectivity", "figure", "pc-maps", r"(pc\d*|component|map|mean)[^/]*" + _FIG,
             "Principal component maps (z-scored)", image=r"(pc\d+|component)"),
    ItemRule("group", "connectivity", "table", "mean-map", r"mean[^/]*gbc" + _TSV, "Mean delta-GBC map"),
    ItemRule("group", "connectivity", "table", "components", r"(^|_)components" + _TSV,
             "Principal components: explained variance and null"),
    ItemRule("group", "connectivity", "table", "scores-table", r"(^|_)scores" + _TSV, "Subject scores"),
    ItemRule("group", "connectivity", "table", "null", r"((^|_)null|nullcalibration)[^/]*" + _TSV,
             "Null distributions and their calibration"),
    ItemRule("group", "connectivity", "table", "conn-stats", r"(^|_)stats" + _TSV,
             "Statistics (participation ratio comparison, gene correlations)"),
    # ------------------------------------------------------------------ group: spectroscopy
    ItemRule("group", "spectroscopy", "figure", "madrs", r"madrs[^/]*" + _FIG, "MADRS change"),
    ItemRule("group", "spectroscopy", "figure", "group-timecourse",
             r"(glx|time|course|tnaa|pretreat|infusion)[^/]*" + _FIG,
             "Group Glx/tNAA over time by pretreatment with confidence intervals"),
    ItemRule("group", "spectroscopy", "table", "madrs-table", r"madrs[^/]*" + _TSV, "MADRS change by condition"),
    ItemRule("group", "spectroscopy", "table", "group-timecourse-table", r"(timecourse|course|block)[^/]*" + _TSV,
             "Group Glx/tNAA per block (means with confidence intervals)"),
    ItemRule("group", "spectroscopy", "table", "mixed-model", r"(model|lmm|mixed|stat)[^/]*" + _TSV,
             "Linear mixed model (pretreatment x time)"),
)

#: Fallback attribution of a file to an analysis by words in its path (when no record names its analysis).
ANALYSIS_HINTS: tuple[tuple[str, str], ...] = (
    ("spectroscopy", r"(/mrs/|_svs|_mrs\.|mrsfit|glx|tnaa|spectr|fmrs|madrs|pretreat|naltrexone)"),
    ("connectivity", r"(/func/|bold|gbc|relmat|_timeseries|carpet|framewise|scrub|scree|participation|"
                     r"gene|pvalb|minusplacebo|pca|dimensionality|nullcalibration|statmap)"),
    ("structural", r"(/anat/|_morph|t1w|probseg|tiv|roc|confusion|weights|predictions?|metrics|saline|external|"
                   r"haufe|/structural/)"),
)


def rules_for(level: str, analysis: str) -> list[ItemRule]:
    return [r for r in ITEM_RULES if r.level == level and r.analysis == analysis]


def guess_analysis(relpath: str) -> str | None:
    """The analysis a file probably belongs to, from words in its path (None when nothing says)."""
    if re.search(r"_inventory\.(tsv|json)$", relpath):
        return "inventory"
    parts = relpath.split("/")
    if len(parts) > 2 and parts[0] == "group" and parts[1] in ("structural", "connectivity", "spectroscopy"):
        return parts[1]
    for analysis in ("structural", "connectivity", "spectroscopy"):  # the analysis named in the file name
        if re.search(rf"(^|[_/.-]){analysis}([_/.-]|$)", parts[-1]):
            return analysis
    for analysis, pattern in ANALYSIS_HINTS:
        if re.search(pattern, relpath, flags=re.IGNORECASE):
            return analysis
    return None


#: Entities whose values are the user's labels (a task may be called "infusion"), not words about the content.
_LABEL_ENTITIES = re.compile(r"(^|_)(sub|ses|task|acq|ce|rec|dir|run|echo|space|cohort|res|den|atlas)-[a-zA-Z0-9+]+")


def content_words(relpath: str) -> str:
    """A file name without the label entities: ``sub-01_task-infusion_desc-fit_svs.svg`` -> ``_desc-fit_svs.svg``."""
    return _LABEL_ENTITIES.sub("", relpath.rsplit("/", 1)[-1])


def match_rule(level: str, analysis: str, kind: str, relpath: str) -> ItemRule | None:
    """First rule of this level, analysis and kind whose pattern is found in the file name's content words."""
    name = content_words(relpath)
    for rule in rules_for(level, analysis):
        if rule.kind == kind and rule.matches(name):
            return rule
    return None
