"""Segmentation geometry (groundwatch.regions, geometry.core_window) and the region wire format."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groundwatch import detections as wire
from groundwatch import geometry, regions
from groundwatch.frames import PixelWindow
from groundwatch.geometry import OutputContractError
from groundwatch.modelmeta import MetadataError, ModelMetadata

META = ModelMetadata.from_dict(
    {"contract": 2, "classes": ["sea", "land", "slick"], "bands": 1, "dtype": "uint16", "tile_size": 64}
)


@pytest.mark.parametrize(
    ("w", "h", "tile", "overlap"),
    [(160, 160, 64, 16), (2048, 2048, 512, 64), (1000, 700, 512, 64), (50, 300, 64, 10), (130, 130, 64, 63)],
)
def test_the_cores_of_a_grid_cover_every_pixel_once_inside_their_windows(
    w: int, h: int, tile: int, overlap: int
) -> None:
    cover = np.zeros((h, w), dtype=int)
    for win in geometry.grid(w, h, tile, overlap):
        core = geometry.core_window(win, w, h, tile, overlap)
        assert win.col_off <= core.col_off and core.col_off + core.width <= win.col_off + win.width
        assert win.row_off <= core.row_off and core.row_off + core.height <= win.row_off + win.height
        cover[core.row_off : core.row_off + core.height, core.col_off : core.col_off + core.width] += 1
    assert (cover == 1).all()


def test_a_pixel_belongs_to_the_tile_whose_centre_is_nearest() -> None:
    wins = geometry.grid(160, 64, 64, 16)  # columns start at 0, 48, 96
    cores = [geometry.core_window(win, 160, 64, 64, 16) for win in wins]
    for x in range(160):
        owner = next(i for i, c in enumerate(cores) if c.col_off <= x < c.col_off + c.width)
        dists = [abs(x + 0.5 - (win.col_off + 32)) for win in wins]
        assert dists[owner] == min(dists) and owner == dists.index(min(dists))  # ties: the first


def test_a_window_off_the_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="not a tile"):
        geometry.core_window(PixelWindow(5, 0, 64, 64), 160, 64, 64, 16)


def _tiled_pieces(mask: np.ndarray, prob: np.ndarray, tile: int, overlap: int) -> list[regions.Piece]:
    h, w = mask.shape
    pieces = []
    for i, win in enumerate(geometry.grid(w, h, tile, overlap)):
        core = geometry.core_window(win, w, h, tile, overlap)
        part = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        pieces += regions.vectorise(mask[part], prob[part], win, core, 0, i)
    return pieces


def _disc(h: int, w: int, cy: float, cx: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return (ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2 <= radius**2


def test_a_feature_across_tile_borders_is_one_polygon_with_every_pixel_once() -> None:
    mask = np.zeros((160, 160), dtype=np.int32)
    mask[_disc(160, 160, 56, 56, 30)] = 1  # spans the cores of tiles 0, 1, 3, 4
    mask[120:150, 5:150] = 2  # a band across three tiles
    prob = np.random.default_rng(0).uniform(0.5, 1.0, mask.shape).astype(np.float32)
    pieces = _tiled_pieces(mask, prob, 64, 16)
    assert len(pieces) > 2  # the features were cut by the cores
    merged = regions.merge(pieces)
    assert [p.class_id for p in merged] == [1, 2]
    for p in merged:
        assert p.pixels == int((mask == p.class_id).sum())
        assert p.prob_sum == pytest.approx(float(prob[mask == p.class_id].astype(np.float64).sum()), rel=1e-9)
        assert len(p.tiles) > 1
    back = regions.rasterize([(p.class_id, p.rings_px) for p in merged], 160, 160)
    assert (back == mask).all()  # exact: the union of the pieces is the feature


def test_features_touching_only_at_a_corner_stay_apart() -> None:
    mask = np.zeros((160, 160), dtype=np.int32)
    mask[40:56, 40:56] = 1  # ends at the core border between tiles 0 and 1 (column 56)
    mask[56:70, 56:70] = 1  # starts diagonally across it
    merged = regions.merge(_tiled_pieces(mask, np.ones(mask.shape, np.float32), 64, 16))
    assert sorted(p.pixels for p in merged) == [14 * 14, 16 * 16]


def test_holes_are_kept_and_nothing_is_found_in_an_empty_mask() -> None:
    mask = np.zeros((160, 160), dtype=np.int32)
    ring = _disc(160, 160, 80, 80, 40) & ~_disc(160, 160, 80, 80, 15)
    mask[ring] = 1
    merged = regions.merge(_tiled_pieces(mask, np.ones(mask.shape, np.float32), 64, 16))
    assert len(merged) == 1 and len(merged[0].rings_px) == 2 and merged[0].pixels == int(ring.sum())
    empty = np.zeros((160, 160), dtype=np.int32)
    assert _tiled_pieces(empty, np.ones(empty.shape, np.float32), 64, 16) == []
    assert regions.merge([]) == []


def test_pieces_of_overlapping_whole_windows_unite_too() -> None:
    """Frames without a tile grid vectorise their whole window; the overlap is united once."""
    mask = np.zeros((160, 160), dtype=np.int32)
    mask[_disc(160, 160, 56, 56, 25)] = 1
    pieces = []
    for i, win in enumerate(geometry.grid(160, 160, 64, 16)):
        part = (slice(win.row_off, win.row_off + win.height), slice(win.col_off, win.col_off + win.width))
        pieces += regions.vectorise(mask[part], np.ones((64, 64), np.float32), win, win, 0, i)
    (merged,) = regions.merge(pieces)
    assert merged.pixels == int(mask.sum()) and merged.score == pytest.approx(1.0)


def test_the_minimum_region_area_judges_merged_features_not_pieces() -> None:
    mask = np.zeros((160, 160), dtype=np.int32)
    mask[50:90, 50:90] = 1  # 1600 px across the cores of tiles 0, 1, 3 and 4: tile 0 holds 6x6 px
    mask[10:18, 120:128] = 1  # a 64-px speck inside tile 2's core
    mask[140:143, 10:13] = 2  # a 9-px speck of another class
    pieces = _tiled_pieces(mask, np.ones(mask.shape, np.float32), 64, 16)
    assert min(p.pixels for p in pieces if p.class_id == 1) == 36  # a piece smaller than the speck
    assert [p.pixels for p in regions.merge(pieces)] == [64, 1600, 9]  # the default keeps all
    assert [p.pixels for p in regions.merge(pieces, (0, 100, 0))] == [1600, 9]
    kept = regions.merge(pieces, (0, 1600, 10))
    assert [(p.class_id, p.pixels) for p in kept] == [(1, 1600)] and len(kept[0].tiles) == 4
    assert [p.pixels for p in regions.merge(pieces, (0, 1601))] == [9]  # class 2 is beyond its end


def test_simplifying_keeps_the_shape_within_the_tolerance() -> None:
    mask = _disc(200, 200, 100, 100, 60).astype(np.int32)
    (piece,) = regions.vectorise(
        mask, np.ones(mask.shape, np.float32), PixelWindow(0, 0, 200, 200), PixelWindow(0, 0, 200, 200), 0
    )
    simple = regions.simplify(piece.rings_px, 1.0)
    assert len(simple[0]) < len(piece.rings_px[0]) / 2
    back = regions.rasterize([(1, simple)], 200, 200)
    assert ((back == 1) == (mask == 1)).mean() > 0.995
    assert regions.simplify(piece.rings_px, 0) == piece.rings_px


def test_decoding_checks_the_output_against_contract_2() -> None:
    scores = np.zeros((1, 3, 64, 64), dtype=np.float32)
    scores[0, 0] = 0.7
    scores[0, 2, :10, :10], scores[0, 0, :10, :10] = 0.8, 0.1
    ids, prob = regions.decode_mask(scores, META, 64, 64)
    assert (ids[:10, :10] == 2).all() and ids.sum() == 200 and prob[0, 0] == pytest.approx(0.8)
    for bad, why in [
        (np.zeros((1, 3, 32, 32), np.float32), r"\[1, 3, H, W\]"),
        (np.zeros((1, 2, 64, 64), np.float32), "class probabilities"),
        (np.zeros((2, 3, 64, 64), np.float32), "contract 2"),
        (np.zeros((1, 64, 64), np.float32), "contract 2"),
        (np.full((1, 3, 64, 64), 2.0, np.float32), "softmax"),
        (np.full((1, 3, 64, 64), np.nan, np.float32), "finite"),
    ]:
        with pytest.raises(OutputContractError, match=why):
            regions.decode_mask(bad, META, 64, 64)
    ids_meta = ModelMetadata.from_dict({**META.as_dict(), "output": "class_ids"})
    ids, prob = regions.decode_mask(np.full((1, 1, 64, 64), 2.0, np.float32), ids_meta, 64, 64)
    assert (ids == 2).all() and (prob == 1).all()
    with pytest.raises(OutputContractError, match=r"outside 0\.\.2"):
        regions.decode_mask(np.full((1, 1, 64, 64), 3.0, np.float32), ids_meta, 64, 64)
    with pytest.raises(OutputContractError, match="not integers"):
        regions.decode_mask(np.full((1, 1, 64, 64), 0.5, np.float32), ids_meta, 64, 64)


def test_contract_2_metadata_is_checked() -> None:
    assert META.segmentation and META.max_detections == 0 and META.background == 0 and META.output == "scores"
    assert "max_detections" not in META.as_dict() and META.as_dict()["contract"] == 2
    base = META.as_dict()
    for change, why in [
        ({"output": "boxes"}, "output must be one of"),
        ({"background": 3}, "background must be a class index"),
        ({"contract": 3}, "contracts 1, 2"),
        ({"classes": ["only"]}, "at least 2 classes"),
        ({"min_region_px": -1}, "whole number of pixels >= 0"),
        ({"min_region_px": 2.5}, "whole number of pixels"),
        ({"min_region_px": {"land": "big"}}, r"min_region_px\['land'\]"),
        ({"min_region_px": {"lnad": 10}}, r"'lnad', not among the classes"),
        ({"min_region_px": {"sea": 10}}, "background class 'sea'"),
    ]:
        with pytest.raises(MetadataError, match=why):
            ModelMetadata.from_dict({**base, **change})  # type: ignore[dict-item]
    with pytest.raises(MetadataError, match="max_detections"):
        ModelMetadata.from_dict({**base, "contract": 1})


def test_the_minimum_region_area_comes_from_the_model_unless_the_operator_sets_one() -> None:
    from groundwatch.modelmeta import region_minimum

    assert META.min_region_px == () and region_minimum(None, META) == ()  # default: keep every region
    one = ModelMetadata.from_dict({**META.as_dict(), "min_region_px": 300})
    assert one.min_region_px == (0, 300, 300)  # never the background's
    per = ModelMetadata.from_dict({**META.as_dict(), "min_region_px": {"land": 500}})
    assert per.min_region_px == (0, 500, 0) and per.as_dict()["min_region_px"] == {"land": 500}
    assert ModelMetadata.from_dict(per.as_dict()) == per
    assert ModelMetadata.from_dict({**META.as_dict(), "min_region_px": 0}).min_region_px == ()
    assert region_minimum(None, per) == (0, 500, 0)
    assert region_minimum(40, per) == (0, 40, 40) and region_minimum(0, per) == ()


def _region(**kw: object) -> wire.Region:
    values: dict[str, object] = dict(
        class_id=1,
        label="land",
        score=0.875,
        pixels=12,
        area_m2=1200.0,
        rings_px=(((0.0, 0.0), (0.0, 3.0), (4.0, 3.0), (4.0, 0.0)),),
        rings=(((3.0, 50.0), (3.0, 49.9), (3.1, 49.9), (3.1, 50.0)),),
        model="seg:1",
        scene="s1",
        tile=2,
        frame="s1/2",
    )
    values.update(kw)
    return wire.Region(**values)  # type: ignore[arg-type]


def test_results_with_regions_are_version_2_and_round_trip() -> None:
    tile = wire.TileResult(
        feed="f",
        frame="s1/2",
        scene="s1",
        tile=2,
        tiles=4,
        model="seg:1",
        crs="EPSG:32631",
        window=(0, 0, 64, 64),
        acquired="2026-11-25T10:31:07Z",
        published_ms=1,
        done_ms=2,
        regions=(_region(),),
        transform=(10.0, 0.0, 0.0, 0.0, -10.0, 0.0),
        simplify_px=1.0,
        min_region_px=(0, 500, 0),
    )
    fields = wire.encode_tile(tile)
    assert fields["v"] == "2" and fields["count"] == "1"
    doc = wire.tile_geojson(tile)
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and wire._signed_area(ring) > 0  # closed, counter-clockwise
    back = wire.decode_tile(fields)
    assert back.regions == tile.regions and back.transform == tile.transform and back.simplify_px == 1.0
    assert back.min_region_px == (0, 500, 0)
    before = json.loads(fields["geojson"])  # a result written before min_region_px existed
    del before["groundwatch"]["min_region_px"]
    assert wire.decode_tile(json.dumps(before)).min_region_px == ()  # keeps every region
    plain = wire.TileResult(
        **{**tile.__dict__, "regions": (), "transform": None, "simplify_px": None, "min_region_px": ()}
    )
    assert "min_region_px" not in wire.tile_geojson(plain)["groundwatch"]
    assert wire.encode_tile(plain)["v"] == "1"  # detector feeds keep version 1
    scene = wire.SceneResult(
        feed="f",
        scene="s1",
        tiles=4,
        models=("seg:1",),
        crs="EPSG:32631",
        acquired="2026-11-25T10:31:07Z",
        done_ms=3,
        detections_in=0,
        regions=(_region(tiles=(1, 2)),),
    )
    assert wire.decode_scene(wire.scene_json(scene)).regions == scene.regions
    with pytest.raises(wire.DetectionFormatError, match="region feature"):
        bad = wire.tile_geojson(tile)
        del bad["features"][0]["properties"]["pixels"]
        wire.decode_tile(__import__("json").dumps(bad))
