"""Property tests of the wire formats: decoders raise only their own error, whatever the bytes;
encode/decode round-trips.

Frames (groundwatch/frames.py, FrameError), detections (groundwatch/detections.py,
DetectionFormatError) and model metadata (groundwatch/modelmeta.py, MetadataError). Any other
exception escaping a decoder fails the test with the input Hypothesis shrank it to.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groundwatch import detections, frames, modelmeta
from groundwatch.detections import Detection, DetectionFormatError, SceneResult, TileResult
from groundwatch.frames import Frame, FrameError
from groundwatch.modelmeta import MetadataError, ModelMetadata

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- frames ----------------------------------------------------------------------------------

ACQ = datetime(2026, 11, 25, 10, 31, 7, tzinfo=UTC)


def good_fields() -> dict[bytes, bytes]:
    f = Frame.from_array(
        np.arange(12, dtype=np.uint16).reshape(1, 3, 4),
        scene="S1",
        tile=0,
        tiles=2,
        window=(0, 0, 4, 3),
        transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0),
        crs="EPSG:32631",
        acquired=ACQ,
        published_ms=1795643574703,
        nodata=0,
        bands=(1,),
    )
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in frames.encode(f).items()}


# Values that broke decoders before, or sit on an edge: out-of-range times, int()'s digit limit,
# numbers float() takes but the wire does not write, non-ASCII, trailing newlines.
nasty_text = st.sampled_from(
    [
        b"0001-01-01T00:00:00+01:00",
        b"9999-12-31T23:59:59-01:00",
        b"0001-01-01T00:00:00Z",
        b"5" * 5000,
        b"9" * 19,
        b"-1",
        b"1e400",
        b"nan",
        b"inf,0,0,0,1,0",
        b"1e308,0,0,0,1e308,0",
        b"1_0",
        b"",
        b" ",
        b"\n",
        b"S1\n",
        b"0\n",
        b"\xff\xfe",
        "é".encode(),
        b"1,2,3,4,5,6,7",
        b"0,0,0,0",
        b"1," * 3000,
    ]
)
field_value = st.one_of(nasty_text, st.binary(max_size=64), st.text(max_size=32).map(str.encode))
field_name = st.sampled_from([*frames.REQUIRED, *frames.OPTIONAL, "x"]).map(str.encode)


def _decodes_or_frame_error(entry: Any) -> Frame | None:
    try:
        return frames.decode(entry)
    except FrameError as e:
        assert str(e)  # a reason for the dead letter
        return None


@FUZZ
@given(st.dictionaries(field_name, field_value, max_size=20))
def test_frame_decode_of_any_field_map_raises_only_frame_error(entry: dict[bytes, bytes]) -> None:
    _decodes_or_frame_error(entry)


@FUZZ
@given(st.lists(st.tuples(field_name, field_value), min_size=1, max_size=4))
def test_frame_decode_of_a_damaged_frame_raises_only_frame_error(changes: list[tuple[bytes, bytes]]) -> None:
    entry = good_fields()
    for name, value in changes:
        entry[name] = value
    _decodes_or_frame_error(entry)


@FUZZ
@given(st.sampled_from(sorted(good_fields())), st.booleans())
def test_frame_decode_without_a_field_or_truncated(name: bytes, truncate: bool) -> None:
    entry = good_fields()
    if truncate:
        entry[name] = entry[name][: len(entry[name]) // 2]
    else:
        del entry[name]
    _decodes_or_frame_error(entry)


def test_frame_decode_of_wrong_python_types() -> None:
    for entry in (None, 3, b"v", [(b"v", b"1")], {b"v": None}, {b"v": [1]}):
        with pytest.raises(FrameError):
            frames.decode(entry)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name,value",
    [
        (b"acquired", b"0001-01-01T00:00:00+01:00"),  # the OverflowError
        (b"acquired", b"9999-12-31T23:59:59-01:00"),
        (b"tile", b"5" * 5000),  # the int() digit limit
        (b"published", b"5" * 5000),
        (b"shape", b"1,3," + b"4" * 5000),
        (b"scene", b"S1\n"),  # '$' used to accept a trailing newline
        (b"transform", b"1e200,0,0,0,1e200,0"),  # determinant overflows to inf
    ],
    ids=[
        "acquired-year1",
        "acquired-year9999",
        "tile-5000-digits",
        "published-5000-digits",
        "shape-5000-digits",
        "scene-newline",
        "transform-overflow",
    ],
)
def test_frame_decode_reproductions(name: bytes, value: bytes) -> None:
    entry = good_fields()
    entry[name] = value
    with pytest.raises(FrameError) as info:
        frames.decode(entry)
    assert info.value.field in (name.decode(), "frame")


dtypes = st.sampled_from(list(frames.DTYPES))
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
nonzero = finite.filter(lambda x: 1e-100 < abs(x) < 1e100)
times = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 1, 1)).map(
    lambda t: t.replace(tzinfo=timezone(timedelta(hours=5, minutes=30)))
)


@st.composite
def valid_frames(draw: st.DrawFn) -> Frame:
    dtype = draw(dtypes)
    c, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    data = draw(st.binary(min_size=c * h * w * frames.DTYPES[dtype].itemsize, max_size=c * h * w * 8))
    data = data[: c * h * w * frames.DTYPES[dtype].itemsize]
    tiles = draw(st.integers(1, 10**17))
    nodata: float | None = None
    if draw(st.booleans()):
        dt = frames.DTYPES[dtype]
        if dt.kind in "iu":
            info = np.iinfo(dt)
            nodata = float(draw(st.integers(max(int(info.min), -(2**52)), min(int(info.max), 2**52))))
        else:
            nodata = draw(st.floats(allow_infinity=False, width=32 if dtype == "FLOAT" else 64))
    arr = np.frombuffer(data, dtype=frames.DTYPES[dtype]).reshape(c, h, w)
    return Frame.from_array(
        arr,
        scene=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", fullmatch=True)),
        tile=draw(st.integers(0, tiles - 1)),
        tiles=tiles,
        window=(
            draw(st.integers(0, 10**12)),
            draw(st.integers(0, 10**12)),
            draw(st.integers(1, w)),
            draw(st.integers(1, h)),
        ),
        transform=(draw(nonzero), 0.0, draw(finite), 0.0, draw(nonzero), draw(finite)),
        crs=draw(st.sampled_from(["EPSG:32631", "EPSG:4326", 'PROJCS["x",GEOGCS["y"]]'])),
        acquired=draw(times),
        published_ms=draw(st.integers(0, 10**17)),
        nodata=nodata,
        bands=tuple(draw(st.lists(st.integers(1, 10**6), min_size=c, max_size=c)))
        if draw(st.booleans())
        else None,
        source=draw(st.none() | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)),
    )


@FUZZ
@given(valid_frames())
def test_frame_encode_decode_round_trip(frame: Frame) -> None:
    wire = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in frames.encode(frame).items()}
    back = frames.decode(wire)
    if frame.nodata is not None and math.isnan(frame.nodata):
        assert back.nodata is not None and math.isnan(back.nodata)
        back = Frame(**{**back.__dict__, "nodata": frame.nodata})
    assert back == frame
    assert back.acquired.tzinfo is not None and back.acquired.utcoffset() == timedelta(0)
    assert np.array_equal(back.array(), frame.array(), equal_nan=frame.dtype in ("FLOAT", "DOUBLE"))


# --- detections ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)

coord = st.floats(-1e6, 1e6, allow_nan=False)
lonlat = st.tuples(st.floats(-180, 180), st.floats(-90, 90))


@st.composite
def dets(draw: st.DrawFn) -> Detection:
    box = (draw(coord), draw(coord), draw(coord), draw(coord))
    return Detection(
        class_id=draw(st.integers(0, 1000)),
        label=draw(st.text(max_size=10)),
        score=draw(st.floats(0, 1)),
        box_px=box,
        scene_box_px=box,
        box_map=(draw(coord), draw(coord), draw(coord), draw(coord)),
        ring=tuple(draw(lonlat) for _ in range(4)),
        center=draw(lonlat),
        cut=draw(st.booleans()),
        model="m:1",
        scene="S1",
        tile=draw(st.integers(0, 10**6)),
        frame="S1/0",
        tiles=tuple(draw(st.lists(st.integers(0, 100), max_size=4))),
    )


@st.composite
def tile_results(draw: st.DrawFn) -> TileResult:
    return TileResult(
        feed="f",
        frame="S1/0",
        scene="S1",
        tile=draw(st.integers(0, 10**9)),
        tiles=draw(st.integers(1, 10**9)),
        model=draw(st.text(max_size=12)),
        crs="EPSG:32631",
        window=(draw(st.integers(0, 10**9)), 0, 512, draw(st.integers(1, 512))),
        acquired="2026-11-25T10:31:07Z",
        published_ms=draw(st.integers(0, 10**15)),
        done_ms=draw(st.integers(0, 10**15)),
        detections=tuple(draw(st.lists(dets(), max_size=3))),
    )


@st.composite
def scene_results(draw: st.DrawFn) -> SceneResult:
    return SceneResult(
        feed="f",
        scene=draw(st.text(max_size=12)),
        tiles=draw(st.integers(1, 10**9)),
        models=tuple(draw(st.lists(st.text(max_size=6), max_size=3))),
        crs="EPSG:4326",
        acquired="2026-11-25T10:31:07Z",
        done_ms=draw(st.integers(0, 10**15)),
        detections_in=draw(st.integers(0, 10**6)),
        detections=tuple(draw(st.lists(dets(), max_size=3))),
    )


def _decode_or_format_error(decode: Any, source: Any) -> Any:
    try:
        return decode(source)
    except DetectionFormatError as e:
        assert str(e)
        return None


def _mutate(doc: Any, path: list[int], value: Any) -> Any:
    """`doc` with the node chosen by `path` (indices into each level's members) replaced."""
    if not path or not isinstance(doc, dict | list) or not doc:
        return value
    if isinstance(doc, dict):
        key = sorted(doc)[path[0] % len(doc)]
        return {**doc, key: _mutate(doc[key], path[1:], value)}
    i = path[0] % len(doc)
    return [*doc[:i], _mutate(doc[i], path[1:], value), *doc[i + 1 :]]


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200), json_values.map(json.dumps)))
def test_detection_decoders_on_any_text_raise_only_their_error(text: Any) -> None:
    _decode_or_format_error(detections.decode_tile, text)
    _decode_or_format_error(detections.decode_scene, text)
    _decode_or_format_error(detections.decode_tile, {b"geojson": text})
    _decode_or_format_error(detections.decode_scene, {"geojson": text, b"\xff": b"x"})


@FUZZ
@given(tile_results(), scene_results(), st.lists(st.integers(0, 50), max_size=6), json_values)
def test_detection_decoders_on_damaged_results_raise_only_their_error(
    t: TileResult, s: SceneResult, path: list[int], value: Any
) -> None:
    for decode, doc in (
        (detections.decode_tile, detections.tile_geojson(t)),
        (detections.decode_scene, detections.scene_geojson(s)),
    ):
        _decode_or_format_error(decode, json.dumps(_mutate(doc, path, value)))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # RecursionError in json
        '{"groundwatch": {"v": 1, "kind": "tile"}, "features": 3}',
        '{"groundwatch": [1], "features": []}',
        '{"groundwatch": {"v": 1, "kind": "tile", "tile": Infinity}, "features": []}',
        '{"groundwatch": {"v": 1, "kind": "tile", "tile": ' + "9" * 5000 + "}}",
    ],
    ids=["deep-nesting", "features-not-a-list", "header-not-an-object", "tile-infinity", "tile-5000-digits"],
)
def test_detection_decoder_reproductions(text: str) -> None:
    with pytest.raises(DetectionFormatError):
        detections.decode_tile(text)


@FUZZ
@given(tile_results())
def test_tile_result_round_trip(t: TileResult) -> None:
    fields = detections.encode_tile(t)
    back = detections.decode_tile(fields)
    assert (back.feed, back.frame, back.scene, back.tile, back.tiles, back.model, back.crs) == (
        t.feed,
        t.frame,
        t.scene,
        t.tile,
        t.tiles,
        t.model,
        t.crs,
    )
    assert (back.window, back.acquired, back.published_ms, back.done_ms) == (
        t.window,
        t.acquired,
        t.published_ms,
        t.done_ms,
    )
    assert len(back.detections) == len(t.detections)
    for d, b in zip(t.detections, back.detections, strict=True):
        assert (b.class_id, b.label, b.cut, b.tile, b.tiles) == (d.class_id, d.label, d.cut, d.tile, d.tiles)
        assert b.score == pytest.approx(d.score, abs=1e-4)
        assert b.box_px == pytest.approx(d.box_px, abs=0.01)
    # The wire rounds (7 decimals for lon/lat, 2 for pixels): one trip is a projection.
    assert detections.encode_tile(back) == fields
    # tile_json is the compact JSON of tile_geojson, whether its features were encoded before or not
    whole = json.dumps(detections.tile_geojson(t), separators=(",", ":"), allow_nan=False)
    assert detections.tile_json(t) == whole
    early = replace(t, encoded_features=detections.features_json(t))
    assert detections.tile_json(replace(early, done_ms=t.done_ms + 1)) == detections.tile_json(
        replace(t, done_ms=t.done_ms + 1)
    )


@FUZZ
@given(scene_results())
def test_scene_result_round_trip(s: SceneResult) -> None:
    fields = detections.encode_scene(s)
    back = detections.decode_scene(fields)
    assert (back.scene, back.tiles, back.models, back.done_ms, back.detections_in) == (
        s.scene,
        s.tiles,
        s.models,
        s.done_ms,
        s.detections_in,
    )
    assert len(back.detections) == len(s.detections)
    assert detections.encode_scene(back) == fields


# --- model metadata --------------------------------------------------------------------------

META = {
    "contract": 1,
    "classes": ["ship"],
    "bands": 1,
    "dtype": "uint16",
    "tile_size": 64,
    "max_detections": 8,
}


def archive(meta_bytes: bytes = json.dumps(META).encode(), compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip laid out as torch.jit.save writes it (no torch needed to read metadata)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as z:
        z.writestr("m/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("m/code/__torch__.py", b"def f(): pass\n")
        z.writestr("m/extra/groundwatch.json", meta_bytes)
    return buf.getvalue()


def _read_or_metadata_error(blob: Any) -> ModelMetadata | None:
    try:
        return modelmeta.read(blob, "fuzz")
    except MetadataError as e:
        assert str(e)
        return None


@FUZZ
@given(st.binary(max_size=400))
def test_metadata_read_of_any_bytes_raises_only_metadata_error(blob: bytes) -> None:
    _read_or_metadata_error(blob)
    _read_or_metadata_error(b"PK\x03\x04" + blob)


@FUZZ
@given(
    st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_metadata_read_of_a_damaged_archive_raises_only_metadata_error(
    compression: int, flips: list[tuple[int, int]]
) -> None:
    blob = bytearray(archive(compression=compression))
    for at, byte in flips:
        blob[at % len(blob)] = byte
    _read_or_metadata_error(bytes(blob))


@FUZZ
@given(json_values)
def test_metadata_of_any_json_raises_only_metadata_error(value: Any) -> None:
    _read_or_metadata_error(archive(json.dumps(value).encode()))
    if isinstance(value, dict):
        _read_or_metadata_error(archive(json.dumps({**META, **value}).encode()))


def test_metadata_bad_crc_is_a_clear_error() -> None:
    blob = archive()
    body = json.dumps(META).encode()
    at = blob.index(body)
    damaged = blob[:at] + body.replace(b"ship", b"shiq") + blob[at + len(body) :]
    with pytest.raises(MetadataError, match="damaged"):
        modelmeta.read(damaged, "model x")


def test_metadata_size_is_capped() -> None:
    big = json.dumps({**META, "pad": " " * modelmeta.MAX_METADATA_BYTES}).encode()
    with pytest.raises(MetadataError, match="at most"):
        modelmeta.read(archive(big, zipfile.ZIP_DEFLATED), "model x")
    with pytest.raises(MetadataError, match="not valid JSON"):
        modelmeta.read(archive(b"[" * 200_000, zipfile.ZIP_DEFLATED), "model x")


@FUZZ
@given(
    st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4),
    st.integers(1, 64),
    st.sampled_from(modelmeta.DTYPES),
    st.integers(1, 4096),
    st.integers(1, 1000),
    st.none() | st.floats(0, 1),
)
def test_metadata_round_trip(
    classes: list[str], bands: int, dtype: str, tile: int, k: int, hint: float | None
) -> None:
    m = ModelMetadata(tuple(classes), bands, dtype, tile, k, hint)
    assert modelmeta.read(archive(json.dumps(m.as_dict()).encode()), "x") == m
