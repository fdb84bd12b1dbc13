"""Reading the frames stream as one member of the feed's consumer group.

Three sources, in the order the consumer loop uses them: its own pending entries
(XREADGROUP from id 0, after a restart or a failed batch), new entries (XREADGROUP ``>``), and
entries idle on other, presumably dead, consumers (XAUTOCLAIM). Entries read again carry their
delivery count (from XPENDING), which decides when a failing frame becomes a dead letter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from groundwatch import connection, keys
from groundwatch.frames import Frame

log = logging.getLogger("groundwatch.consumers")


def text(v: Any) -> str:
    """Bytes from Redis as text; never raises (a producer may write any bytes, names included)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _raw(response: Any, **_options: Any) -> Any:
    return response


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream entry id as a sortable pair (ms, seq)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass
class Entry:
    """One frames-stream entry as read: fields None when the entry was deleted (trimmed)."""

    id: str
    fields: dict[bytes, bytes] | None
    deliveries: int = 1  # XPENDING's count: includes deliveries that a fault of the system wasted
    frame: Frame | None = None
    attempts: int = 0  # real attempts, this one included (keys.attempts)
    stripped: bool = False  # its dead letter carries only the dead_* fields (its own could not be written)


def entries(raw: Sequence[Any] | None) -> list[Entry]:
    """Entries of an XREADGROUP / XAUTOCLAIM reply (raw, bytes)."""
    out = []
    for item in raw or ():
        if item is None:
            continue
        fields = None if item[1] is None else dict(zip(item[1][::2], item[1][1::2], strict=True))
        out.append(Entry(text(item[0]), fields))
    return out


class Reader:
    """XREADGROUP, XPENDING and XAUTOCLAIM of one consumer on the feed's frames stream."""

    def __init__(
        self, client: redis.Redis, feed: str, group: str, name: str, *, count: int, claim_idle_ms: int
    ) -> None:
        # Our own client object on the same pool, so raw reply parsing does not leak to the caller's.
        self.r = redis.Redis(connection_pool=client.connection_pool)
        for command in ("XREADGROUP", "XAUTOCLAIM", "XPENDING"):
            self.r.set_response_callback(command, _raw)
        self.feed = feed
        self.stream = keys.frames(feed)
        self.group = group
        self.name = name
        self.count = count
        self.claim_idle_ms = claim_idle_ms
        self._claim_cursor = "0-0"
        self._last_claim = 0.0

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) unless it exists; register the feed."""
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        connection.on_slot(self.r, keys.feeds()).sadd(keys.feeds(), self.feed)  # its own slot

    def read(self, start: str, block_ms: int | None) -> list[Entry]:
        """XREADGROUP from `start` (``>``: new entries; an id: our own pending ones after it)."""
        args: list[Any] = ["XREADGROUP", "GROUP", self.group, self.name, "COUNT", self.count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", self.stream, start]
        reply = self.r.execute_command(*args)
        if not reply:
            return []
        out = entries(reply[0][1])
        if start != ">":
            self._fill_deliveries(out)
        return out

    def _fill_deliveries(self, batch: list[Entry]) -> None:
        if not batch:
            return
        ids = [e.id for e in batch]
        reply = self.r.execute_command(
            "XPENDING",
            self.stream,
            self.group,
            min(ids, key=id_key),
            max(ids, key=id_key),
            len(ids) * 4 + 16,
            self.name,
        )
        counts = {text(row[0]): int(row[3]) for row in reply or ()}
        for e in batch:
            e.deliveries = counts.get(e.id, e.deliveries)

    def claim_due(self) -> bool:
        """Whether it is time to look for idle entries again (every claim_idle_ms / 2)."""
        return time.monotonic() - self._last_claim >= self.claim_idle_ms / 2000.0

    def autoclaim(self) -> list[Entry]:
        """Entries idle on other (dead) consumers for claim_idle_ms, now ours."""
        self._last_claim = time.monotonic()
        reply = self.r.execute_command(
            "XAUTOCLAIM",
            self.stream,
            self.group,
            self.name,
            self.claim_idle_ms,
            self._claim_cursor,
            "COUNT",
            self.count,
        )
        self._claim_cursor = text(reply[0])
        out = entries(reply[1])
        if out:
            log.info("consumer %s: reclaimed %d idle entries", self.name, len(out))
            self._fill_deliveries(out)
        return out
