#!/usr/bin/env bash
# Installs everything the tests need and runs linters, type checks and the whole test suite:
# - Debian packages of the real programs the tests run: prometheus (`prometheus`,
#   `promtool`), systemd (`systemd-analyze verify` on deploy/systemd, `systemd-socket-activate`
#   for --web.systemd-socket) and nginx-light (the reverse proxy in front of
#   --web.route-prefix); installed with apt-get as root or with sudo; otherwise unpacked
#   into .tools/ (no root; enough for prometheus and nginx);
# - a virtualenv .venv with the package and its test extras;
# - a second one, .venv-lowest, with the lowest versions pyproject.toml allows for each
#   direct dependency (uv's lowest-direct resolution), where the client, transport,
#   configuration, web and metrics tests run again: every lower bound must be a version the
#   tests pass on (docs/design.md, "HTTP client").
# Extra arguments go to the main pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."

for pkg in prometheus nginx-light; do
  export PATH="$PWD/.tools/$pkg/usr/bin:$PWD/.tools/$pkg/usr/sbin:$PATH"
done
# Each Debian package with the programs of it the tests run.
declare -A programs=(
  [prometheus]="prometheus promtool"
  [systemd]="systemd-analyze systemd-socket-activate"
  [nginx-light]="nginx"
)
missing=()
for pkg in "${!programs[@]}"; do
  for program in ${programs[$pkg]}; do
    if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$program" >/dev/null 2>&1; then
      missing+=("$pkg")
      break
    fi
  done
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    echo "scripts/test.sh: no root: unpacking ${missing[*]} into .tools/" >&2
    mkdir -p .tools/deb
    for pkg in "${missing[@]}"; do
      (cd .tools/deb && apt-get download "$pkg" >/dev/null)
      dpkg-deb -x .tools/deb/"${pkg}"_*.deb .tools/"$pkg"
    done
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
  tests/polling/test_client.py tests/polling/test_transport.py tests/polling/test_proxy.py \
  tests/config tests/web tests/metrics
