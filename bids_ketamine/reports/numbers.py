"""How a number is written on screen in the reports and the findings: one function, three significant digits.

Why one place: the reports show values from many tables and sentences; a reader compares them across sections, so
they must all be rounded the same way (full precision stays in the TSV files and in ``findings.json``). Three
significant digits is what a reader can take in at a glance and more than the uncertainty of any headline result
(a balanced accuracy's confidence interval is several hundredths wide).
"""

from __future__ import annotations

import math
import re

SIGNIFICANT_DIGITS = 3

#: A number standing alone in text (not part of a label such as ``sub-x024``, ``PC1`` or a file name).
NUMBER_IN_TEXT = re.compile(r"(?<![\w.\-+/])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]*\w)")


def format_number(value: float | int, digits: int = SIGNIFICANT_DIGITS) -> str:
    """``value`` rounded to ``digits`` significant digits, without trailing zeros, in plain or e-notation.

    0.73214 -> ``0.732``, 0.0019996 -> ``0.002``, 1962824 -> ``1.96e6``, 12.0 -> ``12``, nan -> ``n/a``.
    Plain notation is used from 1e-4 up to 1e4 (where rounding to 3 digits leaves at most one trailing zero
    that could be read as significant); e-notation outside, so no number on screen carries more than ``digits``.
    """
    x = float(value)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    rounded = float(f"{x:.{digits - 1}e}")  # round to significant digits first (0.9996 -> 1.00)
    magnitude = math.floor(math.log10(abs(rounded)))
    if -4 <= magnitude < 4:
        decimals = max(digits - 1 - magnitude, 0)
        text = f"{rounded:.{decimals}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = f"{rounded:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_cell(text: str) -> str:
    """A table cell as shown: a number rounded with :func:`format_number`, anything else unchanged.

    Integers of at most ``SIGNIFICANT_DIGITS`` digits (counts, block numbers) are already exact and stay as
    written; booleans, labels and ``n/a`` are not numbers.
    """
    stripped = text.strip()
    if not stripped or not NUMBER_IN_TEXT.fullmatch(stripped):
        return text
    try:
        return format_number(float(stripped))
    except ValueError:
        return text


def format_volume_mm3(value: float) -> str:
    """A volume recorded in mm^3 as a reader takes it in: cm^3 at 3 significant digits (1901328 -> ``1900 cm3``)."""
    return f"{format_number(float(value) / 1000.0)} cm3"


def significant_digits(token: str) -> int:
    """How many significant digits a number as written carries (trailing zeros of an integer are not counted).

    ``0.00200`` -> 3, ``1.96e6`` -> 3, ``5000`` -> 1, ``138`` -> 3. Used by the tests to check what is on screen.
    """
    mantissa = re.split(r"[eE]", token.lstrip("+-"), maxsplit=1)[0]
    if "." in mantissa:
        digits = mantissa.replace(".", "").lstrip("0")
    else:
        digits = mantissa.lstrip("0").rstrip("0")
    return len(digits)


__all__ = ["NUMBER_IN_TEXT", "SIGNIFICANT_DIGITS", "format_cell", "format_number", "format_volume_mm3",
           "significant_digits"]
