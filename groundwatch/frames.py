"""The frame wire format, version 1: one image tile as the flat field map of one stream entry.

A frame is what a producer XADDs to ``keys.frames(feed)`` and what a consumer reads back. This
module is a pure translation between :class:`Frame` and that field map: no Redis, no GDAL.
The format is documented, with a redis-cli example, in ``docs/protocol.md`` ("Frames").

Fields (all values are strings of ASCII text, except ``data``, which is raw bytes):

    v          format version, "1"
    frame      frame id, "<scene>/<tile>" (deterministic: the same tile of the same scene always
               has the same id, so consumers can deduplicate on it)
    scene      scene id: 1-128 of letters, digits, '_', '.', '-', starting with a letter or digit
    tile       tile index, 0 .. tiles-1 (dense: skipped all-nodata tiles take no index)
    tiles      number of frames this scene publishes; the scene is complete when a consumer has
               seen tiles 0 .. tiles-1
    dtype      element type, the engine's AI.TENSORSET names: UINT8 INT8 UINT16 INT16 INT32 INT64
               FLOAT DOUBLE
    shape      "C,H,W" of the tensor in ``data`` (bands, rows, columns)
    data       C*H*W elements, C order (band-major, then rows, then columns), little-endian
    window     "col_off,row_off,width,height" in scene pixels: the part of the tensor that holds
               scene data. That part is always the top-left corner of the tensor: tensor pixel
               (row r, col c) is scene pixel (row_off + r, col_off + c). When width < W or
               height < H (a scene smaller than a tile), columns width..W-1 and rows height..H-1
               are padding, filled with ``nodata`` when it is set, else 0.
    transform  the SCENE's affine transform "a,b,c,d,e,f" in affine (rasterio) order:
               x = a*col + b*row + c, y = d*col + e*row + f, for scene pixel corners (col, row).
               (GDAL's GeoTransform order is c,a,b,f,d,e.) The tile's own transform is
               :meth:`Frame.tile_transform`.
    crs        the coordinate reference system of x, y: "EPSG:<code>" when it has one, else WKT
    acquired   acquisition time, ISO 8601 with a UTC offset, e.g. "2026-11-25T10:31:07Z"
    published  when the frame was published, milliseconds since the Unix epoch (for latency)

Optional fields:

    nodata     the nodata value of every band ("nan" allowed for FLOAT/DOUBLE); absent: none
    bands      the 1-based source band numbers the C channels came from, e.g. "4,3,2"
    source     where the scene came from (a file name), for people reading the stream
    grid       "width,height,tile,overlap": the scene's size in pixels and the tile grid it was cut
               by (``groundwatch.geometry.grid``), so a consumer knows which pixels of the tile it
               owns (``geometry.core_window``: segmentation vectorises each pixel once)

Decoders ignore fields they do not know, so later versions may add optional fields without
changing ``v``; anything a version-1 consumer would misread needs a new version.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np

from groundwatch.errors import GroundwatchError

VERSION = 1

# engine type name -> numpy dtype (little-endian).
DTYPES: dict[str, np.dtype[Any]] = {
    "UINT8": np.dtype("u1"),
    "INT8": np.dtype("i1"),
    "UINT16": np.dtype("<u2"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FLOAT": np.dtype("<f4"),
    "DOUBLE": np.dtype("<f8"),
}

REQUIRED = (
    "v",
    "frame",
    "scene",
    "tile",
    "tiles",
    "dtype",
    "shape",
    "data",
    "window",
    "transform",
    "crs",
    "acquired",
    "published",
)
OPTIONAL = ("nodata", "bands", "source", "grid")

_SCENE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")
_INT = re.compile(r"[0-9]{1,18}")  # below 10**18: fits an int64 and far from int()'s digit limit
# Longest text field read (crs WKT is the longest legitimate one); the rest of a bigger one is garbage.
MAX_TEXT = 65536


class FrameError(GroundwatchError):
    """A stream entry is not a valid frame. `field` names the offending field (or "" for the whole)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class PixelWindow(NamedTuple):
    """A rectangle in scene pixels (integers): columns col_off..col_off+width-1, rows likewise."""

    col_off: int
    row_off: int
    width: int
    height: int


class TileGrid(NamedTuple):
    """How a scene was cut: its size in pixels, the tile edge and the overlap of neighbours."""

    width_px: int
    height_px: int
    tile_px: int
    overlap_px: int


def engine_dtype(dtype: Any) -> str:
    """The engine type name of a numpy dtype; FrameError when the engine has no such type."""
    dt = np.dtype(dtype)
    for name, known in DTYPES.items():
        if dt.kind == known.kind and dt.itemsize == known.itemsize:
            return name
    raise FrameError(
        f"dtype {dt} cannot be sent to the engine; supported: uint8, int8, uint16, int16, int32, int64, "
        "float32, float64 (cast the array first, e.g. uint32 -> int64)",
        "dtype",
    )


def check_scene_id(scene: str) -> str:
    if not isinstance(scene, str) or not _SCENE.fullmatch(scene):
        raise FrameError(
            f"scene id {scene!r} is not valid: use 1-128 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit (no '/', ':' or braces)",
            "scene",
        )
    return scene


def format_time(t: datetime) -> str:
    """ISO 8601 in UTC with a 'Z', seconds precision unless there are microseconds."""
    t = t.astimezone(UTC)
    text = t.isoformat(timespec="microseconds" if t.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """ISO 8601 with a UTC offset (or 'Z') -> aware datetime in UTC; ValueError otherwise.

    A time that is valid locally but outside datetime's range in UTC (0001-01-01T00:00:00+01:00)
    is a ValueError too, not the OverflowError of astimezone.
    """
    t = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError("no UTC offset")
    try:
        return t.astimezone(UTC)
    except OverflowError as e:
        raise ValueError(f"{text!r} is outside the years 1..9999 in UTC") from e


@dataclass(frozen=True)
class Frame:
    """One tile, ready for the stream. `data` is the tensor's bytes exactly as on the wire."""

    scene: str
    tile: int
    tiles: int
    dtype: str
    shape: tuple[int, int, int]
    data: bytes
    window: PixelWindow
    transform: tuple[float, float, float, float, float, float]
    crs: str
    acquired: datetime
    published_ms: int
    nodata: float | None = None
    bands: tuple[int, ...] | None = None
    source: str | None = None
    extra: Mapping[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    grid: TileGrid | None = None

    @property
    def frame_id(self) -> str:
        return frame_id(self.scene, self.tile)

    def array(self) -> np.ndarray:
        """The tensor as a read-only (C, H, W) numpy array of the frame's dtype (no copy)."""
        return np.frombuffer(self.data, dtype=DTYPES[self.dtype]).reshape(self.shape)

    def valid(self) -> np.ndarray:
        """The part of the tensor that holds scene data (without padding)."""
        return self.array()[:, : self.window.height, : self.window.width]

    def tile_transform(self) -> tuple[float, float, float, float, float, float]:
        """The affine transform (affine order) of the tensor's pixel grid."""
        a, b, c, d, e, f = self.transform
        col, row = self.window.col_off, self.window.row_off
        return (a, b, a * col + b * row + c, d, e, d * col + e * row + f)

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        *,
        scene: str,
        tile: int,
        tiles: int,
        window: PixelWindow | tuple[int, int, int, int],
        transform: Any,
        crs: str,
        acquired: datetime,
        published_ms: int,
        nodata: float | None = None,
        bands: tuple[int, ...] | None = None,
        source: str | None = None,
        grid: TileGrid | tuple[int, int, int, int] | None = None,
    ) -> Frame:
        """A frame from a (C, H, W) or (H, W) array (converted to little-endian C order), validated."""
        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[np.newaxis]
        if arr.ndim != 3:
            raise FrameError(f"a tile must be a (C, H, W) or (H, W) array, got shape {arr.shape}", "shape")
        name = engine_dtype(arr.dtype)
        arr = np.ascontiguousarray(arr, dtype=DTYPES[name])
        c, h, w = (int(n) for n in arr.shape)
        frame = cls(
            scene=scene,
            tile=int(tile),
            tiles=int(tiles),
            dtype=name,
            shape=(c, h, w),
            data=arr.tobytes(order="C"),
            window=PixelWindow(*(int(n) for n in window)),
            transform=_six(transform),
            crs=str(crs),
            acquired=acquired.astimezone(UTC),
            published_ms=int(published_ms),
            nodata=None if nodata is None else float(nodata),
            bands=None if bands is None else tuple(int(b) for b in bands),
            source=source,
            grid=None if grid is None else TileGrid(*(int(n) for n in grid)),
        )
        return _validated(frame)


def frame_id(scene: str, tile: int) -> str:
    return f"{scene}/{tile}"


def _six(transform: Any) -> tuple[float, float, float, float, float, float]:
    values = tuple(float(x) for x in tuple(transform)[:6])
    if len(values) != 6:
        raise FrameError(f"a transform has 6 numbers a,b,c,d,e,f; got {transform!r}", "transform")
    return values


def _num(x: float) -> str:
    """Shortest text that reads back to the same float; integers without '.0'."""
    if math.isfinite(x) and x == int(x) and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


def encode(frame: Frame) -> dict[str, str | bytes]:
    """The XADD field map of `frame` (field order as documented)."""
    fields: dict[str, str | bytes] = {
        "v": str(VERSION),
        "frame": frame.frame_id,
        "scene": frame.scene,
        "tile": str(frame.tile),
        "tiles": str(frame.tiles),
        "dtype": frame.dtype,
        "shape": ",".join(str(n) for n in frame.shape),
        "data": frame.data,
        "window": ",".join(str(n) for n in frame.window),
        "transform": ",".join(_num(x) for x in frame.transform),
        "crs": frame.crs,
        "acquired": format_time(frame.acquired),
        "published": str(frame.published_ms),
    }
    if frame.nodata is not None:
        fields["nodata"] = _num(frame.nodata)
    if frame.bands is not None:
        fields["bands"] = ",".join(str(b) for b in frame.bands)
    if frame.source is not None:
        fields["source"] = frame.source
    if frame.grid is not None:
        fields["grid"] = ",".join(str(n) for n in frame.grid)
    return fields


def _text(fields: Mapping[str, bytes], name: str) -> str:
    raw = fields[name]
    if len(raw) > MAX_TEXT:
        raise FrameError(f"field {name!r} is {len(raw)} bytes long; text fields are at most {MAX_TEXT}", name)
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise FrameError(f"field {name!r} must be ASCII text, got bytes {raw[:40]!r}", name) from e


def _ints(fields: Mapping[str, bytes], name: str, count: int | None, what: str) -> tuple[int, ...]:
    text = _text(fields, name)
    parts = [p.strip() for p in text.split(",")]
    if (count is not None and len(parts) != count) or not all(_INT.fullmatch(p) for p in parts):
        raise FrameError(f"field {name!r} must be {what} (at most 18 digits each), got {text[:80]!r}", name)
    return tuple(int(p) for p in parts)


def decode(entry: Mapping[Any, Any]) -> Frame:
    """The frame in one stream entry's field map (bytes or str keys); FrameError says what is wrong.

    FrameError is the only exception it raises, whatever the entry holds (tests/core/test_fuzz_formats.py).
    """
    if not isinstance(entry, Mapping):
        raise FrameError(f"not a frame: a stream entry is a field map, got {type(entry).__name__}")
    fields: dict[str, bytes] = {}
    for k, v in entry.items():
        key = k.decode("utf-8", "replace") if isinstance(k, bytes | bytearray) else str(k)
        if isinstance(v, bytes | bytearray | memoryview):
            fields[key] = bytes(v)
        elif isinstance(v, str | int | float):
            fields[key] = str(v).encode("utf-8", "replace")
        else:
            raise FrameError(f"field {key!r} holds a {type(v).__name__}, not bytes or text", key)
    missing = [n for n in REQUIRED if n not in fields]
    if missing:
        raise FrameError(
            f"not a frame: missing field(s) {', '.join(missing)} (a version-{VERSION} frame needs "
            f"{', '.join(REQUIRED)}; see docs/protocol.md)",
            missing[0],
        )
    version = _text(fields, "v")
    if version != str(VERSION):
        raise FrameError(
            f"unsupported frame version {version!r}: this consumer reads version {VERSION}; "
            "upgrade the consumer or publish version-1 frames",
            "v",
        )
    scene = check_scene_id(_text(fields, "scene"))
    (tile,) = _ints(fields, "tile", 1, "a tile index (a non-negative integer)")
    (tiles,) = _ints(fields, "tiles", 1, "the scene's number of frames (a positive integer)")
    dtype = _text(fields, "dtype")
    if dtype not in DTYPES:
        raise FrameError(f"field 'dtype' is {dtype!r}; use one of {', '.join(DTYPES)}", "dtype")
    shape = _ints(fields, "shape", 3, "C,H,W (three positive integers)")
    window = PixelWindow(*_ints(fields, "window", 4, "col_off,row_off,width,height (four integers)"))
    try:
        transform = tuple(_float(x) for x in _text(fields, "transform").split(","))
    except ValueError:
        transform = ()
    if len(transform) != 6 or not all(math.isfinite(x) for x in transform):
        raise FrameError(
            f"field 'transform' must be six finite numbers a,b,c,d,e,f (affine order), got "
            f"{_text(fields, 'transform')[:200]!r}",
            "transform",
        )
    try:
        acquired = parse_time(_text(fields, "acquired"))
    except ValueError as e:
        raise FrameError(
            f"field 'acquired' must be ISO 8601 with a UTC offset, within the years 1..9999 in UTC, "
            f"e.g. 2026-11-25T10:31:07Z, got {_text(fields, 'acquired')[:80]!r}",
            "acquired",
        ) from e
    (published,) = _ints(fields, "published", 1, "milliseconds since the Unix epoch (an integer)")
    nodata: float | None = None
    if "nodata" in fields:
        try:
            nodata = _float(_text(fields, "nodata"))
        except ValueError as e:
            text = _text(fields, "nodata")
            raise FrameError(f"field 'nodata' must be a number, got {text[:80]!r}", "nodata") from e
    bands = _ints(fields, "bands", None, "comma-separated band numbers") if "bands" in fields else None
    source = _text(fields, "source") if "source" in fields else None
    grid = (
        TileGrid(*_ints(fields, "grid", 4, "width,height,tile,overlap (four integers)"))
        if "grid" in fields
        else None
    )
    frame = Frame(
        scene=scene,
        tile=tile,
        tiles=tiles,
        dtype=dtype,
        shape=shape,  # type: ignore[arg-type]
        data=fields["data"],
        window=window,
        transform=transform,
        crs=_text(fields, "crs"),
        acquired=acquired,
        published_ms=published,
        nodata=nodata,
        bands=bands,
        source=source,
        extra={k: v for k, v in fields.items() if k not in REQUIRED and k not in OPTIONAL},
        grid=grid,
    )
    _validated(frame)
    given = _text(fields, "frame")
    if given != frame.frame_id:
        raise FrameError(f"field 'frame' is {given!r} but scene and tile make it {frame.frame_id!r}", "frame")
    return frame


def _float(text: str) -> float:
    """A number as the wire writes it; ValueError for anything else (float() also takes '1_0', ' 1')."""
    if len(text) > 64 or "_" in text:
        raise ValueError(f"not a number: {text[:80]!r}")
    return float(text)


def _validated(f: Frame) -> Frame:
    """Checks every cross-field rule; returns `f` unchanged."""
    check_scene_id(f.scene)
    if f.tiles < 1 or not 0 <= f.tile < f.tiles:
        raise FrameError(f"tile index {f.tile} is not in 0..{f.tiles - 1} (tiles={f.tiles})", "tile")
    if f.dtype not in DTYPES:
        raise FrameError(f"dtype {f.dtype!r} is not one of {', '.join(DTYPES)}", "dtype")
    if len(f.shape) != 3 or min(f.shape) < 1:
        raise FrameError(f"shape {f.shape} must be three positive integers C,H,W", "shape")
    c, h, w = f.shape
    expected = c * h * w * DTYPES[f.dtype].itemsize
    if len(f.data) != expected:
        raise FrameError(
            f"data is {len(f.data)} bytes but shape {c},{h},{w} of {f.dtype} needs {expected} "
            f"({c}*{h}*{w}*{DTYPES[f.dtype].itemsize}); the data is truncated or the shape/dtype is wrong",
            "data",
        )
    col, row, width, height = f.window
    if col < 0 or row < 0 or not 1 <= width <= w or not 1 <= height <= h:
        raise FrameError(
            f"window {col},{row},{width},{height} must have col_off, row_off >= 0 and 1 <= width <= {w}, "
            f"1 <= height <= {h} (the tensor's W and H)",
            "window",
        )
    if len(f.transform) != 6 or not all(math.isfinite(x) for x in f.transform):
        raise FrameError(f"transform {f.transform} must be six finite numbers a,b,c,d,e,f", "transform")
    a, b, _c, d, e, _f = f.transform
    det = a * e - b * d
    if not math.isfinite(det) or det == 0:
        raise FrameError(
            f"transform {f.transform} is not an invertible affine transform a,b,c,d,e,f", "transform"
        )
    if not f.crs.strip():
        raise FrameError("crs is empty; give 'EPSG:<code>' or WKT", "crs")
    if f.published_ms < 0:
        raise FrameError(f"published {f.published_ms} must be milliseconds since the epoch", "published")
    if f.nodata is not None:
        dt = DTYPES[f.dtype]
        if dt.kind in "iu":
            info = np.iinfo(dt)
            integral = math.isfinite(f.nodata) and f.nodata == int(f.nodata)
            if not (integral and info.min <= f.nodata <= info.max):
                raise FrameError(f"nodata {f.nodata} is not a value of {f.dtype}", "nodata")
    if f.grid is not None:
        gw, gh, gt, go = f.grid
        if min(gw, gh, gt) < 1 or not 0 <= go < gt or col + width > gw or row + height > gh:
            raise FrameError(
                f"grid {gw},{gh},{gt},{go} must be the scene's width and height (holding the window "
                f"{col},{row},{width},{height}), a tile size >= 1 and 0 <= overlap < tile size",
                "grid",
            )
    if f.bands is not None and (len(f.bands) != c or min(f.bands) < 1):
        raise FrameError(
            f"bands {','.join(map(str, f.bands))} must list {c} band numbers (>= 1), one per channel", "bands"
        )
    return f
