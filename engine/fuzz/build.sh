#!/usr/bin/env bash
# Builds the libFuzzer targets of engine/fuzz into OUT (default engine/build-fuzz): each one links
# the pure engine sources it fuzzes, with ASan and UBSan. Usage: engine/fuzz/build.sh [OUT]
# (JOBS compilers at a time, default 2).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$here/../src"
out="${1:-$here/../build-fuzz}"
mkdir -p "$out"
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -Wall -Wextra -Werror -I "$src")
core=("$src/tensor.cpp" "$src/serialization.cpp")
for harness in "$here"/fuzz_*.cpp; do
  name="$(basename "$harness" .cpp)"
  bin="$out/$name"
  # Rebuilt only when a source it uses changed.
  if [ -x "$bin" ] && [ -z "$(find "$harness" "$here"/*.h "$src"/*.cpp "$src"/*.h -newer "$bin" 2>/dev/null)" ]; then
    continue
  fi
  # A harness needing more of the engine names it: " * fuzz-sources: a.cpp b.cpp".
  srcs=("${core[@]}")
  for f in $(sed -n 's/^ \* fuzz-sources: //p' "$harness"); do srcs+=("$src/$f"); done
  echo "building $name" >&2
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-2}" ]; do wait -n; done
  clang++ "${flags[@]}" "$harness" "${srcs[@]}" -o "$bin.tmp" -lpthread -ldl && mv "$bin.tmp" "$bin" &
done
# Any failed compile fails the build.
status=0
for pid in $(jobs -p); do wait "$pid" || status=1; done
exit $status
