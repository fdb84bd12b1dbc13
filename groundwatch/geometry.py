"""Scene geometry, the one home of what every role must compute the same way (pure numpy).

- **The tile grid** (:func:`grid`, :func:`pad`, :func:`is_all_nodata`): how a scene is cut into
  tiles. Ingest publishes these tiles; evaluation scores the model on the very same tiles.
  :func:`core_window` is a tile's *owned core*: the pixels whose nearest tile centre is its own,
  so the cores of a grid cover the scene once (segmentation vectorises each pixel once).
- **Placing a tile's detections in the scene** (:func:`decode_rows`, :func:`place`): which rows
  of a model output are reported, boxes clipped to the tile's valid window, moved to scene
  pixels, and flagged *cut* when they touch an inner tile edge.
- **The overlap merge** (:func:`merge_rows`, :func:`merge`): what tile overlaps see twice
  becomes one detection. The consumers merge every scene result with it; evaluation too.
- **The matcher** (:func:`match`): greedy one-to-one matching of detections to reference boxes
  (ground truth, or another model's detections) by score, class-aware, at an IoU bound. AP,
  the demo's precision and recall and the variants' agreement all count its pairs.

Positions are in pixels (names end in ``_px`` or use :class:`PixelWindow`); map units appear only
in :func:`window_bounds`. The tiling rules (also in docs/protocol.md):

- tiles are ``tile_px`` square and step by ``tile_px - overlap_px``;
- the last column and row of tiles are shifted back to end at the scene's edge, so every tile
  lies inside the scene and is full size, unless the scene is smaller than a tile in that
  direction: then the tile covers the whole scene in that direction and is padded;
- padding goes right and bottom (the valid part is the tensor's top-left corner), filled with
  the nodata value when there is one, else 0;
- tiles that are entirely nodata are skipped (and counted by the caller); indices are dense.

The merge: candidates are taken best first; every later candidate of the same class that
overlaps the kept one enough (IoU >= `iou`, or the smaller box lies mostly inside the larger
one: intersection / smaller area >= `containment`, which catches an object cut by a tile edge)
joins its cluster. The cluster reports the box of its best member that is not cut by a tile edge
(else its best member), the cluster's highest score, and every tile that saw it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from groundwatch.detections import Box, Detection
from groundwatch.errors import GroundwatchError
from groundwatch.frames import PixelWindow

MERGE_IOU = 0.45
MERGE_CONTAINMENT = 0.7
MATCH_IOU = 0.5
EDGE_PX = 1.0  # a box within this many pixels of an inner tile edge is "cut"


class OutputContractError(GroundwatchError):
    """A model output is not the `[B, K, 6]` rows of contract 1 (docs/models.md)."""


# --- the tile grid ----------------------------------------------------------------------------


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


def tiles_of(
    image: np.ndarray, tile_px: int, overlap_px: int, nodata: float | None = None
) -> tuple[list[tuple[PixelWindow, np.ndarray]], int]:
    """The tiles of a (C, H, W) scene held in memory, as ingest publishes them: (window, padded
    pixels) of every tile that is not all nodata, and the number skipped."""
    kept: list[tuple[PixelWindow, np.ndarray]] = []
    skipped = 0
    for w in grid(int(image.shape[2]), int(image.shape[1]), tile_px, overlap_px):
        part = image[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        if is_all_nodata(part, nodata):
            skipped += 1
        else:
            kept.append((w, np.ascontiguousarray(pad(part, tile_px, nodata))))
    return kept, skipped


def _owned_axis(start: int, length_px: int, tile_px: int, overlap_px: int) -> tuple[int, int]:
    """[lo, hi) of the pixels along one axis whose nearest tile centre is the tile at `start`."""
    offsets = offsets_px(length_px, tile_px, overlap_px)
    if start not in offsets:
        raise ValueError(f"offset {start} is not a tile of the grid {offsets} (length {length_px})")
    i = offsets.index(start)
    # Centres a + t/2 and b + t/2 are equidistant from pixel x (centre x + 0.5) when
    # x + 0.5 = (a + b + t) / 2; such a tie goes to the first tile, so b owns x from
    # floor((a + b + t - 1) / 2) + 1 on.
    t = min(tile_px, length_px)
    lo = 0 if i == 0 else (offsets[i - 1] + start + t - 1) // 2 + 1
    hi = length_px if i == len(offsets) - 1 else (start + offsets[i + 1] + t - 1) // 2 + 1
    return lo, hi


def core_window(
    window: PixelWindow, width_px: int, height_px: int, tile_px: int, overlap_px: int
) -> PixelWindow:
    """The tile's owned core in scene pixels: the pixels of `window` whose nearest tile centre (of
    the grid of a `width_px` x `height_px` scene) is this tile's (ties to the tile above / left).

    The cores of a grid's tiles cover the scene exactly once; with no overlap a core is its window.
    ValueError when `window` is not a tile of that grid."""
    x0, x1 = _owned_axis(window.col_off, width_px, tile_px, overlap_px)
    y0, y1 = _owned_axis(window.row_off, height_px, tile_px, overlap_px)
    return PixelWindow(x0, y0, x1 - x0, y1 - y0)


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


# --- a tile's detections in the scene ---------------------------------------------------------


def decode_rows(out: np.ndarray, threshold: float) -> np.ndarray:
    """The rows of a `[K, 6]` (or `[1, K, 6]`) output worth reporting, as float64 `[N, 6]`.

    Rows are x1, y1, x2, y2 (tile pixels), score, class id. Kept: finite rows with
    score >= threshold and score > 0 (padding rows have score 0) and a non-empty box; best first.
    """
    arr = np.asarray(out)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise OutputContractError(
            f"the model returned shape {list(np.asarray(out).shape)}; the contract is [B, K, 6] "
            "(x1, y1, x2, y2, score, class) with B = 1 per frame (docs/models.md)"
        )
    rows = arr.astype(np.float64, copy=False)
    finite = np.isfinite(rows).all(axis=1)
    score = rows[:, 4]
    keep = finite & (score > 0) & (score >= threshold) & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
    kept = rows[keep]
    return kept[np.argsort(-kept[:, 4], kind="stable")]


class Placed(NamedTuple):
    """Rows of one tile placed in the scene (all arrays have one entry per surviving row)."""

    rows: np.ndarray  # [N, 6] the decoded rows that survive clipping
    tile_boxes: np.ndarray  # [N, 4] clipped to the valid window, tile pixels
    scene_boxes: np.ndarray  # [N, 4] scene pixels
    cut: np.ndarray  # [N] bool: touches an inner tile edge (the object may go on in a neighbour)


def place(rows: np.ndarray, window: PixelWindow, tile_h: int, tile_w: int) -> Placed:
    """Clip decoded rows to the tile's valid window (padding holds no scene), move them to scene
    pixels and flag cut boxes. `tile_h`, `tile_w`: the tensor's size (window plus padding)."""
    placed, _alive = place_many(rows, np.asarray([window] * len(rows)).reshape(-1, 4), tile_h, tile_w)
    return placed


def place_many(
    rows: np.ndarray, windows: np.ndarray, tile_h: int | np.ndarray, tile_w: int | np.ndarray
) -> tuple[Placed, np.ndarray]:
    """:func:`place` for rows of many tiles at once: row i belongs to the tile whose window is
    ``windows[i]`` (col_off, row_off, width, height) and whose tensor is ``tile_h[i]`` x
    ``tile_w[i]`` (or one size for all). Returns the placed rows that survive clipping, in order,
    and the mask of `rows` they are (to tell which tile each came from)."""
    windows = np.asarray(windows, dtype=np.float64).reshape(-1, 4)
    col_off, row_off, width, height = windows.T
    boxes = rows[:, :4].copy()
    boxes[:, 0] = np.clip(boxes[:, 0], 0, width)
    boxes[:, 2] = np.clip(boxes[:, 2], 0, width)
    boxes[:, 1] = np.clip(boxes[:, 1], 0, height)
    boxes[:, 3] = np.clip(boxes[:, 3], 0, height)
    alive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    scene = boxes + windows[:, [0, 1, 0, 1]]
    cut = (
        ((boxes[:, 0] <= EDGE_PX) & (col_off > 0))
        | ((boxes[:, 1] <= EDGE_PX) & (row_off > 0))
        | ((boxes[:, 2] >= width - EDGE_PX) & (width == tile_w))
        | ((boxes[:, 3] >= height - EDGE_PX) & (height == tile_h))
    )
    return Placed(rows[alive], boxes[alive], scene[alive], cut[alive]), alive


# --- the overlap merge ------------------------------------------------------------------------


class Cluster(NamedTuple):
    keep: int  # index of the member whose box is reported
    score: float  # the cluster's highest score
    members: list[int]


def merge_clusters(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    cut: np.ndarray,
    tiles: np.ndarray,
    iou: float = MERGE_IOU,
    containment: float = MERGE_CONTAINMENT,
) -> list[Cluster]:
    """The clusters of the merge (see the module doc), deterministic, best score first.

    Candidates are ordered by (-score, tile, box, class); each seed is compared with all
    remaining candidates in one numpy step, so a few thousand detections merge in milliseconds.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return []
    scores = np.asarray(scores, dtype=np.float64)
    classes = np.asarray(classes)
    tiles = np.asarray(tiles)
    cut = np.asarray(cut, dtype=bool)
    order = np.lexsort((classes, boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], tiles, -scores))
    b_all = boxes[order]
    c_all = classes[order]
    areas = np.clip(b_all[:, 2] - b_all[:, 0], 0, None) * np.clip(b_all[:, 3] - b_all[:, 1], 0, None)
    alive = np.ones(n, dtype=bool)
    out: list[Cluster] = []
    for i in range(n):
        if not alive[i]:
            continue
        alive[i] = False
        cand = np.flatnonzero(alive & (c_all == c_all[i]))
        members = [i]
        if cand.size:
            b = b_all[cand]
            w = np.minimum(b_all[i, 2], b[:, 2]) - np.maximum(b_all[i, 0], b[:, 0])
            h = np.minimum(b_all[i, 3], b[:, 3]) - np.maximum(b_all[i, 1], b[:, 1])
            inter = np.where((w > 0) & (h > 0), w * h, 0.0)
            union = areas[i] + areas[cand] - inter
            smaller = np.minimum(areas[i], areas[cand])
            joined = cand[
                (inter > 0)
                & (
                    ((union > 0) & (inter >= iou * union))
                    | ((smaller > 0) & (inter >= containment * smaller))
                )
            ]
            alive[joined] = False
            members.extend(int(j) for j in joined)
        originals = [int(order[j]) for j in members]
        whole = [j for j in originals if not cut[j]]
        out.append(Cluster(whole[0] if whole else originals[0], float(scores[originals[0]]), originals))
    return out


def merge(
    detections: Sequence[Detection], iou: float = MERGE_IOU, containment: float = MERGE_CONTAINMENT
) -> list[Detection]:
    """One detection per object (see the module doc), best score first; deterministic."""
    if not detections:
        return []
    clusters = merge_clusters(
        np.array([d.scene_box_px for d in detections], dtype=np.float64),
        np.array([d.score for d in detections]),
        np.array([d.class_id for d in detections]),
        np.array([d.cut for d in detections]),
        np.array([d.tile for d in detections]),
        iou,
        containment,
    )
    out = [
        replace(
            detections[c.keep],
            score=c.score,
            tiles=tuple(sorted({detections[j].tile for j in c.members})),
        )
        for c in clusters
    ]
    out.sort(key=lambda d: (-d.score, d.scene_box_px))
    return out


def merge_rows(
    rows: np.ndarray,
    cut: np.ndarray,
    tiles: np.ndarray,
    iou: float = MERGE_IOU,
    containment: float = MERGE_CONTAINMENT,
) -> np.ndarray:
    """:func:`merge` on `[N, 6]` rows (x1, y1, x2, y2 in scene pixels, score, class): `[M, 6]`,
    ordered as :func:`merge` orders its detections."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    clusters = merge_clusters(rows[:, :4], rows[:, 4], rows[:, 5], cut, tiles, iou, containment)
    out = np.array([[*rows[c.keep, :4], c.score, rows[c.keep, 5]] for c in clusters]).reshape(-1, 6)
    if len(out):
        out = out[np.lexsort((out[:, 3], out[:, 2], out[:, 1], out[:, 0], -out[:, 4]))]
    return out


def same_object(a: Box, b: Box, iou: float = MERGE_IOU, containment: float = MERGE_CONTAINMENT) -> bool:
    """Whether the merge takes two boxes of one class for the same object."""
    inter = _intersection(a, b)
    if inter <= 0:
        return False
    area_a, area_b = _area(a), _area(b)
    union = area_a + area_b - inter
    if union > 0 and inter / union >= iou:
        return True
    smaller = min(area_a, area_b)
    return smaller > 0 and inter / smaller >= containment


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _intersection(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


# --- the matcher ------------------------------------------------------------------------------


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of a [N, 4] against every box of b [M, 4]; 0 where a union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match(
    boxes: npt.ArrayLike,
    scores: npt.ArrayLike,
    classes: npt.ArrayLike,
    ref_boxes: npt.ArrayLike,
    ref_classes: npt.ArrayLike,
    iou: float = MATCH_IOU,
) -> list[tuple[int, int]]:
    """Greedy one-to-one matching: (detection index, reference index) pairs.

    Detections are taken by score, best first (ties in input order); each takes the unmatched
    reference box of its class with the highest IoU, if that IoU is >= `iou`.
    """
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(ref_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(a) or not len(b):
        return []
    overlaps = iou_matrix(a, b)
    overlaps[np.asarray(classes)[:, None] != np.asarray(ref_classes)[None, :]] = -1.0
    taken = np.zeros(len(b), dtype=bool)
    pairs: list[tuple[int, int]] = []
    for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        row = np.where(taken, -1.0, overlaps[i])
        j = int(np.argmax(row))
        if row[j] >= iou:
            taken[j] = True
            pairs.append((int(i), j))
    return pairs
