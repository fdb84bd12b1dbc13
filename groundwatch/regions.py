"""Segmentation masks to polygons, and the merge of a scene's polygons across tiles (contract 2).

The one home of what consumers and evaluation must do the same way with a segmentation model's
output (pure: numpy, rasterio.features and shapely; no Redis, no CRS):

- **Decoding** (:func:`decode_mask`): the output of one tile, ``[1, K, H, W]`` class probabilities
  or ``[1, 1, H, W]`` class ids, checked against the model's metadata, to a class-id mask and the
  probability of each pixel's class.
- **Vectorising** (:func:`vectorise`): the tile's *owned core* (:func:`groundwatch.geometry.core_window`:
  the pixels whose nearest tile centre is this tile's) cut out of the mask, each 4-connected
  region of one class (the background excluded) turned into one polygon by
  ``rasterio.features.shapes``, exact, in scene pixels (pixel edges), with its pixel count and
  the sum of its pixels' probabilities.
- **The region merge** (:func:`merge`): the cores of a scene's tiles cover it once, so a feature
  that crosses tile borders arrives as pieces, one per core, that share edges exactly. Pieces of
  one class that share a boundary of positive length (or overlap, for frames that carry no tile
  grid) are united, so one connected feature gives exactly one polygon; its pixels and
  probability sums add up, so its score is the mean probability over all its pixels.
- **The minimum region area** (``min_region_px`` of :func:`merge`): a feature smaller than its
  class's minimum (a speck: a rain cell read as land) is dropped, judged by its merged pixel
  count, never by a tile's piece of it (a coast whose corner lies in one tile's core is one
  feature of the whole coast's size). So it is applied where the merge is, and only there.
- **Simplifying** (:func:`simplify`): Douglas-Peucker at a tolerance in pixels, topology kept,
  applied to what is published; the merge always works on the exact pieces.

Why pieces are merged rather than a scene mask stitched and vectorised at completion: the
tiles' results stay small and final (a subscriber gets each tile's polygons at once), scene
completion never holds a scene-sized raster (scenes are tens of thousands of pixels across), and
only the pieces that touch a core border take part in a union.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from groundwatch.frames import PixelWindow
from groundwatch.geometry import OutputContractError
from groundwatch.modelmeta import ModelMetadata

# Probabilities may miss [0, 1] by float rounding of a softmax; more than this is a broken model.
PROBABILITY_SLACK = 1e-3

Ring = tuple[tuple[float, float], ...]


class Piece(NamedTuple):
    """One polygon of one class: exact rings in scene pixels (exterior first, not closed)."""

    class_id: int
    rings_px: tuple[Ring, ...]
    pixels: int
    prob_sum: float
    tiles: tuple[int, ...]

    @property
    def score(self) -> float:
        return self.prob_sum / self.pixels if self.pixels else 0.0


def decode_mask(out: Any, meta: ModelMetadata, tile_h: int, tile_w: int) -> tuple[np.ndarray, np.ndarray]:
    """(class ids [H, W] int32, probability of that class [H, W] float32) of one tile's output.

    OutputContractError, with what was expected, for a wrong rank, batch, class count or size, a
    value that is not finite, probabilities outside [0, 1] or class ids outside the classes."""
    arr = np.asarray(out)
    k = 1 if meta.output == "class_ids" else len(meta.classes)
    what = "[1, 1, H, W] class ids" if k == 1 else f"[1, {k}, H, W] class probabilities"
    if arr.ndim != 4 or arr.shape[0] != 1 or arr.shape[1] != k or arr.shape[2:] != (tile_h, tile_w):
        raise OutputContractError(
            f"returned {arr.dtype} {list(arr.shape)} for a [1, C, {tile_h}, {tile_w}] tile; contract 2 with "
            f"output {meta.output!r} is {what} of the tile's size (docs/models.md)"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise OutputContractError("returned NaN or infinite values; contract 2 wants finite scores or ids")
    if k == 1:
        ids = arr[0, 0]
        if arr.dtype.kind == "f" and not (ids == np.round(ids)).all():
            raise OutputContractError("returned class ids that are not integers (output 'class_ids')")
        ids = ids.astype(np.int64)
        if ids.min() < 0 or ids.max() >= len(meta.classes):
            raise OutputContractError(
                f"returned class ids outside 0..{len(meta.classes) - 1} (it declares {len(meta.classes)} classes)"
            )
        return ids.astype(np.int32), np.ones(ids.shape, dtype=np.float32)
    scores = arr[0].astype(np.float32, copy=False)
    if scores.min() < -PROBABILITY_SLACK or scores.max() > 1 + PROBABILITY_SLACK:
        raise OutputContractError(
            "returned scores outside [0, 1]; contract 2 wants probabilities (apply a softmax inside the model)"
        )
    ids = scores.argmax(axis=0).astype(np.int32)
    prob = np.take_along_axis(scores, ids[None].astype(np.int64), axis=0)[0]
    return ids, np.clip(prob, 0.0, 1.0).astype(np.float32)


def vectorise(
    ids: np.ndarray,
    prob: np.ndarray,
    window: PixelWindow,
    core: PixelWindow,
    background: int,
    tile: int = 0,
) -> list[Piece]:
    """The pieces of one tile: every 4-connected region of one class in its core, the background
    excepted, as exact polygons in scene pixels. `window`: the tile's valid window (scene pixels),
    `core`: the part of it the tile owns. Deterministic (the order of rasterio's scan)."""
    from rasterio import features
    from rasterio.transform import Affine

    c0, r0 = core.col_off - window.col_off, core.row_off - window.row_off
    if c0 < 0 or r0 < 0 or c0 + core.width > window.width or r0 + core.height > window.height:
        raise ValueError(f"core {tuple(core)} does not lie inside the window {tuple(window)}")
    part = np.ascontiguousarray(ids[r0 : r0 + core.height, c0 : c0 + core.width], dtype=np.int32)
    p = prob[r0 : r0 + core.height, c0 : c0 + core.width]
    keep = part != background
    if not keep.any():
        return []
    to_scene = Affine.translation(core.col_off, core.row_off)
    shapes = list(features.shapes(part, mask=keep, connectivity=4, transform=to_scene))
    # Each polygon's own pixels: burn polygon i + 1 back (pixel-aligned, so exactly its pixels).
    labels = features.rasterize(
        ((geom, i + 1) for i, (geom, _v) in enumerate(shapes)),
        out_shape=part.shape,
        transform=to_scene,
        fill=0,
        dtype="int32",
    )
    counts = np.bincount(labels.ravel(), minlength=len(shapes) + 1)
    sums = np.bincount(labels.ravel(), weights=p.ravel().astype(np.float64), minlength=len(shapes) + 1)
    pieces = []
    for i, (geom, value) in enumerate(shapes):
        rings = tuple(tuple((float(x), float(y)) for x, y in ring[:-1]) for ring in geom["coordinates"])
        pieces.append(Piece(int(value), rings, int(counts[i + 1]), float(sums[i + 1]), (tile,)))
    return pieces


def polygon(rings_px: Sequence[Ring]) -> Any:
    """The shapely Polygon of exact rings (exterior first)."""
    from shapely.geometry import Polygon

    return Polygon(rings_px[0], list(rings_px[1:]))


def _rings(poly: Any) -> tuple[Ring, ...]:
    def ring(coords: Any) -> Ring:
        pts = [(float(x), float(y)) for x, y in coords]
        return tuple(pts[:-1] if len(pts) > 1 and pts[0] == pts[-1] else pts)

    return (ring(poly.exterior.coords), *(ring(h.coords) for h in poly.interiors))


def merge(pieces: Sequence[Piece], min_region_px: Sequence[int] = ()) -> list[Piece]:
    """Unite the pieces of each class that share a boundary of positive length or overlap (see
    the module doc): one piece per connected feature, ordered by class, then top-left corner.

    Pieces that touch only at a corner stay apart (rasterio's shapes are 4-connected too).
    `min_region_px`: the smallest feature of each class id that is kept (its merged pixel
    count); a class beyond its end, or an empty one (the default), keeps every feature. It
    judges whole features only when `pieces` are all of a scene's pieces."""
    from shapely import STRtree, unary_union

    out: list[Piece] = []
    for class_id in sorted({p.class_id for p in pieces}):
        mine = [p for p in pieces if p.class_id == class_id]
        polys = [polygon(p.rings_px) for p in mine]
        parent = list(range(len(mine)))
        root = _finder(parent)

        tree = STRtree(polys)
        for i, j in zip(*tree.query(polys, predicate="intersects"), strict=True):
            i, j = int(i), int(j)
            if i >= j or root(i) == root(j):
                continue
            shared = polys[i].intersection(polys[j])
            if shared.length > 0 or shared.area > 0:
                parent[root(j)] = root(i)
        groups: dict[int, list[int]] = {}
        for i in range(len(mine)):
            groups.setdefault(root(i), []).append(i)
        for members in groups.values():
            if len(members) == 1:
                out.append(mine[members[0]])
                continue
            united = unary_union([polys[i] for i in members])
            parts = [united] if united.geom_type == "Polygon" else sorted(united.geoms, key=lambda g: -g.area)
            pixels = sum(mine[i].pixels for i in members)
            prob = sum(mine[i].prob_sum for i in members)
            tiles = tuple(sorted({t for i in members for t in mine[i].tiles}))
            # Pieces that overlap (frames without a grid) count their common pixels twice: the
            # union's area is the feature's pixel count; the mean probability is kept.
            area = round(sum(g.area for g in parts))
            if area < pixels:
                prob, pixels = prob * area / pixels, area
            out.append(Piece(class_id, _rings(parts[0]), pixels, prob, tiles))
    out = [p for p in out if p.pixels >= _minimum(min_region_px, p.class_id)]
    out.sort(key=_corner)
    return out


def _minimum(min_region_px: Sequence[int], class_id: int) -> int:
    return min_region_px[class_id] if 0 <= class_id < len(min_region_px) else 0


def _finder(parent: list[int]) -> Any:
    """Union-find's root lookup (with path halving) over `parent`."""

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    return root


def _corner(p: Piece) -> tuple[int, float, float]:
    return (p.class_id, min(y for _x, y in p.rings_px[0]), min(x for x, _y in p.rings_px[0]))


def simplify(rings_px: Sequence[Ring], tolerance_px: float) -> tuple[Ring, ...]:
    """The rings simplified (Douglas-Peucker, topology kept) at `tolerance_px`; 0 keeps them."""
    if tolerance_px <= 0:
        return tuple(rings_px)
    simple = polygon(rings_px).simplify(tolerance_px, preserve_topology=True)
    if simple.is_empty or simple.geom_type != "Polygon":
        return tuple(rings_px)
    return _rings(simple)


def rasterize(
    pieces: Sequence[tuple[int, Sequence[Ring]]], height_px: int, width_px: int, fill: int = 0
) -> np.ndarray:
    """A [H, W] int32 mask of (class id, rings in scene pixels) polygons (pixel centres inside),
    later ones on top: how evaluation and the tests compare published polygons with a truth mask."""
    from rasterio import features
    from shapely.geometry import mapping

    shapes = [(mapping(polygon(r)), int(c)) for c, r in pieces]
    if not shapes:
        return np.full((height_px, width_px), fill, dtype=np.int32)
    return features.rasterize(shapes, out_shape=(height_px, width_px), fill=fill, dtype="int32")
