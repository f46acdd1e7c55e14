"""The headline result of each group analysis in one sentence, beside its published anchor, with a plain verdict.

Why here and not in the analyses: the findings only read the group tables the analyses wrote (nothing is
recomputed), and the same sentences serve three readers: the first section of ``group.html``, ``group/findings.json``
(pipelines and dashboards read it without parsing HTML) and the demo's closing lines. The wording of each sentence
and each verdict rule is decided once, in this module.

Verdict rules (what "replicates" means): every published claim of the anchor that this run can test is checked in
the published direction at ``ALPHA`` (the level the three papers used): "replicates" when all agree, "partly
replicates" when the main claim agrees and another does not, "does not replicate" when the main claim does not.
The main claims: discovery BAC above chance (Bryant et al. 2026); at least two principal components of delta-GBC
above the shuffle null, i.e. more than one axis of individual response (Moujaes, Ji et al. 2024); naltrexone
blunting the Glx/tNAA rise, a negative pretreatment x time term (Jelen et al. 2025).

Output files are found by their BIDS entities (``desc``, suffix) among the files the group run recorded for the
analysis, never by guessing words in names.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.reports.numbers import format_number as fmt

#: Significance level of every verdict (the level of the three anchor papers).
ALPHA = 0.05
FINDINGS_NAME = "findings.json"
FINDINGS_SCHEMA_VERSION = 1

#: Published figures (SCIENCE.md); shown beside each finding and stored in findings.json.
ANCHORS: dict[str, dict[str, Any]] = {
    "structural": {
        "citation": "Bryant et al., Transl Psychiatry 2026",
        "text": "discovery BAC 0.722 (n = 99); external BAC 0.6, AUC 0.65, p = 0.01 (n = 51); saline BAC 0.411 "
                "(n = 49, chance)",
        "values": {"discovery_bac": 0.722, "external_bac": 0.600, "external_p": 0.01, "saline_bac": 0.411},
    },
    "connectivity": {
        "citation": "Moujaes, Ji et al., eLife 2024",
        "text": "5 significant PCs, PC1 14.1 %, PC2 10.4 % of variance; ketamine participation ratio 12.8 (n = 22 "
                "subsamples); PC1 x SST expression r = 0.47",
        "values": {"n_significant_components": 5, "pc1_percent": 14.1, "pc2_percent": 10.4,
                   "participation_ratio_ketamine": 12.8, "pc1_sst_r": 0.47},
    },
    "spectroscopy": {
        "citation": "Jelen et al., Nat Med 2025",
        "text": "naltrexone blunted the Glx rise, pretreatment x time F(1,253) = 4.83, p = 0.029; and the MADRS "
                "improvement, F(1,74) = 5.39, p = 0.023",
        "values": {"glx_pretreatment_x_time_F": 4.83, "glx_p": 0.029, "madrs_F": 5.39, "madrs_p": 0.023},
    },
}
TITLES = {"structural": "Outcome prediction (structural)",
          "connectivity": "Heterogeneity of the functional response (connectivity)",
          "spectroscopy": "Glutamate during the infusion (spectroscopy)"}


@dataclass
class Finding:
    """One analysis' headline: a sentence, its anchor, a verdict and the numbers it was made from."""

    analysis: str
    status: str  # "ran" | "not-run" | "failed"
    sentence: str
    verdict: str  # "replicates" | "partly replicates" | "does not replicate" | "not run" | "failed"
    reason: str
    values: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    @property
    def anchor(self) -> dict[str, Any]:
        return ANCHORS[self.analysis]

    @property
    def title(self) -> str:
        return TITLES[self.analysis]


# ---------------------------------------------------------------------------------------------- reading tables
def entities_of(name: str) -> tuple[dict[str, str], str]:
    """BIDS entities and suffix of a file name: ``atlas-X_desc-svm_metrics.tsv`` -> ({atlas, desc}, metrics)."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    entities = dict(p.split("-", 1) for p in parts[:-1] if "-" in p)
    return entities, parts[-1]


def read_tsv(path: Path) -> list[dict[str, Any]]:
    """Rows of a TSV with numbers as floats (as written, full precision) and ``n/a`` as None."""
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return [{k: _value(v) for k, v in row.items()} for row in rows]


def _value(text: str | None) -> Any:
    if text is None or text in ("", "n/a"):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def _pick(files: list[Path], *, suffix: str, desc: str | None = None, desc_end: str | None = None) -> list[Path]:
    chosen = []
    for path in files:
        if not path.name.endswith(".tsv"):
            continue
        entities, sfx = entities_of(path.name)
        d = entities.get("desc", "")
        if sfx == suffix and (desc is None or d == desc) and (desc_end is None or d.endswith(desc_end)):
            chosen.append(path)
    return sorted(chosen)


class _NoTable(Exception):
    """The analysis ran but the table a finding needs is not in the output folder."""


def _p(value: float | None) -> str:
    return "n/a" if value is None else fmt(value)


def _ci(low: float | None, high: float | None) -> str:
    return f"[{_p(low)}, {_p(high)}]"


def _verdict(main: bool, others: list[bool]) -> str:
    if not main:
        return "does not replicate"
    return "replicates" if all(others) else "partly replicates"


# ---------------------------------------------------------------------------------------------- per analysis
def structural_finding(files: list[Path], rel) -> Finding:
    tables = _pick(files, suffix="metrics")
    if not tables:
        raise _NoTable("no structural metrics table (suffix metrics) was written")
    rows = read_tsv(tables[0])
    by = {(r["cohort"], r["metric"]): r for r in rows}
    values: dict[str, Any] = {}
    for cohort in ("discovery", "external", "saline"):
        bac, auc = by.get((cohort, "bac")), by.get((cohort, "auc"))
        if bac is None:
            continue
        values[cohort] = {"bac": bac["value"], "bac_ci_low": bac["ci_low"], "bac_ci_high": bac["ci_high"],
                          "p_permutation": bac["p_permutation"], "n_permutations": bac["n_permutations"],
                          "n_subjects": bac["n_subjects"], "auc": auc["value"] if auc else None}
    if "discovery" not in values:
        raise _NoTable(f"{rel(tables[0])} has no discovery BAC row")
    d = values["discovery"]
    parts = [f"Discovery BAC {fmt(d['bac'])} {_ci(d['bac_ci_low'], d['bac_ci_high'])}, permutation p = "
             f"{_p(d['p_permutation'])}, n = {fmt(d['n_subjects'])}"]
    for cohort in ("external", "saline"):
        if cohort in values:
            c = values[cohort]
            parts.append(f"{cohort} BAC {fmt(c['bac'])} {_ci(c['bac_ci_low'], c['bac_ci_high'])}, p = "
                         f"{_p(c['p_permutation'])}, n = {fmt(c['n_subjects'])}")
    sentence = "; ".join(parts) + "."

    def above_chance(c: dict[str, Any]) -> bool:
        return c["bac"] > 0.5 and c["p_permutation"] is not None and c["p_permutation"] < ALPHA

    main = above_chance(d)
    reasons = [f"discovery {'above' if main else 'not above'} chance (p {'<' if main else '>='} {fmt(ALPHA)})"]
    others = []
    if "external" in values:
        ok = above_chance(values["external"])
        others.append(ok)
        reasons.append(f"external {'above chance, as published' if ok else 'not above chance (published: p = 0.01)'}")
    if "saline" in values:
        saline = values["saline"]
        ok = not above_chance(saline)
        others.append(ok)
        below = saline["bac_ci_high"] is not None and saline["bac_ci_high"] < 0.5
        reasons.append("saline " + ("above chance (published: at chance)" if not ok else
                                    "not above chance, as published, but below it (BAC CI under 0.5)" if below else
                                    "at chance, as published"))
    return Finding("structural", "ran", sentence, _verdict(main, others), "; ".join(reasons), values,
                   [rel(tables[0])])


def connectivity_finding(files: list[Path], rel) -> Finding:
    stats = _pick(files, suffix="stats", desc_end="pca")
    if not stats:
        raise _NoTable("no PCA table (desc-<drug>pca, suffix stats) was written")
    by_drug = {entities_of(p.name)[0]["desc"][: -len("pca")]: p for p in stats}
    drug = "ketamine" if "ketamine" in by_drug else sorted(by_drug)[0]
    rows = read_tsv(by_drug[drug])
    n_sig = sum(1 for r in rows if r["significant"] is True)
    evr = [r["explained_variance_ratio"] for r in sorted(rows, key=lambda r: r["component"])]
    values: dict[str, Any] = {"drug": drug, "n_significant_components": n_sig,
                              "pc1_explained_variance_ratio": evr[0] if evr else None,
                              "pc2_explained_variance_ratio": evr[1] if len(evr) > 1 else None}
    sources = [rel(by_drug[drug])]
    dims = _pick(files, suffix="stats", desc="dimensionality")
    if dims:
        for r in read_tsv(dims[0]):
            if r["drug"] == drug:
                values["participation_ratio"] = r["pr_all_subjects"]
                values["n_subjects"] = r["n_subjects"]
        sources.append(rel(dims[0]))
    parts = [f"{n_sig} significant PC{'s' if n_sig != 1 else ''} of {drug} minus placebo delta-GBC above the "
             f"shuffle null"]
    if evr:
        parts.append(f"PC1 {fmt(100 * evr[0])} %" + (f", PC2 {fmt(100 * evr[1])} %" if len(evr) > 1 else "")
                     + " of variance")
    if "participation_ratio" in values:
        parts.append(f"participation ratio {fmt(values['participation_ratio'])}, n = {fmt(values['n_subjects'])}")
    genes = _pick(files, suffix="stats", desc=f"{drug}pc1genes")
    if genes:
        gene_rows = read_tsv(genes[0])
        top = max(gene_rows, key=lambda r: abs(r["r"] or 0.0))
        values["pc1_top_gene"] = {"gene": top["gene"], "r": top["r"], "p_spatial": top["p_spatial"],
                                  "q_spatial": top["q_spatial"]}
        parts.append(f"PC1 x {top['gene']} expression r = {fmt(top['r'])}, spatial-null p = "
                     f"{_p(top['p_spatial'])}, FDR q = {_p(top['q_spatial'])}")
        sources.append(rel(genes[0]))
    sentence = "; ".join(parts) + "."
    main = n_sig >= 2
    reason = (f"{n_sig} significant PC{'s' if n_sig != 1 else ''}: "
              + ("more than one axis of individual response, as published (5)" if main else
                 "no more than one axis of individual response (published: 5)"))
    return Finding("connectivity", "ran", sentence, _verdict(main, []), reason, values, sources)


def spectroscopy_finding(files: list[Path], rel) -> Finding:
    lmm = _pick(files, suffix="stats", desc="fmrslmm")
    if not lmm:
        raise _NoTable("no fMRS mixed-model table (desc-fmrslmm, suffix stats) was written")
    rows = read_tsv(lmm[0])
    glx = next((r for r in rows if r["outcome"] == "Glx/tNAA" and r["term"] == "pretreatment_x_time"), None)
    if glx is None:
        raise _NoTable(f"{rel(lmm[0])} has no Glx/tNAA pretreatment_x_time term")
    values: dict[str, Any] = {"glx_pretreatment_x_time": _term(glx)}
    sources = [rel(lmm[0])]
    sentence = (f"Glx/tNAA pretreatment x time (naltrexone minus placebo) {fmt(glx['estimate'])} per min "
                f"{_ci(glx['ci_low'], glx['ci_high'])}, p = {_p(glx['p'])}, n = {fmt(glx['n_subjects'])} "
                f"participants ({fmt(glx['n_obs'])} blocks)")
    main = glx["estimate"] < 0 and glx["p"] is not None and glx["p"] < ALPHA
    others, reasons = [], [("Glx rise blunted by naltrexone" if main else "Glx rise not significantly blunted")
                           + f" (p {'<' if main else '>='} {fmt(ALPHA)})"]
    madrs_tables = _pick(files, suffix="stats", desc="madrslmm")
    madrs = None
    if madrs_tables:
        madrs = next((r for r in read_tsv(madrs_tables[0]) if r["term"] == "pretreatment_x_time"), None)
    if madrs is not None:
        values["madrs_pretreatment_x_time"] = _term(madrs)
        sources.append(rel(madrs_tables[0]))
        sentence += (f"; MADRS pretreatment x time {fmt(madrs['estimate'])} points {_ci(madrs['ci_low'], madrs['ci_high'])}"
                     f", p = {_p(madrs['p'])}")
        ok = madrs["estimate"] > 0 and madrs["p"] is not None and madrs["p"] < ALPHA
        others.append(ok)
        reasons.append("MADRS improvement reduced by naltrexone, as published" if ok else
                       "MADRS improvement not significantly reduced (published: p = 0.023)")
    return Finding("spectroscopy", "ran", sentence + ".", _verdict(main, others), "; ".join(reasons), values,
                   sources)


def _term(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("estimate", "se", "ci_low", "ci_high", "statistic", "df", "p", "n_obs",
                                "n_subjects")}


FINDERS = {"structural": structural_finding, "connectivity": connectivity_finding,
           "spectroscopy": spectroscopy_finding}


def collect_findings(files_by_analysis: dict[str, list[Path]], outcomes: dict[str, tuple[str, str]],
                     rel) -> list[Finding]:
    """One finding per analysis, in the report's order.

    ``outcomes[analysis]`` is ``("ran" | "failed" | "not-run", why)`` from the run records; ``rel`` turns a path into
    its name relative to the output folder.
    """
    findings = []
    for analysis, finder in FINDERS.items():
        status, why = outcomes.get(analysis, ("not-run", "the group level has not run"))
        if status == "failed":
            findings.append(Finding(analysis, "failed", "", "failed", why))
            continue
        if status != "ran":
            findings.append(Finding(analysis, "not-run", "", "not run", why))
            continue
        try:
            findings.append(finder(files_by_analysis.get(analysis, []), rel))
        except _NoTable as exc:
            findings.append(Finding(analysis, "failed", "", "failed", f"the group level ran but {exc}"))
        except (KeyError, TypeError, ValueError, OSError) as exc:  # a table not as the analysis writes it
            findings.append(Finding(analysis, "failed", "", "failed",
                                    f"the group tables could not be read ({type(exc).__name__}: {exc})"))
    return findings


def findings_document(findings: list[Finding], *, version: str) -> dict[str, Any]:
    """What ``group/findings.json`` holds: per analysis the sentence, verdict, full-precision values, sources."""
    analyses = {}
    for f in findings:
        entry = asdict(f)
        entry.pop("analysis")
        entry["anchor"] = {"citation": f.anchor["citation"], "text": f.anchor["text"], **f.anchor["values"]}
        analyses[f.analysis] = entry
    return {"SchemaVersion": FINDINGS_SCHEMA_VERSION, "GeneratedBy": {"Name": "bids_ketamine", "Version": version},
            "Alpha": ALPHA, "analyses": analyses}


def write_findings(output_dir: Path, findings: list[Finding], *, version: str) -> Path | None:
    """Write ``group/findings.json`` beside the group tables it summarises; a group run that wrote no table (it
    failed before its analyses, e.g. an unreachable cluster) gets none, so the report creates no ``group/`` folder."""
    from bids_ketamine.io.derivatives import atomic_write_text

    path = Path(output_dir) / "group" / FINDINGS_NAME
    if not path.parent.is_dir():
        return None
    text = json.dumps(findings_document(findings, version=version), indent=2, allow_nan=False,
                      default=_json_default)
    atomic_write_text(path, text + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def findings_lines(output_dir: Path) -> list[str]:
    """The findings as plain lines, read back from ``group/findings.json`` (empty when there is none)."""
    path = Path(output_dir) / "group" / FINDINGS_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    lines = []
    for analysis, entry in doc.get("analyses", {}).items():
        if entry.get("status") != "ran":
            lines.append(f"{analysis}: {entry.get('verdict')}: {entry.get('reason')}")
        else:
            anchor = entry.get("anchor", {})
            lines.append(f"{analysis}: {entry['sentence']} Published ({anchor.get('citation')}): "
                         f"{anchor.get('text')}. Verdict: {entry['verdict']} ({entry['reason']}).")
    return lines


__all__ = ["ALPHA", "ANCHORS", "FINDINGS_NAME", "Finding", "collect_findings", "entities_of", "findings_document",
           "findings_lines", "read_tsv", "write_findings"]
