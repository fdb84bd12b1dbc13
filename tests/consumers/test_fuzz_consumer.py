"""A consumer fed randomised frames (valid, truncated, wrong types, extreme values, misfits,
model poison) among good ones, on a real redis-server with the engine: it never crashes, every
bad frame is a dead letter with a reason, every good frame is published exactly once.

`--fuzz-frames N` sets the count (default 1000 in the suite; the issue's run is 10000). The
counts by reason are printed (pytest -s) and attached to the report.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import redis

from consumers.worker import Consumer
from groundwatch import frames, keys
from groundwatch.settings import Settings
from tests.consumers.helpers import UTM31N, install_model

FEED = "fuzz"
POISON = 12345  # a pixel value that makes the test model raise
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
ACQ = frames.parse_time("2026-11-25T10:31:07Z")


def frame(
    scene: str, array: np.ndarray, transform: tuple[float, ...] = TRANSFORM, crs: str = UTM31N
) -> frames.Frame:
    return frames.Frame.from_array(
        array,
        scene=scene,
        tile=0,
        tiles=1,
        window=(0, 0, array.shape[-1], array.shape[-2]),
        transform=transform,
        crs=crs,
        acquired=ACQ,
        published_ms=1,
    )


def fields(f: frames.Frame) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in frames.encode(f).items()}


def tile(rng: np.random.Generator) -> np.ndarray:
    a = rng.integers(50, 200, size=(1, 64, 64), dtype=np.uint16)
    a[0, rng.integers(4, 60), rng.integers(4, 60)] = 60000
    return a


EXTREME = [
    (b"acquired", b"0001-01-01T00:00:00+01:00"),
    (b"acquired", b"9999-12-31T23:59:59-14:00"),
    (b"tile", b"9" * 5000),
    (b"tiles", b"-3"),
    (b"published", b"1e9"),
    (b"window", b"0,0,999999999999999999,1"),
    (b"window", b"-1,0,8,8"),
    (b"transform", b"nan,0,0,0,-10,0"),
    (b"transform", b"1e308,0,0,0,1e308,0"),
    (b"shape", b"1,64," + b"6" * 40),
    (b"nodata", b"70000"),
    (b"bands", b"0"),
    (b"scene", b"a/b"),
    (b"frame", b"other/0"),
    (b"v", b"2"),
    (b"dtype", b"COMPLEX"),
    (b"crs", b""),
]


def make_entry(kind: str, i: int, rng: np.random.Generator) -> dict[bytes, bytes]:
    """One frames-stream entry of `kind`; every kind but "good" can never become a valid result."""
    scene = f"{kind}-{i}"
    base = fields(frame(scene, tile(rng)))
    if kind == "good":
        return base
    if kind == "truncated":
        return base | {b"data": base[b"data"][: int(rng.integers(0, len(base[b"data"])))]}
    if kind == "missing":
        del base[list(base)[int(rng.integers(0, len(base)))]]
        return base
    if kind == "wrong-type":
        name = [b"tile", b"tiles", b"shape", b"window", b"transform", b"published", b"acquired"][i % 7]
        return base | {name: bytes(rng.integers(128, 256, size=int(rng.integers(1, 30)), dtype=np.uint8))}
    if kind == "extreme":
        name, value = EXTREME[i % len(EXTREME)]
        return base | {name: value}
    if kind == "junk":
        return {
            bytes(rng.integers(0, 256, size=4, dtype=np.uint8)): bytes(
                rng.integers(0, 256, size=16, dtype=np.uint8)
            )
            for _ in range(int(rng.integers(0, 6)))
        } or {b"x": b""}
    if kind == "misfit-bands":
        return fields(frame(scene, np.repeat(tile(rng), 2, axis=0)))
    if kind == "misfit-dtype":
        return fields(frame(scene, tile(rng).astype(np.int32)))
    if kind == "misfit-size":
        return fields(frame(scene, np.zeros((1, 320, 64), np.uint16)))
    if kind == "oversized":
        return fields(frame(scene, np.zeros((1, 256, 256), np.uint16) + 100))  # 128 KB > max_frame_bytes
    if kind == "bad-crs":
        return fields(frame(scene, tile(rng), crs="EPSG:999999"))
    if kind == "off-the-map":
        return fields(frame(scene, tile(rng), transform=(1e12, 0.0, 1e15, 0.0, -1e12, 1e15)))
    if kind == "model-poison":
        a = tile(rng)
        a[0, 0, 0] = POISON
        return fields(frame(scene, a))
    raise AssertionError(kind)


KINDS = {  # share of the entries
    "good": 0.35,
    "truncated": 0.08,
    "missing": 0.06,
    "wrong-type": 0.08,
    "extreme": 0.12,
    "junk": 0.05,
    "misfit-bands": 0.04,
    "misfit-dtype": 0.04,
    "misfit-size": 0.03,
    "oversized": 0.02,
    "bad-crs": 0.04,
    "off-the-map": 0.05,
    "model-poison": 0.04,
}


def reason_class(why: str) -> str:
    m = re.match(r"bad frame: (?:field )?'?(\w+)'?", why)
    if why.startswith("bad frame") and "max_frame_bytes" in why:
        return "bad frame: over max_frame_bytes"
    if why.startswith("bad frame: not a frame"):
        return "bad frame: missing fields"
    if m and why.startswith("bad frame: field"):
        return f"bad frame: field {m.group(1)}"
    if why.startswith("bad frame"):
        return "bad frame: " + re.sub(r"-?\d[\d.,e+]*", "N", why[len("bad frame: ") :])[:48]
    if why.startswith("does not fit the model"):
        return "misfit: " + ("bands" if "band(s)" in why else "dtype" if "dtype" in why else "tile size")
    if why.startswith("failed"):
        return "model error, failed 3 times"
    return why.split(":")[0]


def test_a_consumer_survives_randomised_frames(
    engine: redis.Redis, pytestconfig: pytest.Config, record_property: Callable[[str, object], None]
) -> None:
    n = int(pytestconfig.getoption("--fuzz-frames"))
    rng = np.random.default_rng(20261201)
    install_model(engine, FEED, poison_value=POISON)
    names = list(KINDS)
    kinds = rng.choice(names, size=n, p=np.array(list(KINDS.values())) / sum(KINDS.values()))
    expected: dict[str, str] = {}  # entry id -> kind
    good_frames: set[bytes] = set()
    pipe = engine.pipeline(transaction=False)
    for i, kind in enumerate(kinds):
        pipe.xadd(keys.frames(FEED), make_entry(str(kind), i, rng))
        if kind == "good":
            good_frames.add(f"good-{i}/0".encode())
    for i, entry_id in enumerate(pipe.execute()):
        expected[entry_id.decode()] = str(kinds[i])
    settings = Settings(feed=FEED, consumer="fuzz", claim_idle_ms=60000, block_ms=50, max_frame_bytes=100_000)
    stats = Consumer(engine, settings, burst=True).run()  # raises on a crash: none allowed

    published = Counter(d[b"frame"] for _id, d in engine.xrange(keys.detections(FEED)))
    assert set(published) == good_frames and set(published.values()) == {1}  # each good one, once
    assert engine.xlen(keys.scenes(FEED)) == len(good_frames)
    dead = {
        f[b"dead_id"].decode(): f[b"dead_reason"].decode()
        for _id, f in engine.xrange(keys.dead_letters(FEED))
    }
    bad = {i for i, kind in expected.items() if kind != "good"}
    assert set(dead) == bad and all(dead.values())
    assert engine.xpending(keys.frames(FEED), "detectors")["pending"] == 0
    by_reason = Counter(reason_class(why) for why in dead.values())
    by_kind = Counter(expected[i] for i in dead)
    assert by_kind["model-poison"] == by_reason["model error, failed 3 times"]
    report = (
        f"{n} frames: {len(good_frames)} good published once, {len(dead)} bad dead-lettered, 0 crashes; "
        f"consumer stats: frames_done {stats.frames_done}, dead {stats.dead}, retries {stats.retries}\n"
        + "\n".join(f"  {count:6d}  {reason}" for reason, count in by_reason.most_common())
    )
    print("\n" + report)
    record_property("fuzz_report", report)
