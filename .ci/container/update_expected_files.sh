#!/usr/bin/env bash
# Regenerate .ci/container/expected_files.txt: run the demo study (small) through participant and group level with
# the repository's venv and record the output file list. Commit the result with the change that caused it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
OMP_NUM_THREADS=1 MPLBACKEND=Agg "$python" "$here/demo_run.py" --update "$@"
