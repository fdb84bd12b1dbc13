"""`groundwatch demo --cluster`'s path, small, on the cluster fixture: one feed on each master,
the scenes dealt out over them, every scene found and scored, nothing dead."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from demo.cli import register
from demo.run import FEED, run_demo
from groundwatch import connection, keys
from groundwatch.server import LocalCluster
from groundwatch.settings import Settings
from tests.cluster.conftest import feed_slot, slot_map


def test_demo_on_a_cluster_spreads_its_feeds_over_every_master(
    cluster: LocalCluster, tmp_path: Path, engine_module: Path | None
) -> None:
    assert engine_module is not None
    settings = Settings(data_dir=tmp_path, engine_module=engine_module)
    summary = run_demo(settings, scenes=3, size_px=512, seed=9200, consumers=1, cluster=cluster)
    client = connection.connect(Settings(redis_url=cluster.url))
    feeds = connection.feeds_on_every_shard(client, f"{FEED}-")
    owners = slot_map(cluster)
    masters = {p for p, role in cluster.roles().items() if role == "master"}
    assert {owners[feed_slot(f)] for f in feeds} == masters  # one feed on each master
    # each feed got one of the 3 scenes, on its own master, every tile one result, nothing left over
    tiles = 0
    for f in feeds:
        c = connection.on_slot(client, keys.frames(f))
        assert c.xlen(keys.scenes(f)) == 1, f
        assert c.xpending(keys.frames(f), "detectors")["pending"] == 0
        on_master = redis.Redis(port=owners[feed_slot(f)])
        assert on_master.xlen(keys.scenes(f)) == 1
        tiles += on_master.xlen(keys.detections(f))
    assert summary.scenes == 3 and summary.dead_letters == 0
    assert summary.tiles == tiles >= 3
    found = sum(c.detected for c in summary.per_class.values())
    matched = sum(c.matched for c in summary.per_class.values())
    truth = sum(c.truth for c in summary.per_class.values())
    assert truth > 0 and matched >= 0.8 * truth and matched >= 0.6 * found, summary.render()
    assert len(summary.outputs) == 6


def test_demo_cluster_flag() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["demo", "--cluster"]).cluster == 3
    assert parser.parse_args(["demo", "--cluster", "4"]).cluster == 4
    assert parser.parse_args(["demo"]).cluster == 0


def test_feeds_on_every_shard_on_one_server(r: redis.Redis) -> None:
    assert connection.feeds_on_every_shard(r, "x-", per_shard=2) == ["x-0", "x-1"]
    with pytest.raises(Exception, match="not valid"):
        connection.feeds_on_every_shard(r, "{bad}", per_shard=1)


def test_up_cluster_runs_a_cluster_until_stopped(tmp_path: Path, engine_module: Path | None) -> None:
    """`groundwatch up --cluster 3`: 3 masters and their replicas with the engine, a REDIS_URL
    the other commands take, everything stopped on SIGTERM; fewer masters are refused."""
    import os
    import signal
    import subprocess
    import sys
    import time

    assert engine_module is not None
    env = {
        **os.environ,
        "GROUNDWATCH_DATA_DIR": str(tmp_path),
        "GROUNDWATCH_ENGINE_MODULE": str(engine_module),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "groundwatch.cli", "up", "--cluster", "3"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = ""
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while not url and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "groundwatch up --cluster exited before printing REDIS_URL"
            if "export REDIS_URL=" in line:
                url = line.split("export REDIS_URL=", 1)[1].split()[0]
        client = connection.connect(Settings(redis_url=url))
        assert connection.is_cluster(client)
        assert len(connection.every_node(client)) == 6  # the masters and their replicas
        for node in connection.every_node(client):  # the engine on every node
            assert b"ai" in {m[b"name"] for m in node.module_list()}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    pids = subprocess.run(["pgrep", "-f", str(tmp_path / "cluster")], capture_output=True, text=True)
    assert pids.stdout.strip() == ""
    two = subprocess.run(
        [sys.executable, "-m", "groundwatch.cli", "up", "--cluster", "2"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode != 0 and "at least 3 masters" in two.stderr
