"""BIDS validation with the current validator (PyPI ``bids-validator-deno``, offline, understands ``mrs/``)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from bids_ketamine.errors import InvalidBidsError, UsageError


def validator_executable() -> str:
    """The ``bids-validator-deno`` next to this Python (a venv or the container), else on PATH."""
    local = Path(sys.executable).parent / "bids-validator-deno"
    if local.exists():
        return str(local)
    found = shutil.which("bids-validator-deno")
    if not found:
        raise UsageError("bids-validator-deno is not installed",
                         fix="pip install bids-validator-deno, or pass --skip-bids-validation")
    return found


def validation_errors(dataset: Path, timeout: float = 900.0) -> list[dict]:
    """Run the validator and return its error-severity issues (warnings are not failures)."""
    cmd = [validator_executable(), str(dataset), "--format", "json", "--ignoreWarnings"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InvalidBidsError(f"bids-validator-deno did not finish within {timeout:.0f} s", path=dataset,
                               fix="pass --skip-bids-validation for very large datasets validated elsewhere") from exc
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        if proc.returncode == 0:
            return []
        first = (proc.stderr or proc.stdout).strip().splitlines()
        raise InvalidBidsError(f"bids-validator-deno failed: {first[-1] if first else 'no output'}", path=dataset,
                               fix="run bids-validator-deno on the dataset to see the details") from None
    issues = report.get("issues", {}).get("issues", [])
    return [i for i in issues if i.get("severity") == "error"]


def not_about_unretrieved_content(dataset: Path, errors: list[dict]) -> list[dict]:
    """Errors other than those at git-annex files whose content is not retrieved (a DataLad dataset fetched in
    part): the validator cannot read those, and the inventory reports them with the ``datalad get`` that fixes it."""
    from bids_ketamine.annex import content_missing

    kept = [e for e in errors if not (e.get("location") and
                                      content_missing(Path(dataset) / str(e["location"]).lstrip("/")))]
    if len(kept) < len(errors):
        logging.getLogger("bids_ketamine").info(
            "%d validator error(s) concern annexed files whose content is not retrieved; the inventory lists them",
            len(errors) - len(kept))
    return kept


def validate_dataset(dataset: Path) -> None:
    """Raise ``InvalidBidsError`` (exit 16) with the first problem when the dataset is not valid BIDS."""
    errors = not_about_unretrieved_content(dataset, validation_errors(dataset))
    if not errors:
        return
    first = errors[0]
    codes = sorted({e.get("code", "?") for e in errors})
    raise InvalidBidsError(
        f"not valid BIDS: {len(errors)} error(s) ({', '.join(codes[:4])}{'...' if len(codes) > 4 else ''}); "
        f"first: {first.get('code')} at {first.get('location', '?')}",
        path=dataset,
        fix=f"run `bids-validator-deno {dataset}` for details and correct the dataset, "
            "or pass --skip-bids-validation",
    )
