#!/usr/bin/env bash
# Make sure clang++ with libFuzzer is on PATH (for `make fuzz` and the fuzz regression test):
# install Debian's clang package when running as root, otherwise say how to install it.
# Idempotent: does nothing when clang++ is already there.
set -euo pipefail
if command -v clang++ >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "clang++ not found: installing Debian's clang package (libFuzzer comes with it)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends clang >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends clang >/dev/null; }
  exit 0
fi
cat >&2 <<'MSG'
clang++ was not found and cannot be installed automatically (not root, or no apt-get).
Install clang (libFuzzer is part of it), then run the command again:
  Debian/Ubuntu: sudo apt-get install clang
MSG
exit 1
