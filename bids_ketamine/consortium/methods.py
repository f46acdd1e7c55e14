"""What the methods say about a pooled (consortium) group level: every site's participant-level run(s), the
parameters each used, and the differences the study accepted.

Why here and not in the reports: the pooled folder's own run record is the group level's; the features were made by
other runs at other sites, recorded in ``logs/sites/<site>/`` and ``logs/pooled_exports.json`` (``pool``). The
methods builder asks this module, so the participant-level sentences describe what the sites ran, not the defaults
of the coordinating site's configuration.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_ketamine.consortium.pool import POOL_RECORD

_RUN = re.compile(r"run-(\d{8})-(\d{6})_participant")
#: Keys (flattened) of an analysis' recorded parameters that belong to the participant level.
PARTICIPANT_LEVEL = {"structural": ("anat.",), "connectivity": ("participant.",), "spectroscopy": ("",)}
#: Spectroscopy fields that the group level uses (they stay the coordinating site's).
GROUP_LEVEL_FIELDS = {"spectroscopy": ("group_metabolites", "model_from_minute")}


@dataclass
class SiteRun:
    """One site of a pooled group level, with its participant-level runs as recorded."""

    site: str
    participants: list[str]
    analyses: dict[str, list[str]]
    version: str
    runs: list[str] = field(default_factory=list)
    #: parameters per analysis of the site's latest run that computed it
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stamp(name: str) -> str:
    match = _RUN.search(name)
    if not match:
        return name
    d, t = match.groups()
    return f"{d[:4]}-{d[4:6]}-{d[6:]} {t[:2]}:{t[2:4]}"


def read_pooled_sites(root: str | Path) -> tuple[list[SiteRun], dict[str, Any]] | None:
    """The sites of a pooled output folder and the accepted differences, or None for an ordinary folder."""
    root = Path(root)
    try:
        record = json.loads((root / "logs" / POOL_RECORD).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    sites = []
    for entry in record.get("sites") or []:
        site = SiteRun(site=str(entry.get("site")), participants=list(entry.get("participants") or []),
                       analyses=dict(entry.get("analyses") or {}),
                       version=str((entry.get("generated_by") or {}).get("Version", "?")))
        for name in sorted(entry.get("run_records") or []):
            try:
                data = json.loads((root / "logs" / "sites" / site.site / name).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            jobs = [j for j in data.get("jobs") or [] if j.get("ok")]
            if not jobs:
                continue  # a run that computed nothing made none of the exported features
            site.runs.append(name)
            computed = {str(j.get("analysis")) for j in jobs}
            for analysis, values in ((data.get("config") or {}).get("parameters") or {}).items():
                if analysis in computed:
                    site.parameters[analysis] = values
        sites.append(site)
    return sites, dict(record.get("accepted_differences") or {})


def _flat(values: Any, prefix: str = "") -> dict[str, Any]:
    from bids_ketamine.reports.boilerplate import flatten

    return flatten(values, prefix)


def participant_level(analysis: str, flat: dict[str, Any]) -> dict[str, Any]:
    """The participant-level part of an analysis' flattened parameters."""
    prefixes = PARTICIPANT_LEVEL.get(analysis, ())
    skip = GROUP_LEVEL_FIELDS.get(analysis, ())
    return {k: v for k, v in flat.items() if any(k.startswith(p) for p in prefixes) and k not in skip}


def merged_parameters(sites: list[SiteRun], analysis: str, group_flat: dict[str, Any]) -> dict[str, Any]:
    """The group run's parameters with the participant level replaced by the first site's (the sites agree or
    their differences were accepted and are stated)."""
    first = next((s for s in sites if analysis in s.parameters), None)
    if first is None:
        return group_flat
    site_flat = participant_level(analysis, _flat(first.parameters[analysis]))
    kept = {k: v for k, v in group_flat.items() if k not in participant_level(analysis, group_flat)}
    return {**kept, **site_flat}


def sites_paragraphs(sites: list[SiteRun], accepted: dict[str, Any]) -> list[str]:
    """One sentence per site (its runs, participants, version), then the accepted differences."""
    from bids_ketamine.reports.boilerplate import _fmt

    total = sum(len(s.participants) for s in sites)
    paras = [f"Participant-level features were computed at {len(sites)} site(s) on images that stayed there, and "
             f"exported as feature tables with checksums (no images); the group level pooled the {total} "
             "participants of these exports after verifying the checksums and that the features were made with "
             "the same app version, feature source, atlas, space and parameters."]
    reference = sites[0] if sites else None
    for site in sites:
        counts = ", ".join(f"{a} {len(p)}" for a, p in sorted(site.analyses.items()))
        runs = "; ".join(f"{name} ({_stamp(name)})" for name in site.runs) or "no run record"
        if site is reference:
            same = "its parameters are listed below"
        else:
            diffs = []
            for analysis, values in site.parameters.items():
                mine = participant_level(analysis, _flat(values))
                ref = participant_level(analysis, _flat(reference.parameters.get(analysis, {})))
                diffs += [f"{analysis}.{k} = {_fmt(v)} (site {reference.site}: {_fmt(ref.get(k))})"
                          for k, v in sorted(mine.items()) if _fmt(ref.get(k)) != _fmt(v)]
            same = ("participant-level parameters as site " + reference.site if not diffs else
                    "participant-level parameters as site " + reference.site + " except " + ", ".join(diffs))
        paras.append(f"Site {site.site}: {len(site.participants)} participants ({counts}), bids_ketamine "
                     f"{site.version}, participant-level run(s) {runs}; {same}.")
    if accepted:
        items = []
        for name, by_site in accepted.items():
            values = "; ".join(f"site {s}: {', '.join(map(str, v))}" for s, v in by_site.items())
            items.append(f"{name} ({values})")
        paras.append("Differences between sites accepted for pooling (configuration pooling.accept_differences): "
                     + "; ".join(items) + ".")
    return paras


def site_parameter_lines(sites: list[SiteRun]) -> list[str]:
    """Markdown lines: every site's participant-level parameters (the appendix of methods.md)."""
    from bids_ketamine.reports.boilerplate import _fmt

    lines: list[str] = []
    for site in sites:
        lines += [f"### site {site.site}", ""]
        for analysis, values in sorted(site.parameters.items()):
            flat = participant_level(analysis, _flat(values))
            lines += [f"- `{analysis}.{k}` = `{_fmt(v)}`" for k, v in sorted(flat.items())]
        if not site.parameters:
            lines.append("(no parameters recorded)")
        lines.append("")
    return lines
