"""A scene's quick-look for the live view: a small PNG and the footprint in lon/lat.

Written by ingest next to the scene's frames (``keys.quicklook``, expiring with the scene's
results), so the web view can show the scene with its detections without the file. Read with
GDAL's decimated read (a COG's overviews when it has them), so it costs a small fraction of the
scene. A quick-look that cannot be made is logged and skipped: it never fails an ingest.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import redis

from groundwatch import keys

log = logging.getLogger(__name__)
MAX_PX = 512


def render(raster: Any, max_px: int = MAX_PX) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of the scene's first (or first three) bands, 2-98% stretched."""
    from rasterio.enums import Resampling
    from rasterio.io import MemoryFile

    scale = max(raster.width_px, raster.height_px) / max_px
    w, h = max(1, round(raster.width_px / max(scale, 1))), max(1, round(raster.height_px / max(scale, 1)))
    bands = list(raster.bands[:3]) if len(raster.bands) >= 3 else [raster.bands[0]]
    a = raster.dataset.read(
        indexes=bands, out_shape=(len(bands), h, w), resampling=Resampling.nearest
    ).astype(np.float64)
    valid = np.isfinite(a)
    if raster.nodata is not None and not np.isnan(raster.nodata):
        valid &= a != raster.nodata
    out = np.zeros(a.shape, dtype=np.uint8)
    if valid.any():
        lo, hi = np.percentile(a[valid], [2, 98])
        out = np.clip((a - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
        out[~valid] = 0
    with MemoryFile() as mem:
        with mem.open(driver="PNG", width=w, height=h, count=len(bands), dtype="uint8") as png:
            png.write(out)
        return bytes(mem.read()), w, h


def footprint(raster: Any) -> list[list[float]]:
    """The scene's corners in lon/lat (a closed ring)."""
    from rasterio.warp import transform

    a, b, c, d, e, f = raster.transform
    corners = [(0, 0), (raster.width_px, 0), (raster.width_px, raster.height_px), (0, raster.height_px)]
    xs = [a * col + b * row + c for col, row in corners]
    ys = [d * col + e * row + f for col, row in corners]
    lons, lats = transform(raster.crs, "EPSG:4326", xs, ys)
    ring = [[round(float(x), 7), round(float(y), 7)] for x, y in zip(lons, lats, strict=True)]
    return [*ring, ring[0]]


def publish(client: redis.Redis, feed: str, scene: str, raster: Any, ttl_s: int) -> bool:
    try:
        png, w, h = render(raster)
        ring = footprint(raster)
    except Exception as e:  # a quick-look is a convenience: never the scene's failure
        log.warning("scene %s: no quick-look (%s: %s)", scene, type(e).__name__, e)
        return False
    key = keys.quicklook(feed, scene)
    pipe = client.pipeline(transaction=True)
    pipe.hset(
        key,
        mapping={
            "png": png,
            "width": str(w),
            "height": str(h),
            "scene_width_px": str(raster.width_px),
            "scene_height_px": str(raster.height_px),
            "footprint": json.dumps(ring),
        },
    )
    pipe.expire(key, ttl_s)
    pipe.execute()
    return True
