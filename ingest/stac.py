"""STAC items in, STAC items out: scenes catalogued as items whose assets are (C)OGs.

An item (a local or ``s3://`` JSON file) is ingested as one scene: its image asset (``--asset``,
default the first ``image/tiff; application=geotiff`` asset) is read where it lies, the item id
is the scene id, the item's ``datetime`` (or ``start_datetime``) the acquisition time, and the
item's own location is the frames' ``source``, so every result links back to it. A static
catalogue or collection is walked by its ``child`` and ``item`` links.

Results go back as STAC items (:func:`write_results`): one per scene, the scene's GeoJSON
(its detections, or a segmentation model's regions) as its ``detections`` asset, per-class totals
(regions with their area in m²) in its properties, ``derived_from`` the source item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from groundwatch.detections import SceneResult, class_totals, scene_json
from groundwatch.frames import FrameError, check_scene_id
from groundwatch.settings import Settings
from ingest import objectstore
from ingest.errors import InputError
from ingest.scene import Progress, ingest_file, scene_id_for
from ingest.scene import SceneResult as IngestResult

GEOTIFF = "image/tiff; application=geotiff"
MAX_JSON_BYTES = 16 * 1024 * 1024  # a STAC document larger than this is not an item
STAC_VERSION = "1.0.0"


@dataclass(frozen=True)
class Item:
    """What ingest takes from a STAC item."""

    id: str
    location: str  # where the item itself is (a path or an s3:// URL)
    image: str  # the chosen asset, resolved (a path or an s3:// URL)
    asset: str  # the asset's key in the item
    acquired: datetime | None
    doc: dict[str, Any]


def _read_json(location: str, settings: Settings) -> dict[str, Any]:
    try:
        if objectstore.is_s3(location):
            s3 = objectstore.client(settings)
            raw = objectstore.read_bytes(s3, objectstore.parse(location), MAX_JSON_BYTES)
        else:
            p = Path(location)
            if not p.is_file():
                raise InputError(f"{location}: no such file; check the path")
            if p.stat().st_size > MAX_JSON_BYTES:
                raise InputError(f"{location}: larger than {MAX_JSON_BYTES} bytes; not a STAC document")
            raw = p.read_bytes()
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{location}: not JSON ({e}); a STAC item is a JSON document") from e
    if not isinstance(doc, dict):
        raise InputError(f"{location}: a STAC document is a JSON object, got {type(doc).__name__}")
    return doc


def is_stac(location: str | os.PathLike[str]) -> bool:
    """A .json location is taken as a STAC document (an item, a collection or a catalogue)."""
    return str(location).lower().endswith(".json")


def _resolve(base: str, href: str) -> str:
    """An href relative to the document at `base`, as a path or an s3:// URL."""
    if objectstore.is_s3(href) or os.path.isabs(href):
        return href
    if href.startswith(("http://", "https://", "file://")):
        if href.startswith("file://"):
            return href[len("file://") :]
        raise InputError(
            f"{base}: asset href {href!r} is served over HTTP; groundwatch reads local files and s3:// "
            "objects: copy the asset to a bucket, or give an s3:// href"
        )
    if objectstore.is_s3(base):
        return str(objectstore.parse(base).sibling(href))
    return os.path.normpath(os.path.join(os.path.dirname(base), href))


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def read_item(location: str, settings: Settings, asset: str | None = None) -> Item:
    """Parse a STAC item with pystac and pick its image asset; InputError says what is wrong."""
    import pystac

    doc = _read_json(location, settings)
    if doc.get("type") != "Feature":
        raise InputError(
            f"{location}: not a STAC item (type {doc.get('type')!r}); give an item, or walk a catalogue "
            "or collection with --collection"
        )
    try:
        item = pystac.Item.from_dict(doc, href=location, preserve_dict=True)
    except Exception as e:  # pystac raises KeyError, TypeError, STACTypeError... for a bad item
        raise InputError(f"{location}: not a valid STAC item ({type(e).__name__}: {e})") from e
    if asset is not None:
        if asset not in item.assets:
            raise InputError(
                f"{location}: item {item.id!r} has no asset {asset!r}; its assets: {', '.join(item.assets) or 'none'}"
            )
        chosen = asset
    else:
        tiffs = [k for k, a in item.assets.items() if (a.media_type or "").startswith(GEOTIFF)]
        if not tiffs:
            raise InputError(
                f"{location}: item {item.id!r} has no {GEOTIFF!r} asset; name the image with --asset "
                f"(its assets: {', '.join(item.assets) or 'none'})"
            )
        chosen = tiffs[0]
    raw_acquired = item.properties.get("datetime") or item.properties.get("start_datetime")
    acquired = _parse_time(raw_acquired)
    if raw_acquired and acquired is None:
        raise InputError(f"{location}: item {item.id!r} has a datetime {raw_acquired!r} that is not RFC 3339")
    return Item(
        id=item.id,
        location=location,
        image=_resolve(location, item.assets[chosen].href),
        asset=chosen,
        acquired=acquired,
        doc=doc,
    )


def scene_for(item_id: str) -> str:
    """The scene id of an item: its id when that is a valid scene id, else made one."""
    try:
        return check_scene_id(item_id)
    except FrameError:
        return scene_id_for(item_id)


def ingest_item(
    client: Any,
    settings: Settings,
    location: str,
    *,
    asset: str | None = None,
    force: bool = False,
    on_progress: Progress | None = None,
) -> IngestResult:
    """Ingest a STAC item's image as the scene named by the item's id."""
    item = read_item(location, settings, asset)
    return ingest_file(
        client,
        settings,
        item.image,
        scene=scene_for(item.id),
        force=force,
        on_progress=on_progress,
        acquired=item.acquired,
        source=item.location,
    )


def walk(location: str, settings: Settings, *, max_documents: int = 100_000) -> Iterator[str]:
    """The locations of every item of a static catalogue or collection (or the item itself).

    Follows ``child`` and ``item`` links, each document once (a cycle is not followed twice).
    """
    seen: set[str] = set()
    todo = [location]
    while todo:
        here = todo.pop(0)
        if here in seen:
            continue
        seen.add(here)
        if len(seen) > max_documents:
            raise InputError(
                f"{location}: more than {max_documents} STAC documents; walk a smaller catalogue"
            )
        doc = _read_json(here, settings)
        if doc.get("type") == "Feature":
            yield here
            continue
        if doc.get("type") not in ("Catalog", "Collection"):
            raise InputError(f"{here}: not a STAC catalogue, collection or item (type {doc.get('type')!r})")
        for link in doc.get("links", ()):
            if (
                isinstance(link, dict)
                and link.get("rel") in ("child", "item")
                and isinstance(link.get("href"), str)
            ):
                todo.append(_resolve(here, link["href"]))


# --- results as STAC items ---------------------------------------------------------------------


def _footprint(s: SceneResult) -> tuple[dict[str, Any] | None, list[float] | None]:
    """The bbox of the scene's detections and regions (lon/lat) as geometry, when the source item
    gives none."""
    points = [p for d in s.detections for p in d.ring] + [p for g in s.regions for p in g.rings[0]]
    if not points:
        return None, None
    lons, lats = [p[0] for p in points], [p[1] for p in points]
    w, so, e, n = min(lons), min(lats), max(lons), max(lats)
    ring = [[w, so], [e, so], [e, n], [w, n], [w, so]]
    return {"type": "Polygon", "coordinates": [ring]}, [w, so, e, n]


def result_item(s: SceneResult, source_doc: dict[str, Any] | None, geojson_href: str) -> dict[str, Any]:
    """A STAC item for one scene result: its detections as an asset, linked to its source item."""
    if source_doc is not None and "geometry" in source_doc:
        geometry, bbox = source_doc.get("geometry"), source_doc.get("bbox")
    else:
        geometry, bbox = _footprint(s)
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "id": f"{s.scene}-detections",
        "geometry": geometry,
        "properties": {
            "datetime": s.acquired,
            "groundwatch:feed": s.feed,
            "groundwatch:scene": s.scene,
            "groundwatch:models": list(s.models),
            "groundwatch:count": len(s.detections) + len(s.regions),
            "groundwatch:tiles": s.tiles,
            # per class: detections, or regions and their area in square metres
            "groundwatch:classes": {
                label: {k: (round(v, 1) if k == "area_m2" else int(v)) for k, v in totals.items()}
                for label, totals in sorted(class_totals(s).items())
            },
        },
        "links": [],
        "assets": {
            "detections": {
                "href": geojson_href,
                "type": "application/geo+json",
                "title": f"{'regions' if s.regions else 'detections'} of scene {s.scene}",
                "roles": ["data"],
            }
        },
    }
    if bbox is not None:
        item["bbox"] = bbox
    if s.source:
        item["links"].append({"rel": "derived_from", "href": s.source, "type": "application/json"})
    return item


def write_results(scenes: list[SceneResult], directory: Path, settings: Settings) -> list[Path]:
    """Write each scene result as ``DIR/<scene>/<scene>-detections.json`` + ``<scene>.geojson``.

    The item is checked with pystac before it is written. A scene whose source is a STAC item
    takes that item's geometry and bbox; others get the bbox of their detections.
    """
    import pystac

    out = []
    for s in scenes:
        folder = directory / s.scene
        folder.mkdir(parents=True, exist_ok=True)
        geojson = folder / f"{s.scene}.geojson"
        geojson.write_text(scene_json(s))
        source_doc = None
        if s.source and is_stac(s.source):
            try:
                source_doc = _read_json(s.source, settings)
            except (InputError, objectstore.ObjectStoreError):
                source_doc = None  # the link is still written; the footprint falls back
        doc = result_item(s, source_doc, f"./{geojson.name}")
        pystac.Item.from_dict(doc)  # raises on a malformed item: a bug here, not the user's
        path = folder / f"{s.scene}-detections.json"
        path.write_text(json.dumps(doc, indent=2))
        out.append(path)
    return out
