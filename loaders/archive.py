"""Reading a model file for registration: its bytes (with ml2rt, as RedisAI users do), its hash,
and its checked metadata (groundwatch.modelmeta; no torch needed)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml2rt

from groundwatch import modelmeta
from groundwatch.modelmeta import ModelMetadata
from loaders import LoaderError


@dataclass(frozen=True)
class ModelFile:
    path: str
    blob: bytes
    sha256: str
    metadata: ModelMetadata
    # A blob converted at load time (ONNX import, loaders/onnx_import.py): the file as it was
    # given, kept in the registry beside the version's record, and what the conversion measured,
    # merged into the record's provenance.
    original: bytes | None = None
    conversion: dict[str, Any] = field(default_factory=dict)


def read_model_file(path: str | Path) -> ModelFile:
    """The blob and its checked metadata; LoaderError says what is wrong with the file."""
    try:
        blob = ml2rt.load_model(str(path))
    except OSError as e:
        raise LoaderError(f"cannot read model file {path}: {e}") from e
    return ModelFile(str(path), blob, hashlib.sha256(blob).hexdigest(), read_metadata(blob, str(path)))


def is_onnx(path: str | Path) -> bool:
    """A `.onnx` file, or one that is not a zip (TorchScript) and opens like an ONNX ModelProto
    (protobuf field 1, ir_version, as every exporter writes it first)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return True
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return len(head) >= 2 and not head.startswith(b"PK") and head[0] == 0x08


def read_metadata(blob: bytes, name: str = "model") -> ModelMetadata:
    try:
        return modelmeta.read(blob, name)
    except modelmeta.MetadataError as e:
        raise LoaderError(str(e)) from e
