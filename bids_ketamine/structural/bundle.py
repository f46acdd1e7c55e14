"""The frozen structural model as a file others can load safely: a skops bundle, a model card and a checksum.

Layout (inside the derivatives, ``group/structural/``):
- ``atlas-<A>_desc-svm_model.skops``: the fitted pipeline (ComBat -> scaling -> [PCA] -> SVM), the calibration map
  with its bootstrap replicates, the training reference (what out-of-distribution checks compare a new patient
  with) and the card, serialised with skops. Why skops: unlike pickle, loading it never runs arbitrary code; it
  only rebuilds the types we list in ``TRUSTED_TYPES`` (and scikit-learn's/numpy's own), so a site can load a model
  file it received from someone else.
- ``..._model.json`` / ``..._model.md``: the model card (versions, features, harmonisation, training cohort,
  metrics, calibration, threshold, intended use, limitations) and the SHA-256 of the ``.skops`` file.

``load_bundle`` refuses (exit 65, one line naming the file) a file whose checksum does not match its card, a card
that differs from the one inside the bundle, and a bundle written by another bids_ketamine version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_ketamine.__about__ import __version__
from bids_ketamine.errors import BadDataError, MissingInputError

BUNDLE_FORMAT = 1
#: The project's own types a bundle may contain; anything else is refused at load time.
TRUSTED_TYPES = (
    "bids_ketamine.structural.combat.ComBatHarmonizer",
    "bids_ketamine.structural.combat.CombatModel",
    "bids_ketamine.structural.combat.SiteEffects",
    "bids_ketamine.structural.model.FeatureCountScaler",
    "bids_ketamine.structural.svm_solver.LinearSVM",
)


@dataclass
class ModelBundle:
    """A frozen model: ``pipeline`` (scikit-learn Pipeline), ``calibration`` and ``reference`` (plain dicts of
    numbers and arrays) and ``card`` (JSON-able dict)."""

    pipeline: Any
    calibration: dict[str, Any]
    reference: dict[str, Any]
    card: dict[str, Any]


def library_versions() -> dict[str, str]:
    import platform

    import numpy
    import pandas
    import scipy
    import sklearn
    import skops

    return {"python": platform.python_version(), "numpy": numpy.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "pandas": pandas.__version__, "skops": skops.__version__}


def card_path(bundle_path: Path) -> Path:
    return Path(bundle_path).with_suffix(".json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _jsonable(obj: Any) -> Any:
    """The card as plain JSON types (so the copy inside the bundle and the JSON file compare equal)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if isinstance(o, np.ndarray) else
                                 (o.item() if isinstance(o, np.generic) else str(o))))


def bundle_bytes(bundle: ModelBundle) -> tuple[bytes, dict[str, Any]]:
    """The ``.skops`` content and the card with its checksum (nothing written)."""
    import skops.io as sio

    card = _jsonable(bundle.card)
    payload = {"format": BUNDLE_FORMAT, "pipeline": bundle.pipeline, "calibration": bundle.calibration,
               "reference": bundle.reference, "card": json.dumps(card, sort_keys=True)}
    data = canonical_skops(sio.dumps(payload))
    return data, {**card, "checksum": {"algorithm": "sha256", "value": _sha256(data)}}


def canonical_skops(data: bytes) -> bytes:
    """The same ``.skops`` archive with reproducible bytes, so a re-run writes a byte-identical bundle.

    skops names each array file and memo key after ``id()`` of the object (different in every process) and stamps
    the zip entries with the current time. Here every such number is replaced by its rank of first appearance in
    ``schema.json`` (the same object keeps one number, so the memo links hold), files are renamed to match and
    stored with a fixed time stamp; the content of every entry is otherwise unchanged.
    """
    import io
    import re
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as source:
        schema = source.read("schema.json").decode("utf-8")
        ranks: dict[str, str] = {}
        for match in re.finditer(r'"__id__": (\d+)|"file": "(\d+)\.npy"', schema):
            ranks.setdefault(match.group(1) or match.group(2), str(len(ranks) + 1))
        schema = re.sub(r'("__id__": )(\d+)', lambda m: m.group(1) + ranks[m.group(2)], schema)
        schema = re.sub(r'("file": ")(\d+)(\.npy")', lambda m: m.group(1) + ranks[m.group(2)] + m.group(3), schema)
        entries = []
        for info in source.infolist():
            stem = info.filename[:-4] if info.filename.endswith(".npy") else None
            name = f"{ranks[stem]}.npy" if stem in ranks else info.filename
            content = schema.encode("utf-8") if info.filename == "schema.json" else source.read(info)
            entries.append((name, content, info.compress_type))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for name, content, compress_type in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress_type
            info.external_attr = 0o644 << 16
            target.writestr(info, content)
    return out.getvalue()


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown, for a human reader."""
    lines = [f"# Model card: {card['model']['name']}", "",
             f"bids_ketamine {card['app']['version']}; " + ", ".join(f"{k} {v}" for k, v in
                                                                   card["app"]["libraries"].items()), "",
             "## Intended use", "", card["intended_use"], "", "## Outcome", "", card["outcome"]["phrase"], "",
             "## Features", "",
             f"- source: {', '.join(card['features']['source']) or 'unknown'}",
             (f"- atlas: {card['features']['atlas']} ({len(card['features']['names'])} regions, "
              f"{card['features']['units']})" if card["features"].get("type", "regional") == "regional" else
              f"- voxel-wise: {len(card['features']['names'])} voxels of a "
              f"{card['features']['voxel_grid']['voxel_size_mm']:g} mm MNI152 grid (GM template mask), smoothing "
              f"FWHM {card['features']['voxel_grid']['fwhm_mm']:g} mm, {card['features']['units']}; a model of "
              "this type refuses regional input"),
             f"- harmonisation: {card['harmonisation']['method']}; training sites: "
             f"{', '.join(f'{s} (n={n})' for s, n in card['harmonisation']['sites'].items())}",
             f"- unseen site: {card['harmonisation']['unseen_site']}", "",
             "## Training cohort", ""]
    cohort = card["training_cohort"]
    lines += [f"- n = {cohort['n']}, {cohort['n_positive']} {card['outcome']['positive']}, "
              f"{cohort['n'] - cohort['n_positive']} {card['outcome']['negative']}",
              *(f"- {k}: {v[0]:.6g} to {v[1]:.6g}" for k, v in cohort["ranges"].items() if v),
              f"- sex: {cohort['sex']}", "", "## Performance", "",
              "| cohort | metric | value | CI | permutation p | n |", "|---|---|---|---|---|---|"]
    for row in card["metrics"]:
        ci = "" if row.get("ci_low") is None else f"{row['ci_low']:.3f} to {row['ci_high']:.3f}"
        p = "" if row.get("p_permutation") is None else f"{row['p_permutation']:.4g} (N={row['n_permutations']})"
        lines.append(f"| {row['cohort']} | {row['metric']} | {row['value']:.3f} | {ci} | {p} | {row['n_subjects']} |")
    cal = card["calibration"]
    lines += ["", "## Calibration and decision threshold", "",
              f"{cal['method']}. Cross-fitted Brier score {cal['brier']:.3f}, expected calibration error "
              f"{cal['ece']:.3f} ({cal['n_bins']} bins). Decision threshold: {card['decision_threshold']['rule']} "
              f"(calibrated probability there: {card['decision_threshold']['probability_at_threshold']:.3f}).",
              "", "## Limitations", "", *(f"- {item}" for item in card["limitations"]), "",
              *(["## Training run warnings", "", *(f"- {note}" for note in card["training_notes"]), ""]
                if card.get("training_notes") else []),
              "## Checksum", "", f"SHA-256 of the .skops file: `{card['checksum']['value']}`", ""]
    return "\n".join(lines)


def write_bundle(bundle: ModelBundle, path: Path) -> list[Path]:
    """Write ``path`` (.skops), its card (.json) and the Markdown card (.md) atomically; returns the paths."""
    from bids_ketamine.io.derivatives import atomic_write_bytes, atomic_write_text

    path = Path(path)
    data, card = bundle_bytes(bundle)
    atomic_write_bytes(path, data)
    atomic_write_text(card_path(path), json.dumps(card, indent=2, sort_keys=True) + "\n")
    atomic_write_text(path.with_suffix(".md"), card_markdown(card))
    return [path, card_path(path), path.with_suffix(".md")]


def load_bundle(path: str | Path, *, app_version: str | None = None) -> ModelBundle:
    """Load and check a bundle: its card's checksum, the card inside it, and the app version that wrote it.

    Raises ``BadDataError`` (exit 65) with one line naming the file and what differs; nothing is written.
    """
    import skops.io as sio

    path = Path(path)
    app_version = app_version or __version__
    if not path.is_file():
        raise MissingInputError("model bundle not found", path=path, fix="give the .skops file the group level "
                                                                         "wrote (group/structural/*_model.skops)")
    if not card_path(path).is_file():
        raise MissingInputError("the model card (.json beside the bundle) is missing", path=card_path(path),
                                fix="copy the .json card together with the .skops file")
    data = path.read_bytes()
    try:
        card = json.loads(card_path(path).read_text(encoding="utf-8"))
        expected = card["checksum"]["value"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BadDataError(f"the model card is not valid ({exc})", path=card_path(path),
                           fix="use the card written with the bundle") from exc
    if _sha256(data) != expected:
        raise BadDataError(f"model bundle checksum mismatch (sha256 {_sha256(data)[:12]}..., card says "
                           f"{str(expected)[:12]}...): the file was changed or damaged", path=path,
                           fix="copy the bundle again from the site that trained it")
    written_by = card.get("app", {}).get("version")
    if written_by != app_version:
        raise BadDataError(f"model bundle was written by bids_ketamine {written_by}, this is {app_version}",
                           path=path, fix=f"apply it with bids_ketamine {written_by} or retrain with this version")
    try:
        payload = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:  # skops refuses untrusted types or a damaged archive
        raise BadDataError(f"model bundle cannot be loaded safely ({type(exc).__name__}: {exc})", path=path,
                           fix="use a bundle written by the bids_ketamine group level") from exc
    inner = json.loads(payload["card"])
    if payload.get("format") != BUNDLE_FORMAT or inner != {k: v for k, v in card.items() if k != "checksum"}:
        raise BadDataError("the model card does not match the card inside the bundle", path=card_path(path),
                           fix="use the card written with the bundle")
    return ModelBundle(pipeline=payload["pipeline"], calibration=payload["calibration"],
                       reference=payload["reference"], card=card)
