"""HTML reports, methods boilerplate and provenance views, built from the files of an output folder.

Entry points for the CLI: ``build_participant_report(output_dir, subject)`` -> ``sub-<label>.html``,
``build_group_report(output_dir)`` -> ``group.html`` + ``methods.md``, and ``build_reports(output_dir)`` for both
(what ``--reports-only`` runs). Nothing here recomputes a result.
"""

from bids_ketamine.reports.group import build_group_report, build_reports
from bids_ketamine.reports.participant import build_participant_report

__all__ = ["build_group_report", "build_participant_report", "build_reports"]
