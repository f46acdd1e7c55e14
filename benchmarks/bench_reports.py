"""Time to rebuild every report of an output folder (what ``--reports-only`` does), report sizes and peak memory.

    .venv/bin/python benchmarks/bench_reports.py                       # fixture folder with 20 participants
    .venv/bin/python benchmarks/bench_reports.py --subjects 60
    .venv/bin/python benchmarks/bench_reports.py --output-dir DEMO/outputs   # the demo's real outputs
    .venv/bin/python benchmarks/bench_reports.py --output-dir DEMO/outputs --browser   # + open each in Chromium

Nothing is recomputed: the benchmark checks that every non-report file is byte-identical after the rebuild.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".html" and p.name != "methods.md"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, help="an existing output folder (e.g. the demo's outputs)")
    parser.add_argument("--subjects", type=int, default=20, help="participants in the fixture folder (default 20)")
    parser.add_argument("--browser", action="store_true", help="also open every report in headless Chromium")
    parser.add_argument("--repeats", type=int, default=2, help="rebuilds to time (the best is reported)")
    args = parser.parse_args()

    from bids_ketamine.reports import build_group_report, build_participant_report
    from bids_ketamine.reports.collect import OutputFolder

    tmp = None
    if args.output_dir is None:
        from tests.reports.fixtures import make_output_folder

        tmp = tempfile.TemporaryDirectory(prefix="bench-reports-")
        started = time.perf_counter()
        subjects = tuple(f"{i:02d}" for i in range(1, args.subjects + 1))
        out = make_output_folder(Path(tmp.name), subjects=subjects)
        print(f"fixture folder: {len(subjects)} participants x 3 analyses written in "
              f"{time.perf_counter() - started:.1f} s (not part of the timing)")
    else:
        out = args.output_dir.absolute()
    folder = OutputFolder.read(out)
    labels = sorted(set(folder.subjects()) | {s for s, _ in folder.participant_statuses()})
    n_files = sum(1 for p in out.rglob("*") if p.is_file())
    print(f"output folder: {out} ({len(labels)} participants, {n_files} files)")

    before = _snapshot(out)
    best_part, best_group = float("inf"), float("inf")
    for _ in range(max(1, args.repeats)):
        started = time.perf_counter()
        paths = [build_participant_report(out, label) for label in labels]
        part = time.perf_counter() - started
        started = time.perf_counter()
        paths.append(build_group_report(out))
        group = time.perf_counter() - started
        best_part, best_group = min(best_part, part), min(best_group, group)
    unchanged = _snapshot(out) == before
    sizes = {p.name: p.stat().st_size for p in paths}
    part_sizes = [v for k, v in sizes.items() if k.startswith("sub-")]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"participant reports: {len(labels)} in {best_part:.2f} s "
          f"({best_part / max(1, len(labels)) * 1000:.0f} ms each)")
    print(f"group report + methods.md: {best_group:.2f} s")
    print(f"total rebuild (--reports-only equivalent): {best_part + best_group:.2f} s")
    if part_sizes:
        print(f"participant report size: median {sorted(part_sizes)[len(part_sizes) // 2] / 1e6:.2f} MB, "
              f"max {max(part_sizes) / 1e6:.2f} MB (limit 10 MB: {'ok' if max(part_sizes) < 10e6 else 'EXCEEDED'})")
    print(f"group report size: {sizes.get('group.html', 0) / 1e6:.2f} MB")
    print(f"results untouched by the rebuild: {unchanged}")
    print(f"peak memory (ru_maxrss): {peak_mb:.0f} MB")
    if args.browser:
        from tests.reports.browser import check_page, ensure_chromium

        chromium, why = ensure_chromium()
        if chromium is None:
            print(f"browser check skipped: {why}")
        else:
            started = time.perf_counter()
            bad = 0
            for path in paths:
                result = check_page(chromium, path)
                if result.problems:
                    bad += 1
                    print(f"  {path.name}: {result.problems[:3]}")
            print(f"browser: {len(paths)} reports opened in {time.perf_counter() - started:.1f} s, "
                  f"{bad} with problems")
    if tmp is not None:
        tmp.cleanup()
    return 0 if unchanged else 1


if __name__ == "__main__":
    sys.exit(main())
