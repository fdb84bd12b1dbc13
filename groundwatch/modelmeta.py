"""The model metadata format: the `groundwatch.json` that makes a TorchScript file self-describing.

`torch.jit.save(m, f, _extra_files={"groundwatch.json": ...})` stores it as
`<archive>/extra/groundwatch.json` in the zip archive, so it can be read here with zipfile alone,
without torch, from a file or from a blob fetched with AI.MODELGET. Contract 1 is documented in
docs/models.md; models write it, loaders check it, consumers read class names and the score
threshold from it. Contract 2 (segmentation: per-pixel class scores or class ids) is declared by
``"contract": 2``; it needs no ``max_detections`` and adds ``output``, ``background`` and
``min_region_px``.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundwatch.errors import GroundwatchError

METADATA_FILE = "groundwatch.json"
CONTRACT_VERSION = 1
SEGMENTATION_CONTRACT = 2
CONTRACTS = (CONTRACT_VERSION, SEGMENTATION_CONTRACT)
DTYPES = ("uint8", "uint16", "float32")
REQUIRED = ("contract", "classes", "bands", "dtype", "tile_size", "max_detections")
REQUIRED_SEGMENTATION = ("contract", "classes", "bands", "dtype", "tile_size")
# Contract 2's outputs: per-pixel class probabilities [B, K, H, W], or class ids [B, 1, H, W].
SEGMENTATION_OUTPUTS = ("scores", "class_ids")
SEGMENTATION_FIELDS = ("output", "background", "min_region_px")
# A model's groundwatch.json is a few hundred bytes; the cap keeps a hostile archive (a zip bomb
# of a member, or a blob fetched from the engine) from costing the reader more than this.
MAX_METADATA_BYTES = 1 << 20


class MetadataError(GroundwatchError):
    """A model file is not TorchScript, or its groundwatch.json is missing or invalid."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a model declares about itself. `extra` keeps the keys not listed here.

    Contract 2 (segmentation) has ``max_detections`` 0; its ``output`` says what the model returns
    and ``background`` is the class index that is never vectorised. ``min_region_px``: the
    smallest region of each class (by class index, merged pixels of the tile grid) a scene
    result publishes; () keeps every region (see :func:`region_minimum`)."""

    classes: tuple[str, ...]
    bands: int
    dtype: str
    tile_size: int
    max_detections: int = 0
    score_threshold_hint: float | None = None
    contract: int = CONTRACT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    output: str = "scores"
    background: int = 0
    min_region_px: tuple[int, ...] = ()

    @property
    def segmentation(self) -> bool:
        return self.contract == SEGMENTATION_CONTRACT

    @classmethod
    def from_dict(cls, meta: Any) -> ModelMetadata:
        if not isinstance(meta, dict):
            raise MetadataError(f"{METADATA_FILE} must hold a JSON object, got {type(meta).__name__}")
        if "contract" in meta and (type(meta["contract"]) is not int or meta["contract"] not in CONTRACTS):
            raise MetadataError(
                f"model contract {meta['contract']!r} is not supported (this groundwatch knows contracts "
                f"{', '.join(map(str, CONTRACTS))}); export the model again with one of them"
            )
        segmentation = meta.get("contract") == SEGMENTATION_CONTRACT
        required = REQUIRED_SEGMENTATION if segmentation else REQUIRED
        missing = [k for k in required if k not in meta]
        if missing:
            raise MetadataError(
                f"{METADATA_FILE} lacks {', '.join(missing)}; it needs {', '.join(required)} (docs/models.md)"
            )
        classes = meta["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise MetadataError(
                f"{METADATA_FILE}: classes must be a non-empty list of names, got {classes!r}"
            )
        for key in ("bands", "tile_size") if segmentation else ("bands", "tile_size", "max_detections"):
            if not isinstance(meta[key], int) or isinstance(meta[key], bool) or meta[key] < 1:
                raise MetadataError(f"{METADATA_FILE}: {key} must be a positive integer, got {meta[key]!r}")
        output, background = _segmentation_fields(meta, len(classes)) if segmentation else ("scores", 0)
        min_px = _min_region_px(meta.get("min_region_px", 0), classes, background) if segmentation else ()
        if meta["dtype"] not in DTYPES:
            raise MetadataError(
                f"{METADATA_FILE}: dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r}"
            )
        hint = meta.get("score_threshold_hint")
        if hint is not None and not (isinstance(hint, int | float) and 0 <= hint <= 1):
            raise MetadataError(f"{METADATA_FILE}: score_threshold_hint must be in [0, 1], got {hint!r}")
        known = {*REQUIRED, "score_threshold_hint", *(SEGMENTATION_FIELDS if segmentation else ())}
        return cls(
            classes=tuple(classes),
            bands=meta["bands"],
            dtype=meta["dtype"],
            tile_size=meta["tile_size"],
            max_detections=0 if segmentation else meta["max_detections"],
            contract=meta["contract"],
            score_threshold_hint=None if hint is None else float(hint),
            extra={k: v for k, v in meta.items() if k not in known},
            output=output,
            background=background,
            min_region_px=min_px,
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(
            contract=self.contract,
            classes=list(self.classes),
            bands=self.bands,
            dtype=self.dtype,
            tile_size=self.tile_size,
        )
        if self.segmentation:
            out.update(output=self.output, background=self.background)
            if self.min_region_px:
                out["min_region_px"] = {
                    name: px for name, px in zip(self.classes, self.min_region_px, strict=True) if px
                }
        else:
            out["max_detections"] = self.max_detections
        if self.score_threshold_hint is not None:
            out["score_threshold_hint"] = self.score_threshold_hint
        return out


def _segmentation_fields(meta: dict[str, Any], classes: int) -> tuple[str, int]:
    """Contract 2's ``output`` (default "scores") and ``background`` (default 0), checked."""
    output = meta.get("output", "scores")
    if output not in SEGMENTATION_OUTPUTS:
        raise MetadataError(
            f"{METADATA_FILE}: output must be one of {', '.join(SEGMENTATION_OUTPUTS)} for contract 2, "
            f"got {output!r}"
        )
    background = meta.get("background", 0)
    if type(background) is not int or not 0 <= background < classes:
        raise MetadataError(
            f"{METADATA_FILE}: background must be a class index 0..{classes - 1}, got {background!r}"
        )
    if classes < 2 and output == "scores":
        raise MetadataError(
            f"{METADATA_FILE}: a contract-2 model with output scores needs at least 2 classes "
            "(the background and one to vectorise)"
        )
    return output, background


def _min_region_px(value: Any, classes: list[str], background: int) -> tuple[int, ...]:
    """Contract 2's ``min_region_px``: one count of pixels for every class, or an object of class
    name -> pixels (classes it does not name: 0), as a count per class index; () when all are 0."""

    def count(v: Any, what: str) -> int:
        if type(v) is not int or v < 0:
            raise MetadataError(
                f"{METADATA_FILE}: min_region_px{what} must be a whole number of pixels >= 0 "
                f"(0 keeps every region), got {v!r}"
            )
        return v

    if isinstance(value, dict):
        unknown = [k for k in value if k not in classes]
        if unknown:
            raise MetadataError(
                f"{METADATA_FILE}: min_region_px names {', '.join(map(repr, unknown))}, not among the "
                f"classes {classes}; give one number for all classes or an object of class names"
            )
        if value.get(classes[background]):
            raise MetadataError(
                f"{METADATA_FILE}: min_region_px names the background class {classes[background]!r}, "
                "which is never vectorised; leave it out"
            )
        px = [count(value.get(name, 0), f"[{name!r}]") for name in classes]
    else:
        px = [count(value, "") if i != background else 0 for i in range(len(classes))]
    return tuple(px) if any(px) else ()


def region_minimum(operator: int | None, meta: ModelMetadata) -> tuple[int, ...]:
    """The smallest region of each class (by class index) a feed publishes: the operator's
    setting (``GROUNDWATCH_MIN_REGION_PX``, one count for every class but the background), else
    the model's ``min_region_px``; () keeps every region."""
    if operator is None:
        return meta.min_region_px
    if not operator:
        return ()
    return tuple(0 if i == meta.background else int(operator) for i in range(len(meta.classes)))


def read_raw(source: str | Path | bytes, what: str | None = None) -> dict[str, Any]:
    """The JSON object in a TorchScript file's groundwatch.json (path or bytes), unvalidated.

    MetadataError is the only exception it raises for what the file holds, however damaged (a
    corrupt member, a bad CRC, an oversized or deeply nested groundwatch.json).
    """
    what = what or ("the given bytes" if isinstance(source, bytes | bytearray) else f"model file {source!s}")
    try:
        archive = zipfile.ZipFile(
            io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source)
        )
    except FileNotFoundError as e:
        raise MetadataError(f"{what} does not exist; check the path") from e
    except _ZIP_ERRORS as e:
        raise MetadataError(
            f"{what} is not a TorchScript archive (not a readable zip file: {e}); export the model with "
            "torch.jit.script(model) and torch.jit.save(...)"
        ) from e
    with archive:
        names = archive.namelist()
        if not any(n.endswith("/data.pkl") for n in names) or not any("/code/" in n for n in names):
            raise MetadataError(
                f"{what} is a zip file but not a TorchScript archive (no data.pkl / code/); a state_dict "
                "or torch.save() file will not do: export with torch.jit.save"
            )
        meta_name = next((n for n in names if n.endswith(f"/extra/{METADATA_FILE}")), None)
        if meta_name is None:
            raise MetadataError(
                f"{what} carries no {METADATA_FILE}: save it with "
                f"torch.jit.save(m, f, _extra_files={{'{METADATA_FILE}': json.dumps(meta)}}) (docs/models.md)"
            )
        info = archive.getinfo(meta_name)
        if info.file_size > MAX_METADATA_BYTES:
            raise MetadataError(_too_big(what, info.file_size))
        try:
            # Read at most one byte past the cap: the size in the zip directory may lie.
            with archive.open(info) as member:
                raw = member.read(MAX_METADATA_BYTES + 1)
        except _ZIP_ERRORS as e:
            raise MetadataError(
                f"{what}: its {METADATA_FILE} cannot be read from the archive ({e}): the file is damaged "
                "(a bad CRC or a truncated member); copy or export the model again"
            ) from e
    if len(raw) > MAX_METADATA_BYTES:
        raise MetadataError(_too_big(what, len(raw)))
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MetadataError(f"{what}: {METADATA_FILE} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise MetadataError(f"{what}: {METADATA_FILE} must hold a JSON object, got {type(meta).__name__}")
    return meta


# What zipfile raises for damaged archives besides BadZipFile: truncated or corrupt deflate data
# (zlib.error, EOFError), nonsense sizes and offsets (ValueError, OverflowError, struct.error),
# encrypted members (RuntimeError), compression methods it lacks (NotImplementedError).
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    OverflowError,
    struct.error,
    RuntimeError,
    NotImplementedError,
)


def _too_big(what: str, size: int) -> str:
    return (
        f"{what}: its {METADATA_FILE} is {size} bytes; metadata is at most {MAX_METADATA_BYTES} bytes "
        "(class names, bands, dtype, tile size: put anything bulky elsewhere)"
    )


def read(source: str | Path | bytes, what: str | None = None) -> ModelMetadata:
    """The checked metadata of a TorchScript file (path or bytes)."""
    return ModelMetadata.from_dict(read_raw(source, what))


def score_threshold(operator: float | None, hint: Any) -> float:
    """The threshold detections are served at: the operator's setting, else the model's
    ``score_threshold_hint``, else :data:`groundwatch.settings.DEFAULT_SCORE_THRESHOLD`."""
    from groundwatch.settings import DEFAULT_SCORE_THRESHOLD

    if operator is not None:
        return float(operator)
    if hint is not None:
        return float(hint)
    return DEFAULT_SCORE_THRESHOLD
