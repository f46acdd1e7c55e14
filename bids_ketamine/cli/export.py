"""``bids-ketamine export OUTPUT_DIR EXPORT_DIR --site NAME``: pack what may leave a site (see
``bids_ketamine.consortium.export``); the coordinating site pools exports with ``group --participant-outputs``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import EXIT_OK, EXIT_USAGE, BidsKetamineError


def _build_export_parser() -> argparse.ArgumentParser:
    from bids_ketamine.cli.parser import _analysis_list

    parser = argparse.ArgumentParser(
        prog="bids-ketamine export",
        description="Pack a site's participant-level features for a consortium: feature and QC tables with their "
                    "sidecars (identifying fields and paths removed) and the site's run records, with a manifest "
                    "of checksums; no image leaves the site. The coordinating site runs `bids-ketamine BIDS_DIR "
                    "OUT group --participant-outputs EXPORT...` on the exports of every site.",
        epilog="Exit codes: 0 ok; 18 nothing to export; 64 usage error; 65 bad data; 66 missing input; "
               "73 cannot create output.")
    parser.add_argument("output_dir", type=Path, help="the site's OUTPUT_DIR of the participant level")
    parser.add_argument("export_dir", type=Path, help="folder for the export (new, or an earlier export of it)")
    parser.add_argument("--site", required=True, help="the site's name in the consortium (alphanumeric)")
    parser.add_argument("--participant-label", "--participant_label", dest="participant_label", nargs="+",
                        metavar="LABEL", help="participants to export (with or without 'sub-'); default: all")
    parser.add_argument("--analyses", type=_analysis_list, metavar="LIST",
                        help="comma-separated subset of structural, connectivity, spectroscopy; default: all")
    parser.add_argument("--version", action="version", version=f"bids-ketamine {__version__}")
    return parser


def main(argv: list[str]) -> int:
    try:
        args = _build_export_parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code in (0, None) else EXIT_USAGE
    from bids_ketamine.consortium.export import describe, export_site
    from bids_ketamine.discovery import clean_labels

    try:
        result = export_site(args.output_dir, args.export_dir, args.site,
                             participants=clean_labels(args.participant_label, "sub-", "participant"),
                             analyses=args.analyses)
    except BidsKetamineError as exc:
        print(f"bids-ketamine export: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (OSError, EOFError, MemoryError) as exc:  # a full disk or a blocked export folder (else a bug)
        from bids_ketamine.io.failures import describe as describe_failure

        mapped = describe_failure(exc, outputs=[args.export_dir.absolute()], who="the export")
        if mapped is None:
            raise
        print(f"bids-ketamine export: error: {mapped}", file=sys.stderr)
        return mapped.exit_code
    print(describe(result))
    return EXIT_OK
