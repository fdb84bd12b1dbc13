"""A consumer's name in its group: stable per host and slot, never shared by two live consumers.

Pending entries belong to a consumer *name*. A name that changed with every restart (host-pid)
left a crashed consumer's entries to wait for XAUTOCLAIM, and every reclaim raised their
delivery count. The default name is ``<host>-<slot>``: the first slot whose lease
(``keys.consumer_lease``) is free, expired, or held by a process of this host that no longer
exists, so a consumer restarted on the same host takes its predecessor's name and finishes its
own pending entries first. ``--name`` overrides it (and takes no lease: the operator keeps names
apart).
"""

from __future__ import annotations

import logging
import os
import socket
import time

import redis

from consumers import ConsumerError
from groundwatch import keys

log = logging.getLogger("groundwatch.consumers")

LEASE_S = 15  # a lease not refreshed for this long is free
REFRESH_S = 5.0
MAX_SLOTS = 256


def host_name() -> str:
    """This host's name as a consumer-name prefix (keys.check_name's alphabet)."""
    raw = socket.gethostname().split(".")[0] or "host"
    clean = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in raw)
    return (clean if clean[:1].isalnum() else "h" + clean)[:48]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    """The name this consumer runs under, and its lease (refreshed by the consumer loop)."""

    def __init__(self, client: redis.Redis, feed: str, group: str, name: str | None = None) -> None:
        self.r = client
        self.feed = feed
        self.group = group
        self.host = host_name()
        self.token = f"{self.host} {os.getpid()}"
        self.fixed = bool(name)
        self.name = name or self._claim()
        self._refreshed = time.monotonic()

    def _key(self, name: str) -> str:
        return keys.consumer_lease(self.feed, self.group, name)

    def _claim(self) -> str:
        for slot in range(MAX_SLOTS):
            name = f"{self.host}-{slot}"
            key = self._key(name)
            if self.r.set(key, self.token, nx=True, ex=LEASE_S):
                return name
            holder = self.r.get(key)
            text = holder.decode() if isinstance(holder, bytes) else str(holder or "")
            host, _, pid = text.partition(" ")
            if host == self.host and pid.isdigit() and not _alive(int(pid)):
                # our predecessor on this slot died: its pending entries are ours to finish
                with self.r.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)
                        pipe.multi()
                        pipe.set(key, self.token, ex=LEASE_S)
                        pipe.execute()
                        log.info("consumer %s: taking over from dead process %s", name, pid)
                        return name
                    except redis.WatchError:
                        continue
        raise ConsumerError(f"all {MAX_SLOTS} consumer slots of host {self.host} are taken; use --name")

    def refresh(self) -> None:
        """Extend the lease (cheap; at most every REFRESH_S)."""
        if self.fixed or time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._refreshed = time.monotonic()
        if not self.r.set(self._key(self.name), self.token, xx=True, ex=LEASE_S):
            # expired while we were away (a long stall): take it again unless someone else has
            if not self.r.set(self._key(self.name), self.token, nx=True, ex=LEASE_S):
                log.warning("consumer %s: lease taken by another process; carrying on", self.name)

    def release(self) -> None:
        if self.fixed:
            return
        key = self._key(self.name)
        with self.r.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(key)
                if pipe.get(key) in (self.token, self.token.encode()):
                    pipe.multi()
                    pipe.delete(key)
                    pipe.execute()
            except redis.WatchError:
                pass
