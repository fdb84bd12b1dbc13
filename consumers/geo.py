"""From the model's output to georeferenced detections (pure: numpy and rasterio, no Redis).

Tile pixels -> scene pixels (:func:`groundwatch.geometry.place_many`: the frames' window offsets,
clipping and cut flags, every row of a batch at once) -> the scene's CRS (its affine transform) -> EPSG:4326
(rasterio.warp.transform, once per batch and CRS, not per box).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from consumers import ConsumerError
from groundwatch import geometry
from groundwatch.detections import Detection
from groundwatch.frames import Frame

WGS84 = "EPSG:4326"


def label_of(class_id: int, labels: Sequence[str]) -> str:
    return labels[class_id] if 0 <= class_id < len(labels) else f"class{class_id}"


@lru_cache(maxsize=64)
def _crs(text: str) -> Any:
    from rasterio.crs import CRS

    return CRS.from_user_input(text)


@lru_cache(maxsize=64)
def _is_lonlat(text: str) -> bool:
    """Whether `text` is EPSG:4326 itself (comparing two CRS objects asks PROJ: once per text)."""
    return bool(_crs(text) == _crs(WGS84))


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
    if _is_lonlat(crs):
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    from rasterio.warp import transform

    try:
        lon, lat = transform(
            _crs(crs),
            _crs(WGS84),
            np.asarray(xs, dtype=np.float64).tolist(),
            np.asarray(ys, dtype=np.float64).tolist(),
        )
    except Exception as e:  # GDAL/PROJ errors (CPLE_*): points outside the projection's domain
        raise ConsumerError(f"cannot convert {crs[:80]!r} to lon/lat: {e}") from e
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def georeference(
    items: Sequence[tuple[Frame, np.ndarray]], labels: Sequence[str], model: str
) -> list[list[Detection]]:
    """Detections of each (frame, rows from geometry.decode_rows), the whole batch in one go:
    one placement and one affine step over every row of every frame, one lon/lat conversion per
    CRS.

    ConsumerError when a CRS is unknown or a box cannot be converted to lon/lat."""
    if not items:
        return []
    counts = [len(rows) for _, rows in items]
    owner = np.repeat(np.arange(len(items)), counts)  # the frame of each row
    rows = np.concatenate([r.reshape(-1, 6) for _, r in items]).astype(np.float64, copy=False)
    windows = np.asarray([f.window for f, _ in items], dtype=np.float64)[owner].reshape(-1, 4)
    tile_h = np.asarray([f.shape[1] for f, _ in items], dtype=np.float64)[owner]
    tile_w = np.asarray([f.shape[2] for f, _ in items], dtype=np.float64)[owner]
    (rows, boxes, scene, cut), alive = geometry.place_many(rows, windows, tile_h, tile_w)
    owner = owner[alive]
    # corners (x1,y1) (x1,y2) (x2,y2) (x2,y1) (counter-clockwise on a north-up map) and the
    # centre: 5 points per box
    px = np.stack([scene[:, 0], scene[:, 0], scene[:, 2], scene[:, 2], (scene[:, 0] + scene[:, 2]) / 2], 1)
    py = np.stack([scene[:, 1], scene[:, 3], scene[:, 3], scene[:, 1], (scene[:, 1] + scene[:, 3]) / 2], 1)
    t = np.asarray([f.transform for f, _ in items], dtype=np.float64)[owner].reshape(-1, 6)
    mx = t[:, 0:1] * px + t[:, 1:2] * py + t[:, 2:3]
    my = t[:, 3:4] * px + t[:, 4:5] * py + t[:, 5:6]
    lon = np.empty_like(mx)
    lat = np.empty_like(my)
    crs_of = np.asarray([f.crs for f, _ in items], dtype=object)[owner]
    for crs in dict.fromkeys(f.crs for f, _ in items):
        mine = crs_of == crs
        if not mine.any():
            continue
        lo, la = to_lonlat(crs, mx[mine].ravel(), my[mine].ravel())
        if not (np.isfinite(lo).all() and np.isfinite(la).all()):
            raise ConsumerError(
                f"boxes fall outside where {crs[:80]!r} converts to lon/lat (check the transform)"
            )
        lon[mine] = lo.reshape(-1, 5)
        lat[mine] = la.reshape(-1, 5)
    out: list[list[Detection]] = [[] for _ in items]
    # Python floats in one go per array (tolist), not one numpy scalar at a time
    for i, row, box, sc, x, y, lo, la, c in zip(
        owner.tolist(),
        rows.tolist(),
        boxes.tolist(),
        scene.tolist(),
        mx.tolist(),
        my.tolist(),
        lon.tolist(),
        lat.tolist(),
        cut.tolist(),
        strict=True,
    ):
        frame = items[i][0]
        class_id = round(row[5])
        out[i].append(
            Detection(
                class_id=class_id,
                label=label_of(class_id, labels),
                score=row[4],
                box_px=(box[0], box[1], box[2], box[3]),
                scene_box_px=(sc[0], sc[1], sc[2], sc[3]),
                box_map=(min(x[:4]), min(y[:4]), max(x[:4]), max(y[:4])),
                ring=((lo[0], la[0]), (lo[1], la[1]), (lo[2], la[2]), (lo[3], la[3])),
                center=(lo[4], la[4]),
                cut=c,
                model=model,
                scene=frame.scene,
                tile=frame.tile,
                frame=frame.frame_id,
            )
        )
    return out
