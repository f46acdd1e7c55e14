"""The participant report ``sub-<label>.html``, built only from what is in the output folder.

Sections: QC verdict per analysis (pass / warning / fail with reasons and key numbers); input inventory; anatomy; connectivity; spectroscopy; errors and exclusions; methods. Each analysis
section shows its figures and tables (found with the mapping of ``sections.py``), or says why it did not run.
"""

from __future__ import annotations

import time
from pathlib import Path

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import MissingInputError
from bids_ketamine.reports.assemble import Section, analysis_blocks, finish_section, sort_outputs
from bids_ketamine.reports.boilerplate import build_methods, methods_html
from bids_ketamine.reports.collect import OutputFolder
from bids_ketamine.reports.qc import participant_qc
from bids_ketamine.reports.render import Block, SizeBudget, failure_text, render_page, table_block
from bids_ketamine.reports.sections import PARTICIPANT_SECTIONS


def _inventory_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]


def participant_sections(folder: OutputFolder, subject: str, *, budget: SizeBudget | None = None,
                         methods=None) -> list[Section]:
    """The sections of one participant's report (pure reading of the output folder)."""
    budget = budget or SizeBudget()
    root = folder.root / f"sub-{subject}"
    files = folder.files(root)
    sorted_outputs = sort_outputs(folder, files, folder.done_outputs(subject))
    problems = list(sorted_outputs.problems)
    statuses = {a: s for (sub, a), s in folder.participant_statuses().items() if sub == subject}
    latest = folder.latest("participant")
    selected = latest.analyses if latest else None

    inventory_files = sorted_outputs.by_analysis.get("inventory", [])
    skip: dict[str, str] = {}
    sections: list[Section] = []
    for section_id, title, analysis in PARTICIPANT_SECTIONS:
        section = Section(section_id, title)
        if section_id == "inventory":
            if not inventory_files:
                section.status, section.reason = "not-run", ("not run: no inventory table for this participant "
                                                             "(the participant level has not run for it)")
            for path in inventory_files:
                block, found = table_block(path, folder.rel(path), "What each analysis uses, or why it does not run",
                                           max_rows=1000, budget=budget)
                problems.extend(found)
                block.extra["key"] = "inventory"
                section.blocks.append(block)
                for row in _inventory_rows(path):
                    if str(row.get("runs", "")).lower() in ("false", "0", "no"):
                        skip[row.get("analysis", "")] = row.get("detail", "")
            sections.append(section)
            continue
        if analysis is None:
            sections.append(section)  # filled below (errors, methods)
            continue
        files_of = sorted_outputs.by_analysis.get(analysis, [])
        blocks, missing = analysis_blocks(folder, "participant", analysis, files_of, budget, problems)
        status = statuses.get(analysis)
        failure = None if status is None or status.get("ok") else failure_text("", status)
        reason = skip.get(analysis)
        if reason is None and selected is not None and analysis not in selected and not files_of:
            reason = "not selected in this run (--analyses)"
        finish_section(section, blocks, failure=failure, skip_reason=reason, missing=missing)
        sections.append(section)

    qc = next(s for s in sections if s.id == "qc")
    failures = {a: failure_text("", s) for a, s in statuses.items() if not s.get("ok")}
    verdicts = participant_qc(sorted_outputs.by_analysis, failures, skip)
    qc.blocks.append(Block("qc", body=verdicts))
    if any(v.verdict == "fail" for v in verdicts):
        qc.status = "failed"
    elif any(v.verdict == "warning" for v in verdicts):
        qc.status = "warning"
    elif all(v.verdict == "not run" for v in verdicts):
        qc.status, qc.reason = "not-run", "not run: no analysis has outputs for this participant"

    errors = next(s for s in sections if s.id == "errors")
    lines_failed = [failure_text(f"{a}: ", s, run=True) for a, s in sorted(statuses.items()) if not s.get("ok")]
    lines_skipped = [f"{a} not run: {d}" for a, d in sorted(skip.items())]
    if lines_failed:
        errors.blocks.append(Block("list", "Failures", body=lines_failed, extra={"css": "errors"}))
    for crash in sorted((folder.root / "logs").glob(f"sub-{subject}_*_crash.txt")):
        analysis = crash.name[len(f"sub-{subject}_"):-len("_crash.txt")]
        if statuses.get(analysis, {}).get("ok"):
            continue  # an old crash: the analysis succeeded since
        text = crash.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors.blocks.append(Block("pre", f"Traceback ({folder.rel(crash)})", body="\n".join(text[-25:])))
    if lines_skipped:
        errors.blocks.append(Block("list", "Analyses not run for this participant", body=lines_skipped))
    if sorted_outputs.exclusions:
        errors.blocks.append(Block("list", "Exclusions and warnings recorded by the analyses",
                                   body=sorted_outputs.exclusions, extra={"css": "problems"}))
    if sorted_outputs.provenance_gaps:
        errors.blocks.append(Block("list", "Outputs without provenance", body=sorted_outputs.provenance_gaps,
                                   extra={"css": "problems"}))
    if problems:
        errors.blocks.append(Block("list", "Outputs the report could not show", body=problems,
                                   extra={"css": "problems"}))
    if lines_failed or problems:
        errors.status = "failed"
    elif sorted_outputs.exclusions or sorted_outputs.provenance_gaps:  # set aside or unproven: not "ok"
        errors.status = "warning"
    elif not errors.blocks:
        errors.blocks.append(Block("note", body="No error, exclusion or warning was recorded for this participant."))

    method_section = next(s for s in sections if s.id == "methods")
    methods = methods or build_methods(folder.root, subjects=[subject])
    method_section.blocks.append(Block("html", body=methods_html(methods)))
    if not methods.analyses:
        method_section.status, method_section.reason = "not-run", "not run: no analysis has run in this folder"
    return sections


def build_participant_report(output_dir: Path, subject: str) -> Path:
    """Write ``output_dir/sub-<label>.html`` from the files of this participant (methods shown inline)."""
    output_dir = Path(output_dir).absolute()
    label = subject[4:] if subject.startswith("sub-") else subject
    if not output_dir.is_dir():
        raise MissingInputError("output folder not found", path=output_dir, fix="give the folder of an earlier run")
    folder = OutputFolder.read(output_dir)
    known = {sub for sub, _ in folder.participant_statuses()}
    if not (output_dir / f"sub-{label}").is_dir() and label not in known:
        raise MissingInputError(f"no outputs and no run record for sub-{label}", path=output_dir,
                                fix="run the participant level for this participant first")
    methods = build_methods(output_dir, subjects=[label])
    sections = participant_sections(folder, label, methods=methods)
    page = render_page(title=f"bids_ketamine: sub-{label}",
                       subtitle=f"Participant report · built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
                       sections=sections, version=__version__, built_from=output_dir.name)
    from bids_ketamine.io.derivatives import atomic_write_text

    path = output_dir / f"sub-{label}.html"
    atomic_write_text(path, page)
    return path
