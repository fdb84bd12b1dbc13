"""The tile grid (groundwatch/geometry.py): no GDAL, no Redis."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from groundwatch.frames import PixelWindow
from groundwatch.geometry import MapBounds, grid, is_all_nodata, offsets_px, pad, window_bounds


@pytest.mark.parametrize(
    "length,tile,overlap,expected",
    [
        (1024, 512, 64, [0, 448, 512]),  # last tile shifted back to end at the edge
        (960, 512, 64, [0, 448]),  # exact fit: no extra tile
        (1000, 512, 64, [0, 448, 488]),
        (513, 512, 64, [0, 1]),
        (512, 512, 64, [0]),
        (300, 512, 64, [0]),  # smaller than a tile: one padded tile
        (1, 512, 0, [0]),
        (1024, 512, 0, [0, 512]),
        (10, 4, 3, [0, 1, 2, 3, 4, 5, 6]),
    ],
)
def test_offsets(length: int, tile: int, overlap: int, expected: list[int]) -> None:
    assert offsets_px(length, tile, overlap) == expected


@pytest.mark.parametrize("length", [1, 7, 129, 300, 511, 512, 513, 959, 960, 961, 2048, 2049, 10980])
@pytest.mark.parametrize("tile,overlap", [(512, 64), (128, 16), (256, 0), (100, 99)])
def test_offsets_cover_the_axis_inside_it_with_at_least_the_overlap(
    length: int, tile: int, overlap: int
) -> None:
    offs = offsets_px(length, tile, overlap)
    size = min(tile, length)
    assert offs[0] == 0 and offs[-1] + size == length  # first at the start, last ends at the edge
    assert all(0 <= o and o + size <= length for o in offs)  # inside the scene
    for a, b in itertools.pairwise(offs):
        assert a < b and b - a <= tile - overlap  # no gap, at least the overlap shared
    covered = np.zeros(length, bool)
    for o in offs:
        covered[o : o + size] = True
    assert covered.all()


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        offsets_px(0, 512, 64)
    with pytest.raises(ValueError):
        offsets_px(100, 64, 64)


def test_grid_is_row_major_and_windows_clip_to_small_scenes() -> None:
    g = grid(width_px=1000, height_px=300, tile_px=512, overlap_px=64)
    assert g == [PixelWindow(0, 0, 512, 300), PixelWindow(448, 0, 512, 300), PixelWindow(488, 0, 512, 300)]
    assert grid(100, 50, 512, 64) == [PixelWindow(0, 0, 100, 50)]


def test_pad_puts_data_top_left_and_fills_the_rest() -> None:
    a = np.arange(6, dtype="uint16").reshape(1, 2, 3) + 1
    out = pad(a, 4, fill=9)
    assert out.shape == (1, 4, 4) and out.dtype == a.dtype
    np.testing.assert_array_equal(out[:, :2, :3], a)
    assert (out[:, 2:, :] == 9).all() and (out[:, :, 3:] == 9).all()
    assert (pad(a, 4, fill=None)[:, 2:, :] == 0).all()
    full = np.ones((2, 4, 4), "uint8")
    assert pad(full, 4, 0) is full
    with pytest.raises(ValueError):
        pad(np.ones((1, 5, 2)), 4, 0)


def test_all_nodata() -> None:
    z = np.zeros((2, 3, 3), "uint16")
    assert is_all_nodata(z, 0)
    assert not is_all_nodata(z, None)  # no nodata value: never skipped
    z[1, 2, 2] = 5
    assert not is_all_nodata(z, 0)
    n = np.full((1, 2, 2), np.nan, "float32")
    assert is_all_nodata(n, float("nan"))
    n[0, 0, 0] = 1.0
    assert not is_all_nodata(n, float("nan"))
    assert is_all_nodata(np.full((1, 2, 2), -9999.0, "float32"), -9999.0)


def test_window_bounds_in_map_units() -> None:
    t = (10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
    assert window_bounds(PixelWindow(448, 100, 512, 512), t) == MapBounds(
        504480.0, 4000000.0 - 612 * 10.0, 504480.0 + 5120.0, 3999000.0
    )


# --- the merge and the matcher (the one implementation every role uses) ----------------------


def _random_detections(seed: int, n: int) -> list:
    from groundwatch.detections import Detection

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y = rng.uniform(0, 200, 2)
        w, h = rng.uniform(3, 30, 2)
        box = (float(x), float(y), float(x + w), float(y + h))
        out.append(
            Detection(
                class_id=int(rng.integers(0, 2)),
                label="x",
                score=float(rng.choice([0.5, 0.6, 0.7, 0.8, 0.9])),  # ties on purpose
                box_px=box,
                scene_box_px=box,
                box_map=box,
                ring=((0.0, 0.0),) * 4,
                center=(0.0, 0.0),
                cut=bool(rng.random() < 0.3),
                tile=int(rng.integers(0, 4)),
            )
        )
    return out


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_rows_is_the_merge_of_detections(seed: int) -> None:
    """Evaluation merges [N, 6] rows; the consumers merge Detection objects: the same clusters."""
    from groundwatch.geometry import merge, merge_rows

    dets = _random_detections(seed, 150)
    merged = merge(dets)
    assert len(merged) < len(dets)  # overlaps were merged
    rows = np.array([[*d.scene_box_px, d.score, d.class_id] for d in dets])
    got = merge_rows(rows, np.array([d.cut for d in dets]), np.array([d.tile for d in dets]))
    want = np.array([[*d.scene_box_px, d.score, d.class_id] for d in merged])
    np.testing.assert_array_equal(got, want)


def test_match_is_greedy_by_score_one_to_one_and_class_aware() -> None:
    from groundwatch.geometry import match

    ref = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float64)
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 0, 30, 10], [40, 40, 50, 50]], np.float64)
    scores = np.array([0.5, 0.9, 0.8, 0.99])
    # the best-scored box near ref 0 takes it; the other has no unmatched ref left
    assert sorted(match(boxes, scores, np.zeros(4), ref, np.zeros(2))) == [(1, 0), (2, 1)]
    # a box of another class never matches
    assert match(boxes[:1], scores[:1], np.array([1]), ref[:1], np.array([0])) == []
    # a taken ref falls through to the next best unmatched one above the bound
    wide = np.array([[0, 0, 30, 10]], np.float64)
    assert match(wide, [0.9], [0], np.array([[0, 0, 20, 10], [0, 0, 25, 10]]), [0, 0]) == [(0, 1)]
    assert match(np.zeros((0, 4)), [], [], ref, [0, 0]) == []
