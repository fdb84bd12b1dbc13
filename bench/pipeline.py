"""End to end on the harness (bench/harness.py): scenes published -> consumers -> detections.

One row function, `pipeline`, run by the harness in a fresh process each round:
  - starts the engine server as `groundwatch up` does (AOF on, appendfsync everysec), or a local
    N-master cluster (no replicas; the same AOF settings) for `cluster_masters`,
  - loads the model with the loader (BATCHSIZE `batch`) for one feed,
  - starts `consumers` `groundwatch consume` processes on it and warms them up with two scenes,
  - throughput (no `rate_fps`): publishes a backlog of `frames` tiles (scenes of 16 tiles, 4 x 4
    with 64 px overlap, through ingest's publish_array) and times it until the last tile's
    result is published; CPU is redis-server's (every node's) and the consumers' over that window,
  - latency (`rate_fps` given, e.g. half the throughput row's of the same round): publishes frames
    one at a time at that rate (publish_tile, scenes of 16) for `latency_s`, and reports the
    end-to-end latency the consumers record for each tile: XADD of the frame to its detections
    published (keys.latency), p50 and p99.
The feed's keys share one hash tag, so on a cluster the whole feed lives on one master: the
cluster row measures what the cluster costs a feed (its client, the other nodes' CPU), not more
throughput; on 2 cores the absolute figure cannot grow anyway.

    python bench/pipeline.py [--rounds 3] [--frames 288] [--consumers 1,2] [--cluster 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import redis

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common, harness
from groundwatch import ai, connection, keys
from groundwatch.settings import REPO_ROOT, Settings

FEED = "bench"
GRID = 4  # scenes of GRID x GRID tiles
TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
CRS = "EPSG:32631"
# Tiles in a throughput row's backlog (18 scenes). The window starts at the first XADD, and the
# engine has nothing to run until the first scene is published, read (8 MB) and its DAGs sent
# (about 0.15 s of engine time), and after that the engine is fed to the end: a fixed cost the
# engine row (timed in steady state) does not pay, 5-10 % of a 96-tile window (the 96-tile row
# read 0.96x the 288-tile one at the median of 9 rounds; docs/performance.md, "Where the time goes").
BACKLOG = 288


def _scene(seed: int, tile: int = common.TILE, overlap: int = 64) -> np.ndarray:
    """A [1, S, S] uint16 scene that tiles into GRID x GRID tiles of `tile` px."""
    side = (GRID - 1) * (tile - overlap) + tile
    tiles = common.make_tiles(1, bands=1, size=side, seed=seed)
    return tiles[0]


def _start_consumers(url: str, n: int, read_count: int) -> list[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, "-m", "consumers", "--redis-url", url, "--log-level", "WARNING", "consume",
            "--feed", FEED, "--read-count", str(read_count), "--block-ms", "50"]  # fmt: skip
    return [
        subprocess.Popen(
            [*args, "--name", f"c{k}"],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for k in range(n)
    ]


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> list[str]:
    """SIGTERM (consumers drain and exit), then SIGKILL what is left; returns their stderr."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
    return [(p.stderr.read().decode(errors="replace") if p.stderr else "") for p in procs]


def _stat(client: redis.Redis, name: str) -> int:
    return int(client.hget(keys.stats(FEED), name) or 0)


def _done(client: redis.Redis) -> int:
    return _stat(client, "frames_done")


def _wait_done(
    client: redis.Redis, target: int, timeout_s: float, procs: Sequence[subprocess.Popen[bytes]]
) -> int:
    deadline = time.monotonic() + timeout_s
    done = _done(client)
    while done < target and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a consumer exited: {_stop(procs)[0][-300:]}")
        time.sleep(0.005)
        done = _done(client)
    return done


def _registered(client: redis.Redis, group: str) -> int:
    """Consumers in the feed's group (0 while the stream or the group does not exist yet)."""
    try:
        return len(client.xinfo_consumers(keys.frames(FEED), group))
    except redis.ResponseError:
        return 0


@contextlib.contextmanager
def _servers(tmp: Path, settings: Settings, cluster_masters: int) -> Iterator[tuple[str, list[int]]]:
    """(url, pids of every redis-server) of the server or cluster, stopped afterwards."""
    from groundwatch.commands import embedded_server, engine_args
    from groundwatch.server import LocalCluster

    if cluster_masters:
        c = LocalCluster(tmp / "cluster", masters=cluster_masters, replicas=0,
                         engine_module=settings.engine_module, module_args=engine_args(settings))  # fmt: skip
        c.start()
        try:
            yield c.url, [n.process.pid for n in c.nodes if n.process is not None]
        finally:
            c.stop()
    else:
        server = embedded_server(settings.replace(data_dir=tmp / "server")).start()
        try:
            assert server.process is not None
            yield server.url, [server.process.pid]
        finally:
            server.stop()


def pipeline(
    model: str,
    consumers: int,
    threads: int,
    frames: int = BACKLOG,
    cluster_masters: int = 0,
    rate_fps: float | None = None,
    latency_s: float = 8.0,
    read_count: int = 16,
    batch: int = 8,
    threads_per_queue: int = 1,
) -> dict[str, Any]:
    """One measurement of the pipeline (see the module's docstring). `threads_per_queue` is the
    engine's THREADS_PER_QUEUE (1, as `groundwatch up` by default): how many engine batches may
    run at once."""
    from ingest.publisher import publish_tile
    from ingest.scene import publish_array
    from loaders.loader import LoadOptions, load

    per_scene = GRID * GRID
    with tempfile.TemporaryDirectory(prefix="gw-bench-pipeline-") as tmp_s:
        tmp = Path(tmp_s)
        base = Settings(intra_op_threads=threads, threads_per_queue=threads_per_queue, feed=FEED, max_lag=10**9,
                        read_count=read_count, data_dir=tmp)  # fmt: skip
        with _servers(tmp, base, cluster_masters) as (url, server_pids):
            s = base.replace(redis_url=url)
            client = connection.connect(s, timeout_s=120)
            rec = load(client, model, LoadOptions(name="bench", feeds=(FEED,), batch=batch))
            model_key = keys.model(FEED, rec.name, rec.version)
            procs = _start_consumers(url, consumers, read_count)
            try:
                deadline = time.monotonic() + 120
                while _registered(client, s.group) < consumers:
                    if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                        raise RuntimeError(f"consumers did not start: {_stop(procs)[0][-300:]}")
                    time.sleep(0.05)
                warm = 0
                for i in range(2):  # every consumer and the engine's batch shapes run a few times
                    warm += publish_array(client, s, _scene(100 + i), TRANSFORM, CRS, scene=f"w{i}").published
                _wait_done(client, warm, 300, procs)
                pids = [*server_pids, *(p.pid for p in procs)]
                client.delete(keys.latency(FEED))
                client.execute_command("AI.INFO", model_key, "RESETSTAT")
                conflicts0 = _stat(client, "conflicts")
                latencies: list[float] = []
                if rate_fps is None:
                    scenes = [_scene(i) for i in range(max(1, -(-frames // per_scene)))]
                    cpu0 = common.cpu_seconds(pids, this_process=False)
                    t0 = time.perf_counter()
                    n = 0
                    for i, sc in enumerate(scenes):
                        n += publish_array(client, s, sc, TRANSFORM, CRS, scene=f"t{i}").published
                    done = _wait_done(client, warm + n, 600, procs) - warm
                else:
                    tiles = [_scene(i)[:, :512, :512] for i in range(4)]
                    n = max(int(rate_fps * latency_s), 2 * per_scene)
                    step = common.TILE - 64
                    cpu0 = common.cpu_seconds(pids, this_process=False)
                    t0 = time.perf_counter()
                    for i in range(n):
                        delay = t0 + i / rate_fps - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                        j, t = divmod(i, per_scene)
                        window = ((t % GRID) * step, (t // GRID) * step, common.TILE, common.TILE)
                        publish_tile(client, s, tiles[i % len(tiles)], TRANSFORM, CRS, scene=f"l{j}", tile=t,
                                     tiles=per_scene, window=window, wait=False)  # fmt: skip
                    done = _wait_done(client, warm + n, 300, procs) - warm
                    latencies = [float(v) / 1000.0 for v in client.lrange(keys.latency(FEED), 0, -1)]
                wall = time.perf_counter() - t0
                cpu = common.cpu_seconds(pids, this_process=False) - cpu0
                info = ai.Engine(client).model_info(model_key)
                conflicts = _stat(client, "conflicts") - conflicts0
            finally:
                logs = _stop(procs)
    errors = done < n
    mean_batch = info.samples / info.calls if info.calls else None
    note = f"mean engine batch {mean_batch:.1f}" if mean_batch else ""
    note += f"; {conflicts} WATCH conflicts"
    if rate_fps is not None:
        note += f"; offered {rate_fps:.1f} frames/s, one at a time; latency XADD to detections published"
    if errors:
        note += f"; only {done} of {n} frames done: {' / '.join(x.strip()[-200:] for x in logs if x.strip())}"
    return harness.sample(
        tiles=done, wall_s=wall, latencies_s=latencies, cpu_s=cpu, warmup_calls=warm, errors=int(errors),
        note=note, mean_batch=mean_batch, offered_fps=rate_fps, conflicts=conflicts,
    )  # fmt: skip


# --------------------------------------------------------------------------- the rows of a run

ONE = "pipeline, 1 consumer"
TWO = "pipeline, 2 consumers"
CLUSTER = "pipeline, 2 consumers, 3-master cluster"
LATENCY = "pipeline, 2 consumers, at 50% load"


def specs(
    model: str,
    *,
    frames: int = BACKLOG,
    threads: int = 2,
    consumers: Sequence[int] = (1, 2),
    cluster: int = 3,
) -> list[harness.Spec]:
    """Throughput with each consumer count, the same 2 consumers on a `cluster`-master cluster
    (0: no cluster row), and the latency row at half the 2-consumer row's throughput."""
    p = {"model": model, "threads": threads, "frames": frames}
    cpu = "CPU: redis-server + consumers"
    out = [
        harness.Spec(ONE if n == 1 else f"pipeline, {n} consumers", "bench.pipeline:pipeline",
                     {**p, "consumers": n}, note=cpu)
        for n in consumers
    ]  # fmt: skip
    if cluster:
        out.append(harness.Spec(CLUSTER.replace("3-master", f"{cluster}-master"), "bench.pipeline:pipeline",
                                {**p, "consumers": 2, "cluster_masters": cluster},
                                note=cpu.replace("redis-server", f"all {cluster} redis-servers"), timeout_s=420))  # fmt: skip
    if 2 in consumers:
        out.append(harness.Spec(LATENCY, "bench.pipeline:pipeline", {**p, "consumers": 2},
                                derive={"rate_fps": (TWO, "throughput", 0.5)}, note=cpu))  # fmt: skip
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--model", default=str(common.DETECTOR_PATH), help="TorchScript file (default: the detector)"
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--frames", type=int, default=BACKLOG, help="tiles in each throughput backlog")
    p.add_argument("--consumers", default="1,2", help="consumer counts, e.g. 1,2,4")
    p.add_argument("--cluster", type=int, default=3, help="masters of the cluster row (0: none)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=None, help="write pipeline.md and pipeline.json here")
    args = p.parse_args(argv)
    result = harness.run(
        specs(args.model, frames=args.frames, threads=args.threads,
              consumers=[int(c) for c in args.consumers.split(",")], cluster=args.cluster),
        rounds=args.rounds,
        title="bench/pipeline.py",
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )  # fmt: skip
    print(result["table"])
    if args.out is not None:
        harness.write(result, args.out, "pipeline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
