"""What monitoring costs a consumer: profiling's share of the consumer's CPU per tile.

One consumer in this process runs the shipped detector (in the engine of a fresh redis-server)
over `frames` 512 x 512 uint16 tiles in burst mode, in `rounds` interleaved rounds with the
profiler on and off (off: its add() replaced by a no-op). The consumer's CPU is this process's
CPU time (the model runs in redis-server, so it is the consumer's own work: decode, DAG send,
georeference, merge, commit); profiling's is what Profiler.add measured. Printed, never asserted.
The goal (issue 20): under 5% of the consumer's CPU per tile.

    python bench/profiling.py [--frames 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from consumers.worker import Consumer
from groundwatch import connection, keys
from groundwatch.commands import embedded_server
from groundwatch.settings import Settings
from ingest.scene import publish_array
from loaders.loader import LoadOptions, load

FEED = "profiling"


def _round(
    client: redis.Redis, settings: Settings, scene: np.ndarray, i: int, profile: bool
) -> dict[str, float]:
    r = publish_array(client, settings, scene, (10, 0, 500000, 0, -10, 4000000), "EPSG:32631", scene=f"r{i}")
    c = Consumer(client, settings.replace(consumer=f"c{i}"), burst=True)
    if not profile:
        c.profiler.add = lambda results: None  # type: ignore[method-assign]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    c.run()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "tiles": r.published,
        "cpu_ms": cpu * 1000 / r.published,
        "wall_s": wall,
        "prof_ms": c.profiler.seconds * 1000 / r.published,
    }


def run(base: Settings, *, frames: int = 64, rounds: int = 3) -> dict[str, Any]:
    from demo.run import detector_path

    side = int(np.ceil(np.sqrt(frames))) * 448 + 64  # 512 px tiles, 64 px overlap
    rng = np.random.default_rng(0)
    scene = rng.gamma(2.0, 400.0, size=(1, side, side)).clip(1, 65535).astype(np.uint16)
    with tempfile.TemporaryDirectory(prefix="gw-bench-prof-") as tmp:
        server = embedded_server(base.replace(data_dir=Path(tmp), redis_url=None)).start()
        try:
            client = connection.client_for(server.url, timeout_s=300)
            settings = base.replace(redis_url=server.url, feed=FEED, max_lag=10**9, read_count=8, consumer="")
            load(client, detector_path(), LoadOptions(name="ship", feeds=(FEED,), batch=8))
            _round(client, settings, scene[:, :1024, :1024], 0, True)  # warm-up: TorchScript settles
            on: list[dict[str, float]] = []
            off: list[dict[str, float]] = []
            for i in range(rounds):
                on.append(_round(client, settings, scene, 2 * i + 1, True))
                off.append(_round(client, settings, scene, 2 * i + 2, False))
            client.delete(keys.frames(FEED))
        finally:
            server.stop()
    share = [o["prof_ms"] / o["cpu_ms"] for o in on]
    row: dict[str, Any] = {
        "tiles_per_round": on[0]["tiles"],
        "consumer_cpu_ms_per_tile_profiling": statistics.median(o["cpu_ms"] for o in on),
        "consumer_cpu_ms_per_tile_without": statistics.median(o["cpu_ms"] for o in off),
        "profiling_ms_per_tile": statistics.median(o["prof_ms"] for o in on),
        "share_median": statistics.median(share),
        "share_range": [min(share), max(share)],
        "rounds": rounds,
    }
    row["table"] = (
        "| profiling | value |\n| --- | ---: |\n"
        f"| tiles per round | {row['tiles_per_round']} |\n"
        f"| consumer CPU ms/tile, profiling on | {row['consumer_cpu_ms_per_tile_profiling']:.2f} |\n"
        f"| consumer CPU ms/tile, profiling off | {row['consumer_cpu_ms_per_tile_without']:.2f} |\n"
        f"| profiling ms/tile | {row['profiling_ms_per_tile']:.3f} |\n"
        f"| profiling share of the consumer's CPU | {100 * row['share_median']:.1f}% "
        f"({100 * min(share):.1f}-{100 * max(share):.1f}%, {rounds} interleaved rounds) |\n"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    print(run(Settings.load(), frames=a.frames, rounds=a.rounds)["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
