#!/usr/bin/env bash
# The browser test of the live view (tests/web) drives Debian's chromium headless through
# Playwright (never a browser Playwright downloads). Install the package when running as root;
# otherwise say how, and the test skips with that reason. Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "chromium not found: installing Debian's chromium package (for the live view's browser test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
  exit 0
fi
echo "chromium is not installed (sudo apt-get install chromium); the browser test will be skipped" >&2
