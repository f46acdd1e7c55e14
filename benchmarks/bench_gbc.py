"""Benchmark: GBC from a 91 x 109 x 91 x 300 gzipped float32 BOLD against nibabel's plain load of the same file.

Targets (issue 5): the full GBC path (stream + parcellate + intensity change + regression + correlation + GBC) within
1.3 x the time nibabel needs to load the file into memory, and peak memory within 1.5 x the uncompressed array.
Each measurement runs in a fresh process so the peak memory (ru_maxrss) belongs to that step alone.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gbc.py [--file /tmp/bench_gbc_bold.nii.gz] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPE = (91, 109, 91, 300)
DEFAULT_FILE = Path("/tmp/bench_gbc_bold.nii.gz")


def generate(path: Path, seed: int = 0) -> None:
    """Write the benchmark BOLD once: brain voxels ~1000 with parcel-shared fluctuations, zeros outside."""
    import nibabel as nib
    import numpy as np
    from nilearn import datasets, image

    rng = np.random.default_rng(seed)
    affine = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    mask_img = image.resample_img(datasets.load_mni152_brain_mask(resolution=2), target_affine=affine,
                                  target_shape=SHAPE[:3], interpolation="nearest", force_resample=True,
                                  copy_header=True)
    mask = np.asarray(mask_img.dataobj) > 0
    data = np.zeros(SHAPE, dtype=np.float32)
    n_in = int(mask.sum())
    common = rng.standard_normal(SHAPE[3]).astype(np.float32)
    for t in range(SHAPE[3]):
        data[..., t][mask] = 1000.0 + 5.0 * common[t] + 10.0 * rng.standard_normal(n_in, dtype=np.float32)
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header["pixdim"][4] = 2.0
    img.to_filename(path)
    nib.Nifti1Image(mask.astype(np.uint8), affine).to_filename(path.with_name(path.name.replace(".nii.gz",
                                                                                               "_mask.nii.gz")))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_load(path: Path) -> dict:
    import nibabel as nib
    import numpy as np

    base = _peak_mb()
    t0 = time.perf_counter()
    data = np.asarray(nib.load(path).dataobj)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": _peak_mb(), "baseline_mb": base, "nbytes_mb": data.nbytes / 2**20}


def step_gbc(path: Path) -> dict:
    import nibabel as nib
    import numpy as np

    from bids_ketamine.atlas import load_default_atlas
    from bids_ketamine.connectivity.denoise import cosine_basis, regress_out
    from bids_ketamine.connectivity.gbc import gbc_from_timeseries
    from bids_ketamine.connectivity.parcellate import labels_on_grid, parcel_timeseries_nifti
    from bids_ketamine.connectivity.scrubbing import censor_frames, intensity_change_ratio

    atlas = load_default_atlas()  # loaded before the clock starts: it is cached once per process in a real run
    base = _peak_mb()
    t0 = time.perf_counter()
    img = nib.load(path)
    mask = np.asarray(nib.load(path.with_name(path.name.replace(".nii.gz", "_mask.nii.gz"))).dataobj) > 0
    grid = labels_on_grid(atlas.data(), atlas.image.affine, img.shape[:3], img.affine)
    series = parcel_timeseries_nifti(path, grid, mask, atlas.labels["index"].tolist(), atlas.names)
    fd = np.zeros(img.shape[3])
    censoring = censor_frames(fd, intensity_change_ratio(series.intensity_change))
    clean = regress_out(series.timeseries, cosine_basis(img.shape[3], 2.0, 0.008), censoring.keep)
    _, gbc = gbc_from_timeseries(clean[censoring.keep])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": _peak_mb(), "baseline_mb": base, "n_parcels": int(gbc.size),
            "gbc_mean": float(gbc.mean())}


def _run_child(step: str, path: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    out = subprocess.run([sys.executable, __file__, "--child", step, "--file", str(path)], check=True,
                         capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", choices=("load", "gbc"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(step_load(args.file) if args.child == "load" else step_gbc(args.file)))
        return
    if not args.file.exists():
        t0 = time.perf_counter()
        generate(args.file)
        print(f"generated {args.file} ({args.file.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    uncompressed_mb = 4 * SHAPE[0] * SHAPE[1] * SHAPE[2] * SHAPE[3] / 2**20
    loads, gbcs = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        loads.append(_run_child("load", args.file))
        gbcs.append(_run_child("gbc", args.file))
    print("per repeat (load s, GBC s):", [(round(a["seconds"], 2), round(b["seconds"], 2))
                                          for a, b in zip(loads, gbcs)])
    load_s = min(r["seconds"] for r in loads)
    gbc_s = min(r["seconds"] for r in gbcs)
    gbc_peak = max(r["peak_mb"] for r in gbcs)
    print(f"nibabel load (float32, min of {args.repeats}): {load_s:.2f} s, peak {loads[0]['peak_mb']:.0f} MB")
    print(f"GBC path     (min of {args.repeats}): {gbc_s:.2f} s, peak {gbc_peak:.0f} MB "
          f"(process baseline before reading {gbcs[0]['baseline_mb']:.0f} MB), {gbcs[0]['n_parcels']} parcels")
    paired = sorted(b["seconds"] / a["seconds"] for a, b in zip(loads, gbcs))
    print(f"time ratio GBC / load: {gbc_s / load_s:.2f} from the minima, {paired[len(paired) // 2]:.2f} median of "
          f"paired runs (target <= 1.3) -> {'PASS' if gbc_s <= 1.3 * load_s else 'FAIL'} (minima)")
    print(f"peak memory / uncompressed array ({uncompressed_mb:.0f} MB): {gbc_peak / uncompressed_mb:.2f} "
          f"(target <= 1.5) -> {'PASS' if gbc_peak <= 1.5 * uncompressed_mb else 'FAIL'}")


if __name__ == "__main__":
    main()
