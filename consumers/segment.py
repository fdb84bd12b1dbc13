"""Segmentation (contract 2) in the consumers: a tile's mask to georeferenced regions, and the
regions of a complete scene merged across tiles.

The geometry is the core's (:mod:`groundwatch.regions`: decoding, the owned core, vectorising,
the merge, simplifying); this module adds what needs the scene's CRS: map coordinates (the
frame's affine transform), lon/lat (:func:`consumers.geo.to_lonlat`) and areas in square metres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from consumers import ConsumerError
from consumers.geo import _crs, label_of, to_lonlat
from consumers.reading import Entry
from groundwatch import geometry, regions
from groundwatch.detections import Region, TileResult, tile_json, tile_result_of
from groundwatch.frames import Frame, PixelWindow
from groundwatch.geometry import OutputContractError
from groundwatch.modelmeta import ModelMetadata

EARTH_RADIUS_M = 6_371_008.8  # mean radius: areas of geographic-CRS scenes are spherical


def owned(frame: Frame) -> PixelWindow:
    """The part of the frame's window it vectorises: its core in the scene's tile grid (the frame's
    ``grid`` field), or the whole window when the frame carries no grid (the merge then unites
    what overlapping tiles both saw)."""
    if frame.grid is None:
        return frame.window
    try:
        return geometry.core_window(frame.window, *frame.grid)
    except ValueError as e:
        raise ConsumerError(
            f"window {tuple(frame.window)} is not a tile of its grid {tuple(frame.grid)}: {e}"
        ) from e


def tile_regions(
    frame: Frame, out: np.ndarray, meta: ModelMetadata, model: str, simplify_px: float
) -> tuple[Region, ...]:
    """The regions one frame's output yields. OutputContractError (the model's fault) for an output
    that breaks contract 2; ConsumerError (the frame's) when it cannot be placed on the map."""
    _c, tile_h, tile_w = frame.shape
    ids, prob = regions.decode_mask(out, meta, tile_h, tile_w)
    pieces = regions.vectorise(ids, prob, frame.window, owned(frame), meta.background, frame.tile)
    made = georeference(pieces, frame.transform, frame.crs, meta.classes, simplify_px)
    return tuple(
        replace(g, model=model, scene=frame.scene, tile=frame.tile, frame=frame.frame_id, tiles=())
        for g in made
    )


def georeference(
    pieces: Sequence[regions.Piece],
    transform: Sequence[float],
    crs: str,
    labels: Sequence[str],
    simplify_px: float,
) -> list[Region]:
    """Regions of exact pieces: simplified outline in lon/lat (one warp for all vertices), area."""
    if not pieces:
        return []
    simple = [regions.simplify(p.rings_px, simplify_px) for p in pieces]
    a, b, c, d, e, f = transform[:6]
    flat = np.array([pt for rings in simple for ring in rings for pt in ring], dtype=np.float64).reshape(
        -1, 2
    )
    lon, lat = to_lonlat(crs, a * flat[:, 0] + b * flat[:, 1] + c, d * flat[:, 0] + e * flat[:, 1] + f)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ConsumerError(
            f"regions fall outside where {crs[:80]!r} converts to lon/lat (check the transform)"
        )
    pixel_m2 = _pixel_area_m2(crs, transform)
    out, k = [], 0
    for p, rings in zip(pieces, simple, strict=True):
        lonlat = []
        for ring in rings:
            lonlat.append(tuple((float(lon[k + i]), float(lat[k + i])) for i in range(len(ring))))
            k += len(ring)
        area = p.pixels * pixel_m2 if pixel_m2 is not None else _spherical_area_m2(lonlat)
        out.append(
            Region(
                class_id=p.class_id,
                label=label_of(p.class_id, labels),
                score=p.score,
                pixels=p.pixels,
                area_m2=area,
                rings_px=p.rings_px,
                rings=tuple(lonlat),
                tiles=p.tiles,
            )
        )
    return out


def merge_scene(parts: Sequence[TileResult]) -> list[Region]:
    """A scene's regions, pieces of one feature across tile borders united, and those smaller
    than their class's minimum dropped (regions.merge: judged by the united feature's pixels).

    Regions that stand alone are published as their tile published them; united ones are
    simplified (at the tolerance the tiles were) and georeferenced again with the scene's
    transform, both from the tiles' results. The minimum is the tiles' ``min_region_px``, the
    smallest per class where they differ (a model switch mid-scene: no model's region is lost),
    none while a tile of the scene has no segmentation result (:func:`scene_minimum`).
    ConsumerError when no result carries a transform."""
    by_piece: dict[regions.Piece, Region] = {}
    pieces: list[regions.Piece] = []
    for part in parts:
        for g in part.regions:
            piece = regions.Piece(g.class_id, g.rings_px, g.pixels, g.score * g.pixels, (part.tile,))
            by_piece[piece] = g
            pieces.append(piece)
    if not pieces:
        return []
    located = next((p for p in parts if p.regions and p.transform is not None), None)
    out: list[Region] = []
    for merged in regions.merge(pieces, scene_minimum(parts)):
        alone = by_piece.get(merged)
        if alone is not None:
            out.append(replace(alone, tiles=merged.tiles))
            continue
        if located is None or located.transform is None:
            raise ConsumerError(
                "tile results with regions carry no transform; cannot place the merged regions"
            )
        simplify_px = located.simplify_px if located.simplify_px is not None else 0.0
        (g,) = georeference([merged], located.transform, located.crs, (), simplify_px)
        first = next(
            r for p in parts if p.tile == merged.tiles[0] for r in p.regions if r.class_id == merged.class_id
        )
        out.append(
            replace(
                g, label=first.label, model=first.model, scene=first.scene, tile=first.tile, frame=first.frame
            )
        )
    return out


def scene_minimum(parts: Sequence[TileResult]) -> tuple[int, ...]:
    """The per-class minimum region the scene's merge applies: the smallest of its tiles'
    ``min_region_px``; () (keep every region) unless every tile of the scene is a segmentation
    result that carries one. A tile that carries none keeps everything; a tile that is not among
    `parts` (its stored result did not decode) or has no regions to give (a detector ran it: a
    model switch mid-scene) leaves the features that cross its core in pieces, and a piece's size
    says nothing of its feature's."""
    segmented = [p for p in parts if p.simplify_px is not None]  # contract-2 results
    if not segmented or len({p.tile for p in segmented}) < segmented[0].tiles:
        return ()
    minima = [p.min_region_px for p in segmented]
    if not all(minima):
        return ()
    return tuple(min(m[c] if c < len(m) else 0 for m in minima) for c in range(max(map(len, minima))))


def _pixel_area_m2(crs: str, transform: Sequence[float]) -> float | None:
    """Square metres per pixel in a projected CRS; None for a geographic one (areas vary)."""
    a, b, _c, d, e, _f = transform[:6]
    src = _crs(crs)
    if src.is_geographic:
        return None
    _name, factor = src.linear_units_factor
    return abs(a * e - b * d) * float(factor) ** 2


def _spherical_area_m2(rings: Sequence[Sequence[tuple[float, float]]]) -> float:
    """The area of lon/lat rings (exterior minus holes) on a sphere of the Earth's mean radius."""

    def ring_area(ring: Sequence[tuple[float, float]]) -> float:
        total = 0.0
        for (lon1, lat1), (lon2, lat2) in zip(ring, [*ring[1:], ring[0]], strict=True):
            total += math.radians(lon2 - lon1) * (
                2 + math.sin(math.radians(lat1)) + math.sin(math.radians(lat2))
            )
        return abs(total) * EARTH_RADIUS_M**2 / 2

    if not rings:
        return 0.0
    return max(0.0, ring_area(rings[0]) - sum(ring_area(r) for r in rings[1:]))


def tile_result(
    feed: str,
    entry: Entry,
    out: np.ndarray,
    meta: ModelMetadata,
    version: str,
    simplify_px: float,
    min_region_px: Sequence[int] = (),
) -> TileResult | tuple[str, bool]:
    """The frame's result, or (reason, poison). It holds every piece its core yields, specks
    too: a piece's size says nothing of its feature's, so `min_region_px` (per class id,
    modelmeta.region_minimum) rides in the result for the scene's merge to apply. An output that
    breaks contract 2 is the frame's failure (retried, as a contract-1 output that does not
    decode); a frame that cannot be placed on the map or encoded is poison. Any exception ends here: nothing a model returns stops the feed."""
    f = entry.frame
    assert f is not None
    try:
        found = tile_regions(f, out, meta, version, simplify_px)
    except OutputContractError as err:
        return f"model {version}: {err}", False
    except ConsumerError as err:
        return f"cannot georeference: {err}", True
    except Exception as err:
        return f"model {version}: output does not vectorise ({type(err).__name__}: {err})", False
    try:
        result = tile_result_of(
            feed,
            f,
            version,
            regions=found,
            transform=tuple(f.transform),
            simplify_px=simplify_px,
            min_region_px=tuple(min_region_px),
        )
        tile_json(result)  # what the commit will encode: a NaN or inf coordinate fails here
    except Exception as err:
        return f"cannot encode its result: {type(err).__name__}: {err}", True
    return result
