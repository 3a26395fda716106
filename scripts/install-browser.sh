#!/usr/bin/env bash
# Install Debian's headless Chromium for the tests that render DAISY's pages (live view, HTML
# report) in a real browser. Idempotent; apt's configured sources only. Prints the binary's path.
set -euo pipefail
find_browser() { command -v chromium-headless-shell || command -v chromium || true; }
browser=$(find_browser)
if [ -z "$browser" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends chromium-headless-shell fonts-dejavu-core >/dev/null \
    || apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  browser=$(find_browser)
fi
[ -n "$browser" ] || { echo "install-browser: no Chromium after apt-get install" >&2; exit 1; }
echo "$browser"
