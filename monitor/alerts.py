"""Alerts raised once and cleared once, on ``gw:{feed}:alerts`` (stream and channel).

The active alerts of a feed are a hash (alert name -> JSON). Raising is HSETNX, clearing HDEL:
whichever monitor wins the write announces it, so two monitors of one feed never announce an
alert twice, and an alert that stays raised over many checks is announced once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from groundwatch import keys

MAXLEN = 10_000


@dataclass(frozen=True)
class Event:
    feed: str
    alert: str  # e.g. "drift:band:0", "quiet", "dead-letters", "lag"
    event: str  # "raised" or "cleared"
    value: float
    threshold: float
    version: str | None
    since_ms: int
    at_ms: int
    detail: str

    def fields(self) -> dict[str, str]:
        return {
            "feed": self.feed,
            "alert": self.alert,
            "event": self.event,
            "value": f"{self.value:.6g}",
            "threshold": f"{self.threshold:.6g}",
            "version": self.version or "",
            "since_ms": str(self.since_ms),
            "at_ms": str(self.at_ms),
            "detail": self.detail,
        }


def active(client: redis.Redis, feed: str) -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in client.hgetall(keys.alert_state(feed)).items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = json.loads(v)
        except ValueError:
            continue
    return out


def _announce(client: redis.Redis, e: Event) -> None:
    pipe = client.pipeline(transaction=True)
    pipe.xadd(keys.alerts(e.feed), e.fields(), maxlen=MAXLEN, approximate=True)
    pipe.publish(keys.alerts(e.feed), json.dumps(e.fields()))
    pipe.execute()


def raise_alert(
    client: redis.Redis,
    feed: str,
    alert: str,
    *,
    value: float,
    threshold: float,
    version: str | None,
    now_ms: int,
    detail: str,
) -> Event | None:
    """Raise `alert` unless it is active already; the event when this call raised it."""
    state = {"since_ms": now_ms, "value": value, "threshold": threshold, "version": version, "detail": detail}
    if not client.hsetnx(keys.alert_state(feed), alert, json.dumps(state)):
        return None
    e = Event(feed, alert, "raised", value, threshold, version, now_ms, now_ms, detail)
    _announce(client, e)
    return e


def clear_alert(
    client: redis.Redis, feed: str, alert: str, *, value: float, now_ms: int, detail: str
) -> Event | None:
    """Clear `alert` if it is active; the event when this call cleared it."""
    raw = client.hget(keys.alert_state(feed), alert)
    if raw is None or not client.hdel(keys.alert_state(feed), alert):
        return None
    try:
        state = json.loads(raw)
    except ValueError:
        state = {}
    e = Event(
        feed,
        alert,
        "cleared",
        value,
        float(state.get("threshold", 0.0)),
        state.get("version"),
        int(state.get("since_ms", now_ms)),
        now_ms,
        detail,
    )
    _announce(client, e)
    return e
