"""The model registry in Redis: versions with their metadata, and the active version.

Layout (all under the registry's hash tag; see groundwatch/keys.py):
  registry_versions(name)  hash  version -> JSON VersionRecord
  registry_active(name)    string  the active version
  registry_history(name)   list  previously active versions, newest first
  registry_counter(name)   counter for new version numbers
  registry_models()        set of model names
Each feed a version serves has its own pointer, keys.active_model(feed) = "name:version", which
is what consumers read; changing it is one SET, so a feed switches atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from groundwatch import keys
from loaders import LoaderError


@dataclass(frozen=True)
class VersionRecord:
    name: str
    version: int
    sha256: str
    source_file: str
    classes: list[str]
    bands: int
    dtype: str
    tile_size: int
    device: str
    feeds: list[str]
    loaded_at: str
    batch: int | None = None
    min_batch: int | None = None
    min_batch_timeout_ms: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """`name:version`, the model version string carried by every result."""
        return f"{self.name}:{self.version}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> VersionRecord:
        return cls(**json.loads(raw))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class Registry:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def names(self) -> list[str]:
        return sorted(_text(n) for n in self.client.smembers(keys.registry_models()))

    def next_version(self, name: str) -> int:
        return int(self.client.incr(keys.registry_counter(name)))

    def reserve(self, name: str, version: int) -> None:
        """Keep the counter ahead of an explicitly chosen version."""
        counter = keys.registry_counter(name)
        current = int(self.client.get(counter) or 0)
        if version > current:
            self.client.set(counter, version)

    def versions(self, name: str) -> list[VersionRecord]:
        raw = self.client.hgetall(keys.registry_versions(name))
        return sorted((VersionRecord.from_json(v) for v in raw.values()), key=lambda r: r.version)

    def get(self, name: str, version: int) -> VersionRecord:
        raw = self.client.hget(keys.registry_versions(name), str(version))
        if raw is None:
            known = ", ".join(str(r.version) for r in self.versions(name)) or "none"
            raise LoaderError(f"model {name} has no version {version} (known versions: {known})")
        return VersionRecord.from_json(raw)

    def exists(self, name: str, version: int) -> bool:
        return bool(self.client.hexists(keys.registry_versions(name), str(version)))

    def record(self, rec: VersionRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.registry_versions(rec.name), str(rec.version), rec.to_json())
        pipe.sadd(keys.registry_models(), rec.name)
        pipe.execute()

    def active(self, name: str) -> int | None:
        raw = self.client.get(keys.registry_active(name))
        return None if raw is None else int(raw)

    def activate(self, rec: VersionRecord) -> None:
        """Point every feed of `rec`, then the registry, at it. Each pointer is one SET."""
        previous = self.active(rec.name)
        pipe = self.client.pipeline(transaction=False)
        for feed in rec.feeds:
            pipe.set(keys.active_model(feed), rec.label)
            pipe.sadd(keys.feeds(), feed)
        pipe.set(keys.registry_active(rec.name), rec.version)
        if previous is not None and previous != rec.version:
            pipe.lpush(keys.registry_history(rec.name), previous)
            pipe.ltrim(keys.registry_history(rec.name), 0, 99)
        pipe.execute()

    def previous_active(self, name: str) -> VersionRecord | None:
        """The most recent earlier active version that still exists."""
        current = self.active(name)
        for raw in self.client.lrange(keys.registry_history(name), 0, -1):
            version = int(raw)
            if version != current and self.exists(name, version):
                return self.get(name, version)
        return None

    def forget(self, rec: VersionRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(keys.registry_versions(rec.name), str(rec.version))
        pipe.lrem(keys.registry_history(rec.name), 0, rec.version)
        pipe.execute()
