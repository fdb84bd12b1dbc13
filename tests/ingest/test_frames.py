"""The frame wire format (groundwatch/frames.py): round trips and strict validation."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from groundwatch import frames, keys
from groundwatch.frames import Frame, FrameError, PixelWindow

ACQ = datetime(2026, 11, 25, 10, 31, 7, tzinfo=UTC)
DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def make(array: np.ndarray, **kw: Any) -> Frame:
    _c, h, w = array.shape
    args: dict[str, Any] = dict(
        scene="S2A_T31UDQ.x-1",
        tile=1,
        tiles=3,
        window=(256, 128, w, h),
        transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0),
        crs="EPSG:32631",
        acquired=ACQ,
        published_ms=1795643574703,
    )
    args.update(kw)
    return Frame.from_array(array, **args)


@pytest.mark.parametrize(
    "dtype,name",
    [
        ("uint8", "UINT8"),
        ("int8", "INT8"),
        ("uint16", "UINT16"),
        ("int16", "INT16"),
        ("int32", "INT32"),
        ("int64", "INT64"),
        ("float32", "FLOAT"),
        ("float64", "DOUBLE"),
    ],
)
def test_round_trip_every_dtype(dtype: str, name: str) -> None:
    a = (np.arange(2 * 5 * 7) - 3).astype(dtype).reshape(2, 5, 7)
    f = make(a, nodata=0, bands=(4, 2))
    fields = frames.encode(f)
    assert fields["dtype"] == name
    assert fields["shape"] == "2,5,7"
    assert fields["frame"] == "S2A_T31UDQ.x-1/1"
    assert len(fields["data"]) == a.nbytes  # native size: no float inflation
    back = frames.decode({k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()})
    assert back == f
    np.testing.assert_array_equal(back.array(), a)
    assert back.array().dtype == a.dtype.newbyteorder("<")


def test_data_is_little_endian_c_order() -> None:
    a = np.array([[[1, 2], [3, 258]]], dtype=">u2")  # big-endian input is converted
    assert frames.encode(make(a))["data"] == b"\x01\x00\x02\x00\x03\x00\x02\x01"


def test_fields_are_text_and_exact() -> None:
    f = make(
        np.zeros((1, 4, 4), "float32"),
        nodata=float("nan"),
        source="a.tif",
        transform=(0.1, 0.0, 2.35, 0.0, -0.1, 48.85),
        crs="EPSG:4326",
    )
    fields = frames.encode(f)
    assert fields["acquired"] == "2026-11-25T10:31:07Z"
    assert fields["window"] == "256,128,4,4"
    assert fields["transform"] == "0.1,0,2.35,0,-0.1,48.85"
    assert fields["nodata"] == "nan"
    back = frames.decode(fields)
    assert back.nodata is not None and np.isnan(back.nodata)
    assert back.transform == f.transform and back.source == "a.tif"


def test_tile_transform_moves_origin_to_window() -> None:
    f = make(np.zeros((1, 4, 4), "uint8"))
    a, b, c, d, e, ff = f.tile_transform()
    assert (a, b, d, e) == (10.0, 0.0, 0.0, -10.0)
    assert c == 500000.0 + 256 * 10.0 and ff == 4000000.0 - 128 * 10.0


def test_valid_excludes_padding() -> None:
    a = np.arange(16, dtype="uint8").reshape(1, 4, 4)
    f = make(a, window=(0, 0, 3, 2))
    np.testing.assert_array_equal(f.valid(), a[:, :2, :3])


def test_unknown_fields_are_ignored_and_kept() -> None:
    fields = frames.encode(make(np.zeros((1, 2, 2), "uint8")))
    fields["x-station"] = "svalbard"
    assert frames.decode(fields).extra == {"x-station": b"svalbard"}


def _broken(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(frames.encode(make(np.zeros((2, 4, 4), "uint16"), nodata=0)))
    for k, v in changes.items():
        if v is None:
            del fields[k]
        else:
            fields[k] = v
    return fields


@pytest.mark.parametrize(
    "changes,field,pattern",
    [
        ({"data": None}, "data", r"missing field\(s\) data"),
        ({"v": "2"}, "v", r"unsupported frame version '2'"),
        ({"data": b"\x00" * 63}, "data", r"63 bytes but shape 2,4,4 of UINT16 needs 64"),
        ({"shape": "2,4"}, "shape", r"C,H,W"),
        ({"shape": "2,4,-4"}, "shape", r"C,H,W"),
        ({"dtype": "float32"}, "dtype", r"use one of UINT8"),
        ({"tile": "3"}, "tile", r"not in 0..2"),
        ({"tiles": "0"}, "tile", r"not in"),
        ({"tile": "x"}, "tile", r"non-negative integer"),
        ({"frame": "other/1"}, "frame", r"scene and tile make it"),
        ({"scene": "a/b", "frame": "a/b/1"}, "scene", r"scene id 'a/b' is not valid"),
        ({"window": "0,0,5,4"}, "window", r"width <= 4"),
        ({"window": "0,0,4"}, "window", r"four integers"),
        ({"transform": "10,0,5,0,-10"}, "transform", r"six finite numbers"),
        ({"transform": "0,0,5,0,0,7"}, "transform", r"invertible"),
        ({"transform": "10,0,nan,0,-10,4"}, "transform", r"six finite numbers"),
        ({"crs": " "}, "crs", r"crs is empty"),
        ({"acquired": "2026-11-25 10:31"}, "acquired", r"UTC offset"),
        ({"acquired": "yesterday"}, "acquired", r"ISO 8601"),
        ({"published": "1.5"}, "published", r"milliseconds"),
        ({"nodata": "70000"}, "nodata", r"not a value of UINT16"),
        ({"nodata": "zero"}, "nodata", r"must be a number"),
        ({"bands": "1"}, "bands", r"must list 2 band numbers"),
        ({"dtype": b"\xff"}, "dtype", r"ASCII"),
    ],
)
def test_decode_rejects_with_clear_reason(changes: dict[str, Any], field: str, pattern: str) -> None:
    with pytest.raises(FrameError, match=pattern) as info:
        frames.decode(_broken(**changes))
    assert info.value.field == field


def test_encode_refuses_types_the_engine_lacks() -> None:
    with pytest.raises(FrameError, match="uint32 -> int64"):
        make(np.zeros((1, 2, 2), "uint32"))


def test_naive_acquired_time_is_refused() -> None:
    with pytest.raises(FrameError, match="UTC offset"):
        frames.decode(_broken(acquired="2026-11-25T10:31:07"))


def test_offsets_other_than_utc_are_converted() -> None:
    f = frames.decode(_broken(acquired="2026-11-25T12:31:07+02:00"))
    assert f.acquired == ACQ and frames.encode(f)["acquired"] == "2026-11-25T10:31:07Z"


def test_windows_are_pixel_windows() -> None:
    assert make(np.zeros((1, 2, 2), "uint8")).window == PixelWindow(256, 128, 2, 2)


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_the_documented_redis_cli_example_is_a_valid_frame(r: redis.Redis) -> None:
    """docs/protocol.md's hand-published tile, run as written (against the test server)."""
    block = re.search(r"```sh\n(printf .*?)\n```", DOC.read_text(), re.S)
    assert block is not None, "docs/protocol.md lost its redis-cli example"
    port = r.connection_pool.connection_kwargs["port"]
    script = block.group(1).replace("redis-cli -x", f"redis-cli -p {port} -x", 1)
    subprocess.run(["bash", "-c", script], check=True, capture_output=True)
    [(_id, fields)] = r.xrange(keys.frames("default"))
    f = frames.decode(fields)
    assert f.frame_id == "hand-1/0" and f.tiles == 1 and f.crs == "EPSG:32631"
    np.testing.assert_array_equal(f.array(), [[[0, 16, 32], [48, 64, 80]]])
