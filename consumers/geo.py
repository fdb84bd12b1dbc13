"""From the model's output to georeferenced detections (pure: numpy and rasterio, no Redis).

Tile pixels -> scene pixels (:func:`groundwatch.geometry.place`: the frame's window offsets,
clipping and cut flags) -> the scene's CRS (its affine transform) -> EPSG:4326
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


def georeference(
    items: Sequence[tuple[Frame, np.ndarray]], labels: Sequence[str], model: str
) -> list[list[Detection]]:
    """Detections of each (frame, rows from geometry.decode_rows), map coordinates per CRS in one go.

    ConsumerError when a CRS is unknown or a box cannot be converted to lon/lat."""
    prepared: list[tuple[Frame, np.ndarray, np.ndarray]] = []
    xs: dict[str, list[np.ndarray]] = {}
    ys: dict[str, list[np.ndarray]] = {}
    offsets: list[tuple[str, int]] = []
    counts: dict[str, int] = {}
    for frame, rows in items:
        _c, tile_h, tile_w = frame.shape
        rows, boxes, scene, cut = geometry.place(rows, frame.window, tile_h, tile_w)
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
        prepared.append((frame, rows, np.concatenate([boxes, scene, mx, my, cut[:, None]], axis=1)))
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
                    cut=bool(geo[i, 18]),
                    model=model,
                    scene=frame.scene,
                    tile=frame.tile,
                    frame=frame.frame_id,
                )
            )
        out.append(dets)
    return out
