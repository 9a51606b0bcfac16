#!/usr/bin/env bash
# The test command of the README (and of CI): system packages, the locked environment, the whole suite.
# Pass pytest options through, e.g. `bash scripts/test.sh -m "not slow"` for the fast checks only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python3 -m pip install -q uv
python3 -m uv sync --frozen --extra test
# two workers (pytest-xdist): the tests that share a trained model run as one group (tests/conftest.py)
exec python3 -m uv run --frozen --extra test pytest -n "${SPX_TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder --durations=30 "$@"
