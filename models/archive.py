"""The self-describing TorchScript archive: save, load, and read its ``groundwatch.json``.

A TorchScript file is a zip archive; ``torch.jit.save(..., _extra_files=...)`` stores each extra
file as ``<archive>/extra/<name>``. The format and its checks belong to the core
(:mod:`groundwatch.modelmeta`, zipfile only, no torch); this module writes models that pass them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from groundwatch import modelmeta
from models.errors import ModelFileError

METADATA_FILE = modelmeta.METADATA_FILE
CONTRACT_VERSION = modelmeta.CONTRACT_VERSION
SHIPPED_MODEL = Path(__file__).resolve().parent / "artifacts" / "detector.pt"


def validate_metadata(meta: Any) -> dict[str, Any]:
    """Check the metadata with the core's rules (groundwatch.modelmeta); return it unchanged."""
    try:
        modelmeta.ModelMetadata.from_dict(meta)
    except modelmeta.MetadataError as e:
        raise ModelFileError(str(e)) from e
    return dict(meta)


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The checked ``groundwatch.json`` of a TorchScript file, given its path or its bytes.

    Reading is the core's (:func:`groundwatch.modelmeta.read_raw`, zipfile only, no torch); this
    returns the plain dict, every key included, and raises :class:`ModelFileError`.
    """
    try:
        meta = modelmeta.read_raw(source)
    except modelmeta.MetadataError as e:
        raise ModelFileError(str(e)) from e
    return validate_metadata(meta)


def save_model(scripted: Any, path: Path, metadata: dict[str, Any]) -> Path:
    """Save a scripted module with its metadata (validated first); return the path."""
    import torch

    validate_metadata(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(path), _extra_files={METADATA_FILE: json.dumps(metadata, indent=2)})
    return path


def load_model(source: str | Path | bytes) -> tuple[Any, dict[str, Any]]:
    """Load a TorchScript model (path or bytes) on CPU in eval mode, with its metadata."""
    import torch

    meta = read_metadata(source)
    try:
        if isinstance(source, bytes | bytearray):
            module = torch.jit.load(io.BytesIO(source), map_location="cpu")
        else:
            module = torch.jit.load(str(source), map_location="cpu")
    except RuntimeError as e:
        raise ModelFileError(f"cannot load the TorchScript model: {e}") from e
    module.eval()
    return module, meta
