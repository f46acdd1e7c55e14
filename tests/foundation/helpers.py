"""Tiny hand-made BIDS datasets for the CLI tests (independent of the synthetic generator)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def make_tiny_bids(root: Path, subjects=("01", "02"), *, participants: bool = True, extra_columns=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "tiny", "BIDSVersion": "1.10.0", "DatasetType": "raw", "License": "CC0", "Authors": ["test"]}))
    (root / "README").write_text("tiny test dataset\n")
    rng = np.random.default_rng(0)
    for sub in subjects:
        anat = root / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        img = nib.Nifti1Image((rng.random((8, 8, 8)) * 100).astype(np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header.set_xyzt_units("mm")
        img.to_filename(anat / f"sub-{sub}_T1w.nii.gz")
        (anat / f"sub-{sub}_T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
    if participants:
        cols = {"site": "a", "sex": "F", "age": "30", "arm": "ketamine", "cohort": "discovery",
                "madrs_baseline": "30", "madrs_24h": "10", **(extra_columns or {})}
        lines = ["\t".join(["participant_id", *cols])]
        lines += ["\t".join([f"sub-{s}", *cols.values()]) for s in subjects]
        (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root
