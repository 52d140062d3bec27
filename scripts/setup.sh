#!/usr/bin/env bash
# Installs what the project needs on a fresh machine.
#   bash scripts/setup.sh          the package (TensorFlow, Keras, TensorBoard)
#   bash scripts/setup.sh --test   also the test tools: pytest, ruff, Playwright,
#                                  Debian's chromium, the frontend's npm packages
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

python3 -m pip install --quiet --disable-pip-version-check --upgrade pip
if [ "$with_tests" = 1 ]; then
  python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"
  if ! command -v chromium >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  fi
  if command -v npm >/dev/null 2>&1; then
    (cd frontend && npm ci --no-audit --no-fund --loglevel=error)
  fi
else
  python3 -m pip install --quiet --disable-pip-version-check -e .
fi
