"""Validation of every table the study design reads: participants.tsv, the MADRS phenotype file, sessions.tsv and
the spectroscopy events.tsv, with rules built from the design.

Why a layer of its own: images are checked at the door, tables were parsed leniently, so an empty participants.tsv
or a duplicated ID ended in a pandas traceback and a value outside its domain (a negative MADRS score, a drug label
the design does not know, a session without a condition) was silently used. Here every table is read once, every
problem becomes one line naming the file, the line, the value and the fix, and row problems keep the participant
they belong to, so that only that participant fails (exit 65) while the others finish.

Why rules written here rather than pandera: the rules are few (identifiers, labels the design names, numbers in a
range) and each message must say which design field to change; pandera reports failure-case tables. The rules are
data (``Rule``) built from ``StudyDesign`` by ``participant_rules`` and ``session_rules``, so a study that renames a
column or adds a drug label changes only its config file.

What each analysis requires (``REQUIRED``) is checked only for that analysis: a spectroscopy-only dataset needs no
MADRS column; connectivity needs the drug condition of every session with BOLD; the group level needs valid values
in the columns its models read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from bids_ketamine.errors import EXIT_BAD_DATA, EXIT_MISSING_INPUT, BadDataError, BidsKetamineError, MissingInputError

if TYPE_CHECKING:
    from bids_ketamine.design import StudyDesign
    from bids_ketamine.inputs import ParticipantInputs

#: MADRS total score range (10 items scored 0-6).
MADRS_RANGE = (0.0, 60.0)
#: Plausible age in years.
AGE_RANGE = (0.0, 120.0)
_LABEL = re.compile(r"^[A-Za-z0-9]+$")
NA_VALUES = ["n/a", "N/A", ""]

#: Standardised participant columns each analysis' group level reads (their values must be valid for it).
GROUP_PARTICIPANT_COLUMNS: dict[str, tuple[str, ...]] = {
    "structural": ("site", "sex", "age", "arm", "cohort", "madrs_baseline", "madrs_24h"),
    "connectivity": (),
    "spectroscopy": ("sex",),
}

#: Analyses that read sessions.tsv (conditions, pretreatments, periods, session MADRS).
SESSION_ANALYSES = ("connectivity", "spectroscopy")


# ---------------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class Table:
    """A BIDS TSV as text (types are decided by the rules), with the file line of every row."""

    path: Path
    frame: pd.DataFrame
    lines: tuple[int, ...]  #: 1-based file line of each row (the header is line 1)

    def line(self, index: int) -> int:
        return self.lines[index]


def read_table(path: str | Path, what: str = "table") -> Table:
    """Read a BIDS TSV: every column as text, ``n/a`` as missing; an unreadable, empty or malformed file is
    BadDataError (exit 65) naming it, a missing one MissingInputError (66)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise MissingInputError(f"{what} not found", path=path, fix="add the file or correct the path") from exc
    except OSError as exc:
        raise BadDataError(f"cannot read the {what} ({exc.strerror or exc})", path=path,
                           fix="check that the file is readable (permissions, mount) or copy it again") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadDataError(f"the {what} is not UTF-8 text (byte {exc.start})", path=path,
                           fix="save it as UTF-8 tab-separated text") from exc
    physical = text.splitlines()
    content = [i + 1 for i, line in enumerate(physical) if line.strip()]
    if not content:
        raise BadDataError(f"the {what} is empty", path=path,
                           fix="write a header row and one row per entry (tab-separated), or remove the file")
    header = physical[content[0] - 1].split("\t")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise BadDataError(f"the header names column {repeated[0]!r} twice", path=path,
                           fix="give every column a distinct name")
    if any(not c.strip() for c in header):
        raise BadDataError("the header has an empty column name", path=path,
                           fix="name every column, and separate columns by single tabs")
    for number in content[1:]:
        fields = physical[number - 1].count("\t") + 1
        if fields != len(header):
            raise BadDataError(f"line {number} has {fields} tab-separated fields, the header {len(header)}",
                               path=path, fix="give every row as many tab-separated fields as the header (n/a for "
                                              "a missing value)")
    try:
        import io

        frame = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, na_values=NA_VALUES, keep_default_na=False,
                            index_col=False, quoting=3)  # BIDS TSV: no quoting
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise BadDataError(f"cannot parse the {what} as tab-separated values ({detail})", path=path,
                           fix="give every row as many tab-separated fields as the header") from exc
    return Table(path, frame, tuple(content[1:1 + len(frame)]))


# ---------------------------------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    """One defect of one table row (or of a whole table), for the user."""

    path: Path
    line: int | None
    message: str
    fix: str
    subject: str | None = None
    exit_code: int = EXIT_BAD_DATA

    def text(self) -> str:
        where = f"line {self.line}" if self.line else ""
        who = f"sub-{self.subject}" if self.subject else ""
        prefix = f"{where} ({who})" if where and who else where or who
        return f"{prefix}: {self.message}" if prefix else self.message


def as_error(problems: list[Problem]) -> BidsKetamineError:
    """One error (one line) for one or more problems: the first in full, the others counted with their place."""
    first = problems[0]
    message = first.text()
    others = problems[1:]
    if others:
        places = ", ".join(f"{p.path.name}" + (f" line {p.line}" if p.line else "") for p in others[:4])
        message += f" (and {len(others)} more: {places}{' ...' if len(others) > 4 else ''})"
    cls = MissingInputError if first.exit_code == EXIT_MISSING_INPUT else BadDataError
    return cls(message, path=first.path, fix=first.fix)


# ---------------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """What one column may hold: a label among ``allowed`` (case-insensitive) or a number within a range."""

    column: str
    field: str  #: design field that names the column (for the fix)
    kind: Literal["label", "number", "integer"]
    allowed: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    what: str = ""
    allowed_field: str = ""  #: design field listing the allowed labels

    def problem(self, value) -> tuple[str, str] | None:
        """``(message, fix)`` when ``value`` (text, or NaN for n/a) breaks the rule; None when it is fine."""
        if not isinstance(value, str):
            return None
        text = value.strip()
        if self.kind == "label":
            if text.lower() in {a.lower() for a in self.allowed}:
                return None
            known = ", ".join(dict.fromkeys(self.allowed)) or "none"
            return (f"{self.column} is {value!r}, which the design does not know (known: {known})",
                    f"correct the value, write n/a when it is unknown, or add it to design.{self.allowed_field} "
                    "in --config-file")
        try:
            number = float(text)
        except ValueError:
            number = np.nan
        if not np.isfinite(number):
            return (f"{self.column} is {value!r}, not a number",
                    f"write the {self.what or self.column} as a number, or n/a when it is unknown")
        if self.kind == "integer" and number != int(number):
            return (f"{self.column} is {value!r}, not a whole number",
                    f"write the {self.what or self.column} as a whole number (1, 2, ...)")
        low = -np.inf if self.low is None else self.low
        high = np.inf if self.high is None else self.high
        if not low <= number <= high:
            span = (f"{low:g}-{high:g}" if np.isfinite(high) else f">= {low:g}")
            return (f"{self.column} is {value!r}, outside the range of the {self.what or self.column} ({span})",
                    f"correct the value (or write n/a), or point design.{self.field} at the right column")
        return None


def _madrs_rule(column: str, field: str) -> Rule:
    return Rule(column, field, "number", low=MADRS_RANGE[0], high=MADRS_RANGE[1], what="MADRS total score")


def participant_rules(design: StudyDesign, columns: Iterable[str]) -> list[Rule]:
    """Rules for the participants.tsv columns the design reads (only those the file has or the config names)."""
    from bids_ketamine.design import resolved_participant_columns

    cols = resolved_participant_columns(design, list(columns))
    rules: list[Rule] = []
    if cols.sex:
        rules.append(Rule(cols.sex, "participants.sex", "label", tuple(design.sex_values), what="sex",
                          allowed_field="sex_values"))
    if cols.age:
        rules.append(Rule(cols.age, "participants.age", "number", low=AGE_RANGE[0], high=AGE_RANGE[1],
                          what="age in years"))
    if cols.arm:
        rules.append(Rule(cols.arm, "participants.arm", "label", (*design.arms.ketamine, *design.arms.saline),
                          what="treatment arm", allowed_field="arms"))
    if cols.cohort:
        rules.append(Rule(cols.cohort, "participants.cohort", "label",
                          (*design.cohorts.discovery, *design.cohorts.external), what="cohort",
                          allowed_field="cohorts"))
    if design.madrs.file == "participants.tsv":
        rules += [_madrs_rule(design.madrs.baseline, "madrs.baseline"),
                  _madrs_rule(design.madrs.followup, "madrs.followup")]
    return [r for r in rules if r.column in set(columns)]


def session_rules(design: StudyDesign) -> list[Rule]:
    """Rules for the sessions.tsv columns the design reads."""
    cols, values = design.sessions, design.session_values
    conditions = tuple(dict.fromkeys([*values.conditions, cols.placebo_condition]))
    rules = []
    if cols.condition:
        rules.append(Rule(cols.condition, "sessions.condition", "label", conditions, what="drug condition",
                          allowed_field="session_values.conditions"))
    if cols.pretreatment:
        rules.append(Rule(cols.pretreatment, "sessions.pretreatment", "label", tuple(values.pretreatments),
                          what="pretreatment", allowed_field="session_values.pretreatments"))
    if cols.period:
        rules.append(Rule(cols.period, "sessions.period", "integer", low=1, what="crossover period"))
    for column, field in ((cols.madrs_baseline, "sessions.madrs_baseline"),
                          (cols.madrs_followup, "sessions.madrs_followup")):
        if column:
            rules.append(_madrs_rule(column, field))
    return rules


def _row_problems(table: Table, rules: list[Rule], subject_of: Mapping[int, str | None],
                  only: Iterable[str] | None = None) -> list[Problem]:
    wanted = None if only is None else set(only)
    out = []
    for rule in rules:
        if rule.column not in table.frame.columns or (wanted is not None and rule.column not in wanted):
            continue
        for index, value in table.frame[rule.column].items():
            found = rule.problem(value)
            if found:
                out.append(Problem(table.path, table.line(index), found[0], found[1], subject_of.get(index)))
    return out


# ---------------------------------------------------------------------------------------------------- identifiers
def identifiers(table: Table, column: str, prefix: str, what: str, subject: str | None = None) -> tuple[pd.Series,
                                                                                                  list[Problem]]:
    """Identifier column without its prefix, and problems of missing, malformed or repeated identifiers."""
    problems: list[Problem] = []
    if column not in table.frame.columns:
        problems.append(Problem(table.path, 1, f"no {column} column (the header has "
                                f"{', '.join(table.frame.columns)})", f"add the {column} column (BIDS requires it)",
                                subject, EXIT_MISSING_INPUT))
        return pd.Series(dtype=object), problems
    ids = table.frame[column].astype(object)
    labels = ids.map(lambda v: v.strip().removeprefix(prefix) if isinstance(v, str) else None)
    first: dict[str, int] = {}
    for index, label in labels.items():
        line = table.line(index)
        who = subject or (label if label and _LABEL.match(label) else None)
        if label is None:
            problems.append(Problem(table.path, line, f"{column} is missing", f"give every row its {what} "
                                    f"({prefix}<label>)", who))
        elif not _LABEL.match(label):
            problems.append(Problem(table.path, line, f"{column} {ids[index]!r} is not a BIDS label",
                                    f"write {prefix}<label> with letters and digits only", who))
        elif label in first:
            problems.append(Problem(table.path, line, f"{prefix}{label} is listed twice (also on line "
                                    f"{first[label]})", f"keep one row per {what}", who))
        else:
            first[label] = line
    return labels, problems


# ---------------------------------------------------------------------------------------------------- participants
@dataclass
class ParticipantChecks:
    """Result of checking participants.tsv (and the MADRS phenotype file): row problems per participant."""

    by_subject: dict[str, list[Problem]]

    def of(self, subject: str, columns: Iterable[str] | None = None) -> list[Problem]:
        return list(self.by_subject.get(subject, []))


def check_participants_file(bids_dir: str | Path, design: StudyDesign) -> Table:
    """participants.tsv read and checked as a table (identifiers present, well formed and unique); a defect here
    makes the whole table ambiguous and is raised (exit 65, or 66 without a participant_id column)."""
    path = Path(bids_dir) / "participants.tsv"
    table = read_table(path, "participants.tsv")
    _, problems = identifiers(table, "participant_id", "sub-", "participant")
    if problems:
        raise as_error(problems)
    if table.frame.empty:
        raise BadDataError("participants.tsv has a header but no participant", path=path,
                           fix="add one row per sub-* folder")
    return table


def participant_problems(bids_dir: str | Path, design: StudyDesign,
                         columns: Iterable[str] | None = None) -> dict[str, list[Problem]]:
    """Row problems of participants.tsv and of the MADRS phenotype file, per participant label.

    ``columns``: standardised columns (``sex``, ``madrs_baseline``...) whose values must be valid; None: all the
    design reads. Raises for table-wide defects (``check_participants_file``).
    """
    from bids_ketamine.design import resolved_participant_columns

    bids_dir = Path(bids_dir)
    table = check_participants_file(bids_dir, design)
    labels = identifiers(table, "participant_id", "sub-", "participant")[0]
    cols = resolved_participant_columns(design, table.frame.columns)
    standard = {"site": cols.site, "sex": cols.sex, "age": cols.age, "arm": cols.arm, "cohort": cols.cohort}
    madrs_columns = {"madrs_baseline": design.madrs.baseline, "madrs_24h": design.madrs.followup}
    wanted = None
    if columns is not None:
        wanted = {standard.get(c) or madrs_columns.get(c) for c in columns} - {None}
    problems = _row_problems(table, participant_rules(design, table.frame.columns), labels.to_dict(), wanted)
    if design.madrs.file != "participants.tsv":
        madrs_path = bids_dir / design.madrs.file
        if madrs_path.exists():
            pheno = read_table(madrs_path, design.madrs.file)
            ids, id_problems = identifiers(pheno, "participant_id", "sub-", "participant")
            if id_problems:
                raise as_error(id_problems)
            rules = [_madrs_rule(design.madrs.baseline, "madrs.baseline"),
                     _madrs_rule(design.madrs.followup, "madrs.followup")]
            problems += _row_problems(pheno, rules, ids.to_dict(), wanted)
    by_subject: dict[str, list[Problem]] = {}
    for problem in problems:
        by_subject.setdefault(problem.subject or "", []).append(problem)
    return by_subject


# ---------------------------------------------------------------------------------------------------- sessions
def sessions_path(bids_dir: str | Path, subject: str) -> Path:
    return Path(bids_dir) / f"sub-{subject}" / f"sub-{subject}_sessions.tsv"


def session_problems(bids_dir: str | Path, design: StudyDesign, subject: str) -> tuple[Table | None, list[Problem]]:
    """``sub-X_sessions.tsv`` of one participant (None when absent) and its problems (identifiers, values)."""
    path = sessions_path(bids_dir, subject)
    if not path.exists():
        return None, []
    try:
        table = read_table(path, "sessions.tsv")
    except BidsKetamineError as exc:
        return None, [Problem(path, None, exc.problem, exc.fix or "", subject, exc.exit_code)]
    labels, problems = identifiers(table, "session_id", "ses-", "session", subject)
    problems += _row_problems(table, session_rules(design), {i: subject for i in table.frame.index})
    if table.frame.empty:
        problems.append(Problem(path, None, "sessions.tsv has a header but no session", "add one row per ses-* "
                                "folder, or remove the file", subject))
    return table, problems


def _session_rows(table: Table) -> dict[str, int]:
    """session label -> row index."""
    if "session_id" not in table.frame.columns:
        return {}
    out = {}
    for index, value in table.frame["session_id"].items():
        if isinstance(value, str):
            out.setdefault(value.strip().removeprefix("ses-"), index)
    return out


def _needs_session_value(table: Table | None, path: Path, subject: str, sessions: Iterable[str], column: str | None,
                         field: str, analysis: str, why: str) -> list[Problem]:
    """Every session in ``sessions`` has a row in sessions.tsv with a value in ``column``."""
    sessions = sorted(set(sessions))
    if not sessions or column is None:
        return []
    if table is None:
        return [Problem(path, None, f"sessions.tsv not found; {analysis} needs the {why} of session(s) "
                        f"{', '.join('ses-' + s for s in sessions)}",
                        f"add sub-{subject}_sessions.tsv with session_id and {column} columns", subject,
                        EXIT_MISSING_INPUT)]
    if column not in table.frame.columns:
        return [Problem(path, 1, f"no column {column!r} (design.{field}); {analysis} needs the {why} of each "
                        "session", f"add the column, or set design.{field} in --config-file to the column that has "
                        "it", subject, EXIT_MISSING_INPUT)]
    rows = _session_rows(table)
    out = []
    for session in sessions:
        if session not in rows:
            out.append(Problem(path, None, f"ses-{session} has data but no row", f"add a row for ses-{session} "
                               f"with its {why}", subject))
        elif not isinstance(table.frame[column].iloc[rows[session]], str):
            out.append(Problem(path, table.line(rows[session]), f"ses-{session} has no {column} (n/a); {analysis} "
                               f"needs the {why} of every session", f"write the {why} of ses-{session}", subject))
    return out


# ---------------------------------------------------------------------------------------------------- events
def event_problems(path: str | Path, design: StudyDesign, subject: str | None = None) -> list[Problem]:
    """The fMRS events.tsv: BIDS onset/duration/trial_type columns, numeric non-negative onsets and durations,
    and the infusion row the blocks are timed from (``design.fmrs.infusion_trial_type``)."""
    path = Path(path)
    try:
        table = read_table(path, "events.tsv")
    except BidsKetamineError as exc:
        return [Problem(path, None, exc.problem, exc.fix or "", subject, exc.exit_code)]
    frame = table.frame
    missing = [c for c in ("onset", "duration", "trial_type") if c not in frame.columns]
    if missing:
        return [Problem(path, 1, f"no {missing[0]!r} column (the header has {', '.join(frame.columns)})",
                        "write the BIDS events columns onset, duration and trial_type", subject)]
    problems = []
    for column in ("onset", "duration"):
        rule = Rule(column, "fmrs", "number", low=0.0, what=f"{column} in seconds")
        for index, value in frame[column].items():
            if column == "onset" and not isinstance(value, str):
                problems.append(Problem(path, table.line(index), "onset is n/a", "give every event its onset in "
                                        "seconds from the start of the acquisition", subject))
                continue
            found = rule.problem(value)
            if found:
                problems.append(Problem(path, table.line(index), found[0],
                                        f"write the {column} in seconds (>= 0)", subject))
    trial = design.fmrs.infusion_trial_type
    if not (frame["trial_type"].astype(str).str.strip() == trial).any():
        known = ", ".join(sorted(frame["trial_type"].dropna().astype(str).unique())) or "none"
        problems.append(Problem(path, None, f"no row with trial_type {trial!r} (it has {known})",
                                "add the infusion row, or set design.fmrs.infusion_trial_type to the trial_type that "
                                "starts the infusion", subject))
    return problems


# ---------------------------------------------------------------------------------------------------- per level
def participant_level_refusals(bids_dir: str | Path, design: StudyDesign, inputs: Mapping[str, ParticipantInputs],
                               analyses: Iterable[str], *, blocks: bool = True) -> dict[tuple[str, str],
                                                                                        BidsKetamineError]:
    """``(subject, analysis) -> error`` for every participant job a table defect must stop.

    A defect of the participant's row in participants.tsv stops the analyses that read that column
    (``GROUP_PARTICIPANT_COLUMNS``), a defect of its sessions.tsv those that read sessions (``SESSION_ANALYSES``);
    a missing condition stops connectivity; a bad events.tsv stops spectroscopy (when it times the fMRS blocks).
    Table-wide defects of participants.tsv are raised (they concern everyone).
    """
    bids_dir = Path(bids_dir)
    analyses = list(analyses)
    has_participants = (bids_dir / "participants.tsv").exists()
    rows = {a: participant_problems(bids_dir, design, GROUP_PARTICIPANT_COLUMNS.get(a, ())) if has_participants
            and GROUP_PARTICIPANT_COLUMNS.get(a) else {} for a in analyses}
    refusals: dict[tuple[str, str], BidsKetamineError] = {}
    for subject, record in inputs.items():
        table, problems = session_problems(bids_dir, design, subject)
        path = sessions_path(bids_dir, subject)
        for analysis in analyses:
            own = list(rows[analysis].get(subject, []))
            if analysis in SESSION_ANALYSES:
                own += problems
            if analysis == "connectivity":
                sessions = [r.session for r in record.bold if r.session]
                own += _needs_session_value(table, path, subject, sessions, design.sessions.condition,
                                            "sessions.condition", "connectivity", "drug condition")
            if analysis == "spectroscopy":
                if table is not None and design.sessions.pretreatment in table.frame.columns:
                    sessions = [a.session for a in record.mrs if a.session]
                    own += _needs_session_value(table, path, subject, sessions, design.sessions.pretreatment,
                                                "sessions.pretreatment", "spectroscopy", "pretreatment")
                if blocks:
                    for events in sorted({a.events for a in record.mrs if a.events is not None}):
                        own += event_problems(events, design, subject)
            if own:
                refusals[(subject, analysis)] = as_error(own)
    return refusals


def session_subjects_ok(bids_dir: str | Path, design: StudyDesign, subjects: Iterable[str]) -> list[str]:
    """The subjects whose sessions.tsv (if any) has no defect: the others are refused per participant."""
    return [s for s in subjects if not session_problems(bids_dir, design, s)[1]]


def group_level_refusal(bids_dir: str | Path, design: StudyDesign, analysis: str,
                        subjects: Iterable[str] | None = None) -> BidsKetamineError | None:
    """The error that must stop one group analysis (its tables' defects in the columns it reads), or None."""
    bids_dir = Path(bids_dir)
    columns = GROUP_PARTICIPANT_COLUMNS.get(analysis, ())
    problems: list[Problem] = []
    if (bids_dir / "participants.tsv").exists() and columns:
        rows = participant_problems(bids_dir, design, columns)
        wanted = None if subjects is None else set(subjects)
        problems += [p for s, ps in sorted(rows.items()) if wanted is None or s in wanted for p in ps]
    if analysis in SESSION_ANALYSES:
        folders = sorted(Path(bids_dir).glob("sub-*/sub-*_sessions.tsv"))
        for path in folders:
            subject = path.parent.name.removeprefix("sub-")
            if subjects is not None and subject not in set(subjects):
                continue
            problems += session_problems(bids_dir, design, subject)[1]
    return as_error(problems) if problems else None
