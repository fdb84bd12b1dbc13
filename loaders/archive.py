"""Reading a TorchScript archive and its groundwatch metadata, without torch.

`torch.jit.save` writes a zip file whose single top folder holds `data.pkl`, `code/` and any
extra files under `extra/`. The detector's metadata travels as `extra/groundwatch.json`
(docs/models.md), so a loader can check a file without importing torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import ml2rt

from loaders import LoaderError

CONTRACT_VERSION = 1
METADATA_FILE = "groundwatch.json"
DTYPES = ("uint8", "uint16", "float32")


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file declares about itself (contract 1)."""

    classes: tuple[str, ...]
    bands: int
    dtype: str
    tile_size: int
    max_detections: int | None = None
    contract: int = CONTRACT_VERSION

    def as_dict(self) -> dict[str, object]:
        return {
            "contract": self.contract,
            "classes": list(self.classes),
            "bands": self.bands,
            "dtype": self.dtype,
            "tile_size": self.tile_size,
            "max_detections": self.max_detections,
        }


@dataclass(frozen=True)
class ModelFile:
    path: str
    blob: bytes
    sha256: str
    metadata: ModelMetadata


def read_model_file(path: str | Path) -> ModelFile:
    """The blob (read with ml2rt, as RedisAI users do) and its checked metadata."""
    try:
        blob = ml2rt.load_model(str(path))
    except OSError as e:
        raise LoaderError(f"cannot read model file {path}: {e}") from e
    return ModelFile(str(path), blob, hashlib.sha256(blob).hexdigest(), read_metadata(blob, str(path)))


def read_metadata(blob: bytes, name: str = "model") -> ModelMetadata:
    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        names = archive.namelist()
    except zipfile.BadZipFile as e:
        raise LoaderError(
            f"{name} is not a TorchScript archive (not a zip file); export the model with "
            "torch.jit.script(model) and torch.jit.save(...)"
        ) from e
    if not any(n.endswith("/data.pkl") for n in names) or not any("/code/" in n for n in names):
        raise LoaderError(
            f"{name} is a zip file but not a TorchScript archive (no data.pkl / code/); a state_dict "
            "or torch.save() file will not do: export with torch.jit.save"
        )
    meta_name = next((n for n in names if n.endswith(f"/extra/{METADATA_FILE}")), None)
    if meta_name is None:
        raise LoaderError(
            f"{name} carries no {METADATA_FILE}: save it with "
            f"torch.jit.save(m, f, _extra_files={{'{METADATA_FILE}': json.dumps(meta)}}) (docs/models.md)"
        )
    try:
        raw = json.loads(archive.read(meta_name))
        meta = ModelMetadata(
            classes=tuple(str(c) for c in raw["classes"]),
            bands=int(raw["bands"]),
            dtype=str(raw["dtype"]),
            tile_size=int(raw["tile_size"]),
            max_detections=None if raw.get("max_detections") is None else int(raw["max_detections"]),
            contract=int(raw.get("contract", CONTRACT_VERSION)),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise LoaderError(
            f"{name}: {METADATA_FILE} is not valid ({e!r}); it needs classes, bands, dtype and tile_size"
        ) from e
    if meta.contract != CONTRACT_VERSION:
        raise LoaderError(f"{name} declares model contract {meta.contract}; this loader knows contract 1")
    if not meta.classes or meta.bands < 1 or meta.tile_size < 1 or meta.dtype not in DTYPES:
        raise LoaderError(
            f"{name}: metadata {meta.as_dict()} is incomplete: classes must be non-empty, bands >= 1, "
            f"tile_size >= 1 and dtype one of {', '.join(DTYPES)}"
        )
    return meta
