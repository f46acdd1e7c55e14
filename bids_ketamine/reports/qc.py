"""The QC verdict of one participant per analysis: pass / warning / fail, the reasons, and the key numbers.

Why the report does not judge quality itself: every threshold is the analysis' own and recorded by it (plausible
TIV range and template correlation in the structural sidecar's parameters, the scrubbing limit and
``session_excluded`` in the scrubbing table, ``qc_pass`` per fitted block with the CRLB limit in the fMRS table), so
the verdict reads flags and recorded parameters and never re-decides them. Tables are found by their BIDS suffix and
``desc`` entity among the files the participant's completion records name.

Verdicts: "fail" when the analysis failed for this participant, or its outputs cannot be used (every session
excluded, no Glx block passing QC); "warning" when part of the data was set aside (a session excluded, blocks failing
the fit QC) or a check could not be made; "pass" otherwise; "not run" with the inventory's reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from bids_ketamine.reports.findings import entities_of, read_tsv
from bids_ketamine.reports.numbers import format_number as fmt
from bids_ketamine.reports.numbers import format_volume_mm3

QC_TITLES = {"structural": "Anatomy (structural)", "connectivity": "Resting BOLD (connectivity)",
             "spectroscopy": "fMRS (spectroscopy)"}


@dataclass
class QCVerdict:
    analysis: str
    verdict: str  # "pass" | "warning" | "fail" | "not run"
    reasons: list[str] = field(default_factory=list)
    numbers: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return QC_TITLES[self.analysis]


def _tables(files: list[Path], suffix: str, desc: str | None = None) -> list[Path]:
    out = []
    for path in files:
        if path.name.endswith(".tsv"):
            entities, sfx = entities_of(path.name)
            if sfx == suffix and (desc is None or entities.get("desc") == desc):
                out.append(path)
    return sorted(out)


def _sidecar(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.with_name(path.name[: -len(".tsv")] + ".json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def structural_qc(files: list[Path]) -> QCVerdict:
    tables = _tables(files, "morph")
    if not tables:
        return QCVerdict("structural", "warning", ["no regional grey-matter table (suffix morph) in the outputs"])
    meta = _sidecar(tables[0])
    params = meta.get("Parameters") or {}
    verdict = QCVerdict("structural", "pass")
    tiv = meta.get("TIV_mm3")
    low, high = params.get("min_tiv_cm3"), params.get("max_tiv_cm3")
    if tiv is None:
        verdict.verdict = "warning"
        verdict.reasons.append("TIV not recorded in the sidecar: its plausibility was not checked")
    else:
        verdict.numbers.append(f"TIV {format_volume_mm3(tiv)} ({meta.get('TIVMethod', 'method not recorded')})")
        if low is not None and high is not None:
            inside = low <= tiv / 1000.0 <= high
            verdict.reasons.append(f"TIV {'within' if inside else 'outside'} the plausible range {fmt(low)} to "
                                   f"{fmt(high)} cm3")
            if not inside:
                verdict.verdict = "fail"
    for key, label in (("TotalGM_mm3", "total GM"), ("TotalWM_mm3", "total WM"), ("TotalCSF_mm3", "total CSF")):
        if meta.get(key) is not None:
            verdict.numbers.append(f"{label} {format_volume_mm3(meta[key])}")
    correlation, minimum = meta.get("TemplateCorrelation"), params.get("min_template_correlation")
    if correlation is not None:
        ok = minimum is None or correlation >= minimum
        verdict.reasons.append(f"correlation with the MNI template after registration {fmt(correlation)}"
                               + (f" ({'>=' if ok else '<'} the minimum {fmt(minimum)})" if minimum is not None else ""))
        if not ok:
            verdict.verdict = "fail"
    else:
        verdict.reasons.append(f"registration done by {meta.get('FeatureSource', 'the input derivatives')} "
                               "(no template correlation recorded for this source)")
    return verdict


def connectivity_qc(files: list[Path]) -> QCVerdict:
    scrub = _tables(files, "stats", "scrubbing")
    if not scrub:
        return QCVerdict("connectivity", "warning", ["no scrubbing table (desc-scrubbing, suffix stats)"])
    rows = read_tsv(scrub[0])
    limit = (_sidecar(scrub[0]).get("Parameters") or {}).get("max_scrubbed_fraction")
    verdict = QCVerdict("connectivity", "pass")
    sessions: dict[str, dict[str, Any]] = {}
    for row in rows:
        sessions.setdefault(str(row.get("session")), row)
    excluded = [s for s, r in sessions.items() if r.get("session_excluded") is True]
    scrubbed = ", ".join(f"{s} {fmt(100 * r['session_censored_fraction'])} %" for s, r in sessions.items()
                         if r.get("session_censored_fraction") is not None)
    verdict.numbers.append(f"frames scrubbed: {scrubbed}" + (f" (limit {fmt(100 * limit)} %)" if limit else ""))
    for s in excluded:
        verdict.reasons.append(f"session {s} excluded: {sessions[s].get('reason') or 'scrubbed beyond the limit'}")
    if excluded:
        verdict.verdict = "fail" if len(excluded) == len(sessions) else "warning"
    else:
        verdict.reasons.append("no session scrubbed beyond the limit")
    for path in _tables(files, "gbc"):
        entities, _ = entities_of(path.name)
        values = [r.get("delta_gbc", r.get("gbc")) for r in read_tsv(path)]
        values = [v for v in values if isinstance(v, float)]
        if not values:
            continue
        mean = sum(values) / len(values)
        if "minusplacebo" in entities.get("desc", ""):
            verdict.numbers.append(f"delta-GBC ({entities['desc'].replace('minusplacebo', ' minus placebo')}): "
                                   f"mean {fmt(mean)} over {len(values)} parcels")
        elif "ses" in entities:
            verdict.numbers.append(f"GBC {entities['ses']}: mean {fmt(mean)} Fisher z")
    if not any(n.startswith("delta-GBC") for n in verdict.numbers) and verdict.verdict == "pass":
        verdict.verdict = "warning"
        verdict.reasons.append("no delta-GBC map (drug minus placebo) was written")
    return verdict


def spectroscopy_qc(files: list[Path]) -> QCVerdict:
    tables = _tables(files, "mrsfit")
    if not tables:
        return QCVerdict("spectroscopy", "warning", ["no fit table (suffix mrsfit) in the outputs"])
    verdict = QCVerdict("spectroscopy", "pass")
    n_pass = n_blocks = 0
    for path in tables:
        limit = (_sidecar(path).get("Parameters") or {}).get("max_crlb_percent")
        session = entities_of(path.name)[0].get("ses", "?")
        glx = [r for r in read_tsv(path) if r.get("metabolite") == "Glx"]
        ratios = []
        for r in glx:
            n_blocks += 1
            if r.get("qc_pass") is True:
                n_pass += 1
                ratios.append(fmt(r["ratio_tNAA"]) if r.get("ratio_tNAA") is not None else "n/a")
            else:
                ratios.append("failed QC")
                verdict.reasons.append(f"{session} block {fmt(r['block'])}: Glx fit failed QC (CRLB "
                                       f"{_percent(r.get('crlb_percent'))}"
                                       + (f", limit {fmt(limit)} %" if limit is not None else "") + ")")
        verdict.numbers.append(f"Glx/tNAA per block, {session}: {', '.join(ratios) or 'no Glx rows'}")
    if n_blocks == 0 or n_pass == 0:
        verdict.verdict = "fail"
        verdict.reasons.insert(0, "no Glx block passed the fit QC" if n_blocks else "no Glx row in the fit tables")
    elif n_pass < n_blocks:
        verdict.verdict = "warning"
        verdict.reasons.insert(0, f"{n_blocks - n_pass} of {n_blocks} Glx blocks failed the fit QC")
    else:
        verdict.reasons.append(f"all {n_blocks} Glx blocks passed the fit QC (CRLB below the limit)")
    return verdict


def _percent(value: Any) -> str:
    return f"{fmt(value)} %" if isinstance(value, float) else "not finite"


CHECKS = {"structural": structural_qc, "connectivity": connectivity_qc, "spectroscopy": spectroscopy_qc}


def participant_qc(files_by_analysis: dict[str, list[Path]], failures: dict[str, str],
                   skipped: dict[str, str]) -> list[QCVerdict]:
    """One verdict per analysis: ``failures`` (analysis -> message) and ``skipped`` (analysis -> why) come from the
    run records and the inventory."""
    verdicts = []
    for analysis, check in CHECKS.items():
        files = files_by_analysis.get(analysis, [])
        if analysis in failures:
            verdicts.append(QCVerdict(analysis, "fail", [Markup("the analysis failed: ") + failures[analysis]]))
        elif not files:
            verdicts.append(QCVerdict(analysis, "not run", [skipped.get(analysis) or "no outputs of this analysis"]))
        else:
            try:
                verdicts.append(check(files))
            except (KeyError, TypeError, ValueError, OSError) as exc:
                verdicts.append(QCVerdict(analysis, "warning", [f"QC tables could not be read ({exc})"]))
    return verdicts


__all__ = ["QCVerdict", "participant_qc"]
