"""The model registry, read side: version records, ``name:version`` references, active pointers.

Layout (all under the registry's hash tag; see groundwatch/keys.py):
  registry_versions(name)  hash  version -> JSON VersionRecord
  registry_active(name)    string  the active version
  registry_history(name)   list  previously active versions, newest first
  registry_counter(name)   counter for new version numbers
  registry_models()        set of model names
  registry_originals(name) hash  version -> the original bytes of a version converted at load
                           time (ONNX import); its record's provenance has their sha256
Each feed a version serves has its own pointer, keys.active_model(feed) = "name:version", which
is what consumers read; changing it is one SET, so a feed switches atomically.

Writing (registering, activating, forgetting versions) is the loaders' (loaders/registry.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from groundwatch import connection, keys
from groundwatch.errors import GroundwatchError

# ASCII digits and fullmatch: "$" would take "ship:1\n", and \d (like str.isdigit) takes digits int() refuses
_REF = re.compile(r"([A-Za-z0-9_.\-]+):v?([0-9]{1,18})")
_VERSION = re.compile(r"[0-9]{1,18}")


class RegistryError(GroundwatchError):
    """A model version that is not registered, or a malformed ``name:version``."""


@dataclass(frozen=True, order=True)
class ModelRef:
    """A model version by name: ``ship:3`` (the label every result carries)."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"

    @classmethod
    def parse(cls, text: str | bytes, default_name: str | None = None) -> ModelRef:
        """``NAME:VERSION`` (``NAME:vVERSION`` too), or a bare ``VERSION`` with `default_name`."""
        raw = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        m = _REF.fullmatch(raw)
        if m:
            return cls(m.group(1), int(m.group(2)))
        if default_name is not None and _VERSION.fullmatch(raw):
            return cls(default_name, int(raw))
        raise RegistryError(f"{raw!r} is not a model version NAME:VERSION (e.g. ship:1)")

    def key(self, feed: str) -> str:
        """The engine key of this version's copy for `feed`."""
        return keys.model(feed, self.name, self.version)


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
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    @property
    def label(self) -> str:
        """`name:version`, the model version string carried by every result."""
        return str(self.ref)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: bytes | str) -> VersionRecord:
        return cls(**json.loads(raw))


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


class RegistryReader:
    """What is registered and what is active (no writes)."""

    def __init__(self, client: redis.Redis) -> None:
        # Every registry key carries the tag {registry}: one slot, so its MULTIs are legal.
        self.client = connection.on_slot(client, keys.registry_models())

    def names(self) -> list[str]:
        return sorted(_text(n) for n in self.client.smembers(keys.registry_models()))

    def versions(self, name: str) -> list[VersionRecord]:
        raw = self.client.hgetall(keys.registry_versions(name))
        return sorted((VersionRecord.from_json(v) for v in raw.values()), key=lambda r: r.version)

    def get(self, name: str, version: int) -> VersionRecord:
        raw = self.client.hget(keys.registry_versions(name), str(version))
        if raw is None:
            known = ", ".join(str(r.version) for r in self.versions(name)) or "none"
            raise RegistryError(f"model {name} has no version {version} (known versions: {known})")
        return VersionRecord.from_json(raw)

    def exists(self, name: str, version: int) -> bool:
        return bool(self.client.hexists(keys.registry_versions(name), str(version)))

    def original(self, name: str, version: int) -> bytes | None:
        """The file a version was converted from (an ONNX model), as it was given; None for a
        version stored as it came."""
        raw = self.client.hget(keys.registry_originals(name), str(version))
        return None if raw is None else bytes(raw)

    def active(self, name: str) -> int | None:
        """The model's active version number (the registry's own pointer)."""
        raw = self.client.get(keys.registry_active(name))
        return None if raw is None else int(raw)


def active_ref(client: redis.Redis, feed: str) -> ModelRef | None:
    """The version `feed`'s consumers run (keys.active_model); None when unset.

    RegistryError when the pointer is set but is not ``name:version``."""
    raw = client.get(keys.active_model(feed))
    return None if raw is None else ModelRef.parse(raw)
