"""The scene generator: determinism, objects, and georeferencing of the GeoJSON truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.warp import transform as warp

from models.scenes import CLASSES, SceneConfig, box_px_to_map_m, generate_scene, write_scene

SMALL = SceneConfig(width_px=256, height_px=192, n_ships=4, n_platforms=2)


def test_same_seed_same_scene_and_other_seed_differs() -> None:
    a, b = generate_scene(7, SMALL), generate_scene(7, SMALL)
    assert np.array_equal(a.image, b.image)
    assert a.objects == b.objects
    assert a.transform == b.transform
    c = generate_scene(8, SMALL)
    assert not np.array_equal(a.image, c.image)


def test_shape_dtype_bands_and_objects() -> None:
    for bands in (1, 4):
        s = generate_scene(3, SceneConfig(width_px=256, height_px=192, bands=bands, n_ships=4, n_platforms=2))
        assert s.image.shape == (bands, 192, 256)
        assert s.image.dtype == np.uint16
    names = [o.class_name for o in s.objects]
    assert set(names) <= set(CLASSES)
    assert names.count("ship") >= 2 and names.count("platform") >= 1
    sea = float(np.median(s.image[0]))
    for o in s.objects:
        x1, y1, x2, y2 = o.box_px
        assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 192
        # every object is much brighter than the median background
        assert float(s.image[0, y1:y2, x1:x2].max()) > 5 * sea
    with pytest.raises(ValueError):
        SceneConfig(bands=5)


def test_default_counts_scale_with_area() -> None:
    s = generate_scene(11, SceneConfig(width_px=1024, height_px=1024))
    assert s.image.shape == (1, 1024, 1024)
    assert len(s.objects) >= 3  # about 6 ships and 2 platforms expected per 1024 x 1024


def test_geotiff_and_geojson_are_georeferenced(tmp_path) -> None:
    scene = generate_scene(5, SMALL)
    tif, geojson = write_scene(scene, tmp_path)
    doc = json.loads(geojson.read_text())
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == len(scene.objects) > 0
    with rasterio.open(tif) as ds:
        assert ds.crs.to_epsg() == 32631
        assert ds.res == (10.0, 10.0)
        assert ds.dtypes == ("uint16",)
        assert np.array_equal(ds.read(), scene.image)
        for feature in doc["features"]:
            props = feature["properties"]
            x1, y1, x2, y2 = props["pixel_box"]
            ring = feature["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) == 5
            lons, lats = zip(*ring, strict=True)
            assert all(50 < la < 56 for la in lats) and all(0 < lo < 7 for lo in lons)
            # RFC 7946: exterior rings are counter-clockwise (positive shoelace area in lon/lat)
            area = sum(lons[i] * lats[i + 1] - lons[i + 1] * lats[i] for i in range(4))
            assert area > 0
            # back from lon/lat to the raster grid: the corners land on the pixel box edges
            xs_m, ys_m = warp("EPSG:4326", ds.crs, list(lons), list(lats))
            cols, rows = ~ds.transform @ (np.array(xs_m), np.array(ys_m))
            assert sorted({round(c, 2) for c in cols}) == [x1, x2]
            assert sorted({round(r, 2) for r in rows}) == [y1, y2]
            left, bottom = ds.transform @ (x1, y2)
            right, top = ds.transform @ (x2, y1)
            assert props["map_box"] == pytest.approx([left, bottom, right, top], abs=1e-3)
            assert props["class"] in CLASSES


def test_map_box_units() -> None:
    scene = generate_scene(5, SMALL)
    x_min, y_min, x_max, y_max = box_px_to_map_m(scene.transform, (0, 0, 10, 20))
    assert (x_max - x_min, y_max - y_min) == (100.0, 200.0)
