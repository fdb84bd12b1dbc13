"""The whole pipeline on a real 3-master Redis Cluster: feeds on every shard, a model switch,
a master killed mid-run, a feed's slot migrated mid-run. After each, the same check as on one
server: every frame exactly one result, every scene one scene result, nothing pending, nothing
dead, nothing acknowledged lost."""

from __future__ import annotations

import json
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import redis

from consumers.worker import Consumer
from groundwatch import connection, keys, status
from groundwatch.detections import decode_tile
from groundwatch.server import LocalCluster
from groundwatch.settings import Settings
from ingest.scene import publish_array
from loaders.loader import LoadOptions, load, stats
from tests import toymodels
from tests.cluster.conftest import (
    feed_on_lowest_slot,
    feed_slot,
    feeds_per_master,
    heal,
    migrate_slot,
    node_by_port,
    reshard,
    slot_map,
)
from tests.consumers import helpers
from tests.ingest.conftest import write_tif

TILE, OVERLAP, SIDE = 64, 16, 128  # 9 tiles per scene


def settings(c: LocalCluster, feed: str, **more: object) -> Settings:
    return Settings(
        redis_url=c.url,
        feed=feed,
        tile_size=TILE,
        tile_overlap=OVERLAP,
        block_ms=100,
        read_count=4,
        claim_idle_ms=2000,
        **more,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "toy.pt"
    path.write_bytes(toymodels.archive(toymodels.BrightestPixel(threshold=1000), toymodels.metadata()))
    return path


@dataclass
class Fleet:
    """Consumer threads (several per feed where asked) and producer threads."""

    cluster: LocalCluster
    consumers: list[tuple[Consumer, threading.Thread]] = field(default_factory=list)
    producers: list[threading.Thread] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    scenes: dict[str, list[str]] = field(default_factory=dict)  # feed -> scenes it published
    clients: list[redis.Redis] = field(default_factory=list)  # of consumers and producers

    def connect(self, s: Settings) -> redis.Redis:
        client = connection.connect(s, timeout_s=30)
        self.clients.append(client)
        return client

    def migration_counts(self) -> tuple[int, int]:
        """(ASKs followed, SlotMigrating refusals) of every consumer and producer."""
        counts = [connection.migration_counts(c) for c in self.clients]
        return sum(a for a, _ in counts), sum(b for _, b in counts)

    def consume(self, feed: str, name: str) -> None:
        s = settings(self.cluster, feed, consumer=name)
        worker = Consumer(self.connect(s), s)
        thread = threading.Thread(target=self._guard(worker.run), daemon=True)
        self.consumers.append((worker, thread))
        thread.start()

    def produce(self, feed: str, prefix: str, count: int, pause_s: float = 0.0) -> None:
        s = settings(self.cluster, feed)
        done = self.scenes.setdefault(feed, [])

        client = self.connect(s)

        def run() -> None:
            for i in range(count):
                scene = f"{prefix}-{i}"
                arr = helpers.scene_array(SIDE, SIDE, {(30 + i % 50, 40): 60000}, seed=i)
                publish_array(client, s, arr, helpers.TRANSFORM, helpers.UTM31N, scene=scene)
                done.append(scene)
                time.sleep(pause_s)

        thread = threading.Thread(target=self._guard(run), daemon=True)
        self.producers.append(thread)
        thread.start()

    def _guard(self, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:  # reported by the test, not lost in a thread
                traceback.print_exc()
                self.errors.append(e)

        return run

    def wait_producers(self, timeout_s: float = 120) -> None:
        for t in self.producers:
            t.join(timeout_s)
        assert not any(t.is_alive() for t in self.producers), "a producer did not finish"
        assert not self.errors, f"a producer or consumer failed: {self.errors!r}"

    def wait_drained(self, client: redis.Redis, timeout_s: float = 120) -> None:
        """Until every published scene has its scene result and nothing is pending."""
        deadline = time.monotonic() + timeout_s
        left: dict[str, int] = {}
        while True:
            try:  # this checker, too, sees the failover
                left = {
                    f: len(scenes) - connection.on_slot(client, keys.scenes(f)).xlen(keys.scenes(f))
                    for f, scenes in self.scenes.items()
                }
                if not any(left.values()) and all(pending(client, f) == 0 for f in self.scenes):
                    return
            except redis.ConnectionError:
                pass
            assert not self.errors, f"a consumer failed: {self.errors!r}"
            assert time.monotonic() < deadline, f"scenes without a result after {timeout_s}s: {left}"
            time.sleep(0.1)

    def stop(self) -> None:
        for worker, _ in self.consumers:
            worker.stop()
        for _, thread in self.consumers:
            thread.join(30)


@pytest.fixture
def fleet(cluster: LocalCluster) -> Iterator[Fleet]:
    f = Fleet(cluster)
    try:
        yield f
    finally:
        f.stop()


def pending(client: redis.Redis, feed: str) -> int:
    c = connection.on_slot(client, keys.frames(feed))
    return int(c.xpending(keys.frames(feed), "detectors")["pending"])


def check_exactly_once(client: redis.Redis, fleet: Fleet) -> dict[str, set[str]]:
    """Every frame of every published scene has exactly one result, every scene one scene
    result; nothing pending, nothing dead. Returns the model versions seen per feed."""
    versions: dict[str, set[str]] = {}
    for feed, scenes in fleet.scenes.items():
        c = connection.on_slot(client, keys.frames(feed))
        expected = set()
        for scene in scenes:
            marker = json.loads(c.get(keys.scene_ingested(feed, scene)))
            expected |= {f"{scene}/{t}" for t in range(marker["tiles"])}
        got = [decode_tile(e) for _, e in c.xrange(keys.detections(feed))]
        frames = [t.frame for t in got]
        assert len(frames) == len(set(frames)), f"{feed}: a frame has two results"
        assert set(frames) == expected, f"{feed}: missing {sorted(expected - set(frames))[:5]}"
        scene_ids = [e[b"scene"].decode() for _, e in c.xrange(keys.scenes(feed))]
        assert sorted(scene_ids) == sorted(scenes), f"{feed}: scene results differ"
        assert c.xlen(keys.dead_letters(feed)) == 0
        assert pending(client, feed) == 0
        # the toy model finds the one bright spot of each scene
        assert all(len(t.detections) <= 1 for t in got) and sum(len(t.detections) for t in got) >= len(scenes)
        versions[feed] = {t.model for t in got}
    return versions


def test_feeds_on_every_shard_with_a_model_switch(
    cluster: LocalCluster, fleet: Fleet, toy_model: Path
) -> None:
    by_master = feeds_per_master(cluster, 2, "flow")
    feeds = [f for fs in by_master.values() for f in fs]
    assert len({slot_map(cluster)[feed_slot(f)] for f in feeds}) == 3  # all three shards
    client = connection.connect(settings(cluster, feeds[0]))
    assert connection.is_cluster(client)
    load(client, toy_model, LoadOptions(name="toy", feeds=tuple(feeds), batch=4))
    for i, feed in enumerate(feeds):
        fleet.consume(feed, f"c{i}")
        if i % 2 == 0:
            fleet.consume(feed, f"c{i}b")  # two consumers share some feeds
    for i, feed in enumerate(feeds):
        fleet.produce(feed, f"p{i}", 4)
    fleet.wait_producers()
    load(client, toy_model, LoadOptions(name="toy", feeds=tuple(feeds), batch=4))  # toy:2 goes live
    for i, feed in enumerate(feeds):
        fleet.produce(feed, f"q{i}", 2)
    fleet.wait_producers()
    fleet.wait_drained(client)
    versions = check_exactly_once(client, fleet)
    assert all(v == {"toy:1", "toy:2"} for v in versions.values()), versions
    # status and model list gather over all shards
    seen = {st.feed: st for st in status.collect(client)}
    assert set(feeds) <= set(seen)
    assert all(seen[f].model == "toy:2" and seen[f].counters["frames_done"] == 54 for f in feeds)
    rows = {(r.record.version, r.active): r.calls for r in stats(client, ["toy"])}
    assert set(rows) == {(1, False), (2, True)} and all(rows.values())


def test_cli_load_ingest_status_on_a_cluster(
    cluster: LocalCluster,
    toy_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The user's commands, unchanged, with REDIS_URL naming any node (here the last one
    started, a replica): before, `load` failed with CROSSSLOT and `ingest` with MOVED."""
    from groundwatch.cli import main

    feeds = [fs[0] for fs in feeds_per_master(cluster, 1, "cli").values()]
    monkeypatch.setenv("REDIS_URL", cluster.nodes[-1].url)
    monkeypatch.setenv("GROUNDWATCH_TILE_SIZE", "64")
    monkeypatch.setenv("GROUNDWATCH_TILE_OVERLAP", "16")

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main(list(args)) == 0
        out = capsys.readouterr()
        return out.out + out.err

    run("load", str(toy_model), "--name", "cli", "--feeds", ",".join(feeds), "--batch", "4")
    tif = write_tif(tmp_path / "scene-1.tif", helpers.scene_array(100, 100, {(50, 50): 60000}), tiled=False)
    for feed in feeds:
        run("ingest", str(tif), "--feed", feed)
        run("consume", "--feed", feed, "--burst")
    out = run("status")
    assert all(f"feed {feed}" in out for feed in feeds), out
    assert "cli:1" in run("model", "list")
    client = connection.connect(Settings(redis_url=cluster.url))
    for feed in feeds:
        c = connection.on_slot(client, keys.frames(feed))
        assert c.xlen(keys.scenes(feed)) == 1 and pending(client, feed) == 0
        assert c.get(keys.active_model(feed)) == b"cli:1"


def test_failover_of_a_master_mid_run(cluster: LocalCluster, fleet: Fleet, toy_model: Path) -> None:
    by_master = feeds_per_master(cluster, 2, "fo")
    feeds = [f for fs in by_master.values() for f in fs]
    client = connection.connect(settings(cluster, feeds[0]))
    load(client, toy_model, LoadOptions(name="fo", feeds=tuple(feeds), batch=4))
    for i, feed in enumerate(feeds):
        fleet.consume(feed, f"fo{i}")
    for i, feed in enumerate(feeds):
        fleet.produce(feed, f"fo{i}", 8, pause_s=0.2)
    victim_port = next(p for p in by_master if p != cluster.nodes[0].port)
    time.sleep(1.0)  # mid-run
    before = {f: len(fleet.scenes[f]) for f in by_master[victim_port]}
    node_by_port(cluster, victim_port).process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    node_by_port(cluster, victim_port).kill()
    fleet.wait_producers(timeout_s=180)
    assert all(0 < n < 8 for n in before.values()), f"the kill was not mid-run: {before}"
    fleet.wait_drained(client, timeout_s=180)
    check_exactly_once(client, fleet)
    assert slot_map(cluster)[feed_slot(by_master[victim_port][0])] != victim_port  # a replica took over
    heal(cluster)


def _run_through_a_migration(
    cluster: LocalCluster, fleet: Fleet, toy_model: Path, feed: str, migrate: Callable[[], None]
) -> None:
    """Two consumers and a producer of `feed` at work while `migrate()` moves its slot; then the
    exactly-once check."""
    client = connection.connect(settings(cluster, feed))
    load(client, toy_model, LoadOptions(name="mig", feeds=(feed,), batch=4))
    fleet.consume(feed, "m1")
    fleet.consume(feed, "m2")
    fleet.produce(feed, "mig", 10, pause_s=0.1)
    time.sleep(0.8)
    before = len(fleet.scenes[feed])
    source = slot_map(cluster)[feed_slot(feed)]
    migrate()
    during = len(fleet.scenes[feed])
    assert slot_map(cluster)[feed_slot(feed)] != source
    fleet.wait_producers()
    assert 0 < before and during < 10, f"the migration was not mid-run: {before}, {during} of 10 scenes"
    fleet.wait_drained(client)
    check_exactly_once(client, fleet)
    # everything of the feed moved: the source holds none of its keys
    assert redis.Redis(port=source).execute_command("CLUSTER", "COUNTKEYSINSLOT", feed_slot(feed)) == 0


def test_slot_migration_of_a_running_feed(cluster: LocalCluster, fleet: Fleet, toy_model: Path) -> None:
    """Key by key with pauses, so the clients spend long in the half-moved slot: commands whose
    key has moved follow ASK to the target, transactions wait for the end."""
    by_master = feeds_per_master(cluster, 1, "mig")
    (_, (feed,)), (target, _) = list(by_master.items())[:2]
    _run_through_a_migration(
        cluster, fleet, toy_model, feed, lambda: migrate_slot(cluster, feed_slot(feed), target, pause_s=0.02)
    )
    followed, refused = fleet.migration_counts()
    assert followed > 0 and refused > 0, (followed, refused)


def test_redis_cli_reshard_of_a_running_feed(cluster: LocalCluster, fleet: Fleet, toy_model: Path) -> None:
    """`redis-cli --cluster reshard` itself, one key per MIGRATE (it moves a master's lowest
    slots first: the feed is one whose slot is its master's lowest)."""
    feed, source = feed_on_lowest_slot(cluster, "rs")
    target = next(p for p, role in cluster.roles().items() if role == "master" and p != source)
    _run_through_a_migration(
        cluster, fleet, toy_model, feed, lambda: reshard(cluster, source, target, slots=1, pipeline=1)
    )


def test_a_command_for_another_slot_is_redirected_a_transaction_is_not(cluster: LocalCluster) -> None:
    """The roles use on_slot for other slots' keys; a single command sent on a slot client
    anyway follows the MOVED to the key's master (groundwatch web and monitor read every feed
    on one client), a transaction raises SlotMoved (its WATCH would not hold elsewhere)."""
    (mine, *_), (other, *_) = list(feeds_per_master(cluster, 1, "redir").values())[:2]
    client = connection.connect(settings(cluster, mine))
    connection.on_slot(client, keys.stats(other)).hset(keys.stats(other), "x", 7)
    assert client.hget(keys.stats(other), "x") == b"7"
    assert client.pipeline(transaction=False).hget(keys.stats(other), "x").hget(
        keys.stats(mine), "x"
    ).execute() == [
        b"7",
        None,
    ]
    with pytest.raises(connection.SlotMoved, match="MOVED"):
        with client.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.stats(other), "x", 1)
            pipe.execute()
    assert client.hget(keys.stats(other), "x") == b"7"  # the transaction did nothing


def test_a_slot_without_replicas_is_checked_again(cluster: LocalCluster) -> None:
    """CLUSTER SLOTS leaves out replicas that have replicated nothing yet, so a producer that
    connected to a new cluster saw none; it looks again, and WAITs once a replica is listed."""
    (feed, *_), *_ = feeds_per_master(cluster, 1, "rep").values()
    client = connection.connect(settings(cluster, feed))
    topology = client.connection_pool.connection_kwargs["gw_topology"]
    slot = feed_slot(feed)
    found = topology._range(slot)
    topology._ranges = [r if r is not found else replace(r, replicas=0) for r in topology._ranges]
    assert connection.wait_for_replica(client, keys.stats(feed)) is None  # seen just now: none
    client.hset(keys.stats(feed), "x", 1)  # a replica that has replicated something is listed
    deadline = time.monotonic() + 20
    while (got := connection.wait_for_replica(client, keys.stats(feed))) != 1:
        assert got is None and time.monotonic() < deadline, got
        topology._refreshed -= connection.REPLICA_RECHECK_S + 1  # as if that long had passed
        time.sleep(0.2)


def test_cluster_nodes_run_with_the_snapshot_settings(cluster: LocalCluster) -> None:
    """The nodes `groundwatch up --cluster` starts get the same snapshot settings as one server
    (groundwatch.server.SNAPSHOT_CONFIG), read back from each node."""
    for node in cluster.nodes:
        got = redis.Redis(port=node.port).config_get("rdbcompression", "auto-aof-rewrite-min-size")
        assert got == {"rdbcompression": "no", "auto-aof-rewrite-min-size": str(512 * 2**20)}
