"""Pure parts without Redis: output decoding, georeferencing, merging, the wire format."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from rasterio.warp import transform as warp

from consumers import ConsumerError
from consumers.geo import check_crs, georeference, to_lonlat
from groundwatch import detections as wire
from groundwatch.frames import Frame
from groundwatch.geometry import OutputContractError, merge, same_object
from groundwatch.geometry import decode_rows as decode_output
from tests.consumers.helpers import TRANSFORM, UTM31N


def frame(
    window=(0, 0, 64, 64), transform=TRANSFORM, crs=UTM31N, shape=(1, 64, 64), tile=0, tiles=1
) -> Frame:
    return Frame.from_array(
        np.zeros(shape, dtype=np.uint16),
        scene="s1",
        tile=tile,
        tiles=tiles,
        window=window,
        transform=transform,
        crs=crs,
        acquired=datetime(2026, 1, 1, tzinfo=UTC),
        published_ms=1,
    )


def out(*rows: list[float], k: int = 5) -> np.ndarray:
    arr = np.zeros((1, k, 6), dtype=np.float32)
    for i, row in enumerate(rows):
        arr[0, i] = row
    return arr


def test_decode_output_keeps_live_rows_above_threshold_best_first() -> None:
    rows = decode_output(
        out(
            [0, 0, 4, 4, 0.5, 1],
            [1, 1, 5, 5, 0.2, 0],
            [2, 2, 6, 6, 0.9, 0],
            [np.nan, 0, 1, 1, 0.99, 0],
            [3, 3, 3, 9, 0.8, 0],
        ),
        0.3,
    )
    assert rows.shape == (2, 6)
    assert rows[:, 4].tolist() == pytest.approx([0.9, 0.5])
    assert rows[1, 5] == 1


def test_decode_output_zero_threshold_still_drops_padding() -> None:
    assert decode_output(out([0, 0, 4, 4, 0.1, 0]), 0.0).shape == (1, 6)
    assert decode_output(np.zeros((1, 3, 6), np.float32), 0.0).shape == (0, 6)


@pytest.mark.parametrize("shape", [(1, 4, 5), (2, 4, 6), (6,), (1, 1, 4, 6)])
def test_decode_output_refuses_a_broken_contract(shape: tuple[int, ...]) -> None:
    with pytest.raises(OutputContractError, match="contract"):
        decode_output(np.zeros(shape, np.float32), 0.3)


def test_utm_central_meridian_is_3_degrees_east() -> None:
    lon, lat = to_lonlat(UTM31N, np.array([500000.0]), np.array([0.0]))
    assert lon[0] == pytest.approx(3.0, abs=1e-9) and lat[0] == pytest.approx(0.0, abs=1e-9)


def test_georeference_in_a_geographic_scene_is_plain_affine_arithmetic() -> None:
    # 0.001 degree pixels from (10 E, 50 N); the tile sits at scene pixel (col 100, row 40).
    t = (0.001, 0.0, 10.0, 0.0, -0.001, 50.0)
    f = frame(window=(100, 40, 64, 64), transform=t, crs="EPSG:4326")
    rows = decode_output(out([10, 20, 14, 26, 0.9, 1]), 0.3)
    (dets,) = georeference([(f, rows)], ["ship", "platform"], "m:1")
    (d,) = dets
    assert d.label == "platform" and d.class_id == 1 and d.model == "m:1" and d.frame == "s1/0"
    assert d.box_px == (10, 20, 14, 26)
    assert d.scene_box_px == (110, 60, 114, 66)
    assert d.box_map == pytest.approx((10.110, 49.934, 10.114, 49.940))
    assert d.ring[0] == pytest.approx((10.110, 49.940)) and d.ring[2] == pytest.approx((10.114, 49.934))
    assert d.center == pytest.approx((10.112, 49.937))
    assert not d.cut


def test_georeference_utm_matches_rasterio_per_point_and_batches_frames() -> None:
    f1 = frame(window=(0, 0, 64, 64))
    f2 = frame(window=(48, 48, 64, 64), tile=1, tiles=2)
    r1 = decode_output(out([10, 10, 20, 30, 0.9, 0]), 0.3)
    r2 = decode_output(out([5, 6, 7, 8, 0.8, 0], [30, 30, 40, 40, 0.7, 0]), 0.3)
    d1, d2 = georeference([(f1, r1), (f2, r2)], [], "m:1")
    assert len(d1) == 1 and len(d2) == 2 and d2[0].label == "class0"
    # scene px of d2[1]: (78, 78, 88, 88); centre (83, 83) -> easting 500830, northing 5999170
    lon, lat = warp(UTM31N, "EPSG:4326", [500830.0], [5999170.0])
    assert d2[1].center == pytest.approx((lon[0], lat[0]), abs=1e-12)
    assert d2[1].box_map == pytest.approx((500780.0, 5999120.0, 500880.0, 5999220.0))
    lon, lat = warp(UTM31N, "EPSG:4326", [500100.0], [6000000.0 - 100.0])
    assert d1[0].ring[0] == pytest.approx((lon[0], lat[0]), abs=1e-12)


def test_boxes_are_clipped_to_the_valid_window_and_padding_boxes_dropped() -> None:
    f = frame(window=(0, 0, 40, 30))  # a scene smaller than the tile: the rest is padding
    rows = decode_output(out([35, 25, 50, 50, 0.9, 0], [45, 5, 60, 10, 0.8, 0], [-3, -3, 2, 2, 0.7, 0]), 0.3)
    (dets,) = georeference([(f, rows)], [], "m:1")
    assert [d.box_px for d in dets] == [(35, 25, 40, 30), (0, 0, 2, 2)]
    assert not any(d.cut for d in dets)  # scene edges, not tile edges


def test_boxes_on_inner_tile_edges_are_cut() -> None:
    f = frame(window=(48, 0, 64, 64))
    rows = decode_output(out([0, 10, 5, 15, 0.9, 0], [20, 0, 25, 5, 0.8, 0], [60, 10, 64, 15, 0.7, 0]), 0.3)
    (dets,) = georeference([(f, rows)], [], "m:1")
    # left edge (col_off > 0): cut; top edge at row 0 of the scene: not cut; right edge: cut
    assert [d.cut for d in dets] == [True, False, True]


def det(box, score=0.9, cls=0, tile=0, cut=False) -> wire.Detection:
    return wire.Detection(
        cls,
        "ship",
        score,
        box,
        box,
        box,
        ((0, 0), (1, 0), (1, 1), (0, 1)),
        (0.5, 0.5),
        cut=cut,
        model="m:1",
        scene="s",
        tile=tile,
        frame=f"s/{tile}",
    )


def test_merge_reports_an_object_seen_by_two_tiles_once_preferring_the_uncut_box() -> None:
    cut = det((60, 10, 64, 20), score=0.95, tile=0, cut=True)
    whole = det((60, 10, 68, 20), score=0.9, tile=1)
    other = det((200, 200, 210, 210), score=0.5, tile=1)
    merged = merge([cut, whole, other])
    assert len(merged) == 2
    assert merged[0].scene_box_px == whole.scene_box_px and merged[0].score == 0.95
    assert merged[0].tiles == (0, 1)
    assert merged[1].tiles == (1,)


def test_merge_is_class_aware_and_keeps_neighbours() -> None:
    assert len(merge([det((0, 0, 10, 10)), det((0, 0, 10, 10), cls=1)])) == 2
    assert len(merge([det((0, 0, 10, 10)), det((9, 0, 19, 10))])) == 2
    assert same_object((0, 0, 10, 10), (1, 1, 11, 11))
    assert not same_object((0, 0, 10, 10), (10, 0, 20, 10))


def test_tile_and_scene_results_round_trip() -> None:
    f = frame(window=(48, 0, 64, 64))
    (dets,) = georeference([(f, decode_output(out([0, 10, 5, 15, 0.9, 0]), 0.3))], ["ship"], "m:1")
    t = wire.TileResult(
        feed="f",
        frame="s1/0",
        scene="s1",
        tile=0,
        tiles=1,
        model="m:1",
        crs=UTM31N,
        window=(48, 0, 64, 64),
        acquired="2026-01-01T00:00:00Z",
        published_ms=1,
        done_ms=5,
        detections=tuple(dets),
    )
    fields = wire.encode_tile(t)
    assert fields["v"] == "1" and fields["count"] == "1" and fields["model"] == "m:1"
    back = wire.decode_tile({k.encode(): v.encode() for k, v in fields.items()})
    assert back.frame == t.frame and back.window == t.window and len(back.detections) == 1
    b, d = back.detections[0], dets[0]
    assert b.scene_box_px == d.scene_box_px and b.label == "ship" and b.cut == d.cut
    assert b.center == pytest.approx(d.center, abs=1e-7)
    doc = wire.tile_geojson(t)
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    assert doc["type"] == "FeatureCollection" and len(ring) == 5 and ring[0] == ring[-1]
    s = wire.SceneResult(
        feed="f",
        scene="s1",
        tiles=1,
        models=("m:1",),
        crs=UTM31N,
        acquired="2026-01-01T00:00:00Z",
        done_ms=6,
        detections_in=1,
        detections=tuple(merge(dets)),
    )
    back_s = wire.decode_scene(wire.scene_json(s))
    assert back_s.detections[0].tiles == (0,) and back_s.models == ("m:1",)
    with pytest.raises(wire.DetectionFormatError, match="expected a scene"):
        wire.decode_scene(wire.tile_json(t))
    with pytest.raises(wire.DetectionFormatError, match="version"):
        wire.decode_tile(wire.tile_json(t).replace('"v":1', '"v":3'))  # 2: results with regions


@pytest.mark.parametrize("e", [-10.0, 10.0])  # north-up and south-up scenes
def test_feature_rings_are_closed_and_counter_clockwise(e: float) -> None:
    t = (10.0, 0.0, 500000.0, 0.0, e, 6000000.0)
    f = frame(window=(0, 0, 64, 64), transform=t)
    (dets,) = georeference([(f, decode_output(out([10, 10, 20, 30, 0.9, 0]), 0.3))], [], "m:1")
    ring = wire.feature(dets[0])["geometry"]["coordinates"][0]
    assert len(ring) == 5 and ring[0] == ring[-1]
    area = sum(ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1] for i in range(4)) / 2
    assert area > 0
    assert ring[0] == pytest.approx(list(dets[0].ring[0]), abs=1e-7)


def test_boxes_that_cannot_reach_lon_lat_are_an_error_not_garbage() -> None:
    f = frame(transform=(10.0, 0.0, 1e12, 0.0, -10.0, 1e12))  # far outside UTM's domain
    with pytest.raises(ConsumerError, match="lon/lat"):
        georeference([(f, decode_output(out([1, 1, 5, 5, 0.9, 0]), 0.3))], [], "m:1")
    with pytest.raises(ConsumerError, match="coordinate reference system"):
        check_crs("EPSG:999999")
    check_crs(UTM31N)


def test_the_scene_minimum_is_the_smallest_and_none_while_a_tile_has_no_regions_to_merge() -> None:
    from consumers.segment import scene_minimum

    def tile(i: int, minimum: tuple[int, ...] = (0, 500, 0), segmented: bool = True) -> wire.TileResult:
        return wire.TileResult(
            feed="f",
            frame=f"s1/{i}",
            scene="s1",
            tile=i,
            tiles=3,
            model="seg:1",
            crs=UTM31N,
            window=(0, 0, 64, 64),
            acquired="2026-01-01T00:00:00Z",
            published_ms=1,
            done_ms=5,
            simplify_px=1.0 if segmented else None,
            min_region_px=minimum if segmented else (),
        )

    assert scene_minimum([tile(0), tile(1), tile(2)]) == (0, 500, 0)
    # a model switch mid-scene: per class, the smaller (a class beyond a list's end has none)
    assert scene_minimum([tile(0), tile(1, (0, 200, 40)), tile(2, (0, 900))]) == (0, 200, 0)
    assert scene_minimum([tile(0), tile(1, ()), tile(2)]) == ()  # no minimum, or an older consumer
    assert scene_minimum([tile(0), tile(2)]) == ()  # tile 1's stored result did not decode
    assert scene_minimum([tile(0), tile(1, segmented=False), tile(2)]) == ()  # a detector ran tile 1
