"""From the model's output to georeferenced detections (pure: numpy and rasterio, no Redis).

Tile pixels -> scene pixels (the frame's window offsets) -> the scene's CRS (its affine
transform) -> EPSG:4326 (rasterio.warp.transform, once per batch and CRS, not per box).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from consumers import ConsumerError
from groundwatch.detections import Detection
from groundwatch.frames import Frame

WGS84 = "EPSG:4326"
EDGE_PX = 1.0  # a box within this many pixels of an inner tile edge is "cut"


def decode_output(out: np.ndarray, threshold: float) -> np.ndarray:
    """The rows of a `[K, 6]` (or `[1, K, 6]`) output worth reporting, as float64 `[N, 6]`.

    Rows are x1, y1, x2, y2 (tile pixels), score, class id. Kept: finite rows with
    score >= threshold and score > 0 (padding rows have score 0) and a non-empty box.
    """
    arr = np.asarray(out)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ConsumerError(
            f"the model returned shape {list(np.asarray(out).shape)}; the contract is [B, K, 6] "
            "(x1, y1, x2, y2, score, class) with B = 1 per frame (docs/models.md)"
        )
    rows = arr.astype(np.float64, copy=False)
    finite = np.isfinite(rows).all(axis=1)
    score = rows[:, 4]
    keep = finite & (score > 0) & (score >= threshold) & (rows[:, 2] > rows[:, 0]) & (rows[:, 3] > rows[:, 1])
    kept = rows[keep]
    return kept[np.argsort(-kept[:, 4], kind="stable")]


def label_of(class_id: int, labels: Sequence[str]) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else f"class{class_id}"


@lru_cache(maxsize=64)
def _crs(text: str) -> Any:
    from rasterio.crs import CRS

    return CRS.from_user_input(text)


def check_crs(text: str) -> None:
    """ConsumerError when `text` is no CRS that GDAL/PROJ knows (the frame cannot be georeferenced)."""
    try:
        _crs(text)
    except Exception as e:  # rasterio raises CRSError, PROJ may raise others
        raise ConsumerError(f"crs {text[:80]!r} is not a coordinate reference system PROJ knows: {e}") from e


def to_lonlat(crs: str, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map coordinates in `crs` to longitude, latitude (degrees)."""
    if len(xs) == 0:
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    src = _crs(crs)
    if src == _crs(WGS84):
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    from rasterio.warp import transform

    try:
        lon, lat = transform(src, _crs(WGS84), list(map(float, xs)), list(map(float, ys)))
    except Exception as e:  # GDAL/PROJ errors (CPLE_*): points outside the projection's domain
        raise ConsumerError(f"cannot convert {crs[:80]!r} to lon/lat: {e}") from e
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def _boxes_in_window(frame: Frame, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the frame's valid window (padding holds no scene), and which rows survive."""
    width, height = frame.window.width, frame.window.height
    boxes = rows[:, :4].copy()
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    alive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes, alive


def _cut(frame: Frame, box: np.ndarray) -> bool:
    col_off, row_off, width, height = frame.window
    _c, h, w = frame.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    return bool(
        (x1 <= EDGE_PX and col_off > 0)
        or (y1 <= EDGE_PX and row_off > 0)
        or (x2 >= width - EDGE_PX and width == w)
        or (y2 >= height - EDGE_PX and height == h)
    )


def georeference(
    items: Sequence[tuple[Frame, np.ndarray]], labels: Sequence[str], model: str
) -> list[list[Detection]]:
    """Detections of each (frame, rows from decode_output), map coordinates done per CRS in one go.

    ConsumerError when a CRS is unknown or a box cannot be converted to lon/lat."""
    prepared: list[tuple[Frame, np.ndarray, np.ndarray]] = []
    xs: dict[str, list[np.ndarray]] = {}
    ys: dict[str, list[np.ndarray]] = {}
    offsets: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for frame, rows in items:
        boxes, alive = _boxes_in_window(frame, rows)
        rows, boxes = rows[alive], boxes[alive]
        col_off, row_off = frame.window.col_off, frame.window.row_off
        scene = boxes + np.array([col_off, row_off, col_off, row_off], dtype=np.float64)
        # corners (x1,y1) (x1,y2) (x2,y2) (x2,y1) (counter-clockwise on a north-up map) and the
        # centre: 5 points per box
        px = np.stack(
            [scene[:, 0], scene[:, 0], scene[:, 2], scene[:, 2], (scene[:, 0] + scene[:, 2]) / 2], 1
        )
        py = np.stack(
            [scene[:, 1], scene[:, 3], scene[:, 3], scene[:, 1], (scene[:, 1] + scene[:, 3]) / 2], 1
        )
        a, b, c, d, e, f = frame.transform
        mx = a * px + b * py + c
        my = d * px + e * py + f
        prepared.append((frame, rows, np.concatenate([boxes, scene, mx, my], axis=1)))
        start = counts.get(frame.crs, 0)
        offsets.append((frame.crs, start))
        counts[frame.crs] = start + mx.size
        xs.setdefault(frame.crs, []).append(mx.ravel())
        ys.setdefault(frame.crs, []).append(my.ravel())
    lonlat: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for crs in xs:
        lon, lat = to_lonlat(crs, np.concatenate(xs[crs]), np.concatenate(ys[crs]))
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise ConsumerError(
                f"boxes fall outside where {crs[:80]!r} converts to lon/lat (check the transform)"
            )
        lonlat[crs] = (lon, lat)
    out: list[list[Detection]] = []
    for (frame, rows, geo), (crs, start) in zip(prepared, offsets, strict=True):
        lon_all, lat_all = lonlat[crs]
        n = len(rows)
        lon = lon_all[start : start + 5 * n].reshape(n, 5)
        lat = lat_all[start : start + 5 * n].reshape(n, 5)
        dets = []
        for i in range(n):
            box, scene, mx, my = geo[i, 0:4], geo[i, 4:8], geo[i, 8:13], geo[i, 13:18]
            class_id = round(float(rows[i, 5]))
            dets.append(
                Detection(
                    class_id=class_id,
                    label=label_of(class_id, labels),
                    score=float(rows[i, 4]),
                    box_px=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                    scene_box_px=(float(scene[0]), float(scene[1]), float(scene[2]), float(scene[3])),
                    box_map=(
                        float(mx[:4].min()),
                        float(my[:4].min()),
                        float(mx[:4].max()),
                        float(my[:4].max()),
                    ),
                    ring=tuple((float(lon[i, k]), float(lat[i, k])) for k in range(4)),
                    center=(float(lon[i, 4]), float(lat[i, 4])),
                    cut=_cut(frame, box),
                    model=model,
                    scene=frame.scene,
                    tile=frame.tile,
                    frame=frame.frame_id,
                )
            )
        out.append(dets)
    return out
