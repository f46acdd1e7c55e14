"""The group report ``group.html`` and ``methods.md``, built only from what is in the output folder.

Named ``group.html`` (beside the ``sub-<label>.html`` reports, as MRIQC's group reports sit beside its individual
ones) because it covers all three analyses' group levels. Sections: findings (one sentence per group analysis
with its published anchor and a verdict, also written to ``group/findings.json``); run status as counts;
prediction; heterogeneity; spectroscopy; errors and exclusions; methods.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from markupsafe import Markup

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import MissingInputError
from bids_ketamine.reports.assemble import Section, analysis_blocks, finish_section, sort_outputs
from bids_ketamine.reports.boilerplate import build_methods, methods_html, write_methods
from bids_ketamine.reports.collect import ANALYSIS_NAMES, OutputFolder, exclusion_notes
from bids_ketamine.reports.findings import Finding, collect_findings, write_findings
from bids_ketamine.reports.render import Block, SizeBudget, failure_text, render_page
from bids_ketamine.reports.sections import GROUP_SECTIONS

#: The group report holds many figures; its budget is larger than a participant report's (still one file).
GROUP_BUDGET_BYTES = 40_000_000
GROUP_REPORT_NAME = "group.html"


def _overview(folder: OutputFolder) -> Section:
    """Run status as counts per analysis, failed participants listed first, the full participant table collapsed."""
    section = Section("overview", "Participants and run status")
    statuses = folder.participant_statuses()
    subjects = sorted(set(folder.subjects()) | {s for s, _ in statuses})
    if not subjects:
        section.status, section.reason = "not-run", "not run: the participant level has not run in this folder"
        return section
    done = {a: {m.stem[4:].split("_", 1)[0] for m in (folder.root / ".bids_ketamine" / "done").glob(f"sub-*_{a}.json")}
            for a in ANALYSIS_NAMES}
    head = "<th>participant</th>" + "".join(f"<th>{a}</th>" for a in ANALYSIS_NAMES) + "<th>report</th>"
    rows = []
    counts = {a: [0, 0] for a in ANALYSIS_NAMES}
    failed_lines = []
    for sub in subjects:
        cells = []
        for analysis in ANALYSIS_NAMES:
            status = statuses.get((sub, analysis))
            if status is not None and not status.get("ok"):
                cells.append(f"<td class='failed' title='{html.escape(str(status.get('message', '')), quote=True)}'>"
                             "failed</td>")
                counts[analysis][1] += 1
                failed_lines.append(failure_text(f"sub-{sub} {analysis}: ", status))
            elif sub in done[analysis] or (status is not None and status.get("ok")):
                cells.append("<td>ok</td>")
                counts[analysis][0] += 1
            else:
                cells.append("<td class='muted'>-</td>")
        report = folder.root / f"sub-{sub}.html"
        link = f"<a href='sub-{html.escape(sub)}.html'>sub-{html.escape(sub)}.html</a>" if report.exists() else "-"
        rows.append(f"<tr><td>sub-{html.escape(sub)}</td>{''.join(cells)}<td>{link}</td></tr>")
    runs = []
    for run in folder.runs:
        cfg = run.data.get("config") or {}
        runs.append(f"<tr><td><code>{html.escape(run.path.name)}</code></td><td>{html.escape(run.level)}</td>"
                    f"<td><code>{html.escape(str(run.data.get('version', '?')))}</code></td>"
                    f"<td><code>{html.escape(str(cfg.get('random_seed', '?')))}</code></td>"
                    f"<td>{html.escape(', '.join(cfg.get('analyses') or []) or 'all available')}</td>"
                    f"<td><code>{html.escape(str(cfg.get('bids_dir', '?')))}</code></td></tr>")
    count_rows = "".join(f"<tr><td>{a}</td><td>{ok}</td><td{' class=failed' if bad else ''}>{bad}</td></tr>"
                         for a, (ok, bad) in counts.items() if ok or bad)
    section.blocks.append(Block("note", body=f"{len(subjects)} participants; "
                                             f"{sum(bad for _, bad in counts.values())} participant-level failures."))
    if failed_lines:
        section.blocks.append(Block("list", "Failed participants", body=failed_lines, extra={"css": "errors"}))
    if count_rows:
        section.blocks.append(Block("html", "Participants per analysis", body=Markup(
            "<div class='table-wrap'><table class='counts'><thead><tr><th>analysis</th><th>done</th><th>failed</th>"
            f"</tr></thead><tbody>{count_rows}</tbody></table></div>")))
    section.blocks.append(Block("html", body=Markup(
        f"<details class='collapsed-table'><summary>Every participant ({len(subjects)}), with a link to each report"
        f"</summary><div class='table-wrap'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
        "</table></div></details>")))
    if runs:
        section.blocks.append(Block("html", body=Markup(
            f"<details class='collapsed-table'><summary>Runs recorded in this folder (logs/): {len(runs)}</summary>"
            "<div class='table-wrap'><table><thead><tr><th>record</th><th>level</th><th>version</th><th>seed</th>"
            "<th>analyses</th><th>BIDS folder</th></tr></thead><tbody>" + "".join(runs) + "</tbody></table></div>"
            "</details>")))
    return section


def _group_outcome(folder: OutputFolder, analysis: str, statuses: dict, group_ran: bool) -> tuple[str, str]:
    """``("ran" | "failed" | "not-run", why)`` of one group analysis, from the run records."""
    status = statuses.get(analysis)
    if not group_ran:
        return "not-run", "the group level has not run on this output folder"
    if status is None:
        from bids_ketamine.analyses import ANALYSES

        return "not-run", ("no participant-level outputs of this analysis in the output folder"
                           if not ANALYSES[analysis].has_group_inputs(folder.root)
                           else "not selected in the group run (--analyses)")
    if not status.get("ok"):
        return "failed", f"{status.get('message', 'no message')} (exit code {status.get('exit_code')})"
    return "ran", ""


def findings_of(folder: OutputFolder, by_analysis: dict[str, list[Path]] | None = None) -> list[Finding]:
    """The headline finding of each group analysis, from the group tables the run recorded."""
    if by_analysis is None:
        by_analysis = sort_outputs(folder, folder.files(folder.root / "group"), folder.group_outputs()).by_analysis
    statuses = folder.group_statuses()
    group_ran = folder.latest("group") is not None
    outcomes = {a: _group_outcome(folder, a, statuses, group_ran) for a in ANALYSIS_NAMES}
    return collect_findings(by_analysis, outcomes, folder.rel)


def _findings_section(findings: list[Finding]) -> Section:
    section = Section("findings", "Findings")
    section.blocks.append(Block("findings", body=findings))
    if not any(f.status == "ran" for f in findings):
        section.status, section.reason = "not-run", "not run: no group analysis has results in this folder"
    elif any(f.status == "failed" for f in findings):
        section.status = "partial"
    return section


def group_sections(folder: OutputFolder, *, budget: SizeBudget | None = None, methods=None,
                   findings: list[Finding] | None = None) -> list[Section]:
    budget = budget or SizeBudget(GROUP_BUDGET_BYTES)
    files = folder.files(folder.root / "group")
    sorted_outputs = sort_outputs(folder, files, folder.group_outputs())
    problems = list(sorted_outputs.problems)
    statuses = folder.group_statuses()
    group_ran = folder.latest("group") is not None
    if findings is None:
        findings = findings_of(folder, sorted_outputs.by_analysis)
    sections = [_findings_section(findings), _overview(folder)]
    for section_id, title, analysis in GROUP_SECTIONS:
        section = Section(section_id, title)
        sections.append(section)
        if analysis is None:
            continue
        files_of = sorted_outputs.by_analysis.get(analysis, [])
        blocks, missing = analysis_blocks(folder, "group", analysis, files_of, budget, problems)
        outcome, why = _group_outcome(folder, analysis, statuses, group_ran)
        failure = why if outcome == "failed" else None
        reason = why if outcome == "not-run" else None
        finish_section(section, blocks, failure=failure, skip_reason=reason, missing=missing)

    errors = next(s for s in sections if s.id == "errors")
    group_failures = [failure_text(f"group {a}: ", s, run=True) for a, s in sorted(statuses.items()) if not s.get("ok")]
    participant_failures = [failure_text(f"sub-{sub} {a}: ", s)
                            for (sub, a), s in sorted(folder.participant_statuses().items()) if not s.get("ok")]
    exclusions = list(sorted_outputs.exclusions)
    for sidecar in sorted(folder.root.glob("sub-*/**/*.json")):  # participants' exclusion notes, one line each
        if any(p.startswith(".") for p in sidecar.relative_to(folder.root).parts):
            continue
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict):
            exclusions.extend(f"{folder.rel(sidecar)}: {note}" for note in exclusion_notes(data))
    if group_failures:
        errors.blocks.append(Block("list", "Group-level failures", body=group_failures, extra={"css": "errors"}))
    if participant_failures:
        errors.blocks.append(Block("list", "Participant-level failures", body=participant_failures,
                                   extra={"css": "errors"}))
    if exclusions:
        errors.blocks.append(Block("list", "Exclusions and warnings recorded by the analyses", body=exclusions,
                                   extra={"css": "problems"}))
    if sorted_outputs.provenance_gaps:
        errors.blocks.append(Block("list", "Outputs without provenance", body=sorted_outputs.provenance_gaps,
                                   extra={"css": "problems"}))
    unreadable = problems + [f"{folder.rel(p)}: {why}" for p, why in folder.unreadable]
    if unreadable:
        errors.blocks.append(Block("list", "Outputs the report could not show", body=unreadable,
                                   extra={"css": "problems"}))
    if group_failures or participant_failures or unreadable:
        errors.status = "failed"
    elif exclusions or sorted_outputs.provenance_gaps:  # nothing failed, but something was set aside or is unproven
        errors.status = "warning"
    if not errors.blocks:
        errors.blocks.append(Block("note", body="No error, exclusion or warning was recorded in this folder."))

    method_section = next(s for s in sections if s.id == "methods")
    methods = methods or build_methods(folder.root)
    method_section.blocks.append(Block("html", body=methods_html(methods)))
    if not methods.analyses:
        method_section.status, method_section.reason = "not-run", "not run: no analysis has run in this folder"
    return sections


def build_group_report(output_dir: Path) -> Path:
    """Write ``output_dir/group.html`` and ``output_dir/methods.md`` from the files in the output folder."""
    output_dir = Path(output_dir).absolute()
    if not output_dir.is_dir():
        raise MissingInputError("output folder not found", path=output_dir, fix="give the folder of an earlier run")
    folder = OutputFolder.read(output_dir)
    methods = build_methods(output_dir)
    findings = findings_of(folder)
    sections = group_sections(folder, methods=methods, findings=findings)
    page = render_page(title="bids_ketamine: group report",
                       subtitle=f"Group report · built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                       sections=sections, version=__version__, built_from=output_dir.name)
    from bids_ketamine.io.derivatives import atomic_write_text

    path = output_dir / GROUP_REPORT_NAME
    atomic_write_text(path, page)
    write_methods(output_dir, methods)
    write_findings(output_dir, findings, version=__version__)
    return path


def build_reports(output_dir: Path, subjects: list[str] | None = None, *, group: bool = True) -> list[Path]:
    """Every participant report (or those of ``subjects``), then the group report: what ``--reports-only`` does."""
    from bids_ketamine.reports.participant import build_participant_report

    output_dir = Path(output_dir).absolute()
    folder = OutputFolder.read(output_dir)
    labels = subjects or sorted(set(folder.subjects()) | {s for s, _ in folder.participant_statuses()})
    paths = [build_participant_report(output_dir, label) for label in labels]
    if group:
        paths.append(build_group_report(output_dir))
    return paths


__all__ = ["build_group_report", "build_reports", "findings_of", "group_sections"]
