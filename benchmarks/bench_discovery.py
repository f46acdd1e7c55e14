"""Benchmark: discovery of a 1000-participant dataset (empty files), cold and with a saved pybids index.

Run: .venv/bin/python benchmarks/bench_discovery.py [N]
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

from bids_ketamine.design import StudyDesign, sessions_table
from bids_ketamine.discovery import build_layout, collect_inputs


def make_dataset(root: Path, n: int) -> None:
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
    fp = root / "derivatives" / "fmriprep"
    fp.mkdir(parents=True)
    (fp / "dataset_description.json").write_text(json.dumps({"Name": "fp", "BIDSVersion": "1.10.0",
                                                             "DatasetType": "derivative",
                                                             "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    rows = ["participant_id"]
    for i in range(n):
        sub = f"{i:04d}"
        rows.append(f"sub-{sub}")
        for folder, name in (("anat", f"sub-{sub}_T1w.nii.gz"),
                             ("mrs", f"sub-{sub}_svs.nii.gz"), ("mrs", f"sub-{sub}_mrsref.nii.gz")):
            (root / f"sub-{sub}" / folder).mkdir(parents=True, exist_ok=True)
            (root / f"sub-{sub}" / folder / name).touch()
        anat = fp / f"sub-{sub}" / "anat"
        anat.mkdir(parents=True)
        (anat / f"sub-{sub}_space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz").touch()
        (anat / f"sub-{sub}_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5").touch()
        func = fp / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        (func / f"sub-{sub}_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz").touch()
        (func / f"sub-{sub}_task-rest_desc-confounds_timeseries.tsv").touch()
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")


def main(n: int = 1000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bids"
        root.mkdir()
        make_dataset(root, n)
        derivatives = {"fmriprep": root / "derivatives" / "fmriprep"}
        t0 = time.perf_counter()
        layout = build_layout(root, derivatives)
        cold = time.perf_counter() - t0
        db = Path(tmp) / "db"
        t0 = time.perf_counter()
        build_layout(root, derivatives, db)
        save = time.perf_counter() - t0
        t0 = time.perf_counter()
        saved = build_layout(root, derivatives, db)
        warm = time.perf_counter() - t0
        sessions = sessions_table(root, StudyDesign())
        t0 = time.perf_counter()
        subjects = sorted(saved.get_subjects())
        everyone = collect_inputs(saved, subjects, derivatives=derivatives, sessions=None, task=None, filters={},
                                  sessions_table=sessions, phenotypes={})
        all_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        one = collect_inputs(saved, ["0500"], derivatives=derivatives, sessions=None, task=None, filters={},
                             sessions_table=sessions, phenotypes={})["0500"]
        one_time = time.perf_counter() - t0
        assert one.anat.gm_probseg_mni is not None and one.bold and one.mrs
        assert all(i.anat.t1w and i.mrs for i in everyone.values())
        assert len(layout.get_subjects()) == n
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"participants: {n}")
    print(f"cold index: {cold:.2f} s; building the saved index: {save:.2f} s; loading it: {warm:.3f} s "
          f"(ratio cold/saved {cold / warm:.0f}x)")
    print(f"collecting every participant's inputs: {all_time:.2f} s; one participant (a cluster job): "
          f"{one_time:.3f} s")
    print(f"peak memory: {peak:.0f} MB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
