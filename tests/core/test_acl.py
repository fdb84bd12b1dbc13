"""The roles' ACL users on a real redis-server with the engine: each role does its part of the
whole flow, and what it must not do fails with NOPERM."""

from __future__ import annotations

import json
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from consumers.worker import Consumer
from groundwatch import acl, ai, connection, keys, status
from groundwatch.cli import main
from groundwatch.server import RedisServer
from groundwatch.settings import REPO_ROOT, Settings
from ingest.scene import ingest_file
from loaders.loader import LoadOptions, activate, load, remove, rollback, stats
from monitor.checks import check as monitor_check
from tests import toymodels
from tests.ingest.conftest import write_tif

FEED, OTHER = "s1", "s2"
SECURITY_DOC = REPO_ROOT / "docs" / "security.md"


@pytest.fixture(scope="module")
def server(server_factory: Callable[..., RedisServer]) -> RedisServer:
    return server_factory()


@pytest.fixture(scope="module")
def passwords(server: RedisServer) -> dict[str, str]:
    admin = redis.Redis(port=server.port)
    chosen, _ = acl.choose_passwords(acl.roles(feeds=[FEED]), {})
    acl.apply(admin, acl.roles(feeds=[FEED]), chosen)
    return chosen


@pytest.fixture
def login(server: RedisServer, passwords: dict[str, str]) -> Iterator[Callable[[str], redis.Redis]]:
    """login(role): a client of that role, made the way the CLI makes them (REDIS_URL with user:password)."""
    redis.Redis(port=server.port).flushall()
    made: list[redis.Redis] = []

    def make(role: str) -> redis.Redis:
        url = connection.user_url(server.url, role, passwords[role])
        client = connection.connect(Settings(redis_url=url), url=url)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


def _scene(tmp_path: Path, name: str) -> Path:
    """A 1-band uint16 GeoTIFF of 2 x 2 tiles of 64 px with one bright pixel per tile."""
    arr = np.full((1, 112, 112), 100, np.uint16)
    for row, col in ((10, 10), (10, 100), (100, 10), (100, 100)):
        arr[0, row, col] = 5000
    return write_tif(tmp_path / f"{name}.tif", arr)


def _model(tmp_path: Path) -> Path:
    path = tmp_path / "bright.pt"
    path.write_bytes(toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
    return path


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"feed": FEED, "tile_size": 64, "tile_overlap": 16}  # default name: a lease
    return Settings(**{**values, **overrides})


def _commands_used(admin: redis.Redis) -> set[str]:
    """Commands the server ran since the last CONFIG RESETSTAT, but the admin's own."""
    used = set()
    for name, figures in admin.info("commandstats").items():
        if int(figures["calls"]):  # not those only refused (NOPERM counts as rejected_calls)
            used.add(name.removeprefix("cmdstat_").lower())
    # AUTH needs no ACL rule (every user may log in); CONFIG RESETSTAT is the admin's (and the
    # admin's INFO is counted only after it answered, so it is not in its own figures).
    return used - {"auth", "config|resetstat"}


def test_each_role_does_its_part_of_the_whole_flow(
    login: Callable[[str], redis.Redis], server: RedisServer, tmp_path: Path
) -> None:
    admin = redis.Redis(port=server.port)
    used: dict[str, set[str]] = {}

    def phase(role: str, work: Callable[[redis.Redis], Any]) -> Any:
        admin.config_resetstat()
        out = work(login(role))
        used[role] = used.get(role, set()) | _commands_used(admin)
        return out

    model = _model(tmp_path)

    def loader_part(c: redis.Redis) -> None:
        load(c, model, LoadOptions(name="ship", feeds=(FEED,), batch=4))
        load(c, model, LoadOptions(name="ship", feeds=(FEED,), batch=4))
        assert rollback(c, "ship").label == "ship:1"
        remove(c, "ship", 2)
        assert activate(c, "ship", 1).label == "ship:1"
        assert [s.record.label for s in stats(c)] == ["ship:1"]

    phase("loader", loader_part)

    def subscribe(c: redis.Redis) -> Any:
        pubsub = c.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.detections(FEED), keys.scenes(FEED))
        pubsub.psubscribe(keys.channel_pattern("alerts"))  # as the live view does (groundwatch web)
        pubsub.get_message(timeout=0.5)  # the subscription is confirmed before anything is published
        return pubsub

    pubsub = phase("viewer", subscribe)
    # before any consumer group exists, in batches of 2: the resume point is recorded
    result = phase(
        "publisher", lambda c: ingest_file(c, _settings(publish_batch=2), _scene(tmp_path, "scene-a"))
    )
    assert result.tiles == 4

    run = phase("consumer", lambda c: Consumer(c, _settings(), burst=True).run())
    assert (run.frames_done, run.scenes_done, run.dead) == (4, 1, 0)
    # the trim after a complete scene: everything acknowledged goes
    phase("publisher", lambda c: ingest_file(c, _settings(), _scene(tmp_path, "scene-b")))
    phase("consumer", lambda c: Consumer(c, _settings(), burst=True).run())
    # the consumer's Prometheus figures come from the same reads as `groundwatch status`
    (figures,) = phase("consumer", lambda c: status.collect(c, feed=FEED))
    assert figures.counters["frames_done"] == 8

    messages: list[bytes] = []
    while (m := pubsub.get_message(timeout=1.0)) is not None or len(messages) < 10:
        if m is not None:
            messages.append(m["channel"])
    assert messages.count(keys.detections(FEED).encode()) == 8
    assert messages.count(keys.scenes(FEED).encode()) == 2
    phase("viewer", lambda _: (pubsub.unsubscribe(), pubsub.punsubscribe()))
    pubsub.close()

    def viewer_part(c: redis.Redis) -> None:
        (seen,) = status.collect(c)
        assert seen.feed == FEED and seen.model == "ship:1" and seen.model_stats["calls"] >= 2
        assert seen.counters["frames_in"] == 8 and seen.groups[0].pending == 0
        assert len(c.xrevrange(keys.detections(FEED), count=10)) == 8
        assert json.loads(c.get(keys.scene_result(FEED, "scene-a")))["type"] == "FeatureCollection"
        assert c.xrange(keys.dead_letters(FEED)) == []
        ((_, entries),) = c.xread({keys.scenes(FEED): "0"}, count=5)
        assert len(entries) == 2
        assert [s.active for s in stats(c)] == [True]  # `groundwatch model list`
        # the live view's reads: a scene's quick-look and footprint, alerts
        assert c.hget(keys.quicklook(FEED, "scene-a"), "png")
        assert c.hmget(keys.quicklook(FEED, "scene-a"), ["width", "footprint"])[0]
        assert isinstance(c.xrevrange(keys.alerts(FEED), count=5), list)

    phase("viewer", viewer_part)

    # The operator does what only operators do: the monitor's checks (profiles, drift, alerts),
    phase("operator", lambda c: monitor_check(c, _settings(), FEED, int(time.time() * 1000)))
    # and publishing a scene again from scratch.
    again = phase("operator", lambda c: ingest_file(c, _settings(), _scene(tmp_path, "scene-a"), force=True))
    assert again.tiles == 4 and not again.duplicate

    # Least privilege both ways: every command a role may run was run by this flow, except the
    # paths it did not take, named here with the reason.
    # ASKING: following a slot migration on a cluster (tests/cluster/test_acl_cluster.py)
    not_taken = {
        # a scene another producer finished meanwhile; trimming while entries are pending;
        # counting the lag when XINFO cannot (after XDEL)
        # waiting for replicas (none here); WAITAOF on Redis >= 7.2, WAIT before
        "publisher": {"unwatch", "xpending", "xrange", "wait", "waitaof", "asking"},
        # recovery: own or dead consumers' pending entries
        "consumer": {"unwatch", "xautoclaim", "xpending", "asking"},
        "loader": {"ai.modelget", "asking"},  # --optimize and --variant-of read the stored copy
        "viewer": {"asking"},
    }
    for role, commands in used.items():
        if role == "operator":
            continue
        allowed = acl.roles([role])[0].commands
        assert commands <= allowed, f"{role} ran {commands - allowed}"
        assert allowed - commands <= not_taken[role], f"{role} may run {allowed - commands} it never ran"


def _noperm(call: Callable[[], Any]) -> str:
    """The NOPERM refusal of `call` (the engine client wraps it in EngineError)."""
    with pytest.raises((redis.exceptions.NoPermissionError, ai.EngineError)) as caught:
        call()
    err: BaseException = caught.value
    while not isinstance(err, redis.exceptions.NoPermissionError) and err.__cause__ is not None:
        err = err.__cause__
    assert isinstance(err, redis.exceptions.NoPermissionError), f"not NOPERM: {caught.value!r}"
    return str(err)


TILE = np.zeros((1, 1, 64, 64), np.uint16)
BLOB = toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata())

FORBIDDEN: dict[str, list[tuple[str, Callable[[redis.Redis], Any]]]] = {
    "publisher": [
        ("AI.MODELSTORE", lambda c: ai.Engine(c).model_store(keys.model(FEED, "x", 1), BLOB)),
        (
            "AI.DAGEXECUTE",
            lambda c: ai.Engine(c).run(keys.model(FEED, "ship", 1), TILE, keys.model(FEED, "ship", 1)),
        ),
        (
            "AI.SCRIPTSTORE",
            lambda c: c.execute_command(
                "AI.SCRIPTSTORE", keys.model(FEED, "s", 1), "CPU", "SOURCE", "def f(x): return x"
            ),
        ),
        ("read detections", lambda c: c.xrange(keys.detections(FEED))),
        ("read a scene result", lambda c: c.get(keys.scene_result(FEED, "scene-a"))),
        ("XADD to another feed", lambda c: c.xadd(keys.frames(OTHER), {"v": "1"})),
        ("XADD to its results", lambda c: c.xadd(keys.detections(FEED), {"v": "1"})),
        ("switch the model", lambda c: c.set(keys.active_model(FEED), "evil:1")),
        ("consume frames", lambda c: c.xreadgroup("detectors", "x", {keys.frames(FEED): ">"})),
        ("SCAN", lambda c: c.scan()),
    ],
    "consumer": [
        ("AI.MODELSTORE", lambda c: ai.Engine(c).model_store(keys.model(FEED, "x", 1), BLOB)),
        (
            "AI.SCRIPTSTORE",
            lambda c: c.execute_command(
                "AI.SCRIPTSTORE", keys.model(FEED, "s", 1), "CPU", "SOURCE", "def f(x): return x"
            ),
        ),
        ("XADD to another feed", lambda c: c.xadd(keys.detections(OTHER), {"v": "1"})),
        ("XADD frames to another feed", lambda c: c.xadd(keys.frames(OTHER), {"v": "1"})),
        ("XADD frames to its own feed", lambda c: c.xadd(keys.frames(FEED), {"v": "1"})),
        ("read another feed", lambda c: c.xreadgroup("detectors", "x", {keys.frames(OTHER): ">"})),
        (
            "another feed's model",
            lambda c: ai.Engine(c).run(keys.model(OTHER, "ship", 1), TILE, keys.model(OTHER, "ship", 1)),
        ),
        ("switch the model", lambda c: c.set(keys.active_model(FEED), "evil:1")),
        ("delete the model", lambda c: c.delete(keys.model(FEED, "ship", 1))),
        ("PUBLISH on another feed", lambda c: c.publish(keys.detections(OTHER), "x")),
        ("the registry", lambda c: c.hset(keys.registry_versions("ship"), "9", "{}")),
    ],
    "loader": [
        ("XADD frames", lambda c: c.xadd(keys.frames(FEED), {"v": "1"})),
        ("read frames", lambda c: c.xrange(keys.frames(FEED))),
        ("consume frames", lambda c: c.xreadgroup("detectors", "x", {keys.frames(FEED): ">"})),
        ("XADD results", lambda c: c.xadd(keys.detections(FEED), {"v": "1"})),
        ("PUBLISH", lambda c: c.publish(keys.detections(FEED), "x")),
        ("CONFIG", lambda c: c.config_get("dir")),
    ],
    "viewer": [
        ("XADD", lambda c: c.xadd(keys.detections(FEED), {"v": "1"})),
        ("XADD frames", lambda c: c.xadd(keys.frames(FEED), {"v": "1"})),
        ("SET", lambda c: c.set(keys.active_model(FEED), "evil:1")),
        ("DEL", lambda c: c.delete(keys.scene_result(FEED, "scene-a"))),
        ("HINCRBY", lambda c: c.hincrby(keys.stats(FEED), "frames_done", 1)),
        ("PUBLISH", lambda c: c.publish(keys.detections(FEED), "x")),
        ("read frame data", lambda c: c.xrange(keys.frames(FEED))),
        ("AI.MODELSTORE", lambda c: ai.Engine(c).model_store(keys.model(FEED, "x", 1), BLOB)),
        (
            "AI.DAGEXECUTE",
            lambda c: ai.Engine(c).run(keys.model(FEED, "ship", 1), TILE, keys.model(FEED, "ship", 1)),
        ),
        ("AI.MODELGET BLOB", lambda c: ai.Engine(c).model_blob(keys.model(FEED, "ship", 1))),
    ],
    "operator": [
        ("ACL", lambda c: c.execute_command("ACL", "SETUSER", "operator", "+@all")),
        ("CONFIG", lambda c: c.config_set("dir", "/tmp")),
        ("MODULE", lambda c: c.execute_command("MODULE", "LIST")),
        ("DEBUG", lambda c: c.execute_command("DEBUG", "SLEEP", "0")),
        ("FLUSHALL", lambda c: c.flushall()),
        ("KEYS", lambda c: c.keys("*")),
        (
            "AI.SCRIPTSTORE",
            lambda c: c.execute_command(
                "AI.SCRIPTSTORE", keys.model(FEED, "s", 1), "CPU", "SOURCE", "def f(x): return x"
            ),
        ),
        ("AI.CONFIG", lambda c: c.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", "/tmp/x.so")),
        ("keys outside groundwatch", lambda c: c.set("not-ours", "1")),
    ],
}


@pytest.mark.parametrize(
    ("role", "what", "call"),
    [(role, what, call) for role, cases in FORBIDDEN.items() for what, call in cases],
    ids=[f"{role}-{what}" for role, cases in FORBIDDEN.items() for what, _ in cases],
)
def test_what_a_role_must_not_do_fails_with_noperm(
    login: Callable[[str], redis.Redis],
    server: RedisServer,
    role: str,
    what: str,
    call: Callable[[redis.Redis], Any],
) -> None:
    admin = redis.Redis(port=server.port)
    ai.Engine(admin).model_store(keys.model(FEED, "ship", 1), BLOB)
    ai.Engine(admin).model_store(keys.model(OTHER, "ship", 1), BLOB)
    _noperm(lambda: call(login(role)))


# --- the rules themselves ------------------------------------------------------------------


def test_rules_are_explicit_allow_lists_of_groundwatch_keys() -> None:
    for role in acl.roles(feeds=[FEED]):
        rules = " ".join(role.rules())
        assert "@" not in rules.replace("-@all", ""), f"{role.name} grants a category: {rules}"
        assert "allkeys" not in rules and "allcommands" not in rules and "~*" not in rules
        patterns = re.findall(r"(?:%R)?~(\S+?)\)?(?=\s|$)", rules)
        assert patterns and all(p.startswith("gw:") for p in patterns), patterns
        assert not role.commands & {
            "acl",
            "config",
            "module",
            "debug",
            "flushall",
            "keys",
            "shutdown",
            "eval",
        }
    for name in ("publisher", "consumer"):
        (role,) = acl.roles([name], feeds=[FEED])
        tags = set(re.findall(r"\{([^}]*)\}", " ".join(role.rules())))
        assert tags == {FEED}, f"{name} reaches {tags}"
    (pub,) = acl.roles(["publisher"])
    assert not {c for c in pub.commands if c.startswith("ai.")}


def test_feeds_are_checked_like_feed_names() -> None:
    with pytest.raises(Exception, match="not valid"):
        acl.roles(feeds=["*"])
    with pytest.raises(Exception, match="unknown role"):
        acl.roles(["root"])


def test_the_security_doc_holds_the_rules_groundwatch_acl_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["acl", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    doc = SECURITY_DOC.read_text()
    begin, end = "<!-- groundwatch acl --markdown: begin -->", "<!-- groundwatch acl --markdown: end -->"
    assert begin in doc and end in doc
    shown = doc.split(begin, 1)[1].split(end, 1)[0].strip()
    assert shown == table, "docs/security.md is stale: paste the output of `groundwatch acl --markdown`"


# --- groundwatch acl apply -----------------------------------------------------------------


def test_acl_apply_generates_saves_keeps_and_rotates_passwords(
    server_factory: Callable[..., RedisServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = server_factory()
    admin = redis.Redis(port=srv.port)
    creds = tmp_path / "creds.json"
    url = ["--redis-url", srv.url]

    assert main([*url, "acl", "apply", "--dry-run", "--credentials", str(creds)]) == 0
    assert "***" in capsys.readouterr().out and not creds.exists()
    assert set(admin.acl_users()) == {"default"}

    assert main([*url, "acl", "apply"]) == 1  # the passwords would be lost
    assert "--credentials" in capsys.readouterr().err

    assert main([*url, "acl", "apply", "--credentials", str(creds), "--feeds", FEED]) == 0
    out = capsys.readouterr().out
    first = json.loads(creds.read_text())
    assert set(first) == set(acl.ROLE_NAMES)
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert not any(pw in out for pw in first.values()), "a password was printed"
    assert f"publisher: REDIS_URL=redis://publisher:***@127.0.0.1:{srv.port}/0" in out
    for role, pw in first.items():
        assert redis.Redis(port=srv.port, username=role, password=pw).ping()

    assert main([*url, "acl", "apply", "--credentials", str(creds)]) == 0  # again: same passwords
    assert json.loads(creds.read_text()) == first

    assert (
        main(
            [
                *url,
                "acl",
                "apply",
                "--roles",
                "viewer",
                "--credentials",
                str(creds),
                "--rotate",
                "--show-passwords",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rotated = json.loads(creds.read_text())
    assert rotated["viewer"] != first["viewer"] and rotated["loader"] == first["loader"]
    assert rotated["viewer"] in out
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=srv.port, username="viewer", password=first["viewer"]).ping()
    assert redis.Redis(port=srv.port, username="viewer", password=rotated["viewer"]).ping()

    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"station-a": "a-long-password-from-a-vault"}))
    args = [
        "acl",
        "apply",
        "--roles",
        "publisher",
        "--user",
        "station-a",
        "--feeds",
        OTHER,
        "--passwords",
        str(mine),
    ]
    assert main([*url, *args]) == 0
    station = redis.Redis(port=srv.port, username="station-a", password="a-long-password-from-a-vault")
    assert station.xadd(keys.frames(OTHER), {"v": "1"})
    _noperm(lambda: station.xadd(keys.frames(FEED), {"v": "1"}))
