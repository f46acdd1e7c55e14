"""Sections shared by both reports: an analysis' outputs sorted into the expected items, and the status line.

A section is never an empty box: it shows its outputs, or says "not run: <reason>" / "failed: <message>", and it
lists the expected items that the run did not produce.
"""

from __future__ import annotations

import json

import re
from dataclasses import dataclass, field
from pathlib import Path

from bids_ketamine.reports.collect import (OutputFolder, _is_sidecar, exclusion_notes, read_sidecar,
                                          table_exclusions)
from bids_ketamine.reports.numbers import NUMBER_IN_TEXT, format_cell, format_volume_mm3
from bids_ketamine.reports.render import (
    Block,
    SizeBudget,
    figure_block,
    glass_brain_block,
    image_list_block,
    summary_block,
    table_block,
)
from bids_ketamine.reports.sections import guess_analysis, match_rule, rules_for

STATUS_LABELS = {"ok": "ok", "not-run": "not run", "failed": "failed", "partial": "incomplete", "warning": "warning"}


@dataclass
class Section:
    id: str
    title: str
    status: str = "ok"
    reason: str = ""
    blocks: list[Block] = field(default_factory=list)

    @property
    def status_label(self) -> str:
        return STATUS_LABELS[self.status]


@dataclass
class SortedOutputs:
    """An output folder's files of one report, grouped by analysis."""

    by_analysis: dict[str, list[Path]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    exclusions: list[str] = field(default_factory=list)
    provenance_gaps: list[str] = field(default_factory=list)


def sort_outputs(folder: OutputFolder, files: list[Path], owners: dict[str, str]) -> SortedOutputs:
    """Attribute each file to its analysis (records first, words in the name second) and read exclusion notes."""
    result = SortedOutputs()
    for path in files:
        rel = folder.rel(path)
        analysis = owners.get(rel) or guess_analysis(rel) or "other"
        result.by_analysis.setdefault(analysis, []).append(path)
        if path.suffix in (".tsv", ".gz"):
            sidecar, problem = read_sidecar(path)
            if problem:
                result.problems.append(problem)
            elif "Sources" not in sidecar or "GeneratedBy" not in sidecar:
                result.provenance_gaps.append(f"{rel}: its sidecar does not name its sources and the version that "
                                              "made it")
            result.exclusions.extend(f"{rel}: {note}" for note in exclusion_notes(sidecar))
        if path.suffix == ".json" and not _is_sidecar(path):  # a JSON result may carry warnings (a flagged
            try:                                                 # model prediction)
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                data = None
            if isinstance(data, dict):
                result.exclusions.extend(f"{rel}: {note}" for note in exclusion_notes(data))
        if path.suffix == ".tsv":
            result.exclusions.extend(f"{rel}: {note}" for note in table_exclusions(path))
    return result


def analysis_blocks(folder: OutputFolder, level: str, analysis: str, files: list[Path], budget: SizeBudget,
                    problems: list[str]) -> tuple[list[Block], list[str]]:
    """Blocks for one analysis' files in the order of the mapping table; returns (blocks, missing captions)."""
    assigned: dict[str, list[Path]] = {}
    others: list[Path] = []
    images: list[tuple[Path, str]] = []
    summaries: list[Path] = []
    for path in files:
        rel = folder.rel(path)
        if path.name.endswith(".nii.gz"):
            images.append((path, rel))
            continue
        if path.suffix == ".json":
            summaries.append(path)
            continue
        kind = "table" if path.suffix == ".tsv" else "figure"
        rule = match_rule(level, analysis, kind, rel)
        if rule is None:
            others.append(path)
        else:
            assigned.setdefault(rule.key, []).append(path)
    blocks: list[Block] = []
    missing: list[str] = []
    for rule in rules_for(level, analysis):
        paths = assigned.get(rule.key, [])
        if not paths and rule.column:
            block = column_block(folder, rule, [p for p in files if p.suffix == ".tsv"])
            if block is not None:
                blocks.append(block)
                continue
        if not paths and rule.image and images:
            from bids_ketamine.reports.sections import content_words

            drawn = [(p, r) for p, r in images if re.search(rule.image, content_words(r), flags=re.IGNORECASE)]
            block = glass_brain_block(drawn, rule.caption, rule.key, budget, problems) if drawn else None
            if block is not None:
                blocks.append(block)
                continue
        if not paths:
            # a table rule whose content often lives in another table (e.g. TIV in the morph table) is not missing
            # when that other table is present; figures are always expected
            missing.append(f"{rule.caption} ({rule.kind}{', where the data allow' if rule.optional else ''})")
            continue
        blocks.extend(_gallery([_file_block(folder, path, rule.caption, budget, problems, rule.key, first=i == 0)
                                for i, path in enumerate(paths)]))
    blocks.extend(_gallery([_file_block(folder, path, "Other outputs", budget, problems, "other", first=i == 0)
                            for i, path in enumerate(others)]))
    for path in summaries:
        blocks.append(summary_block(path, folder.rel(path), budget, problems))
    if images:
        blocks.append(image_list_block(images, "Images written (NIfTI)"))
    return blocks, missing


def column_block(folder: OutputFolder, rule, tables: list[Path]) -> Block | None:
    """An item held as columns of another table: its values (when few) or the columns' names, with the file."""
    for path in tables:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        if not lines:
            continue
        header = lines[0].split("\t")
        cols = [i for i, c in enumerate(header) if re.search(rule.column, c, flags=re.IGNORECASE)]
        if not cols:
            continue
        rel = folder.rel(path)
        rows = [line.split("\t") for line in lines[1:] if line]
        body = []
        for i in cols:
            values = list(dict.fromkeys(r[i] for r in rows if len(r) == len(header)))
            name, shown = header[i], [format_cell(v) for v in values]
            if name.endswith("_mm3") and all(NUMBER_IN_TEXT.fullmatch(v.strip()) for v in values):
                name, shown = name[: -len("_mm3")], [format_volume_mm3(float(v)) for v in values]
            body.append(f"{name} = {', '.join(shown)}" if 0 < len(values) <= 3 else
                        f"{header[i]}: one value per row ({len(rows)} rows)")
        body.append(f"from {rel}")
        failed = qc_failure_lines(header, rows)
        if failed:  # a fit that failed QC is shown first, in red (css class qcfailed)
            return Block("list", rule.caption, rel, failed + body, extra={"key": rule.key, "css": "qcfailed"})
        return Block("list", rule.caption, rel, body, extra={"key": rule.key})
    return None


def qc_failure_lines(header: list[str], rows: list[list[str]]) -> list[str]:
    """'QC FAILED' lines for a table with ``spectrum_qc_pass`` (else ``qc_pass``) false, with the reasons."""
    col = next((c for c in ("spectrum_qc_pass", "qc_pass") if c in header), None)
    if col is None:
        return []
    i = header.index(col)
    j = header.index("qc_reason") if "qc_reason" in header else None
    bad = [r for r in rows if len(r) == len(header) and r[i].strip().lower() == "false"]
    if not bad:
        return []
    reasons = list(dict.fromkeys(r[j] for r in bad if j is not None and r[j] not in ("", "n/a")))
    n, what = len(bad), "rows failed QC"
    if col == "spectrum_qc_pass":
        b = header.index("block") if "block" in header else None
        n = len({r[b] for r in bad}) if b is not None else n
        what = "spectra failed QC"
    return [f"QC FAILED: {n} {what}" + (f": {'; '.join(reasons[:5])}" if reasons else "")]


def _gallery(blocks: list[Block]) -> list[Block]:
    """Figures of one item side by side in one block (sessions, blocks); tables and notes stay as they are."""
    figures = [b for b in blocks if b.kind == "figure"]
    if not figures:
        return blocks
    gallery = Block("gallery", figures[0].title, body=[(b.body, b.relpath) for b in figures],
                    extra={"key": figures[0].extra.get("key")})
    return [gallery] + [b for b in blocks if b.kind != "figure"]


def _file_block(folder: OutputFolder, path: Path, caption: str, budget: SizeBudget, problems: list[str], key: str,
                *, first: bool) -> Block:
    rel = folder.rel(path)
    if path.suffix == ".tsv":
        block, found = table_block(path, rel, caption if first else "", budget=budget)
        problems.extend(found)
    else:
        block, problem = figure_block(path, rel, caption, budget)
        if problem:
            problems.append(problem)
    block.extra.update(key=key, first=first)
    return block


def status_of(*, has_outputs: bool, failure: str | None, skip_reason: str | None,
              missing: list[str]) -> tuple[str, str]:
    """Section status and the sentence that explains it."""
    if failure:
        prefix = "failed: " + failure
        return "failed", prefix + (" (outputs below are from an earlier successful run)" if has_outputs else "")
    if not has_outputs:
        return "not-run", "not run: " + (skip_reason or "no outputs of this analysis in the output folder")
    if any(m.endswith("(figure)") for m in missing):  # a table's content may live in another table; a figure's not
        return "partial", ""
    return "ok", ""


def finish_section(section, blocks: list[Block], *, failure: str | None, skip_reason: str | None,
                   missing: list[str]) -> None:
    """Give a section its blocks, its status sentence and, when it has outputs, the list of what is missing."""
    has = any(b.kind in ("gallery", "table", "images", "pre") for b in blocks)
    section.status, section.reason = status_of(has_outputs=has, failure=failure, skip_reason=skip_reason,
                                               missing=missing)
    section.blocks = blocks
    if has and missing:
        section.blocks.append(missing_block(missing))


def missing_block(missing: list[str]) -> Block:
    return Block("list", "Expected items this run did not produce", body=missing, extra={"css": "missing"})
