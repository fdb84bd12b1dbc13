"""End to end: frames XADDed -> consumers -> detections published, beside the engine alone.

Rows (each bounded to a few seconds; about 30-60 s in all):
  engine DAGs                 the same model, DAGs sent straight to the engine (no streams): 2
                              clients, each with `read_count` DAGs in flight, as a consumer has
  pipeline, N consumer(s)     N `groundwatch consume` processes on one feed. Throughput: a backlog
                              of frames is XADDed at once and timed until the last result is
                              published. Latency: frames XADDed at a steady rate (half the
                              measured throughput), XADD -> detection published, from the
                              consumers' own `published`/`done` stamps.
The ratio is pipeline frames/s over the engine's frames/s measured just before it (goal >= 0.8). Figures are printed, never
asserted. `run(...) -> dict` is importable.

    python bench/pipeline.py [--seconds 4] [--consumers 1,2] [--batch 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common
from groundwatch import ai, connection, frames, keys
from groundwatch.frames import Frame
from groundwatch.server import RedisServer
from groundwatch.settings import REPO_ROOT

ENGINE_SO = REPO_ROOT / "engine" / "build" / "engine.so"
FEED = "bench"
TILES_PER_SCENE = 16
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)


def _frames(tiles: np.ndarray, count: int, scene_prefix: str, published_ms: int) -> list[dict[str, Any]]:
    """`count` frames in scenes of 16 tiles (a 4 x 4 grid with 64 px overlap), cycling over `tiles`."""
    size = tiles.shape[-1]
    step = size - 64
    out = []
    for i in range(count):
        s, t = divmod(i, TILES_PER_SCENE)
        n = min(TILES_PER_SCENE, count - s * TILES_PER_SCENE)
        f = Frame.from_array(
            tiles[i % len(tiles)],
            scene=f"{scene_prefix}-{s}",
            tile=t,
            tiles=n,
            window=((t % 4) * step, (t // 4) * step, size, size),
            transform=TRANSFORM,
            crs="EPSG:32631",
            acquired=datetime(2026, 11, 25, tzinfo=UTC),
            published_ms=published_ms,
        )
        out.append(frames.encode(f))
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def engine_throughput(
    client: redis.Redis, model_key: str, tiles: np.ndarray, seconds: float, clients: int, in_flight: int
) -> dict[str, Any]:
    """DAGs straight to the engine: `clients` threads, each with `in_flight` DAGs at a time."""
    route = keys.dag_routing(FEED)
    commands = [
        ai.dag_command(model_key, route, tiles[i % len(tiles)][np.newaxis]) for i in range(len(tiles))
    ]
    done = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def work(c: int) -> None:
        own = connection.client_for(
            connection.local_url(client.connection_pool.connection_kwargs["port"]), timeout_s=60
        )
        i = c
        while time.monotonic() < stop:
            batch = [commands[(i + k) % len(commands)] for k in range(in_flight)]
            i += in_flight
            for reply in ai.execute_concurrently(own, batch):
                try:
                    ai.dag_result(reply)
                    done[c] += 1
                except ai.EngineError:
                    errors[c] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    return {
        "name": f"engine DAGs, {clients} clients x {in_flight} in flight",
        "frames": sum(done),
        "errors": sum(errors),
        "wall_s": wall,
        "fps": sum(done) / wall,
    }


def _start_consumers(port: int, n: int, read_count: int, tag: str) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "consumers",
                "--redis-url",
                f"redis://127.0.0.1:{port}/0",
                "--log-level",
                "WARNING",
                "consume",
                "--feed",
                FEED,
                "--name",
                f"{tag}-{k}",
                "--read-count",
                str(read_count),
                "--block-ms",
                "50",
                "--score-threshold",
                "0.3",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for k in range(n)
    ]


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def _wait_done(client: redis.Redis, target: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    done = 0
    while time.monotonic() < deadline:
        done = int(client.hget(keys.stats(FEED), "frames_done") or 0)
        if done >= target:
            break
        time.sleep(0.01)
    return done


def pipeline(
    client: redis.Redis,
    tiles: np.ndarray,
    consumers: int,
    backlog: int,
    seconds: float,
    read_count: int,
    engine_fps: float,
) -> dict[str, Any]:
    port = client.connection_pool.connection_kwargs["port"]
    for key in (
        keys.frames(FEED),
        keys.detections(FEED),
        keys.scenes(FEED),
        keys.stats(FEED),
        keys.latency(FEED),
        keys.throughput(FEED),
    ):
        client.delete(key)
    client.xgroup_create(keys.frames(FEED), "detectors", id="$", mkstream=True)
    model_key = keys.model(FEED, "bench", 1)
    client.execute_command("AI.INFO", model_key, "RESETSTAT")
    procs = _start_consumers(port, consumers, read_count, f"c{consumers}")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until every consumer is reading
            names = {c["name"] for c in client.xinfo_consumers(keys.frames(FEED), "detectors")}
            if len(names) >= consumers:
                break
            time.sleep(0.05)
        # throughput: a backlog at once
        entries = _frames(tiles, backlog, f"t{consumers}", _now_ms())
        start = time.monotonic()
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(keys.frames(FEED), fields)
        pipe.execute()
        done = _wait_done(client, backlog, timeout_s=max(60.0, 10 * backlog / max(engine_fps, 1.0)))
        wall = time.monotonic() - start
        fps = done / wall
        # latency: a steady rate (half the throughput), XADD -> published
        client.delete(keys.latency(FEED))
        rate = max(fps * 0.5, 1.0)
        n = max(int(rate * seconds), 8)
        paced = _frames(tiles, n, f"l{consumers}", 0)
        t0 = time.monotonic()
        for i, fields in enumerate(paced):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fields["published"] = str(_now_ms())
            client.xadd(keys.frames(FEED), fields)
        _wait_done(client, backlog + n, timeout_s=60)
        latencies = sorted(float(v) for v in client.lrange(keys.latency(FEED), 0, -1))
        info = ai.Engine(client).model_info(model_key)
        stats = {k.decode(): int(v) for k, v in client.hgetall(keys.stats(FEED)).items()}
    finally:
        _stop(procs)
    errors = [p.stderr.read().decode(errors="replace")[-500:] for p in procs if p.stderr and p.returncode]
    return {
        "name": f"pipeline, {consumers} consumer{'s' if consumers > 1 else ''}",
        "frames": done,
        "wall_s": wall,
        "fps": fps,
        "latency_rate_fps": rate,
        "latency_frames": len(latencies),
        "p50_ms": common.percentile(latencies, 50),
        "p90_ms": common.percentile(latencies, 90),
        "p99_ms": common.percentile(latencies, 99),
        "ratio": fps / engine_fps if engine_fps else None,
        "counters": stats,
        "errors": errors,
        "mean_batch": info.samples / info.calls if info.calls else None,
    }


def run(
    seconds: float = 4.0,
    consumers: Sequence[int] = (1, 2),
    batch: int = 8,
    read_count: int = 16,
    model_path: str | None = None,
    tile_size: int = common.TILE,
    threads_per_queue: int = 1,
) -> dict[str, Any]:
    """Start a server with the engine, measure, stop it; returns the figures."""
    tiles = common.make_tiles(32, bands=1, size=tile_size)
    with (
        tempfile.TemporaryDirectory(prefix="gw-bench-pipeline-") as tmp,
        common.model_file(model_path) as (path, description),
    ):
        server = RedisServer(
            data_dir=Path(tmp),
            engine_module=ENGINE_SO,
            module_args=("THREADS_PER_QUEUE", str(threads_per_queue)),
            extra_config=(("appendonly", "yes"), ("appendfsync", "everysec"), ("save", "")),
        ).start()
        try:
            client = connection.client_for(server.url, timeout_s=120)
            model_key = keys.model(FEED, "bench", 1)
            ai.Engine(client).model_store(model_key, path.read_bytes(), tag="1", batch=batch)
            client.set(keys.active_model(FEED), "bench:1")
            ai.execute_concurrently(client, [ai.dag_command(model_key, keys.dag_routing(FEED), tiles[:1])])
            # The engine alone is measured right before each pipeline run, and each ratio uses the
            # figure next to it: on a shared machine the available CPU drifts between phases.
            engines: list[dict[str, Any]] = []
            rows = []
            for n in consumers:
                client.execute_command("AI.INFO", model_key, "RESETSTAT")
                engine = engine_throughput(client, model_key, tiles, seconds, clients=2, in_flight=read_count)
                info = ai.Engine(client).model_info(model_key)
                engine["mean_batch"] = info.samples / info.calls if info.calls else None
                engines.append(engine)
                backlog = max(int(engine["fps"] * seconds * 1.5), 32)
                rows.append(pipeline(client, tiles, n, backlog, seconds, read_count, engine["fps"]))
        finally:
            server.stop()
    return {
        "model": description,
        "tile": [1, tile_size, tile_size],
        "batch": batch,
        "read_count": read_count,
        "cpus": os.cpu_count(),
        "engines": engines,
        "pipelines": rows,
    }


def report(out: dict[str, Any]) -> str:
    lines = [
        f"model {out['model']}, tiles {out['tile']} uint16, BATCHSIZE {out['batch']}, "
        f"read_count {out['read_count']}, {out['cpus']} CPUs",
    ]
    for e, r in zip(out["engines"], out["pipelines"], strict=True):
        lines.append(
            f"  {e['name']:<44} {e['fps']:8.1f} frames/s  (mean engine batch {e['mean_batch'] or 0:.1f}, "
            f"{e['errors']} errors)"
        )
        lines.append(
            f"  {r['name']:<44} {r['fps']:8.1f} frames/s  ratio {r['ratio']:.2f}  latency at "
            f"{r['latency_rate_fps']:.0f} frames/s: p50 {r['p50_ms']:.0f} ms, p90 {r['p90_ms']:.0f} ms, "
            f"p99 {r['p99_ms']:.0f} ms ({r['latency_frames']} frames), mean engine batch {r['mean_batch'] or 0:.1f}"
        )
        for err in r["errors"]:
            lines.append(f"    consumer error: {err}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each timed phase")
    p.add_argument("--consumers", default="1,2", help="consumer counts to run, e.g. 1,2")
    p.add_argument("--batch", type=int, default=8, help="the model's BATCHSIZE")
    p.add_argument("--read-count", type=int, default=16, help="frames per consumer batch (DAGs in flight)")
    p.add_argument("--model", default=None, help="TorchScript file (default: the detector, else a stand-in)")
    p.add_argument("--tile", type=int, default=common.TILE, help="tile size in pixels")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    out = run(
        seconds=args.seconds,
        consumers=[int(c) for c in args.consumers.split(",")],
        batch=args.batch,
        read_count=args.read_count,
        model_path=args.model,
        tile_size=args.tile,
    )
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
