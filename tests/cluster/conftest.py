"""A real Redis Cluster for the tests: 3 masters and 3 replicas, the engine loaded on every node.

`cluster` is started once per module (about 3 s) with `redis-cli --cluster create`, on free
loopback ports, and stopped after. Tests that kill or move things leave it whole again
(`heal`). The helpers here are what an operator would do with redis-cli: find a slot's master,
SIGKILL a node, migrate one slot by hand (CLUSTER SETSLOT IMPORTING/MIGRATING + MIGRATE).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from groundwatch import keys
from groundwatch.server import LocalCluster, RedisServer
from tests.conftest import _servers_in_use, server_env


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, engine_module: Path | None) -> Iterator[LocalCluster]:
    if engine_module is None:
        pytest.fail("the cluster tests need the engine (--no-engine was given)")
    c = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        masters=3,
        replicas=1,
        engine_module=engine_module,
        node_timeout_ms=3000,
        env=server_env(),
    )
    c.start()
    _servers_in_use.extend(c.nodes)
    try:
        yield c
    finally:
        c.stop()


def node_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=30)


def slot_map(c: LocalCluster) -> dict[int, int]:
    """slot -> port of its master, from any running node."""
    for n in c.nodes:
        if not n.running():
            continue
        out = {}
        for first, last, master, *_ in node_client(n.port).execute_command("CLUSTER", "SLOTS"):
            for s in range(int(first), int(last) + 1):
                out[s] = int(master[1])
        return out
    raise AssertionError("no node runs")


def feed_slot(feed: str) -> int:
    return key_slot(keys.frames(feed).encode())


def feeds_per_master(c: LocalCluster, per_master: int, prefix: str) -> dict[int, list[str]]:
    """Feed names `<prefix><n>` whose slots land on each master (port -> feeds), `per_master` each."""
    owners = slot_map(c)
    out: dict[int, list[str]] = {}
    for i in range(10_000):
        name = f"{prefix}{i}"
        got = out.setdefault(owners[feed_slot(name)], [])
        if len(got) < per_master:
            got.append(name)
        if len(out) == 3 and all(len(v) == per_master for v in out.values()):
            return out
    raise AssertionError(f"could not spread feeds over the masters: {out}")


def node_by_port(c: LocalCluster, port: int) -> RedisServer:
    return next(n for n in c.nodes if n.port == port)


def node_id(port: int) -> str:
    return str(node_client(port).execute_command("CLUSTER", "MYID").decode())


def heal(c: LocalCluster) -> None:
    """Start every stopped node again (it rejoins, as a replica when it lost its slots)."""
    for n in c.nodes:
        if not n.running():
            n.start()
    c.wait_ok()
    deadline = time.monotonic() + 60
    while True:
        roles = c.roles()
        if sorted(roles.values()).count("master") == c.masters and len(roles) == len(c.nodes):
            return
        assert time.monotonic() < deadline, f"the cluster did not heal: {roles}"
        time.sleep(0.1)


def migrate_slot(c: LocalCluster, slot: int, to_port: int, pause_s: float = 0.0) -> None:
    """Move one slot to another master the way `redis-cli --cluster reshard` does, key by key
    (`pause_s` between keys stretches the window in which clients see ASK/TRYAGAIN)."""
    from_port = slot_map(c)[slot]
    src, dst = node_client(from_port), node_client(to_port)
    src_id, dst_id = node_id(from_port), node_id(to_port)
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    while True:
        batch = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 10)
        if not batch:
            break
        for key in batch:
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 10_000, "REPLACE", "KEYS", key)
            if pause_s:
                time.sleep(pause_s)
    # The target first, then the source, then every other master (as redis-cli does).
    others = [p for p, role in c.roles().items() if role == "master" and p not in (from_port, to_port)]
    for port in (to_port, from_port, *others):
        node_client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)


def feed_on_lowest_slot(c: LocalCluster, prefix: str) -> tuple[str, int]:
    """A feed name `<prefix><n>` whose slot is the lowest one of the master serving it, and that
    master's port (redis-cli --cluster reshard takes a master's lowest slots first)."""
    owners = slot_map(c)
    lowest = {port: min(s for s, p in owners.items() if p == port) for port in set(owners.values())}
    wanted = {s: port for port, s in lowest.items()}
    for i in range(1_000_000):
        name = f"{prefix}{i}"
        if feed_slot(name) in wanted:
            return name, wanted[feed_slot(name)]
    raise AssertionError(f"no {prefix}<n> feed on any master's lowest slot {sorted(wanted)}")


def reshard(c: LocalCluster, from_port: int, to_port: int, slots: int, pipeline: int = 10) -> None:
    """`redis-cli --cluster reshard`: move `slots` slots (the lowest of `from_port`) to `to_port`."""
    cmd = [
        "redis-cli",
        "--cluster",
        "reshard",
        f"127.0.0.1:{from_port}",
        "--cluster-from",
        node_id(from_port),
        "--cluster-to",
        node_id(to_port),
        "--cluster-slots",
        str(slots),
        "--cluster-pipeline",
        str(pipeline),
        "--cluster-yes",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
