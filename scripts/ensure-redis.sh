#!/usr/bin/env bash
# Make sure redis-server (Redis >= 7) is on PATH: install Debian's package when running as root,
# otherwise say how to install it. Idempotent: does nothing when Redis is already there.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "redis-server not found: installing Debian's redis-server package" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
  # The package starts a system service on 6379; groundwatch runs its own servers on free ports.
  exit 0
fi
cat >&2 <<'MSG'
redis-server was not found and cannot be installed automatically (not root, or no apt-get).
Install Redis 7, then run the command again:
  Debian/Ubuntu: sudo apt-get install redis-server
  other systems: https://redis.io/docs/latest/operate/oss_and_stack/install/
MSG
exit 1
