"""Connections to Redis: the URL in the settings, else the embedded server.

The embedded server (`groundwatch up`) records its port and pid in ``<data_dir>/server.json``;
clients find it there. A URL may carry an ACL user and password (``redis://user:pw@host:port/0``)
and ``rediss://`` selects TLS.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import redis

from groundwatch.errors import ServerError
from groundwatch.settings import Settings


@dataclass(frozen=True)
class EmbeddedInfo:
    port: int
    pid: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def state_file(settings: Settings) -> Path:
    return settings.data_dir / "server.json"


def write_embedded(settings: Settings, port: int, pid: int) -> None:
    state_file(settings).write_text(json.dumps({"port": port, "pid": pid}))


def read_embedded(settings: Settings) -> EmbeddedInfo | None:
    """The embedded server recorded under data_dir, if its process is still alive."""
    try:
        state = json.loads(state_file(settings).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return EmbeddedInfo(port=int(state["port"]), pid=int(state["pid"]), data_dir=settings.data_dir)


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    info = read_embedded(settings)
    if info is None:
        raise ServerError(
            f"no Redis to talk to: REDIS_URL is not set and no embedded server runs under "
            f"{settings.data_dir}/. Start one with `groundwatch up`, or set REDIS_URL=redis://host:port"
        )
    return info.url


def connect(settings: Settings, *, decode_responses: bool = False, timeout_s: float = 30.0) -> redis.Redis:
    """A client for the configured Redis; raises ServerError with a fix when it is unreachable."""
    url = redis_url(settings)
    client = redis.Redis.from_url(
        url, decode_responses=decode_responses, socket_timeout=timeout_s, health_check_interval=30
    )
    try:
        client.ping()
    except redis.RedisError as e:
        raise ServerError(f"cannot reach Redis at {_redact(url)}: {e}. Is it running?") from e
    return client


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
