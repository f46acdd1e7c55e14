"""How the structural outputs name the outcome, decided once from the study design.

Why: the app predicts whatever binary outcome the design defines. With the default rule (MADRS reduction at 24 h)
that outcome is ketamine response; with ``design.response.kind = 'column'`` it is a column such as depression vs
control (ds002748), and calling it "response" or counting "responders" would misreport the study.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OutcomeWording:
    """Names of the two outcome classes and of the count column, and one phrase for the outcome itself."""

    positive: str
    negative: str
    count_column: str
    phrase: str
    is_response: bool

    def levels(self) -> dict[str, str]:
        return {"1": self.positive, "0": self.negative}


def outcome_wording(design=None) -> OutcomeWording:
    """Wording for ``design`` (a ``StudyDesign``; None: the default MADRS response rule)."""
    rule = getattr(design, "response", None)
    if rule is not None and rule.kind == "column":
        values = "/".join(rule.positive)
        return OutcomeWording(positive=f"{rule.column} = {values}", negative=f"{rule.column} other than {values}",
                              count_column="n_positive",
                              phrase=f"outcome column '{rule.column}' (positive class: {values})", is_response=False)
    reduction = 50 if rule is None else round(100 * rule.min_reduction)
    return OutcomeWording(positive="responder", negative="non-responder", count_column="n_responders",
                          phrase=f"ketamine response (MADRS reduced by >= {reduction} % at 24 h)", is_response=True)
