"""The detection wire format, versions 1 and 2: per-tile detections and merged scene results.

Pure translation between Python objects and what consumers publish; no Redis, no GDAL. The
format is documented, with redis-cli examples, in ``docs/protocol.md`` ("Detections and scene
results").

Both kinds of result are GeoJSON FeatureCollections (RFC 7946: coordinates are
``[longitude, latitude]`` in EPSG:4326) with a foreign member ``"groundwatch"`` that carries the
header. Each feature is one detected object: its geometry is the box as a polygon of its four
corners in lon/lat (a box in scene pixels is a parallelogram on the map, and a quadrilateral in
lon/lat; the ring is counter-clockwise, as RFC 7946 wants, starting at the box's corner x1, y1), with
properties:

    class       class name (from the model's metadata; "class<id>" when it declares none)
    class_id    class id as the model returned it
    score       0..1
    model       model version that produced it, "name:version"
    scene, tile, frame   where it was seen (for a merged scene feature: the tile that gave the
                kept box; ``tiles`` lists every tile that saw the object)
    box_px      [x1, y1, x2, y2] in TILE pixels (pixel edges, x2/y2 exclusive)
    scene_box_px  the same box in SCENE pixels
    box_map     [xmin, ymin, xmax, ymax] in the scene's CRS (``crs`` of the header)
    center      [lon, lat] of the box centre
    cut         true when the box touches an inner tile edge (the object may continue in the
                neighbouring tile; merging prefers boxes that are not cut)

Version 2 adds *region* features (contract-2 segmentation models): ``properties.kind`` is
``"region"``, the geometry is a Polygon (exterior ring counter-clockwise, holes clockwise) of the
simplified outline in lon/lat, and the properties are ``class``, ``class_id``, ``score`` (mean
probability of the class over the region's pixels; 1 for a model that returns class ids),
``pixels``, ``area_m2``, ``model``, ``scene``, ``tile``, ``frame``, ``tiles`` (scene results) and
``rings_px`` (the exact outline in SCENE pixels, pixel edges, exterior first: what the scene's
merge unites). A result holding any region is written as version 2; one without is version 1,
unchanged, so readers of version 1 keep working on detector feeds. This reader reads both.

A per-tile result goes to the stream ``gw:{feed}:detections`` as the fields of
:func:`encode_tile` (``v``, ``frame``, ``scene``, ``tile``, ``tiles``, ``model``, ``count``,
``published``, ``done`` and ``geojson``), and the ``geojson`` text alone is PUBLISHed on the
channel of the same name. A scene result goes to ``gw:{feed}:scenes`` (:func:`encode_scene`),
its channel, and the key ``gw:{feed}:scene:<scene>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from groundwatch import frames
from groundwatch.errors import GroundwatchError

VERSION = 1
REGIONS_VERSION = 2  # results that hold region features (segmentation, contract 2)
VERSIONS = (VERSION, REGIONS_VERSION)

Box = tuple[float, float, float, float]
Ring = tuple[tuple[float, float], ...]


class DetectionFormatError(GroundwatchError):
    """A detection or scene message does not decode."""


@dataclass(frozen=True)
class Detection:
    """One detected object, georeferenced."""

    class_id: int
    label: str
    score: float
    box_px: Box  # tile pixels
    scene_box_px: Box  # scene pixels
    box_map: Box  # xmin, ymin, xmax, ymax in the scene CRS
    ring: tuple[tuple[float, float], ...]  # lon/lat of the corners (x1,y1) (x1,y2) (x2,y2) (x2,y1)
    center: tuple[float, float]  # lon, lat
    cut: bool = False
    model: str = ""
    scene: str = ""
    tile: int = 0
    frame: str = ""
    tiles: tuple[int, ...] = ()  # scene results: every tile that saw the object

    def with_origin(self, *, model: str, scene: str, tile: int, frame: str) -> Detection:
        return replace(self, model=model, scene=scene, tile=tile, frame=frame)


@dataclass(frozen=True)
class Region:
    """One segmented area of one class (contract 2), georeferenced.

    `rings_px` is exact (pixel edges in scene pixels, exterior then holes, not closed); `rings` is
    the simplified outline in lon/lat that the GeoJSON geometry holds."""

    class_id: int
    label: str
    score: float  # mean probability of the class over the region's pixels
    pixels: int
    area_m2: float
    rings_px: tuple[Ring, ...]
    rings: tuple[Ring, ...]
    model: str = ""
    scene: str = ""
    tile: int = 0
    frame: str = ""
    tiles: tuple[int, ...] = ()  # scene results: every tile the region lies in


@dataclass(frozen=True)
class TileResult:
    """What one frame yielded: zero or more detections."""

    feed: str
    frame: str
    scene: str
    tile: int
    tiles: int
    model: str
    crs: str
    window: tuple[int, int, int, int]
    acquired: str
    published_ms: int
    done_ms: int
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    source: str | None = None  # the frame's source: a file name, an s3:// URL, a STAC item's href
    regions: tuple[Region, ...] = field(default_factory=tuple)
    # the scene's affine transform (a..f), carried by results with regions: the scene's merge
    # places the polygons it unites with it
    transform: tuple[float, ...] | None = None
    simplify_px: float | None = None  # the tolerance its outlines were simplified at (and the scene's)
    # the smallest region of each class (by class id) the scene's merge keeps; () keeps every one
    min_region_px: tuple[int, ...] = ()
    # The JSON text of the features (features_json(detections)) once encoded: a consumer encodes
    # them when it checks a result and publishes it later with its done time. Not part of the format.
    encoded_features: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SceneResult:
    """A complete scene: every tile's detections, duplicates across overlaps merged."""

    feed: str
    scene: str
    tiles: int
    models: tuple[str, ...]
    crs: str
    acquired: str
    done_ms: int
    detections_in: int  # per-tile detections before merging
    detections: tuple[Detection, ...] = field(default_factory=tuple)
    source: str | None = None  # where the scene came from (its first tile's source)
    regions: tuple[Region, ...] = field(default_factory=tuple)


def class_totals(s: SceneResult) -> dict[str, dict[str, float]]:
    """What a scene result holds of each class, by class name: ``detections`` (a detector's merged
    detections), or ``regions`` and their ``area_m2`` (a segmenter's). The per-class figures of
    ``groundwatch status`` and of a STAC results item."""
    out: dict[str, dict[str, float]] = {}
    for d in s.detections:
        m = out.setdefault(d.label, {})
        m["detections"] = m.get("detections", 0) + 1
    for g in s.regions:
        m = out.setdefault(g.label, {})
        m["regions"] = m.get("regions", 0) + 1
        m["area_m2"] = m.get("area_m2", 0.0) + g.area_m2
    return out


def tile_result_of(feed: str, frame: frames.Frame, model: str, **outputs: Any) -> TileResult:
    """The result of `frame` run by `model`: the frame's identity, place and times copied once
    here, whatever the model yielded (`detections=` for contract 1, `regions=`, `transform=`,
    `simplify_px=` and `min_region_px=` for contract 2). Its done time is set at commit."""
    return TileResult(
        feed=feed,
        frame=frame.frame_id,
        scene=frame.scene,
        tile=frame.tile,
        tiles=frame.tiles,
        model=model,
        crs=frame.crs,
        window=tuple(frame.window),  # type: ignore[arg-type]
        acquired=frames.format_time(frame.acquired),
        published_ms=frame.published_ms,
        done_ms=0,
        source=frame.source,
        **outputs,
    )


def _r(x: float, digits: int) -> float:
    return round(float(x), digits)


def _box(b: Sequence[float], digits: int) -> list[float]:
    return [_r(v, digits) for v in b]


def _signed_area(ring: Sequence[Sequence[float]]) -> float:
    return (
        sum(
            ring[i][0] * ring[(i + 1) % len(ring)][1] - ring[(i + 1) % len(ring)][0] * ring[i][1]
            for i in range(len(ring))
        )
        / 2.0
    )


def feature(d: Detection) -> dict[str, Any]:
    ring = [[_r(lon, 7), _r(lat, 7)] for lon, lat in d.ring]
    if _signed_area(ring) < 0:  # RFC 7946: exterior rings are counter-clockwise
        ring = [ring[0], *ring[:0:-1]]
    ring.append(list(ring[0]))
    lons = [p[0] for p in ring]
    lats = [p[1] for p in ring]
    props: dict[str, Any] = {
        "class": d.label,
        "class_id": d.class_id,
        "score": _r(d.score, 4),
        "model": d.model,
        "scene": d.scene,
        "tile": d.tile,
        "frame": d.frame,
        "box_px": _box(d.box_px, 2),
        "scene_box_px": _box(d.scene_box_px, 2),
        "box_map": _box(d.box_map, 3),
        "center": [_r(d.center[0], 7), _r(d.center[1], 7)],
        "cut": d.cut,
    }
    if d.tiles:
        props["tiles"] = list(d.tiles)
    return {
        "type": "Feature",
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": props,
    }


def _shared_properties(p: Any) -> dict[str, Any]:
    """The properties a detection and a region feature both carry: what was found, by which model,
    in which tile of which scene."""
    return {
        "class_id": _int(p["class_id"]),
        "label": _str(p["class"]),
        "score": _float(p["score"]),
        "model": _str(p["model"]),
        "scene": _str(p["scene"]),
        "tile": _int(p["tile"]),
        "frame": _str(p["frame"]),
        "tiles": tuple(_int(t) for t in p.get("tiles", ())),
    }


def from_feature(f: Any) -> Detection:
    try:
        p = f["properties"]
        ring = tuple((_float(x), _float(y)) for x, y in f["geometry"]["coordinates"][0][:4])
        return Detection(
            **_shared_properties(p),
            box_px=_tuple4(p["box_px"]),
            scene_box_px=_tuple4(p["scene_box_px"]),
            box_map=_tuple4(p["box_map"]),
            ring=ring,
            center=(_float(p["center"][0]), _float(p["center"][1])),
            cut=bool(p.get("cut", False)),
        )
    except _DECODE_ERRORS as e:
        raise DetectionFormatError(f"not a groundwatch detection feature ({e!r}): {str(f)[:200]}") from e


def _closed_ring(ring: Ring, digits: int, counter_clockwise: bool) -> list[list[float]]:
    pts = [[_r(x, digits), _r(y, digits)] for x, y in ring]
    if pts and (_signed_area(pts) > 0) != counter_clockwise:
        pts = [pts[0], *pts[:0:-1]]
    return [*pts, list(pts[0])] if pts else []


def region_feature(g: Region) -> dict[str, Any]:
    rings = [_closed_ring(r, 7, i == 0) for i, r in enumerate(g.rings)]
    lons = [p[0] for p in rings[0]] if rings else [0.0]
    lats = [p[1] for p in rings[0]] if rings else [0.0]
    props: dict[str, Any] = {
        "kind": "region",
        "class": g.label,
        "class_id": g.class_id,
        "score": _r(g.score, 6),
        "pixels": g.pixels,
        "area_m2": _r(g.area_m2, 1),
        "model": g.model,
        "scene": g.scene,
        "tile": g.tile,
        "frame": g.frame,
        "rings_px": [[[_r(x, 3), _r(y, 3)] for x, y in r] for r in g.rings_px],
    }
    if g.tiles:
        props["tiles"] = list(g.tiles)
    return {
        "type": "Feature",
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": props,
    }


def _ring(v: Any, closed: bool) -> Ring:
    if not isinstance(v, list | tuple):
        raise TypeError(f"a ring is a list of points, got {v!r}"[:200])
    pts = tuple((_float(p[0]), _float(p[1])) for p in v)
    if closed and len(pts) > 1 and pts[0] == pts[-1]:
        pts = pts[:-1]
    return pts


def from_region_feature(f: Any) -> Region:
    try:
        p = f["properties"]
        return Region(
            **_shared_properties(p),
            pixels=_int(p["pixels"]),
            area_m2=_float(p["area_m2"]),
            rings_px=tuple(_ring(r, False) for r in p["rings_px"]),
            rings=tuple(_ring(r, True) for r in f["geometry"]["coordinates"]),
        )
    except _DECODE_ERRORS as e:
        raise DetectionFormatError(f"not a groundwatch region feature ({e!r}): {str(f)[:200]}") from e


def _is_region(f: Any) -> bool:
    return (
        isinstance(f, dict)
        and isinstance(f.get("properties"), dict)
        and f["properties"].get("kind") == "region"
    )


def _split(features: list[Any]) -> tuple[tuple[Detection, ...], tuple[Region, ...]]:
    dets = tuple(from_feature(f) for f in features if not _is_region(f))
    regions = tuple(from_region_feature(f) for f in features if _is_region(f))
    return dets, regions


# What malformed JSON documents raise on the way in; each becomes a DetectionFormatError.
_DECODE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError, RecursionError)


def _float(v: Any) -> float:
    """A JSON number (not a bool, not a string that float() would take)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError(f"expected a number, got {v!r}"[:200])
    return float(v)


def _int(v: Any) -> int:
    """A JSON integer (an integral float such as 3.0 is accepted; inf and nan are not)."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}"[:200])
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}"[:200])
    return v


def _tuple4(v: Any) -> Box:
    if not isinstance(v, list | tuple) or len(v) != 4:
        raise ValueError(f"a box has 4 numbers, got {v!r}"[:200])
    return (_float(v[0]), _float(v[1]), _float(v[2]), _float(v[3]))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# --- per-tile results ------------------------------------------------------------------------


def tile_header(t: TileResult) -> dict[str, Any]:
    """The ``groundwatch`` member of a per-tile result."""
    return {
        "v": REGIONS_VERSION if t.regions else VERSION,
        "kind": "tile",
        "feed": t.feed,
        "frame": t.frame,
        "scene": t.scene,
        "tile": t.tile,
        "tiles": t.tiles,
        "model": t.model,
        "crs": t.crs,
        "window": list(t.window),
        "acquired": t.acquired,
        "published_ms": t.published_ms,
        "done_ms": t.done_ms,
        "count": len(t.detections) + len(t.regions),
        **({"source": t.source} if t.source is not None else {}),
        **({"transform": list(t.transform)} if t.transform is not None else {}),
        **({"simplify_px": t.simplify_px} if t.simplify_px is not None else {}),
        **({"min_region_px": list(t.min_region_px)} if t.min_region_px else {}),
    }


def _features(t: TileResult) -> list[dict[str, Any]]:
    return [feature(d) for d in t.detections] + [region_feature(g) for g in t.regions]


def tile_geojson(t: TileResult) -> dict[str, Any]:
    return {"type": "FeatureCollection", "groundwatch": tile_header(t), "features": _features(t)}


def features_json(t: TileResult) -> str:
    """The JSON text of the ``features`` list of `t` (its detections, then its regions)."""
    return _dumps(_features(t))


def tile_json(t: TileResult) -> str:
    """The JSON text published on the detections channel (and stored per tile of a scene):
    ``tile_geojson(t)`` as compact JSON, its features' text taken from `encoded_features` when set."""
    features = t.encoded_features if t.encoded_features is not None else features_json(t)
    return f'{{"type":"FeatureCollection","groundwatch":{_dumps(tile_header(t))},"features":{features}}}'


def encode_tile(t: TileResult, text: str | None = None) -> dict[str, str]:
    """The XADD field map of a per-tile result on ``gw:{feed}:detections`` (`text`: its tile_json)."""
    return {
        "v": str(REGIONS_VERSION if t.regions else VERSION),
        "frame": t.frame,
        "scene": t.scene,
        "tile": str(t.tile),
        "tiles": str(t.tiles),
        "model": t.model,
        "count": str(len(t.detections) + len(t.regions)),
        "published": str(t.published_ms),
        "done": str(t.done_ms),
        "geojson": tile_json(t) if text is None else text,
    }


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _load(text: str | bytes, kind: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
        header = doc["groundwatch"]
        if not isinstance(doc, dict) or not isinstance(header, dict):
            raise TypeError("a result is a JSON object with a 'groundwatch' object")
        if not isinstance(doc.get("features"), list):
            raise TypeError("a result has a 'features' list")
    except _DECODE_ERRORS as e:
        raise DetectionFormatError(f"not a groundwatch {kind} result: {e!r}"[:300]) from e
    if header.get("v") not in VERSIONS or isinstance(header.get("v"), bool):
        raise DetectionFormatError(
            f"unsupported detection format version {header.get('v')!r}; this reads "
            f"{', '.join(map(str, VERSIONS))}"
        )
    if header.get("kind") != kind:
        raise DetectionFormatError(f"expected a {kind} result, got kind {header.get('kind')!r}")
    return dict(doc)


def decode_tile(source: str | bytes | Mapping[Any, Any]) -> TileResult:
    """A per-tile result from its JSON text or its stream entry's field map.

    DetectionFormatError is the only exception it raises, whatever `source` holds.
    """
    if isinstance(source, Mapping):
        fields = {_text(k): v for k, v in source.items()}
        if "geojson" not in fields:
            raise DetectionFormatError(f"not a detections entry: fields {sorted(fields)}")
        source = fields["geojson"]
    doc = _load(source, "tile")  # type: ignore[arg-type]
    h = doc["groundwatch"]
    try:
        dets, regions = _split(doc["features"])
        return TileResult(
            feed=_str(h["feed"]),
            frame=_str(h["frame"]),
            scene=_str(h["scene"]),
            tile=_int(h["tile"]),
            tiles=_int(h["tiles"]),
            model=_str(h["model"]),
            crs=_str(h["crs"]),
            window=_window(h["window"]),
            acquired=_str(h["acquired"]),
            published_ms=_int(h["published_ms"]),
            done_ms=_int(h["done_ms"]),
            detections=dets,
            source=None if h.get("source") is None else _str(h["source"]),
            regions=regions,
            transform=None if h.get("transform") is None else tuple(_float(x) for x in h["transform"][:6]),
            simplify_px=None if h.get("simplify_px") is None else _float(h["simplify_px"]),
            min_region_px=tuple(_int(x) for x in h.get("min_region_px") or ()),
        )
    except _DECODE_ERRORS as e:
        raise DetectionFormatError(f"tile result header is incomplete: {e!r}") from e


def _window(v: Any) -> tuple[int, int, int, int]:
    if not isinstance(v, list | tuple) or len(v) != 4:
        raise ValueError(f"a window has 4 integers, got {v!r}"[:200])
    return (_int(v[0]), _int(v[1]), _int(v[2]), _int(v[3]))


# --- scene results ---------------------------------------------------------------------------


def scene_geojson(s: SceneResult) -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "groundwatch": {
            "v": REGIONS_VERSION if s.regions else VERSION,
            "kind": "scene",
            "feed": s.feed,
            "scene": s.scene,
            "tiles": s.tiles,
            "models": list(s.models),
            "crs": s.crs,
            "acquired": s.acquired,
            "done_ms": s.done_ms,
            "detections_in": s.detections_in,
            "count": len(s.detections) + len(s.regions),
            **({"source": s.source} if s.source is not None else {}),
        },
        "features": [feature(d) for d in s.detections] + [region_feature(g) for g in s.regions],
    }


def scene_json(s: SceneResult) -> str:
    return _dumps(scene_geojson(s))


def encode_scene(s: SceneResult, text: str | None = None) -> dict[str, str]:
    """The XADD field map of a scene result on ``gw:{feed}:scenes`` (`text`: its scene_json)."""
    return {
        "v": str(REGIONS_VERSION if s.regions else VERSION),
        "scene": s.scene,
        "tiles": str(s.tiles),
        "models": ",".join(s.models),
        "count": str(len(s.detections) + len(s.regions)),
        "done": str(s.done_ms),
        "geojson": scene_json(s) if text is None else text,
    }


def decode_scene(source: str | bytes | Mapping[Any, Any]) -> SceneResult:
    """A scene result from its JSON text (the stored key, the channel) or its stream entry.

    DetectionFormatError is the only exception it raises, whatever `source` holds.
    """
    if isinstance(source, Mapping):
        fields = {_text(k): v for k, v in source.items()}
        if "geojson" not in fields:
            raise DetectionFormatError(f"not a scenes entry: fields {sorted(fields)}")
        source = fields["geojson"]
    doc = _load(source, "scene")  # type: ignore[arg-type]
    h = doc["groundwatch"]
    try:
        dets, regions = _split(doc["features"])
        return SceneResult(
            feed=_str(h["feed"]),
            scene=_str(h["scene"]),
            tiles=_int(h["tiles"]),
            models=tuple(_str(m) for m in h["models"]),
            crs=_str(h["crs"]),
            acquired=_str(h["acquired"]),
            done_ms=_int(h["done_ms"]),
            detections_in=_int(h["detections_in"]),
            detections=dets,
            source=None if h.get("source") is None else _str(h["source"]),
            regions=regions,
        )
    except _DECODE_ERRORS as e:
        raise DetectionFormatError(f"scene result header is incomplete: {e!r}") from e
