#!/usr/bin/env bash
# The browser tests (tests/test_browser*.py) drive a headless Chromium with Playwright. Get one, in this order:
#   1. one is already there: $CATLAB_CHROMIUM, /usr/bin/chromium, chromium on PATH, or Playwright's own download;
#   2. Debian's package through apt, as root or with password-less sudo;
#   3. Playwright's own browser download (`python -m playwright install chromium`, into ~/.cache/ms-playwright);
#   4. otherwise one line saying what to run. The set-up goes on either way: only the browser tests need it.
# Usage: scripts/install_browser.sh PYTHON (the interpreter that has Playwright; scripts/bootstrap.sh --tests passes it)
set -uo pipefail
PY="${1:-python3}"

have_chromium() {
  [ -n "${CATLAB_CHROMIUM:-}" ] && [ -x "${CATLAB_CHROMIUM}" ] && return 0
  [ -x "${CATLAB_SYSTEM_CHROMIUM:-/usr/bin/chromium}" ] && return 0  # the variable is a seam for tests
  command -v chromium >/dev/null 2>&1 && return 0
  command -v chromium-browser >/dev/null 2>&1 && return 0
  # Playwright's own Chromium, when an earlier run downloaded it
  "$PY" - >/dev/null 2>&1 <<'PYEOF'
import os, sys
from playwright.sync_api import sync_playwright
with sync_playwright() as pw:
    sys.exit(0 if os.path.exists(pw.chromium.executable_path) else 1)
PYEOF
}

if have_chromium; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then SUDO="sudo -n"; else SUDO="none"; fi
  fi
  if [ "$SUDO" != "none" ]; then
    echo "catlab: installing Debian's chromium for the browser tests (apt-get)"
    if $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; then
      exit 0
    fi
    echo "catlab: apt-get could not install chromium; trying Playwright's own browser" >&2
  fi
fi
echo "catlab: downloading Playwright's own Chromium for the browser tests"
if "$PY" -m playwright install chromium >/dev/null 2>&1 && have_chromium; then
  exit 0
fi
echo "catlab: no Chromium for the browser tests; run \`sudo apt-get install -y chromium\` or" \
     "\`$PY -m playwright install chromium\`, or set CATLAB_CHROMIUM=/path/to/chromium (the other tests run without it)" >&2
exit 0
