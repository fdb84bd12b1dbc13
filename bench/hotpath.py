"""Where a consumer's time goes per tile, stage by stage, and commit conflicts with N consumers.

Stages (exclusive CPU ms per tile of the consumer's own thread: a stage's time does not include
the stages it calls): read (XREADGROUP and its reply), decode (frames.decode, the CRS check),
charge (model check and attempts), send (building and sending the DAGs), replies (reading the
engine's replies: CPU only, the wait for the engine is not CPU), output (the one reply decoder
and the rows kept), georef (tile -> scene -> map -> lon/lat), json (encoding the results),
merge (the scene merge and the stored tiles decoded for it), commit (the transaction: building
it, round trips, replies), profiling, other (the loop, leases, what no stage names). Wall ms per
tile beside it. One consumer, in this process, in burst mode, on scenes drawn by models/scenes
(2048 x 2048, 25 tiles of 512 px each, ships and platforms), the shipped detector in the engine
of a fresh redis-server.

`--conflicts 1,2,4`: that many consumer processes on one feed with a backlog of scenes; prints
the WATCH conflicts of their commits (the feed's `conflicts` counter) per 100 batches.
Printed, never asserted.

    python bench/hotpath.py [--scenes 2] [--rounds 3] [--conflicts 1,2,4]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from groundwatch import connection, keys
from groundwatch.commands import embedded_server
from groundwatch.settings import REPO_ROOT, Settings

FEED = "hotpath"
STAGES = (
    "read",
    "decode",
    "charge",
    "send",
    "replies",
    "output",
    "georef",
    "json",
    "merge",
    "commit",
    "profiling",
    "other",
)


class StageClock:
    """Exclusive thread CPU time (and wall time) per stage, by wrapping functions."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.wall: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per open stage: children's cpu, children's wall

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            frame = [0.0, 0.0]
            self._stack.append(frame)
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dc, dw = time.thread_time() - c0, time.perf_counter() - w0
                self._stack.pop()
                self.cpu[stage] += dc - frame[0]
                self.wall[stage] += dw - frame[1]
                if self._stack:
                    self._stack[-1][0] += dc
                    self._stack[-1][1] += dw

        return timed


@contextmanager
def patched(clock: StageClock) -> Iterator[None]:
    """Wrap the consumer's stage functions where its modules look them up."""
    from consumers import commit, inference, reading, scenes, worker
    from groundwatch import ai, frames, geometry

    targets: list[tuple[Any, str, str]] = [
        (reading.Reader, "read", "read"),
        (reading.Reader, "autoclaim", "read"),
        (frames, "decode", "decode"),
        (inference, "check_crs", "decode"),
        (worker.Consumer, "_fit", "charge"),
        (worker.Consumer, "_charge", "charge"),
        (inference, "send", "send"),
        (ai.InFlight, "replies", "replies"),
        (ai, "dag_outcomes", "output"),
        (geometry, "decode_rows", "output"),
        (inference, "georeference", "georef"),
        (inference, "tile_json", "json"),
        (inference, "features_json", "json"),
        (commit, "tile_json", "json"),
        (commit, "scene_json", "json"),
        (commit, "encode_tile", "json"),
        (scenes, "merge", "merge"),
        (scenes, "decode_tile", "merge"),
        (commit.Committer, "commit", "commit"),
        (worker.Profiler, "add", "profiling"),
    ]
    for name in ("completions", "complete_scenes"):
        if hasattr(scenes, name):
            targets.append((scenes, name, "merge"))
    for name in ("detections_of", "tile_results"):
        if hasattr(inference, name):
            targets.append((inference, name, "georef"))
    saved = []
    for owner, attr, stage in targets:
        if not hasattr(owner, attr):
            continue
        original = getattr(owner, attr)
        saved.append((owner, attr, original))
        setattr(owner, attr, clock.wrap(stage, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


def _scenes(count: int) -> list[Any]:
    from models.scenes import SceneConfig, generate_scene

    return [generate_scene(100 + i, SceneConfig(width_px=2048, height_px=2048)) for i in range(count)]


def _publish(client: redis.Redis, settings: Settings, scenes: list[Any], tag: str) -> int:
    from ingest.scene import publish_array

    n = 0
    for i, s in enumerate(scenes):
        t = s.transform
        r = publish_array(
            client, settings, s.image, (t.a, t.b, t.c, t.d, t.e, t.f), s.crs, scene=f"{tag}-{i}"
        )
        n += r.published
    return n


def profile_round(client: redis.Redis, settings: Settings, scenes: list[Any], tag: str) -> dict[str, Any]:
    from consumers.worker import Consumer

    tiles = _publish(client, settings, scenes, tag)
    consumer = Consumer(client, settings.replace(consumer=f"p-{tag}"), burst=True)
    clock = StageClock()
    with patched(clock):
        c0, w0 = time.thread_time(), time.perf_counter()
        run = clock.wrap("other", consumer.run)
        stats = run()
        cpu, wall = time.thread_time() - c0, time.perf_counter() - w0
    assert stats.frames_done == tiles, (stats.frames_done, tiles, stats.reasons[:3])
    return {
        "tiles": tiles,
        "detections": stats.detections,
        "cpu_ms": {k: 1000 * clock.cpu.get(k, 0.0) / tiles for k in STAGES},
        "wall_ms": {k: 1000 * clock.wall.get(k, 0.0) / tiles for k in STAGES},
        "total_cpu_ms": 1000 * cpu / tiles,
        "total_wall_ms": 1000 * wall / tiles,
    }


def profile(base: Settings, scenes_per_round: int, rounds: int) -> dict[str, Any]:
    from demo.run import detector_path
    from loaders.loader import LoadOptions, load

    scenes = _scenes(scenes_per_round)
    with tempfile.TemporaryDirectory(prefix="gw-bench-hot-") as tmp:
        server = embedded_server(base.replace(data_dir=Path(tmp), redis_url=None)).start()
        try:
            client = connection.client_for(server.url, timeout_s=300)
            settings = base.replace(redis_url=server.url, feed=FEED, max_lag=10**9, read_count=16)
            load(client, detector_path(), LoadOptions(name="ship", feeds=(FEED,), batch=8))
            profile_round(client, settings, scenes[:1], "warm")
            out = [profile_round(client, settings, scenes, f"r{i}") for i in range(rounds)]
        finally:
            server.stop()
    med = {
        kind: {k: statistics.median(o[kind][k] for o in out) for k in STAGES}
        for kind in ("cpu_ms", "wall_ms")
    }
    return {
        "tiles_per_round": out[0]["tiles"],
        "detections_per_tile": out[0]["detections"] / out[0]["tiles"],
        "rounds": rounds,
        "stages": med,
        "total_cpu_ms": statistics.median(o["total_cpu_ms"] for o in out),
        "total_wall_ms": statistics.median(o["total_wall_ms"] for o in out),
        "total_cpu_range": [min(o["total_cpu_ms"] for o in out), max(o["total_cpu_ms"] for o in out)],
    }


def fast_model(path: Path) -> Path:
    """A model that costs the engine next to nothing (four fixed boxes per tile, one of them on
    a tile edge), so consumers, not the engine, set the pace and their commits overlap."""
    import io
    import json

    import torch

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = torch.tensor(
                [
                    [10.0, 10.0, 40.0, 30.0, 0.9, 0.0],
                    [200.0, 220.0, 230.0, 260.0, 0.8, 1.0],
                    [300.0, 100.0, 330.0, 120.0, 0.7, 0.0],
                    [480.0, 400.0, 512.0, 430.0, 0.6, 0.0],
                ]
            )
            return rows.unsqueeze(0).expand(x.shape[0], 4, 6).contiguous()

    meta = {
        "contract": 1,
        "classes": ["ship", "platform"],
        "bands": 1,
        "dtype": "uint16",
        "tile_size": 512,
        "max_detections": 4,
    }
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Fixed()), buf, _extra_files={"groundwatch.json": json.dumps(meta)})
    path.write_bytes(buf.getvalue())
    return path


def conflicts(
    base: Settings, counts: list[int], scenes_per_run: int, fast: bool = False
) -> list[dict[str, Any]]:
    """`n` consumer processes on one backlog; WATCH conflicts of their commits."""
    from demo.run import detector_path
    from loaders.loader import LoadOptions, load

    scenes = _scenes(scenes_per_run)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-conf-") as tmp:
        model = fast_model(Path(tmp) / "fixed.pt") if fast else detector_path()
        server = embedded_server(base.replace(data_dir=Path(tmp), redis_url=None)).start()
        try:
            client = connection.client_for(server.url, timeout_s=300)
            settings = base.replace(redis_url=server.url, max_lag=10**9)
            for n in counts:
                feed = f"conf{n}"
                s = settings.replace(feed=feed)
                load(client, model, LoadOptions(name="ship", feeds=(feed,), batch=8))
                tiles = _publish(client, s, scenes, f"c{n}")
                env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
                t0 = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "consumers",
                            "--redis-url",
                            server.url,
                            "--log-level",
                            "WARNING",
                            "consume",
                            "--feed",
                            feed,
                            "--name",
                            f"k{k}",
                            "--read-count",
                            "8",
                            "--burst",
                        ],
                        cwd=REPO_ROOT,
                        env=env,
                    )
                    for k in range(n)
                ]
                for p in procs:
                    p.wait(600)
                wall = time.perf_counter() - t0
                st = {k.decode(): int(v) for k, v in client.hgetall(keys.stats(feed)).items()}
                batches = max(1, -(-tiles // 8))
                rows.append(
                    {
                        "consumers": n,
                        "tiles": tiles,
                        "frames_done": st.get("frames_done", 0),
                        "scenes_done": st.get("scenes_done", 0),
                        "conflicts": st.get("conflicts", 0),
                        "conflicts_per_100_batches": 100 * st.get("conflicts", 0) / batches,
                        "fps": tiles / wall,
                    }
                )
        finally:
            server.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--scenes", type=int, default=2, help="2048 x 2048 scenes per round (25 tiles each)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--conflicts", default="", help="consumer counts for the conflict runs, e.g. 1,2,4")
    p.add_argument("--no-profile", action="store_true")
    p.add_argument("--fast", action="store_true", help="conflict runs with a model that costs ~nothing")
    a = p.parse_args(argv)
    base = Settings.load()
    if not a.no_profile:
        out = profile(base, a.scenes, a.rounds)
        print(
            f"{out['tiles_per_round']} tiles per round, {out['detections_per_tile']:.1f} detections per tile, "
            f"{out['rounds']} rounds (median)"
        )
        print("| stage | CPU ms/tile | wall ms/tile |\n| --- | ---: | ---: |")
        for k in STAGES:
            print(f"| {k} | {out['stages']['cpu_ms'][k]:.3f} | {out['stages']['wall_ms'][k]:.3f} |")
        lo, hi = out["total_cpu_range"]
        print(f"| total | {out['total_cpu_ms']:.3f} ({lo:.2f}-{hi:.2f}) | {out['total_wall_ms']:.3f} |")
    if a.conflicts:
        rows = conflicts(base, [int(n) for n in a.conflicts.split(",")], a.scenes, a.fast)
        print("| consumers | tiles | frames done | scenes done | conflicts | per 100 batches | tiles/s |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(
                f"| {r['consumers']} | {r['tiles']} | {r['frames_done']} | {r['scenes_done']} | "
                f"{r['conflicts']} | {r['conflicts_per_100_batches']:.1f} | {r['fps']:.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
