"""Opening and reading scenes (ingest/rasters.py) with real GeoTIFFs."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin

from groundwatch.frames import PixelWindow
from ingest.errors import InputError
from ingest.rasters import open_raster
from tests.ingest.conftest import UTM31, scene_array, write_tif


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_metadata_and_windowed_reads(tmp_path: Path, tiled: bool, dtype: str) -> None:
    a = scene_array(3, 333, 517, dtype)
    path = write_tif(tmp_path / "s.tif", a, tiled=tiled, block=64 if tiled else 16, nodata=0)
    with open_raster(path) as r:
        assert (r.width_px, r.height_px, r.bands, r.dtype) == (517, 333, (1, 2, 3), np.dtype(dtype))
        assert r.crs == UTM31 and r.nodata == 0.0
        assert r.transform == (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
        assert r.block_rows_px == (64 if tiled else 16)
        np.testing.assert_array_equal(r.read(PixelWindow(500, 300, 17, 33)), a[:, 300:333, 500:517])


def test_read_rows_reads_exactly_the_rows(tmp_path: Path) -> None:
    a = scene_array(1, 300, 200)
    path = write_tif(tmp_path / "s.tif", a, tiled=True, block=64)
    with open_raster(path) as r:
        start, rows = r.read_rows(100, 70)  # not widened to the blocks 64..191
        assert start == 100 and rows.shape == (1, 70, 200)
        np.testing.assert_array_equal(rows, a[:, 100:170])
        start, rows = r.read_rows(250, 60)  # clipped to the scene
        assert start == 250 and rows.shape == (1, 50, 200)


def test_band_selection_in_order(tmp_path: Path) -> None:
    a = scene_array(4, 40, 50, "uint8")
    path = write_tif(tmp_path / "s.tif", a)
    with open_raster(path, bands=(4, 2)) as r:
        assert r.bands == (4, 2)
        np.testing.assert_array_equal(r.read(PixelWindow(0, 0, 50, 40)), a[[3, 1]])


def test_geographic_crs_and_acquisition_tag(tmp_path: Path) -> None:
    path = write_tif(
        tmp_path / "s.tif",
        scene_array(1, 20, 20),
        crs="EPSG:4326",
        transform=from_origin(2.3, 48.9, 0.001, 0.001),
        tags={"TIFFTAG_DATETIME": "2026:11:25 10:31:07"},
    )
    with open_raster(path) as r:
        assert r.crs == "EPSG:4326"
        assert r.acquired == datetime(2026, 11, 25, 10, 31, 7, tzinfo=UTC)


def test_acquired_falls_back_to_file_time(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "s.tif", scene_array(1, 20, 20))
    os.utime(path, (1_700_000_000, 1_700_000_000))
    with open_raster(path) as r:
        assert r.acquired == datetime.fromtimestamp(1_700_000_000, UTC)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.tif: no such file"):
        with open_raster(tmp_path / "nope.tif"):
            pass


def test_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("this is not a tiff")
    with pytest.raises(InputError, match=r"notes\.tif: cannot be opened as a raster"):
        with open_raster(path):
            pass


def test_not_georeferenced(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "plain.tif", scene_array(1, 20, 20), crs=None, transform=None)
    with pytest.raises(InputError, match=r"plain\.tif: not georeferenced.*gdal_translate -a_srs"):
        with open_raster(path):
            pass


def test_band_out_of_range(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "one.tif", scene_array(1, 20, 20))
    with pytest.raises(
        InputError, match=r"one\.tif: has 1 band\(s\) but band\(s\) 3 were asked for.*--bands"
    ):
        with open_raster(path, bands=(1, 3)):
            pass


def test_wrong_band_count(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "one.tif", scene_array(1, 20, 20))
    with pytest.raises(InputError, match=r"one\.tif: yields 1 band\(s\) .* the feed expects 3"):
        with open_raster(path, expect_bands=3):
            pass


def test_unsupported_pixel_type(tmp_path: Path) -> None:
    path = write_tif(tmp_path / "u32.tif", scene_array(1, 20, 20, "uint32"))
    with pytest.raises(InputError, match=r"u32\.tif: pixel type uint32 is not supported.*gdal_translate -ot"):
        with open_raster(path):
            pass


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_partly_written_file(tmp_path: Path, keep: float) -> None:
    """A file cut short (a station still writing it): refused, whether at open or at read."""
    a = scene_array(1, 256, 256)
    path = write_tif(tmp_path / "cut.tif", a, tiled=True, block=64)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match=r"cut\.tif: .*(partly written|cannot be opened)"):
        with open_raster(path) as r:
            r.read(PixelWindow(0, 0, 256, 256))
