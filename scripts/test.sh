#!/usr/bin/env bash
# Installs everything the tests need and runs linters, type checks and the whole test suite:
# - Debian's prometheus package (the real `prometheus` and `promtool`): installed with
#   apt-get as root or with sudo; otherwise downloaded and unpacked into .tools/ (no root);
# - a virtualenv .venv with the package and its test extras;
# - a second one, .venv-lowest, with the lowest versions pyproject.toml allows for each
#   direct dependency (uv's lowest-direct resolution), where the client, transport,
#   configuration, web and metrics tests run again: every lower bound must be a version the
#   tests pass on (docs/design.md, "HTTP client").
# Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."

tools="$PWD/.tools/prometheus/usr/bin"
export PATH="$tools:$PATH"
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "scripts/test.sh: no root: unpacking Debian's prometheus package into .tools/" >&2
    mkdir -p .tools/deb
    (cd .tools/deb && apt-get download prometheus >/dev/null)
    dpkg-deb -x .tools/deb/prometheus_*.deb .tools/prometheus
  fi
fi

python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest "$@"

.venv/bin/python -m pip install -q --disable-pip-version-check uv
rm -rf .venv-lowest
python3 -m venv .venv-lowest
.venv/bin/uv pip install -q --python .venv-lowest/bin/python --resolution lowest-direct -e '.[test]'
.venv-lowest/bin/python -m pytest -p no:cacheprovider \
  tests/polling/test_client.py tests/polling/test_transport.py tests/config tests/web tests/metrics
