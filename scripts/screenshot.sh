#!/usr/bin/env bash
# Takes docs/status-page.png, the README's picture of the status page: runs
# `shoplazza-upload-exporter --demo` on a free loopback port, waits until the demo tasks
# have moved (one completes after 3 s, the failing one completes with failed files after
# 20 s, one answers 404, one never progresses), and photographs http://127.0.0.1:PORT/
# with Debian's headless Chromium. Not run in CI.
#
#   apt-get install -y chromium        # as root, once
#   ./scripts/screenshot.sh [OUTPUT.png]   # default docs/status-page.png
#
# SCREENSHOT_WAIT (seconds after start, default 25) and SCREENSHOT_SIZE (default 1640,940)
# change what is taken.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${1:-docs/status-page.png}"
wait_seconds="${SCREENSHOT_WAIT:-25}"
size="${SCREENSHOT_SIZE:-1640,940}"
python=.venv/bin/python
[ -x "$python" ] || python=python3
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "scripts/screenshot.sh: chromium is not installed (as root: apt-get install -y chromium)" >&2
  exit 1
fi

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port/"
log="$(mktemp)"
profile="$(mktemp -d)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" -m exporter --demo --web.listen-address "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$profile" "$log"' EXIT

# Ready within 20 s (or show the exporter's log), then open the page once.
"$python" - "$url" <<'PY' || { cat "$log" >&2; exit 1; }
import sys, time, urllib.request
end = time.monotonic() + 20
while True:
    try:
        urllib.request.urlopen(sys.argv[1] + "-/ready", timeout=2).close()
        break
    except OSError:
        if time.monotonic() > end:
            sys.exit("the demo exporter did not become ready")
        time.sleep(0.2)
# A first look, as a person would take: the exporter sees every task now, so the picture
# taken later shows real ages of the last progress.
urllib.request.urlopen(sys.argv[1], timeout=10).close()
PY
sleep "$wait_seconds"

"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --hide-scrollbars --user-data-dir="$profile" \
  --screenshot="$PWD/$out" --window-size="$size" "$url" 2>/dev/null
echo "wrote $out"
