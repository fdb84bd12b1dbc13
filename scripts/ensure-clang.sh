#!/usr/bin/env bash
# Make sure clang++ with libFuzzer is on PATH (for `make fuzz` and the fuzz regression test):
# install Debian's clang package when running as root, otherwise say how to install it.
# Idempotent: does nothing when clang++ and its libFuzzer runtime are already there.
set -euo pipefail
# libFuzzer and the sanitizer runtimes are compiler-rt, which Debian 12's clang only recommends:
# a clang installed without recommends links no fuzzer, so the runtime is checked, not clang++.
have_fuzzer() {
  command -v clang++ >/dev/null 2>&1 &&
    [ -f "$(clang++ -print-file-name="libclang_rt.fuzzer-$(uname -m).a")" ]
}
if have_fuzzer; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "clang++ or its libFuzzer runtime not found: installing Debian's clang (and compiler-rt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  install() { apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1; }
  # libclang-rt-dev does not exist where clang still ships compiler-rt itself.
  install clang libclang-rt-dev || {
    apt-get update -qq >/dev/null 2>&1 || true
    install clang libclang-rt-dev || install clang || true
  }
  have_fuzzer && exit 0
fi
cat >&2 <<'MSG'
clang++ with its libFuzzer runtime was not found and could not be installed (not root, no
apt-get, or the install failed). Install clang and compiler-rt, then run the command again:
  Debian/Ubuntu: sudo apt-get install clang libclang-rt-dev
MSG
exit 1
