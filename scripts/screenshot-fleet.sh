#!/usr/bin/env bash
# Takes the README's pictures of the pages at a fleet's scale: runs `python -m bench.pages
# --serve` (the real web app over a fleet held in memory: 1,000 stores of 10 tasks, a
# handful of problems, one task with 16 failed files; no API, no polling) on a free
# loopback port and photographs with Debian's headless Chromium:
#
#   docs/fleet-summary.png    /                     the summary and the first tasks
#   docs/fleet-filtered.png   /?state=failing&state=stuck   a filtered view
#   docs/task-page.png        /tasks/STORE/TASK     one task with its failed files
#
#   apt-get install -y chromium        # as root, once
#   ./scripts/screenshot-fleet.sh
#
# Not run in CI. scripts/screenshot.sh takes docs/status-page.png from --demo.
set -euo pipefail
cd "$(dirname "$0")/.."

python=.venv/bin/python
[ -x "$python" ] || python=python3
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
  echo "scripts/screenshot-fleet.sh: chromium is not installed (as root: apt-get install -y chromium)" >&2
  exit 1
fi

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
log="$(mktemp)"
profile="$(mktemp -d)"
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  "$python" -m bench.pages --serve "$port" --fleet 1000x10 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$profile" "$log"' EXIT

# Ready within 60 s (or show the server's log).
"$python" - "$base/" <<'PY' || { cat "$log" >&2; exit 1; }
import sys, time, urllib.request
end = time.monotonic() + 60
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).close()
        break
    except OSError:
        if time.monotonic() > end:
            sys.exit("the fleet server did not answer")
        time.sleep(0.3)
PY
task="$(sed -n 's/.*task page: //p' "$log")"

shot() {  # OUTPUT SIZE PATH
  "$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$PWD/$1" --window-size="$2" "$base$3" 2>/dev/null
  echo "wrote $1"
}
shot docs/fleet-summary.png 1500,1000 "/"
shot docs/fleet-filtered.png 1500,1000 "/?state=failing&state=stuck"
shot docs/task-page.png 1100,1080 "$task"
