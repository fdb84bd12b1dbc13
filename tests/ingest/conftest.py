"""Helpers for ingest tests: real GeoTIFFs written with rasterio."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from groundwatch.settings import Settings

UTM31 = "EPSG:32631"
TRANSFORM = from_origin(500000.0, 4000000.0, 10.0, 10.0)


def write_tif(
    path: Path,
    array: np.ndarray,
    *,
    tiled: bool = True,
    block: int = 256,
    nodata: float | None = None,
    crs: str | None = UTM31,
    transform: Affine | None = TRANSFORM,
    tags: dict[str, str] | None = None,
    **options: Any,
) -> Path:
    """Write a (C, H, W) array as a GeoTIFF: tiled (block x block) or striped (rows per strip)."""
    c, h, w = array.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": w,
        "height": h,
        "count": c,
        "dtype": array.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile.update(tiled=False, blockysize=min(block, h))
    profile.update(options)
    if transform is None:
        del profile["transform"]
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
        if tags:
            ds.update_tags(**tags)
    return path


def scene_array(c: int, h: int, w: int, dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    """Pixels that differ everywhere (so a misplaced window shows), never 0 (0 is our nodata)."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.uniform(1.0, 1000.0, size=(c, h, w)).astype(dtype)
    hi = min(np.iinfo(dtype).max, 60000)
    return rng.integers(1, hi, size=(c, h, w)).astype(dtype)


@pytest.fixture
def settings() -> Settings:
    return Settings(feed="test", tile_size=128, tile_overlap=16, max_lag=1000, backpressure_timeout_s=5.0)
