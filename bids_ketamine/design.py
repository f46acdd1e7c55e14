"""The study design: which columns of which BIDS tables hold the facts each analysis needs.

Users describe their study once (in ``--config-file``, section ``[design]``); every analysis reads the standardised
tables built here (``participants_table``, ``sessions_table``), never the raw TSVs, so a study with other column
names or a phenotype file works without code changes. A wrong name is reported with the field, the file and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from bids_ketamine.errors import BadDataError, MissingInputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Columns(_Strict):
    """Column mappings: an empty string (TOML has no null) means the study has no such column."""

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if value == "" else value


class ParticipantColumns(_Columns):
    """participants.tsv columns; ``None`` means the study has no such column (defaults documented per field)."""

    site: str | None = Field("site", description="acquisition site or scanner; None: one site")
    sex: str | None = Field("sex", description="biological sex; values mapped with `sex_values`")
    age: str | None = Field("age", description="age in years")
    arm: str | None = Field("arm", description="treatment arm (ketamine / saline); None: everyone had ketamine")
    cohort: str | None = Field("cohort", description="discovery / external; None: everyone is discovery")


class ArmValues(_Strict):
    ketamine: list[str] = ["ketamine"]
    saline: list[str] = ["saline", "placebo"]


class CohortValues(_Strict):
    discovery: list[str] = ["discovery"]
    external: list[str] = ["external", "validation", "replication"]


class MadrsSource(_Strict):
    """Where MADRS lives: ``participants.tsv`` or a ``phenotype/<name>.tsv`` keyed by participant_id."""

    file: str = "participants.tsv"
    baseline: str = "madrs_baseline"
    followup: str = "madrs_24h"

    @field_validator("file")
    @classmethod
    def _file_in_dataset(cls, value: str) -> str:
        if value != "participants.tsv" and not (value.startswith("phenotype/") and value.endswith(".tsv")):
            raise ValueError("must be 'participants.tsv' or 'phenotype/<name>.tsv'")
        return value


class ResponseRule(_Strict):
    """How the outcome is defined: MADRS reduction at 24 h (default >= 50 %), or a categorical column."""

    kind: Literal["madrs_reduction", "column"] = "madrs_reduction"
    min_reduction: float = Field(0.5, gt=0, lt=1, description="fraction of baseline MADRS that must be gone")
    column: str | None = Field(None, description="participants.tsv column with the outcome, for kind='column'")
    positive: list[str] = Field([], description="values of `column` that count as the positive class")


class SessionColumns(_Columns):
    """sessions.tsv columns (``sub-X/sub-X_sessions.tsv``)."""

    condition: str | None = Field("condition", description="drug condition: placebo, ketamine, psilocybin, LSD...")
    pretreatment: str | None = Field("pretreatment", description="pretreatment: placebo, naltrexone")
    period: str | None = Field("period", description="crossover period (1, 2...)")
    madrs_baseline: str | None = "madrs_baseline"
    madrs_followup: str | None = "madrs_24h"
    placebo_condition: str = Field("placebo", description="condition value that is the within-subject reference")


class FmrsTiming(_Strict):
    """How fMRS transients are grouped in time relative to the infusion in the spectroscopy ``events.tsv``."""

    infusion_trial_type: str = Field("infusion", description="events.tsv trial_type whose onset starts the infusion")
    block_seconds: float = Field(240.0, gt=0, description="length of an fMRS block of transients")


class SessionValues(_Strict):
    """Labels sessions.tsv may hold (case-insensitive): any other value is refused (exit 65), so that a typo
    (``ketamin``) never becomes a drug of its own nor an unknown pretreatment a placebo session."""

    conditions: list[str] = Field(["placebo", "ketamine", "esketamine", "psilocybin", "lsd", "mdma", "saline"],
                                  description="drug conditions; sessions.placebo_condition is always allowed")
    pretreatments: list[str] = Field(["placebo", "naltrexone"], description="pretreatments")


class StudyDesign(_Strict):
    participants: ParticipantColumns = ParticipantColumns()
    sex_values: dict[str, Literal["F", "M"]] = {"f": "F", "female": "F", "w": "F", "m": "M", "male": "M"}
    arms: ArmValues = ArmValues()
    cohorts: CohortValues = CohortValues()
    madrs: MadrsSource = MadrsSource()
    response: ResponseRule = ResponseRule()
    sessions: SessionColumns = SessionColumns()
    session_values: SessionValues = SessionValues()
    fmrs: FmrsTiming = FmrsTiming()


PARTICIPANT_TABLE_COLUMNS = ("participant_id", "site", "sex", "age", "arm", "cohort", "madrs_baseline",
                             "madrs_24h", "outcome", "site_known")
#: Site of every participant of a participants.tsv without a site column (one site); ``site_known`` is then False,
#: so a frozen model never takes such a participant for one of its training sites of the same name.
DEFAULT_SITE = "site1"
SESSION_TABLE_COLUMNS = ("participant_id", "session_id", "condition", "pretreatment", "period", "madrs_baseline",
                         "madrs_24h")


def _strip(prefix: str, values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.removeprefix(prefix)


def read_tsv(path: Path) -> pd.DataFrame:
    """A BIDS TSV with ``n/a`` as missing and every column as text (types are decided by the design); an
    unreadable, empty or malformed file is BadDataError naming it (``bids_ketamine.tables.read_table``)."""
    from bids_ketamine.tables import read_table

    return read_table(path, Path(path).name).frame


def _require(table: pd.DataFrame, column: str | None, field: str, path: Path) -> None:
    if column is not None and column not in table.columns:
        raise MissingInputError(
            f"column {column!r} (config field design.{field}) is not in the file; it has "
            f"{', '.join(table.columns)}",
            path=path,
            fix=f"add the column, or set design.{field} in --config-file to one of the columns above "
                "(or to nothing, if the study has none)",
        )


def _numeric(values: pd.Series, field: str, path: Path, lines=None, ids=None) -> pd.Series:
    """``values`` as floats; a value that is not a number is BadDataError naming the file line (``lines``: file
    line per position) or the participant (``ids``)."""
    out = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & out.isna()
    if bad.any():
        position = int(np.flatnonzero(bad.to_numpy())[0])
        where = []
        if lines is not None:
            where.append(f"line {lines[position]}")
        if ids is not None:
            where.append(f"(sub-{ids[position]})")
        prefix = " ".join(where) + ": " if where else ""
        raise BadDataError(f"{prefix}design.{field} column has non-numeric value {values[bad].iloc[0]!r}",
                           path=path, fix="use numbers, or n/a for missing values")
    return out.astype(float)


def _map_values(values: pd.Series, mapping: dict[str, list[str]]) -> pd.Series:
    lookup = {v.lower(): k for k, vs in mapping.items() for v in vs}
    return values.map(lambda v: lookup.get(str(v).lower(), np.nan) if pd.notna(v) else np.nan)


def resolved_participant_columns(design: StudyDesign, available) -> ParticipantColumns:
    """The participants.tsv columns to read: a column the user named must exist; a default name that is absent
    means the study has none (a spectroscopy-only dataset or imported maps need only ``participant_id``).

    Why here: every analysis reads the standardised table, and each one copes with a missing site (one site),
    sex/age (covariate not used, with a note), arm (everyone had ketamine) and cohort (everyone is discovery), so a
    default that the data do not have is not an error; a name the user wrote in ``--config-file`` that the data lack
    is (a typo must not silently drop a design factor).
    """
    cols = design.participants
    explicit = cols.model_fields_set
    absent = {f: None for f in ("site", "sex", "age", "arm", "cohort")
              if f not in explicit and getattr(cols, f) is not None and getattr(cols, f) not in set(available)}
    return cols.model_copy(update=absent) if absent else cols


def participants_table(bids_dir: Path, design: StudyDesign) -> pd.DataFrame:
    """The standardised participants table (columns ``PARTICIPANT_TABLE_COLUMNS``), one row per subject."""
    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        raise MissingInputError("participants.tsv not found", path=path,
                                fix="add participants.tsv with a participant_id column (BIDS requires it)")
    from bids_ketamine.tables import as_error, check_participants_file, identifiers

    table = check_participants_file(bids_dir, design)  # empty, malformed or repeated IDs: one line, exit 65
    raw = table.frame
    cols = resolved_participant_columns(design, raw.columns)
    for field in ("site", "sex", "age", "arm", "cohort"):
        _require(raw, getattr(cols, field), f"participants.{field}", path)
    out = pd.DataFrame({"participant_id": _strip("sub-", raw["participant_id"])})
    out["site"] = raw[cols.site].astype(str) if cols.site else DEFAULT_SITE
    out["site_known"] = cols.site is not None
    if cols.sex:
        sex = raw[cols.sex].str.strip().str.lower().map(lambda v: design.sex_values.get(v, np.nan)
                                                        if isinstance(v, str) else np.nan)
        out["sex"] = sex
    else:
        out["sex"] = np.nan
    ids = out["participant_id"].tolist()
    out["age"] = _numeric(raw[cols.age], "participants.age", path, table.lines, ids) if cols.age else np.nan
    out["arm"] = _map_values(raw[cols.arm], design.arms.model_dump()) if cols.arm else "ketamine"
    out["cohort"] = _map_values(raw[cols.cohort], design.cohorts.model_dump()) if cols.cohort else "discovery"

    madrs_path = Path(bids_dir) / design.madrs.file
    if design.madrs.file == "participants.tsv":
        madrs = raw.assign(participant_id=out["participant_id"])
    elif madrs_path.exists():
        from bids_ketamine.tables import read_table

        madrs_table = read_table(madrs_path, design.madrs.file)
        _require(madrs_table.frame, "participant_id", "madrs.file (participant_id)", madrs_path)
        problems = identifiers(madrs_table, "participant_id", "sub-", "participant")[1]
        if problems:
            raise as_error(problems)
        madrs = madrs_table.frame
        madrs["participant_id"] = _strip("sub-", madrs["participant_id"])
    else:
        raise MissingInputError("MADRS file named by design.madrs.file not found", path=madrs_path,
                                fix="point design.madrs.file at an existing phenotype/<name>.tsv")
    has_madrs = {design.madrs.baseline, design.madrs.followup} <= set(madrs.columns)
    if has_madrs:
        merged = out[["participant_id"]].merge(madrs, on="participant_id", how="left")
        lines = table.lines if design.madrs.file == "participants.tsv" else None
        out["madrs_baseline"] = _numeric(merged[design.madrs.baseline], "madrs.baseline", madrs_path, lines,
                                         ids).to_numpy()
        out["madrs_24h"] = _numeric(merged[design.madrs.followup], "madrs.followup", madrs_path, lines,
                                    ids).to_numpy()
    else:
        out["madrs_baseline"] = np.nan
        out["madrs_24h"] = np.nan

    rule = design.response
    if rule.kind == "column":
        if not rule.column:
            raise MissingInputError("design.response.kind is 'column' but design.response.column is empty",
                                    path=path, fix="set design.response.column and design.response.positive")
        _require(raw, rule.column, "response.column", path)
        positive = {p.lower() for p in rule.positive}
        if not positive:
            raise MissingInputError("design.response.positive lists no value", path=path,
                                    fix=f"list the values of {rule.column!r} that are the positive class")
        values = raw[rule.column]
        out["outcome"] = values.map(lambda v: (1.0 if str(v).lower() in positive else 0.0) if pd.notna(v)
                                    else np.nan)
    elif has_madrs:
        reduction = (out["madrs_baseline"] - out["madrs_24h"]) / out["madrs_baseline"]
        out["outcome"] = np.where(reduction.isna(), np.nan, (reduction >= rule.min_reduction).astype(float))
    else:
        out["outcome"] = np.nan
    if out["participant_id"].duplicated().any():
        dup = out["participant_id"][out["participant_id"].duplicated()].iloc[0]
        raise BadDataError(f"participant sub-{dup} is listed twice", path=path, fix="keep one row per participant")
    return out[list(PARTICIPANT_TABLE_COLUMNS)].reset_index(drop=True)


def sessions_table(bids_dir: Path, design: StudyDesign, subjects: list[str] | None = None) -> pd.DataFrame:
    """Standardised sessions table (``SESSION_TABLE_COLUMNS``) from every ``sub-X/sub-X_sessions.tsv``."""
    frames = []
    cols = design.sessions
    folders = sorted(Path(bids_dir).glob("sub-*/sub-*_sessions.tsv"))
    for path in folders:
        subject = path.parent.name.removeprefix("sub-")
        if subjects is not None and subject not in subjects:
            continue
        from bids_ketamine.tables import read_table

        table = read_table(path, "sessions.tsv")
        raw = table.frame
        _require(raw, "session_id", "sessions (session_id)", path)
        frame = pd.DataFrame({"participant_id": subject, "session_id": _strip("ses-", raw["session_id"])})
        for name in ("condition", "pretreatment"):
            column = getattr(cols, name)
            if column is not None and column in raw.columns:
                frame[name] = raw[column].str.strip().str.lower()
            else:
                frame[name] = np.nan
        for name, field in (("period", "period"), ("madrs_baseline", "madrs_baseline"),
                            ("madrs_24h", "madrs_followup")):
            column = getattr(cols, field)
            frame[name] = (_numeric(raw[column], f"sessions.{field}", path, table.lines)
                           if column and column in raw.columns
                           else np.nan)
        frames.append(frame)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in SESSION_TABLE_COLUMNS})
    return pd.concat(frames, ignore_index=True)[list(SESSION_TABLE_COLUMNS)]
