"""`groundwatch demo`: scenes from a ground station to georeferenced detections, in one run.

It starts its own redis-server with the engine (data under <data_dir>/demo), loads the bundled
detector, drops synthetic scenes into a drop folder, ingests them with the watch folder, runs
two consumers, and prints a summary with precision and recall against the scenes' ground truth.
Everything it started is stopped before it returns.

`groundwatch demo --cluster` runs it on a local Redis Cluster instead (3 masters with a replica
each, data under <data_dir>/demo/cluster): one feed per master (`demo-<n>`, names chosen by
their slot), the scenes dealt out over the feeds, a drop folder and consumers per feed, the same
summary over all of them.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import redis

from consumers.worker import Consumer
from demo.quicklook import quicklook
from groundwatch import connection, geometry, keys
from groundwatch.commands import embedded_server, local_cluster
from groundwatch.detections import decode_scene
from groundwatch.errors import GroundwatchError
from groundwatch.server import LocalCluster, RedisServer
from groundwatch.settings import Settings
from groundwatch.status import percentiles
from ingest.watch import watch
from loaders.loader import LoadOptions, load
from models.scenes import Scene, SceneConfig, generate_scene, write_scene

FEED = "demo"
MODEL = "ship"


def detector_path() -> Path:
    path = Path(str(resources.files("models") / "artifacts" / "detector.pt"))
    if not path.exists():
        raise GroundwatchError(f"the bundled detector {path} is missing; train it with `groundwatch train`")
    return path


@dataclass
class ClassScore:
    truth: int = 0
    detected: int = 0
    matched: int = 0

    @property
    def precision(self) -> float:
        return self.matched / self.detected if self.detected else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.truth if self.truth else 1.0


@dataclass
class DemoSummary:
    scenes: int
    tiles: int
    seconds: float
    latency_ms: dict[str, float]
    per_class: dict[str, ClassScore] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    dead_letters: int = 0

    @property
    def frames_per_s(self) -> float:
        return self.tiles / self.seconds if self.seconds else 0.0

    def render(self) -> str:
        lines = [
            f"scenes {self.scenes}, tiles {self.tiles}, dead letters {self.dead_letters}",
            f"throughput {self.frames_per_s:.1f} frames/s over {self.seconds:.1f} s (ingest to last scene result)",
            "latency (published -> detections published) "
            + ", ".join(f"{k} {v:.0f} ms" for k, v in self.latency_ms.items()),
            f"{'class':<10}{'truth':>7}{'found':>7}{'matched':>9}{'precision':>11}{'recall':>8}",
        ]
        for name, c in sorted(self.per_class.items()):
            lines.append(
                f"{name:<10}{c.truth:>7}{c.detected:>7}{c.matched:>9}{c.precision:>11.3f}{c.recall:>8.3f}"
            )
        return "\n".join(lines)


def score_scene(
    truth: Sequence[tuple[str, tuple[float, ...]]], found: Sequence[tuple[str, float, tuple[float, ...]]]
) -> dict[str, ClassScore]:
    """Per class: truth, found and matched counts (the one matcher, IoU >= 0.5, scene pixels)."""
    names = sorted({c for c, _ in truth} | {c for c, _, _ in found})
    pairs = geometry.match(
        np.array([b for _, _, b in found], np.float64),
        np.array([s for _, s, _ in found], np.float64),
        np.array([names.index(c) for c, _, _ in found]),
        np.array([b for _, b in truth], np.float64),
        np.array([names.index(c) for c, _ in truth]),
    )
    out = {name: ClassScore() for name in names}
    for c, _ in truth:
        out[c].truth += 1
    for c, _, _ in found:
        out[c].detected += 1
    for i, _j in pairs:
        out[found[i][0]].matched += 1
    return out


def _generate(station: Path, drops: Sequence[Path], count: int, size_px: int, seed: int) -> dict[str, Scene]:
    """Write scenes as a ground station would: elsewhere first, then a rename into a drop folder
    (scene i into drops[i % len(drops)], one folder per feed)."""
    scenes = {}
    for i in range(count):
        scene = generate_scene(seed + i, SceneConfig(width_px=size_px, height_px=size_px))
        name = f"S1-demo-{seed + i:06d}"
        tif, truth = write_scene(scene, station, name)
        tif.rename(drops[i % len(drops)] / tif.name)
        scenes[name] = scene
        truth.rename(station / f"{name}.truth.geojson")
    return scenes


def _wait_for_scenes(clients: dict[str, redis.Redis], expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s

    def done() -> int:
        return sum(int(c.xlen(keys.scenes(f))) for f, c in clients.items())

    while done() < expected:
        if time.monotonic() > deadline:
            raise GroundwatchError(
                f"only {done()} of {expected} scene results after {timeout_s:.0f} s; see `groundwatch "
                f"status` and the dead letters on {', '.join(keys.dead_letters(f) for f in clients)}"
            )
        time.sleep(0.1)


def run_demo(
    settings: Settings,
    *,
    scenes: int = 3,
    size_px: int = 2048,
    seed: int = 9000,
    consumers: int = 2,
    timeout_s: float = 600.0,
    web_port: int | None = None,
    cluster_masters: int = 0,
    cluster: LocalCluster | None = None,
) -> DemoSummary:
    """Run the demo; with web_port, the live view is served during it and kept open after it
    until Ctrl-C (the demo's server stays up while it is).

    cluster_masters > 0: on a Redis Cluster of that many masters (a replica each) that the demo
    starts, with one feed per master and `consumers` consumers per feed; `cluster`: on that one,
    already running (left running). Otherwise on one redis-server, feed `demo`."""
    out = settings.data_dir.resolve() / "demo"
    shutil.rmtree(out, ignore_errors=True)
    station, results = out / "station", out / "results"
    for d in (station, results):
        d.mkdir(parents=True)
    server: RedisServer | LocalCluster | None = None
    if cluster is None and cluster_masters > 0:
        server = cluster = local_cluster(settings, out / "cluster", cluster_masters)
        cluster.start()
        print(f"a Redis Cluster of {cluster_masters} masters with a replica each: {cluster.url}")
    elif cluster is None:
        # The same server `groundwatch up` starts (AOF on), with its files under the demo folder.
        server = embedded_server(settings.replace(data_dir=out / "redis")).start()
    url = cluster.url if cluster is not None else server.url  # type: ignore[union-attr]
    threads: list[threading.Thread] = []
    workers: list[Consumer] = []
    try:
        base = settings.replace(redis_url=url, feed=FEED)
        client = connection.connect(base, timeout_s=60)
        feeds = connection.feeds_on_every_shard(client, f"{FEED}-") if cluster is not None else [FEED]
        # each feed's client is bound to the master of the feed's slot
        clients = {f: connection.connect(base.replace(feed=f), timeout_s=60) for f in feeds}
        record = load(client, detector_path(), LoadOptions(name=MODEL, feeds=tuple(feeds), batch=8))
        print(f"loaded {record.label}: classes {', '.join(record.classes)}, tile {record.tile_size} px")
        if cluster is not None:
            print(f"feeds {', '.join(feeds)}: one on each master")
        drops = {f: out / "drop" / f for f in feeds}
        for d in drops.values():
            d.mkdir(parents=True)
        truth = _generate(station, list(drops.values()), scenes, size_px, seed)
        print(f"{scenes} scenes of {size_px}x{size_px} px in the drop folder(s) under {out / 'drop'}")
        for f in feeds:
            for i in range(consumers):
                s = base.replace(feed=f, consumer=f"demo-{i}")
                worker = Consumer(connection.connect(s, timeout_s=60), s)
                workers.append(worker)
                threads.append(threading.Thread(target=worker.run, name=f"consumer-{f}-{i}", daemon=True))
                worker.ensure_group()
        web_server = None
        if web_port is not None:
            web_server = _live_view(base, web_port)
            print(f"live view: http://127.0.0.1:{web_port}/ (open it now: scenes appear as they complete)")
        for t in threads:
            t.start()
        started = time.monotonic()
        ingested = []
        for f in feeds:
            s = base.replace(feed=f, watch_poll_s=0.2)
            ingested += [o for o in watch(clients[f], s, drops[f], burst=True) if o.status == "done"]
        print(f"ingested {len(ingested)} scenes; {len(workers)} consumers at work")
        _wait_for_scenes(clients, len(ingested), timeout_s)
        elapsed = time.monotonic() - started
        summary = _summarise(clients, truth, results, elapsed)
        if web_server is not None:
            print(summary.render())
            print(f"live view still at http://127.0.0.1:{web_port}/ : Ctrl-C stops it and the demo")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            web_server.should_exit = True
        return summary
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=30)
        if server is not None:
            server.stop()


def _live_view(settings: Settings, port: int) -> Any:
    """The web role's app (groundwatch web) in a thread of this process, on 127.0.0.1."""
    import uvicorn

    from web.app import create_app

    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    threading.Thread(target=server.run, name="live-view", daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def _summarise(
    clients: dict[str, redis.Redis], truth: dict[str, Scene], results: Path, elapsed: float
) -> DemoSummary:
    """The figures of every feed together; each scene's result is read on its feed's client."""
    from models.scenes import CLASSES

    tiles, dead, latencies = 0, 0, []
    for f, c in clients.items():
        tiles += int(float(c.hget(keys.stats(f), "frames_done") or 0))
        dead += int(c.xlen(keys.dead_letters(f)))
        latencies += [float(v) for v in c.lrange(keys.latency(f), 0, -1)]
    summary = DemoSummary(
        scenes=len(truth),
        tiles=tiles,
        seconds=elapsed,
        latency_ms=percentiles(latencies),
        dead_letters=dead,
        per_class={c: _empty() for c in CLASSES},
    )
    for name, scene in truth.items():
        raw = next(
            (r for f, c in clients.items() if (r := c.get(keys.scene_result(f, name))) is not None), None
        )
        if raw is None:
            continue
        result = decode_scene(raw)
        found = [(d.label, d.score, d.scene_box_px) for d in result.detections]
        gt = [(o.class_name, tuple(float(v) for v in o.box_px)) for o in scene.objects]
        for cls, score in score_scene(gt, found).items():
            total = summary.per_class.setdefault(cls, _empty())
            total.truth += score.truth
            total.detected += score.detected
            total.matched += score.matched
        geojson = results / f"{name}.geojson"
        geojson.write_text(json.dumps(json.loads(raw), indent=1))
        png = quicklook(
            scene.image,
            [d.scene_box_px for d in result.detections],
            [o.box_px for o in scene.objects],
            results / f"{name}.png",
        )
        summary.outputs += [geojson, png]
    return summary


def _empty() -> ClassScore:
    return ClassScore()


def main(settings: Settings, **options: Any) -> int:
    summary = run_demo(settings, **options)
    print(summary.render())
    print(f"results: {', '.join(str(p) for p in summary.outputs[:2])} ... ({len(summary.outputs)} files)")
    print(
        "\nThe demo stopped everything it started. To keep a stack running and watch it:\n"
        "  .venv/bin/groundwatch up                      # redis-server + engine, prints the port\n"
        "  .venv/bin/groundwatch load models/artifacts/detector.pt --name ship --feeds demo --batch 8\n"
        "  .venv/bin/groundwatch consume --feed demo &   # a consumer (start two for more throughput)\n"
        "  .venv/bin/groundwatch watch DROP_DIR --feed demo\n"
        f"  redis-cli -p PORT SUBSCRIBE '{keys.scenes(FEED)}'   # scene results as they complete\n"
        "  .venv/bin/groundwatch status; .venv/bin/groundwatch down\n"
        "  .venv/bin/groundwatch web                     # the live view on http://127.0.0.1:8765/\n"
        "or run the demo with its live view kept open: .venv/bin/groundwatch demo --web\n"
        "On a cluster: .venv/bin/groundwatch up --cluster 3 (prints a REDIS_URL), then the same commands"
    )
    return 0
