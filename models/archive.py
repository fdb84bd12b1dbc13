"""The self-describing TorchScript archive: save, load, and read its ``groundwatch.json``.

A TorchScript file is a zip archive; ``torch.jit.save(..., _extra_files=...)`` stores each extra
file as ``<archive>/extra/<name>``. :func:`read_metadata` reads it with :mod:`zipfile` only, so
callers (the loaders, the CLI) do not need torch to inspect a model file.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from models.errors import ModelFileError

METADATA_FILE = "groundwatch.json"
CONTRACT_VERSION = 1
REQUIRED_KEYS = ("contract", "classes", "bands", "dtype", "tile_size", "max_detections")
DTYPES = ("uint8", "uint16", "float32")
SHIPPED_MODEL = Path(__file__).resolve().parent / "artifacts" / "detector.pt"


def validate_metadata(meta: Any) -> dict[str, Any]:
    """Check the metadata's shape; return it, or raise ModelFileError saying what is wrong."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{METADATA_FILE} must hold a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError(
            f"{METADATA_FILE} lacks {', '.join(missing)}; re-export the model with models.archive.save_model"
        )
    if meta["contract"] != CONTRACT_VERSION:
        raise ModelFileError(
            f"model contract {meta['contract']!r} is not supported (this groundwatch knows contract "
            f"{CONTRACT_VERSION}); export the model again with this version"
        )
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{METADATA_FILE}: classes must be a non-empty list of names, got {classes!r}")
    for key in ("bands", "tile_size", "max_detections"):
        if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
            raise ModelFileError(f"{METADATA_FILE}: {key} must be a positive integer, got {meta[key]!r}")
    if meta["dtype"] not in DTYPES:
        raise ModelFileError(f"{METADATA_FILE}: dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r}")
    return meta


def read_metadata(source: str | Path | bytes) -> dict[str, Any]:
    """The ``groundwatch.json`` of a TorchScript file, given its path or its bytes."""
    what = "the given bytes" if isinstance(source, bytes | bytearray) else f"model file {source!s}"
    try:
        if isinstance(source, bytes | bytearray):
            archive = zipfile.ZipFile(io.BytesIO(source))
        else:
            archive = zipfile.ZipFile(Path(source))
    except FileNotFoundError as e:
        raise ModelFileError(f"{what} does not exist; check the path") from e
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelFileError(
            f"{what} is not a TorchScript archive (not a zip file); export with torch.jit.save"
        ) from e
    with archive:
        names = [n for n in archive.namelist() if n.endswith(f"/extra/{METADATA_FILE}")]
        if not names:
            raise ModelFileError(
                f"the model has no {METADATA_FILE}; save it with models.archive.save_model "
                f"(torch.jit.save with _extra_files={{'{METADATA_FILE}': ...}})"
            )
        try:
            meta = json.loads(archive.read(names[0]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFileError(f"the model's {METADATA_FILE} is not valid JSON: {e}") from e
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
