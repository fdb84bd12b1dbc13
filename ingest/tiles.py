"""Tiling as arithmetic on windows: no GDAL, no Redis.

All positions and sizes here are in scene **pixels** (integers, names end in ``_px`` or use
:class:`PixelWindow`); map coordinates appear only in :func:`window_bounds`, which returns
:class:`MapBounds` in the units of the scene's CRS.

The rules (also in docs/protocol.md):

- tiles are ``tile_px`` square and step by ``tile_px - overlap_px``;
- the last column and row of tiles are shifted back to end at the scene's edge, so every tile
  lies inside the scene and is full size, unless the scene is smaller than a tile in that
  direction: then the tile covers the whole scene in that direction and is padded;
- padding goes right and bottom (the valid part is the tensor's top-left corner), filled with
  the nodata value when there is one, else 0;
- tiles that are entirely nodata are skipped (and counted by the caller); indices are dense.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from groundwatch.frames import PixelWindow

__all__ = ["MapBounds", "PixelWindow", "grid", "is_all_nodata", "offsets_px", "pad", "window_bounds"]


class MapBounds(NamedTuple):
    """A rectangle in map units of the scene's CRS."""

    left: float
    bottom: float
    right: float
    top: float


def offsets_px(length_px: int, tile_px: int, overlap_px: int) -> list[int]:
    """Start offsets of tiles along one axis of `length_px` pixels.

    Steps of ``tile_px - overlap_px``; the last tile shifted back to end at ``length_px``. An axis
    shorter than one tile has the single offset 0 (that tile is padded).
    """
    if length_px < 1:
        raise ValueError(f"a scene axis must be at least 1 pixel long, got {length_px}")
    if tile_px < 1 or not 0 <= overlap_px < tile_px:
        raise ValueError(f"need tile_px >= 1 and 0 <= overlap_px < tile_px, got {tile_px}, {overlap_px}")
    if length_px <= tile_px:
        return [0]
    step = tile_px - overlap_px
    count = math.ceil((length_px - tile_px) / step) + 1
    offsets = [i * step for i in range(count - 1)]
    offsets.append(length_px - tile_px)
    return offsets


def grid(width_px: int, height_px: int, tile_px: int, overlap_px: int) -> list[PixelWindow]:
    """The valid windows of every tile of a scene, row by row, top to bottom, left to right.

    Each window's width and height are ``min(tile_px, scene size)``: a window narrower than
    ``tile_px`` means its tile is padded.
    """
    cols = offsets_px(width_px, tile_px, overlap_px)
    rows = offsets_px(height_px, tile_px, overlap_px)
    w, h = min(tile_px, width_px), min(tile_px, height_px)
    return [PixelWindow(c, r, w, h) for r in rows for c in cols]


def pad(array: np.ndarray, tile_px: int, fill: float | None) -> np.ndarray:
    """A (C, tile_px, tile_px) array with `array` (C, h, w) in its top-left corner.

    The rest is `fill` (the nodata value), or 0 when `fill` is None. Returns `array` itself when
    it is already full size.
    """
    c, h, w = array.shape
    if h > tile_px or w > tile_px:
        raise ValueError(f"a ({h}, {w}) window does not fit a {tile_px}-pixel tile")
    if h == tile_px and w == tile_px:
        return array
    out = np.full((c, tile_px, tile_px), 0 if fill is None else fill, dtype=array.dtype)
    out[:, :h, :w] = array
    return out


def is_all_nodata(array: np.ndarray, nodata: float | None) -> bool:
    """True when every element equals `nodata` (NaN nodata: every element is NaN)."""
    if nodata is None:
        return False
    if isinstance(nodata, float) and math.isnan(nodata):
        return bool(np.issubdtype(array.dtype, np.floating) and np.isnan(array).all())
    return bool((array == np.asarray(nodata).astype(array.dtype)).all())


def window_bounds(window: PixelWindow, transform: tuple[float, ...]) -> MapBounds:
    """The map-unit bounds of a pixel window under an affine transform (affine order a..f)."""
    a, b, c, d, e, f = transform[:6]
    xs, ys = [], []
    for col, row in (
        (window.col_off, window.row_off),
        (window.col_off + window.width, window.row_off),
        (window.col_off, window.row_off + window.height),
        (window.col_off + window.width, window.row_off + window.height),
    ):
        xs.append(a * col + b * row + c)
        ys.append(d * col + e * row + f)
    return MapBounds(min(xs), min(ys), max(xs), max(ys))
