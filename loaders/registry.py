"""The model registry, write side: new versions, activation, rollback history, forgetting.

The layout, the version record and the reads are the core's (groundwatch/registry.py); every
feed's pointer keys.active_model(feed) = "name:version" is what consumers read, and changing it
is one SET, so a feed switches atomically.
"""

from __future__ import annotations

from groundwatch import connection, keys
from groundwatch.registry import RegistryError, RegistryReader, VersionRecord
from loaders import LoaderError

__all__ = ["Registry", "VersionRecord"]


class Registry(RegistryReader):
    def get(self, name: str, version: int) -> VersionRecord:
        try:
            return super().get(name, version)
        except RegistryError as e:
            raise LoaderError(str(e)) from e

    def next_version(self, name: str) -> int:
        return int(self.client.incr(keys.registry_counter(name)))

    def reserve(self, name: str, version: int) -> None:
        """Keep the counter ahead of an explicitly chosen version."""
        counter = keys.registry_counter(name)
        current = int(self.client.get(counter) or 0)
        if version > current:
            self.client.set(counter, version)

    def record(self, rec: VersionRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(keys.registry_versions(rec.name), str(rec.version), rec.to_json())
        pipe.sadd(keys.registry_models(), rec.name)
        pipe.execute()

    def activate(self, rec: VersionRecord) -> None:
        """Point every feed of `rec`, then the registry, at it. Each pointer is one SET (on a
        cluster, on its feed's shard)."""
        previous = self.active(rec.name)
        for feed in rec.feeds:
            connection.on_slot(self.client, keys.active_model(feed)).set(keys.active_model(feed), rec.label)
        connection.on_slot(self.client, keys.feeds()).sadd(keys.feeds(), *rec.feeds)
        pipe = self.client.pipeline(transaction=False)
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

    def record_original(self, rec: VersionRecord, blob: bytes) -> None:
        """Keep the file `rec` was converted from (an ONNX model's bytes) beside its record."""
        self.client.hset(keys.registry_originals(rec.name), str(rec.version), blob)

    def forget(self, rec: VersionRecord) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(keys.registry_versions(rec.name), str(rec.version))
        pipe.hdel(keys.registry_originals(rec.name), str(rec.version))
        pipe.lrem(keys.registry_history(rec.name), 0, rec.version)
        pipe.execute()
