"""The demo study run as the container smoke test runs it, shared by that test and by the expected-list update.

The container test writes the synthetic study on the host, then runs participant and group level through the
image; ``python .ci/container/demo_run.py --update`` does the same with the host's ``bids-ketamine`` and writes the
resulting output file list to ``.ci/container/expected_files.txt`` (commit it). Which analyses run is decided
exactly as ``bids-ketamine demo`` decides it, so the list follows the demo whatever the demo produces.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED_FILES = HERE / "expected_files.txt"
SEED = 20240601
SIZE = "small"

#: outputs that legitimately differ between runs (scratch, logs named by time, caches): not part of the list
_VOLATILE = (
    re.compile(r"(^|/)\.bids_ketamine/work(/|$)"),
    re.compile(r"(^|/)__pycache__/"),
    re.compile(r"(^|/)\.(nfs|lock)[^/]*$"),
    re.compile(r"\.lock$"),
)
#: run-specific pieces of file names (dates, times, process ids) replaced by a placeholder
_STAMPS = (
    (re.compile(r"\d{8}[-T_]?\d{6}(\.\d+)?"), "<time>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T_ -]?\d{2}[-:]?\d{2}[-:]?\d{2}(\.\d+)?"), "<time>"),
    (re.compile(r"pid-?\d+"), "pid<n>"),
)


def demo_analyses() -> list[str]:
    """The analyses ``bids-ketamine demo`` would run in this version (built, with a synthetic study part)."""
    from bids_ketamine.cli.demo import ANALYSIS_PARTS, _built
    from bids_ketamine.synthetic.study import part_available

    return [a for a, part in ANALYSIS_PARTS.items() if _built(a) and part_available(part)]


def write_demo_study(bids_dir: Path, analyses: list[str], *, seed: int = SEED, size: str = SIZE) -> None:
    """The synthetic study with the parts the given analyses need (the demo's own writer and parts)."""
    from bids_ketamine.cli.demo import ANALYSIS_PARTS
    from bids_ketamine.synthetic.study import write_study

    write_study(bids_dir, seed=seed, size=size, parts=tuple(ANALYSIS_PARTS[a] for a in analyses))


def level_arguments(analyses: list[str], *, seed: int = SEED, nprocs: int = 1) -> list[str]:
    """Options passed to both levels: the demo's (seed, analyses) plus the process count (one process: a CI job
    shares two cores with the rest of the suite, and the count must not change what is written)."""
    return ["--random-seed", str(seed), "--analyses", ",".join(analyses), "--nprocs", str(nprocs)]


def list_outputs(out_dir: Path) -> list[str]:
    """Sorted relative paths of every output file, volatile ones left out and time stamps normalised."""
    names = set()
    for path in Path(out_dir).rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(out_dir).as_posix()
        if any(p.search(rel) for p in _VOLATILE):
            continue
        for pattern, placeholder in _STAMPS:
            rel = pattern.sub(placeholder, rel)
        names.add(rel)
    return sorted(names)


def read_expected(path: Path = EXPECTED_FILES) -> tuple[list[str], list[str]]:
    """(analyses the list was made with, expected file names) from the committed list."""
    analyses: list[str] = []
    files: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("# analyses:"):
            analyses = [a for a in line.split(":", 1)[1].strip().split(",") if a]
        elif line and not line.startswith("#"):
            files.append(line)
    return analyses, files


def write_expected(analyses: list[str], files: list[str], path: Path = EXPECTED_FILES) -> None:
    header = [
        "# Output files of the demo study (size 'small', seed %d) after participant and group level." % SEED,
        "# The container smoke test (tests/container) compares the image's outputs with this list.",
        "# Regenerate with .ci/container/update_expected_files.sh whenever an analysis adds or renames outputs.",
        f"# analyses: {','.join(analyses)}",
    ]
    path.write_text("\n".join(header + files) + "\n")


def run_on_host(root: Path, analyses: list[str], extra: tuple[str, ...] = ()) -> tuple[Path, float]:
    """Write the study and run both levels with this Python's ``bids-ketamine``; return outputs and seconds."""
    bids_dir, out_dir = root / "bids", root / "out"
    write_demo_study(bids_dir, analyses)
    exe = Path(sys.executable).parent / "bids-ketamine"
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    started = time.perf_counter()
    for level in ("participant", "group"):
        proc = subprocess.run([str(exe), str(bids_dir), str(out_dir), level, *level_arguments(analyses), *extra],
                              env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{level} level failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return out_dir, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update", action="store_true", help=f"write {EXPECTED_FILES.name}")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--skip-bids-validation", action="store_true",
                        help="diagnosis only: run the levels even when the synthetic study fails validation")
    args = parser.parse_args(argv)
    analyses = demo_analyses()
    with tempfile.TemporaryDirectory(prefix="bids_ketamine_demo_") as tmp:
        root = args.keep or Path(tmp)
        if analyses:
            extra = ("--skip-bids-validation",) if args.skip_bids_validation else ()
            out_dir, seconds = run_on_host(root, analyses, extra)
            files = list_outputs(out_dir)
            print(f"host run of participant + group level: {seconds:.1f} s, {len(files)} output files")
        else:
            files = []
            print("no analysis is built in this version: the demo runs nothing, the expected list is empty")
    if args.update:
        write_expected(analyses, files)
        print(f"wrote {EXPECTED_FILES}")
    else:
        print("\n".join(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
