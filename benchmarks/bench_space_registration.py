"""Benchmark of the atlas-space registration (``structural.space.register_to_atlas_space``).

Run: .venv/bin/python benchmarks/bench_space_registration.py

Two GM maps: nilearn's GM template moved into an "other template" by a known affine (3 % larger, shifted
(2, -3, 3) mm: the size of the 2009c vs IXI549 differences), and a synthetic fMRIPrep-like map in
MNI152NLin2009cAsym from our generator (near identity). For each, the app's settings (a quarter of the 4 mm voxels
sampled, 40 + 20 iterations, one ITK thread) against the baseline measured in the same run (every voxel sampled,
100 + 50 iterations): seconds per map and their ratio, the largest difference of the twelve affine parameters, and
for the moved map the regional-volume error against the unmoved map (median and 90th percentile over regions of at
least 0.5 cm3). Prints the peak memory (resource.getrusage). Option: ``--repeats N`` (default 2, the best is kept).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _moved_template():
    import nibabel as nib
    import numpy as np
    from nilearn import datasets
    from scipy.ndimage import affine_transform, gaussian_filter

    tpl = datasets.load_mni152_gm_template(resolution=2)
    gm = gaussian_filter(np.asarray(tpl.dataobj, dtype=np.float32), 1.0)
    world = np.eye(4)
    world[:3, :3] *= 1.03
    world[:3, 3] = (2.0, -3.0, 3.0)
    to_source = np.linalg.inv(tpl.affine) @ np.linalg.inv(world) @ tpl.affine
    moved = affine_transform(gm, to_source[:3, :3], to_source[:3, 3], order=1) / np.linalg.det(world[:3, :3])
    return nib.Nifti1Image(gm, tpl.affine), nib.Nifti1Image(moved.astype(np.float32), tpl.affine)


def _fmriprep_like_map(root: Path):
    import nibabel as nib

    from bids_ketamine.synthetic.anat import write_synthetic_anat

    write_synthetic_anat(root, root / "derivatives", "01", gm_effect=0.0, site_offset=0.0, seed=5)
    path = next(Path(root / "derivatives").rglob("*space-MNI152NLin2009cAsym_label-GM_probseg.nii.gz"))
    return nib.load(path)


def _timed(settings, img, repeats):
    from bids_ketamine.structural import space

    plan = space.plan_alignment("IXI549Space", "MNI152NLin2009aSym")
    space.AFFINE_SAMPLING_RATE, space.AFFINE_ITERATIONS = settings
    best, aligned = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        aligned = space.register_to_atlas_space(img, img, plan, seed=3)
        best = min(best, time.perf_counter() - start)
    return best, aligned


def main() -> None:
    import numpy as np

    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.structural import space
    from bids_ketamine.structural.gm_features import regional_table

    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    app = (space.AFFINE_SAMPLING_RATE, space.AFFINE_ITERATIONS)
    baseline = (1.0, (100, 50))
    atlas = load_default_atlas()
    unmoved, moved = _moved_template()
    truth = regional_table(unmoved, atlas, tiv_mm3=None)["gm_volume_mm3"].to_numpy()
    big = truth > 500
    space._registration_target(2)  # templates loaded once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        maps = {"moved template": moved, "fMRIPrep-like (generator)": _fmriprep_like_map(Path(tmp))}
        print(f"app: sampling {app[0]}, iterations {app[1]}; baseline: sampling {baseline[0]}, iterations "
              f"{baseline[1]}")
        for name, img in maps.items():
            results = {}
            for label, settings in (("baseline", baseline), ("app", app)):
                seconds, aligned = _timed(settings, img, args.repeats)
                volumes = regional_table(aligned.modulated, atlas, tiv_mm3=None)["gm_volume_mm3"].to_numpy()
                results[label] = (seconds, aligned, volumes)
            (t_base, a_base, v_base), (t_app, a_app, v_app) = results["baseline"], results["app"]
            line = (f"{name}: baseline {t_base:.1f} s, app {t_app:.1f} s, ratio {t_base / t_app:.1f}x faster; "
                    f"determinant {a_base.details['SpaceRegistrationDeterminant']:.4f} vs "
                    f"{a_app.details['SpaceRegistrationDeterminant']:.4f}; regional volumes app/baseline max "
                    f"|diff| {np.max(np.abs(v_app[big] / v_base[big] - 1)):.2%}")
            if name == "moved template":
                for label, (_, _, volumes) in results.items():
                    err = np.abs(volumes[big] / truth[big] - 1)
                    line += (f"; {label} error vs unmoved: median {np.median(err):.2%}, "
                             f"p90 {np.percentile(err, 90):.2%}")
            print(line, flush=True)
    space.AFFINE_SAMPLING_RATE, space.AFFINE_ITERATIONS = app
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
