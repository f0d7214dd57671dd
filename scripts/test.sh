#!/usr/bin/env bash
# The project's test command: set up a virtual environment if needed, then lint, type-check and test.
#   bash scripts/test.sh            # everything CI runs
#   bash scripts/test.sh -k attack  # extra arguments go to pytest
# The tests run in PCA_TEST_WORKERS processes (default 2, pytest-xdist; 1 runs them in this process), one
# test file per process at a time, so a file's shared fixtures (servers, Ray cluster) start once.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip >/dev/null
# torch first and pinned to a CPU-installable release, so the range in pyproject installs nothing bigger.
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0" || python -m pip install -q torch
python -m pip install -q -e ".[dev,ray]"  # ray[data,serve]: tests/ray (they skip without it)
# The web page's browser tests drive Debian's Chromium (tests/web skip without it): install it quietly when
# it is missing and we are root with apt-get; a failure here only means those tests skip.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "== installing chromium for the browser tests"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "   (chromium could not be installed; tests/web will skip)"
fi

echo "== ruff" && ruff check .
echo "== mypy" && mypy pca_attack service pca_client pca_cli
WORKERS="${PCA_TEST_WORKERS:-2}"
PARALLEL=()
if [ "$WORKERS" -gt 1 ]; then PARALLEL=(-n "$WORKERS" --dist loadfile); fi
echo "== pytest" && python -m pytest -q -m "not slow" -p no:cacheprovider ${PARALLEL[@]+"${PARALLEL[@]}"} "$@"
