#!/usr/bin/env bash
# Installs what the project needs on a fresh machine.
#   bash scripts/setup.sh          the package (TensorFlow, Keras, TensorBoard) and
#                                  the demo's data (scikit-learn)
#   bash scripts/setup.sh --test   also the test tools: pytest, ruff, Playwright,
#                                  Debian's chromium, the frontend's npm packages
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

python3 -m pip install --quiet --disable-pip-version-check --upgrade pip
if [ "$with_tests" = 1 ]; then
  python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
  # Debian's chromium drives the browser tests; Debian's nodejs and npm rebuild the
  # tab's bundle so that its freshness test runs everywhere instead of skipping.
  missing=""
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v node >/dev/null 2>&1 || missing="$missing nodejs"
  command -v npm >/dev/null 2>&1 || missing="$missing npm"
  if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086 # the list is meant to split into package names
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
  (cd frontend && npm ci --no-audit --no-fund --loglevel=error)
else
  python3 -m pip install --quiet --disable-pip-version-check -e ".[demo]"
fi
