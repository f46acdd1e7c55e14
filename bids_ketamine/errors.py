"""Errors that carry the BIDS-Apps execution-spec exit code and a one-line fix for the user.

Every error a user can cause is raised as one of these; the CLI prints ``str(error)`` as a single line and exits
with ``error.exit_code``. Science code raises them too, naming the offending file, so a participant fails cleanly.
"""

from __future__ import annotations

from os import PathLike

#: Exit codes of the BIDS-Apps execution specification, as documented in the README.
EXIT_OK = 0
EXIT_PARTICIPANT_FAILED = 1
EXIT_INVALID_BIDS = 16
EXIT_UNSUPPORTED_LEVEL = 17
EXIT_NO_MATCH = 18
EXIT_USAGE = 64
EXIT_BAD_DATA = 65
EXIT_MISSING_INPUT = 66
EXIT_CANNOT_CREATE_OUTPUT = 73
EXIT_TEMPORARY = 75


class BidsKetamineError(Exception):
    """Base class: a message for the user and the exit code the app ends with."""

    exit_code: int = EXIT_PARTICIPANT_FAILED

    def __init__(self, message: str, *, path: str | PathLike | None = None, fix: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = message
        self.fix = fix
        parts = [f"{self.path}: {message}" if self.path else message]
        if fix:
            parts.append(f"Fix: {fix}")
        super().__init__(" ".join(p.rstrip(".") + "." for p in parts))


class UsageError(BidsKetamineError):
    """Command line arguments that cannot be honoured (exit 64)."""

    exit_code = EXIT_USAGE


class InvalidBidsError(BidsKetamineError):
    """The input dataset is not valid BIDS (exit 16)."""

    exit_code = EXIT_INVALID_BIDS


class UnsupportedLevelError(BidsKetamineError):
    """An analysis level the app does not support (exit 17)."""

    exit_code = EXIT_UNSUPPORTED_LEVEL


class NoMatchError(BidsKetamineError):
    """Participant labels or BIDS filters matched nothing (exit 18)."""

    exit_code = EXIT_NO_MATCH


class BadDataError(BidsKetamineError):
    """An input file exists but its content cannot be analysed (exit 65)."""

    exit_code = EXIT_BAD_DATA


class UnusableInputError(BadDataError):
    """An input file is truncated, corrupt or holds impossible values (NaN in a probability map...) (exit 65).

    Distinct from other bad data so that no analysis replaces such a file by a default: a fallback is for a
    missing or inapplicable input, never for a broken one.
    """


class MissingInputError(BidsKetamineError):
    """A required input file or column is absent (exit 66)."""

    exit_code = EXIT_MISSING_INPUT


class CannotCreateOutputError(BidsKetamineError):
    """The output or work directory cannot be written (exit 73)."""

    exit_code = EXIT_CANNOT_CREATE_OUTPUT


class TemporaryFailure(BidsKetamineError):
    """A transient condition (lock time-out, resources); retrying may succeed (exit 75)."""

    exit_code = EXIT_TEMPORARY


class NotBuiltError(BidsKetamineError):
    """An analysis step that this version does not implement yet: said plainly, never faked."""

    exit_code = EXIT_PARTICIPANT_FAILED
