"""``python -m bids_ketamine.reports OUTPUT_DIR [LABEL ...]``: rebuild the reports of an output folder.

The same as ``bids-ketamine BIDS OUTPUT group --reports-only``: reads the folder, recomputes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bids_ketamine.errors import BidsKetamineError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bids_ketamine.reports", description=__doc__)
    parser.add_argument("output_dir", type=Path, help="a bids_ketamine output folder")
    parser.add_argument("labels", nargs="*", help="participants (default: all); with labels, no group report")
    args = parser.parse_args(argv)
    from bids_ketamine.reports import build_reports

    labels = [label[4:] if label.startswith("sub-") else label for label in args.labels] or None
    try:
        paths = build_reports(args.output_dir, labels, group=labels is None)
    except BidsKetamineError as exc:
        print(f"bids-ketamine reports: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
