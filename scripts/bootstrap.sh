#!/usr/bin/env bash
# Set up DAISY on a fresh Debian 12/13 machine (root) and run the demo or the tests.
#
#   bash scripts/bootstrap.sh demo   # CT + XRD pipelines end to end on generated sample data
#   bash scripts/bootstrap.sh test   # the test suite (unit, Apptainer and Snakemake integration)
#
# Every stage is idempotent and says what it does: Apptainer (scripts/install-apptainer.sh),
# the Python virtual environment (.venv, reinstalled when pyproject.toml changes) and the
# images (daisy containers ensure: the published images of the committed lock from the cache or
# a configured store, else built locally — rebuilt only when a definition or its envs/ lists
# change — cached outside the repo in $DAISY_IMAGE_CACHE, default ~/.cache/daisy/images; the
# committed lock is never rewritten).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"
what=${1:-}
shift || true
case "$what" in demo|test|setup) ;; *) echo "usage: bash scripts/bootstrap.sh demo|test|setup [args...]" >&2; exit 2;; esac

say() { printf '\n== %s\n' "$*"; }

say "Apptainer"
bash scripts/install-apptainer.sh

say "Python environment (.venv)"
python=${DAISY_PYTHON:-python3}
stamp=.venv/.daisy-installed
want=$(sha256sum pyproject.toml | cut -c1-64)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "up to date ($(.venv/bin/python --version))"
else
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  echo "$want" > "$stamp"
  echo "installed DAISY and its Python dependencies into .venv"
fi

say "Images"
# The published images pinned in containers/images.lock.json: from the cache, an offline bundle or a
# store ($DAISY_IMAGE_STORES and the lock's stores), pulled by digest; else built locally and
# recorded in $DAISY_IMAGE_CACHE/local-lock.json (never in the committed lock). docs/images.md.
.venv/bin/daisy containers ensure

case "$what" in
  demo)
    say "Demo: CT and XRD pipelines on generated sample data"
    exec .venv/bin/daisy demo "$@" ;;
  test)
    say "Test tools (headless Chromium for the page tests; the registry and Slurm scripts install theirs)"
    bash scripts/install-browser.sh
    say "Tests"
    exec .venv/bin/python -m pytest "$@" ;;
  setup)
    echo "ready: .venv/bin/daisy --help" ;;
esac
