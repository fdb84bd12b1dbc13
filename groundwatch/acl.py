"""Redis ACL users for groundwatch's roles: least privilege, derived from what each role calls.

Each role is a list of grants. A grant is a set of commands allowed on a set of key patterns;
the first grant is the user's root permissions, every further one a Redis 7 selector
``(+cmd ~pattern)``. Redis allows a command when one grant allows the command and all of its
keys, so a consumer may XACK its frames stream but not XADD to it, and a publisher may SET its
ingest markers but not its feed's results. Commands are named one by one (never ``+@write``,
which holds AI.MODELSTORE: model blobs are code that runs inside Redis). Key patterns come
from :mod:`groundwatch.keys` with :data:`keys.ANY` in place of the parts that vary.

docs/security.md holds the rendered rules (``groundwatch acl --markdown``); a test checks that
it matches.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis

from groundwatch import connection, keys
from groundwatch.errors import ConfigError, GroundwatchError

ANY = keys.ANY

# Every client: the connection check and health checks of redis-py, and what
# groundwatch.connection sends to find and follow a Redis Cluster: CLUSTER SLOTS (is it a
# cluster, which master serves which slot; refused on one server), ASKING (before a command
# sent on to a migrating slot's target). groundwatch does not read from replicas (no READONLY)
# and does not use redis-py's RedisCluster (which also sends COMMAND). AUTH needs no rule.
_CONNECTION = ("ping", "cluster|slots", "asking")
# redis-py's transactions. Roles that WATCH also need UNWATCH: redis-py sends it when a pipeline
# that watches is left without EXEC (nothing to publish after all).
_TRANSACTIONS = ("multi", "exec")

# ingest.publisher.make_durable. WAITAOF exists from Redis 7.2: `acl apply` leaves out the
# commands a server does not know (ACL SETUSER refuses them). CONFIG GET appendfsync is not
# granted: make_durable reports the AOF policy as unknown instead.
_DURABILITY = ("info", "wait", "waitaof")


class AclError(GroundwatchError):
    """ACL rules could not be built or applied."""


@dataclass(frozen=True)
class Grant:
    """`commands` on `keys` (glob patterns); read_only: the keys only with %R~ (read access)."""

    why: str
    commands: tuple[str, ...]
    keys: tuple[str, ...] = ()
    read_only: bool = False

    def rules(self) -> list[str]:
        key_prefix = "%R~" if self.read_only else "~"
        return [*(f"+{c}" for c in self.commands), *(key_prefix + k for k in self.keys)]


@dataclass(frozen=True)
class Role:
    """One ACL user: root grant (keyless commands too), selectors, pub/sub channels."""

    name: str
    summary: str
    grants: tuple[Grant, ...]
    channels: tuple[str, ...] = ()
    feeds: tuple[str, ...] | None = None  # the feeds it is limited to; None: every feed

    def rules(self) -> list[str]:
        """The ACL SETUSER rules after the user name, without reset and password."""
        out = ["on", "resetchannels", "-@all", *self.grants[0].rules()]
        out += [f"&{c}" for c in self.channels]
        out += ["(" + " ".join(g.rules()) + ")" for g in self.grants[1:]]
        return out

    def setuser(self, password: str | None) -> list[str]:
        """The ACL SETUSER command (as arguments) that makes the user exactly this role.

        `reset` first: rules, keys, channels and old passwords go, so applying twice is
        harmless and a rotated password replaces the old one.
        """
        args = ["ACL", "SETUSER", self.name, "reset"]
        rules = self.rules()
        args += rules[:1]
        if password is not None:
            args.append(">" + password)
        return args + rules[1:]

    @property
    def commands(self) -> set[str]:
        return {c for g in self.grants for c in g.commands}


ROLE_NAMES = ("publisher", "consumer", "loader", "viewer", "operator")


def _per_feed(feeds: Sequence[str] | None, *makers: Any) -> tuple[str, ...]:
    """Key patterns `maker(feed)` for each feed (every feed when None), in maker order."""
    targets: Sequence[str] = [ANY] if feeds is None else feeds
    return tuple(m(f) for m in makers for f in targets)


def publisher(feeds: Sequence[str] | None = None) -> Role:
    """ingest and watch: frames, markers, counters of its feeds (ingest.publisher)."""
    return Role(
        "publisher",
        "a ground station: publishes frames of its feeds with ingest's markers, backpressure and "
        "retention; reads no results, stores no models, runs no AI.* command",
        (
            Grant(
                "connection, transactions, the feed registry (SADD of the feed set); durable acknowledgement: "
                "INFO (version, replicas, AOF), WAIT (replicas), WAITAOF (Redis >= 7.2)",
                (*_CONNECTION, *_TRANSACTIONS, "unwatch", "sadd", *_DURABILITY),
                (keys.feeds(),),
            ),
            Grant(
                "publish frames; backpressure (XINFO GROUPS, XLEN, XRANGE, XPENDING); retention (XTRIM)",
                ("xadd", "xlen", "xrange", "xinfo|groups", "xpending", "xtrim"),
                _per_feed(feeds, keys.frames),
            ),
            Grant(
                "scene markers and resume points (WATCHed while publishing)",
                ("watch", "get", "set", "exists", "del", "hgetall", "hset", "expire"),
                _per_feed(
                    feeds, lambda f: keys.scene_ingested(f, ANY), lambda f: keys.scene_progress(f, ANY)
                ),
            ),
            Grant("ingest counters", ("hincrby",), _per_feed(feeds, keys.stats)),
            Grant(
                "scene quick-looks and footprints for the live view",
                ("hset", "expire"),
                _per_feed(feeds, lambda f: keys.quicklook(f, ANY)),
            ),
        ),
        feeds=None if feeds is None else tuple(feeds),
    )


def consumer(feeds: Sequence[str] | None = None) -> Role:
    """consume (consumers.worker) and its --metrics-port endpoint (groundwatch.status)."""
    return Role(
        "consumer",
        "reads its feeds' frames in the consumer group, runs DAGs on the feeds' model copies, "
        "publishes results and dead letters; stores no models or scripts, touches no other feed",
        (
            Grant(
                "connection, transactions, clock (metrics), the feed registry",
                (*_CONNECTION, *_TRANSACTIONS, "unwatch", "time", "sadd", "publish"),
                (keys.feeds(),),
            ),
            Grant(
                "the consumer group: read, acknowledge, recover; group figures",
                ("xgroup|create", "xreadgroup", "xack", "xpending", "xautoclaim", "xlen", "xinfo|groups"),
                _per_feed(feeds, keys.frames),
            ),
            Grant(
                "inference: the DAG on the feed's model copies (its ROUTING key is the copy), metadata, AI.INFO",
                ("ai.dagexecute", "ai.modelget", "ai.info"),
                _per_feed(feeds, lambda f: keys.model(f, ANY, ANY)),
            ),
            Grant("the feed's active version", ("get",), _per_feed(feeds, keys.active_model)),
            Grant(
                "idempotency markers and scene state (WATCHed while publishing); the consumer name's lease",
                ("watch", "mget", "get", "exists", "set", "hset", "hlen", "hgetall", "expire", "del"),
                _per_feed(
                    feeds,
                    lambda f: keys.frame_done(f, ANY),
                    lambda f: keys.dead_marker(f, ANY),
                    lambda f: keys.scene_result(f, ANY),
                    lambda f: keys.consumer_lease(f, ANY, ANY),
                ),
            ),
            Grant(
                "results and dead letters",
                ("xadd", "xlen"),
                _per_feed(feeds, keys.detections, keys.scenes, keys.dead_letters),
            ),
            Grant(
                "counters, latencies, throughput, attempts per frame, faults",
                ("hincrby", "hgetall", "hget", "hset", "hdel", "lpush", "ltrim", "lrange"),
                _per_feed(feeds, keys.stats, keys.latency, keys.throughput, keys.attempts, keys.faults),
            ),
            Grant(
                "the monitor's figures, read for --metrics-port",
                ("hgetall",),
                _per_feed(feeds, keys.drift, keys.alert_state),
                read_only=True,
            ),
            Grant(
                "profiles of what flows, for the monitor",
                ("hincrby", "hincrbyfloat", "expire", "zadd"),
                _per_feed(feeds, lambda f: keys.profile(f, ANY, ANY), keys.profile_index),
            ),
        ),
        channels=_per_feed(feeds, keys.detections, keys.scenes),
        feeds=None if feeds is None else tuple(feeds),
    )


def _registry_keys() -> tuple[str, ...]:
    return (
        keys.registry_models(),
        keys.registry_versions(ANY),
        keys.registry_active(ANY),
        keys.registry_counter(ANY),
        keys.registry_history(ANY),
        keys.registry_originals(ANY),
    )


def loader() -> Role:
    """load, model activate/rollback/remove/list (loaders)."""
    return Role(
        "loader",
        "stores, warms up, switches and removes model versions and keeps the registry; no frames. "
        "Storing a model is running code inside Redis: loader rights are admin rights",
        (
            Grant(
                "connection, transactions, the feed registry",
                (*_CONNECTION, *_TRANSACTIONS, "sadd"),
                (keys.feeds(),),
            ),
            Grant(
                "model copies: store, warm up and compare (DAGs), metadata, AI.INFO, removal",
                ("ai.modelstore", "ai.modelget", "ai.info", "ai.dagexecute", "exists", "del"),
                (keys.model(ANY, ANY, ANY),),
            ),
            Grant("the feeds' active versions", ("get", "set"), (keys.active_model(ANY),)),
            Grant(
                "the model registry",
                (
                    "smembers",
                    "sadd",
                    "incrby",  # redis-py sends INCR as INCRBY
                    "get",
                    "set",
                    "hgetall",
                    "hget",
                    "hexists",
                    "hset",
                    "hdel",
                    "lpush",
                    "ltrim",
                    "lrange",
                    "lrem",
                ),
                _registry_keys(),
            ),
        ),
    )


def viewer() -> Role:
    """status, model list, subscribe, and reading results (read-only keys: %R~)."""
    return Role(
        "viewer",
        "subscribes to and reads detections, scene results, dead letters and status figures; no writes "
        "(keys are read-only: %R~), no frame data",
        (
            Grant(
                "connection, clock, subscriptions (the live view PSUBSCRIBEs every feed), the feed list",
                (*_CONNECTION, "time", "subscribe", "unsubscribe", "psubscribe", "punsubscribe", "smembers"),
                (keys.feeds(),),
                read_only=True,
            ),
            Grant(
                "results: per-tile and scene streams, scene results, dead letters, alerts, quick-looks",
                ("xrange", "xrevrange", "xread", "xlen", "get", "hgetall", "hget", "hmget"),
                (
                    keys.detections(ANY),
                    keys.scenes(ANY),
                    keys.dead_letters(ANY),
                    keys.scene_result(ANY, ANY),
                    keys.alerts(ANY),
                    keys.quicklook(ANY, ANY),
                ),
                read_only=True,
            ),
            Grant(
                "stream figures (no frame data)",
                ("xlen", "xinfo|groups"),
                (keys.frames(ANY),),
                read_only=True,
            ),
            Grant(
                "counters, latencies, throughput, faults, drift and active alerts, active versions",
                ("hgetall", "lrange", "get"),
                (
                    keys.stats(ANY),
                    keys.latency(ANY),
                    keys.throughput(ANY),
                    keys.faults(ANY),
                    keys.drift(ANY),
                    keys.alert_state(ANY),
                    keys.active_model(ANY),
                ),
                read_only=True,
            ),
            Grant(
                # Module commands declare their keys read-write to Redis 7.0, so %R~ would refuse
                # AI.INFO; AI.INFO is the only command this selector allows on model keys.
                "AI.INFO of model copies (the only command on them)",
                ("ai.info",),
                (keys.model(ANY, ANY, ANY),),
            ),
            Grant(
                "the model registry (groundwatch model list)",
                ("smembers", "hgetall", "get"),
                _registry_keys(),
                read_only=True,
            ),
        ),
        # PSUBSCRIBE patterns must be these very patterns (keys.channel_pattern gives them)
        channels=(keys.detections(ANY), keys.scenes(ANY), keys.alerts(ANY)),
    )


# What only an operator does: ingest --force (SCAN for a scene's markers), removing a stale
# consumer group or consumer (the backpressure message's fix), INFO (INFO MODULES in the README),
# and `groundwatch monitor` (reads profiles and the streams' pace, raises alerts).
_OPERATOR_EXTRA = ("scan", "xgroup|destroy", "xgroup|delconsumer", "info", "zrange", "hsetnx")


def operator() -> Role:
    """Everything the other roles do, on every groundwatch key, plus the operator's own commands;
    never ACL, CONFIG, MODULE, DEBUG (or anything else not listed)."""
    others = [publisher(), consumer(), loader(), viewer()]
    commands = sorted({c for r in others for c in r.commands} | set(_OPERATOR_EXTRA))
    return Role(
        "operator",
        "everything groundwatch does on every groundwatch key and channel (all roles, groundwatch monitor, "
        "ingest --force, removing consumer groups, INFO); no ACL, CONFIG, MODULE, DEBUG, FLUSH*, KEYS, SHUTDOWN",
        (Grant("every groundwatch command", tuple(commands), (keys.everything(),)),),
        channels=(keys.everything(),),
    )


def roles(names: Iterable[str] = ROLE_NAMES, feeds: Sequence[str] | None = None) -> list[Role]:
    """The roles named, in ROLE_NAMES order; `feeds` limits publisher and consumer to those feeds."""
    wanted = list(names)
    unknown = sorted(set(wanted) - set(ROLE_NAMES))
    if unknown:
        raise ConfigError(f"unknown role(s) {', '.join(unknown)}; the roles are {', '.join(ROLE_NAMES)}")
    if feeds is not None:
        if not feeds:
            raise ConfigError("--feeds needs at least one feed name")
        for f in feeds:
            keys.check_name("feed", f)
    makers = {
        "publisher": lambda: publisher(feeds),
        "consumer": lambda: consumer(feeds),
        "loader": loader,
        "viewer": viewer,
        "operator": operator,
    }
    return [makers[n]() for n in ROLE_NAMES if n in wanted]


# --- rendering -----------------------------------------------------------------------------


def _quote(arg: str) -> str:
    return shlex.quote(arg)


def command_line(args: Sequence[str]) -> str:
    """The command as typed into redis-cli (shell-quoted)."""
    return " ".join(_quote(a) for a in args)


def _block(role: Role, prefix: str = "") -> list[str]:
    """A role's grants as comments, then its ACL SETUSER line."""
    lines = []
    for g in role.grants:
        lines.append(f"#   {'+' if g is role.grants[0] else '(selector)'} {g.why}")
    return [*lines, prefix + command_line(role.setuser(None))]


def render(selected: Sequence[Role]) -> str:
    """`groundwatch acl`: per role a comment and its ACL SETUSER line, passwords left out."""
    lines = [
        "# groundwatch ACL users. Apply with `groundwatch acl apply` (it adds generated passwords),",
        "# or prefix each line with redis-cli and add a password rule (>PASSWORD) after `on`.",
    ]
    for role in selected:
        lines += ["", f"# {role.name}: {role.summary}", *_block(role)]
    return "\n".join(lines)


def render_markdown(selected: Sequence[Role]) -> str:
    """The role table of docs/security.md: per role what it may do, its commands, its exact rules."""
    out = ["| role | what it may do | commands |", "|---|---|---|"]
    for role in selected:
        # a | would end the table cell, even in a code span: XINFO GROUPS, not XINFO|GROUPS
        cmds = ", ".join(f"`{c.upper().replace('|', ' ')}`" for c in sorted(role.commands))
        out.append(f"| `{role.name}` | {role.summary} | {cmds} |")
    for role in selected:
        out += ["", f"`{role.name}`:", "", "```sh", *_block(role, "redis-cli "), "```"]
    return "\n".join(out)


# --- passwords and applying ----------------------------------------------------------------


def new_password() -> str:
    """256 random bits, URL-safe (it goes into REDIS_URL unescaped)."""
    return secrets.token_urlsafe(32)


def choose_passwords(
    selected: Sequence[Role], known: Mapping[str, str], *, rotate: bool = False
) -> tuple[dict[str, str], list[str]]:
    """A password per role: the known one unless rotating, else a new one. Returns (all, new)."""
    out: dict[str, str] = {}
    fresh: list[str] = []
    for role in selected:
        if role.name in known and not rotate:
            out[role.name] = known[role.name]
        else:
            out[role.name] = new_password()
            fresh.append(role.name)
    return out, fresh


def apply(client: redis.Redis, selected: Sequence[Role], passwords: Mapping[str, str]) -> bool:
    """ACL SETUSER every role with its password; ACL SAVE when the server has an ACL file. On a
    cluster on every node (masters and replicas: ACL users are not replicated).

    Returns whether the rules were saved to the server's ACL file (of every node).
    """
    saved = [_apply_one(node, selected, passwords) for node in connection.every_node(client)]
    return all(saved)


def _apply_one(client: redis.Redis, selected: Sequence[Role], passwords: Mapping[str, str]) -> bool:
    unknown = unknown_commands(client, {c for r in selected for c in r.commands})
    try:
        for role in selected:
            client.execute_command(*without(role, unknown).setuser(passwords[role.name]))
    except redis.ResponseError as e:
        raise AclError(
            f"the server refused ACL SETUSER {role.name}: {e}. Apply as a user allowed to run ACL "
            "(the default user, or an admin)"
        ) from e
    try:
        client.execute_command("ACL", "SAVE")
    except redis.ResponseError as e:
        if "not configured to use an acl file" in str(e).lower():
            return False  # users live until the next restart, as ACL SETUSER always does
        raise AclError(f"ACL SAVE failed: {e}") from e
    return True


def unknown_commands(client: redis.Redis, commands: set[str]) -> set[str]:
    """The commands (`name` or `name|sub`) this server does not have, e.g. WAITAOF before 7.2."""
    names = sorted({c.split("|")[0] for c in commands})
    # "COMMAND INFO" as one name: redis-py sends it as two words but skips its COMMAND reply
    # parser, which fails on the nil a server gives for a command it does not have.
    replies = client.execute_command("COMMAND INFO", *names)
    missing = {n for n, info in zip(names, replies, strict=True) if info is None}
    return {c for c in commands if c.split("|")[0] in missing}


def without(role: Role, commands: set[str]) -> Role:
    """The role without `commands` (those its server does not know)."""
    if not commands & role.commands:
        return role
    grants = tuple(
        replace(g, commands=tuple(c for c in g.commands if c not in commands)) for g in role.grants
    )
    return replace(role, grants=grants)


def default_user_line(password: str) -> str:
    """The ACL file line of Redis's default user with a password: the administrator."""
    import hashlib

    return f"user default on #{hashlib.sha256(password.encode()).hexdigest()} ~* &* +@all"


def renamed(role: Role, user: str) -> Role:
    """The role as another user name (one publisher per ground station, say)."""
    keys.check_name("user", user)
    return replace(role, name=user)
