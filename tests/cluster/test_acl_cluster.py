"""The roles' ACL users on a real 3-master cluster: `acl apply` makes them on every node, each
user finds the cluster through groundwatch.connection (CLUSTER SLOTS, nothing more), does its
part of the flow on a feed whose master is not the node REDIS_URL names, may send ASKING, and
is refused (NOPERM) what its role must not do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from consumers.worker import Consumer
from groundwatch import acl, connection, keys, status
from groundwatch.server import LocalCluster
from groundwatch.settings import Settings
from ingest.scene import ingest_file
from loaders.loader import LoadOptions, load, stats
from tests.cluster.conftest import feeds_per_master, node_client
from tests.core.test_acl import _model, _noperm, _scene

# replication's own commands on a master (its replicas' acknowledgements), and the test's admin
NOT_THE_ROLES = {"auth", "config|resetstat", "replconf", "psync", "sync"}


def test_every_role_finds_the_cluster_and_does_its_part(cluster: LocalCluster, tmp_path: Path) -> None:
    url_port = cluster.nodes[0].port
    feed = next(fs[0] for port, fs in feeds_per_master(cluster, 1, "acl").items() if port != url_port)
    admin = connection.connect(Settings(redis_url=cluster.url))
    roles = acl.roles(feeds=[feed])
    passwords, _ = acl.choose_passwords(roles, {})
    acl.apply(admin, roles, passwords)
    masters = [p for p, role in cluster.roles().items() if role == "master"]
    for n in cluster.nodes:  # on every node, replicas too (a replica promoted must know them)
        assert set(node_client(n.port).acl_users()) >= set(acl.ROLE_NAMES), n.port

    def settings(**more: Any) -> Settings:
        return Settings(feed=feed, tile_size=64, tile_overlap=16, **more)

    def login(role: str) -> redis.Redis:
        url = connection.user_url(cluster.url, role, passwords[role])
        client = connection.connect(settings(redis_url=url), url=url)
        assert connection.is_cluster(client), role  # found with the role's own rights
        return client

    used: dict[str, set[str]] = {}

    def phase(role: str, work: Callable[[redis.Redis], Any]) -> Any:
        for p in masters:
            node_client(p).config_resetstat()
        out = work(login(role))
        for p in masters:
            for name, figures in node_client(p).info("commandstats").items():
                if int(figures["calls"]):
                    used.setdefault(role, set()).add(name.removeprefix("cmdstat_").lower())
        return out

    model = _model(tmp_path)
    phase("loader", lambda c: load(c, model, LoadOptions(name="ship", feeds=(feed,), batch=4)))
    result = phase("publisher", lambda c: ingest_file(c, settings(publish_batch=2), _scene(tmp_path, "a")))
    assert result.tiles == 4
    run = phase("consumer", lambda c: Consumer(c, settings(), burst=True).run())
    assert (run.frames_done, run.scenes_done, run.dead) == (4, 1, 0)

    def viewer_part(c: redis.Redis) -> None:
        seen = {s.feed: s for s in status.collect(c)}
        assert seen[feed].model == "ship:1" and seen[feed].counters["frames_done"] == 4
        assert len(c.xrevrange(keys.detections(feed), count=10)) == 4
        assert [s.active for s in stats(c)] == [True]  # `groundwatch model list`

    phase("viewer", viewer_part)
    again = phase("operator", lambda c: ingest_file(c, settings(), _scene(tmp_path, "a"), force=True))
    assert again.tiles == 4 and not again.duplicate

    for role in acl.ROLE_NAMES:
        ran = used[role] - NOT_THE_ROLES
        allowed = acl.roles([role], feeds=[feed])[0].commands
        assert ran <= allowed, f"{role} ran {ran - allowed}"
        assert "cluster|slots" in ran, f"{role} did not find the cluster: {sorted(ran)}"
        assert login(role).execute_command("ASKING") is True  # what following an ASK sends first

    refused: dict[str, Callable[[redis.Redis], Any]] = {
        "publisher": lambda c: c.xrange(keys.detections(feed)),
        "consumer": lambda c: c.xadd(keys.frames(feed), {"x": 1}),
        "loader": lambda c: c.xadd(keys.frames(feed), {"x": 1}),
        "viewer": lambda c: c.set(keys.scene_result(feed, "a"), "{}"),
        "operator": lambda c: c.config_get("appendfsync"),
    }
    for role, call in refused.items():
        client = login(role)
        _noperm(lambda c=client, f=call: f(c))  # type: ignore[misc]
