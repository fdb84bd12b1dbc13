"""Connections to Redis: the URL in the settings, else the embedded server. Every client is made here.

The embedded server (`groundwatch up`) records its port and pid in ``<data_dir>/server.json``,
with its CA and client certificate when it runs TLS and whether it was secured
(`up --secure`: every user has a password, kept in ``<data_dir>/credentials.json``, mode 0600);
clients find it there and log in as ``settings.redis_user`` (default: operator). A URL may carry
an ACL user and password (``redis://user:pw@host:port/0``) and ``rediss://`` selects TLS, with
the server's certificate and host name verified against ``settings.tls_ca_cert`` (default: the
embedded server's CA, else the system's CAs).

Redis Cluster: when the URL names any node of a cluster, :func:`connect` returns a plain
``redis.Redis`` bound to the master that holds one slot (its `home` key's). Every key of a feed
shares the feed's hash tag, so everything a role does for one feed (MULTI/EXEC under WATCH,
blocking XREADGROUP, one connection per in-flight DAG) runs unchanged on that one node. redis-py
4.6's RedisCluster cannot do that (its pipelines have no MULTI/EXEC nor WATCH, and it has no
single connection pool to lend connections from). :func:`on_slot` gives the client of another
key's slot (the registry's, ``gw:feeds``, another feed's). A slot client follows its slot: a
connection that fails, or a MOVED reply, refreshes the slot map (CLUSTER SLOTS of any node that
answers); a single command answered MOVED is sent again to the new master, one answered ASK
(its slot is being migrated and its key has moved) to the target after ASKING. What cannot be
redirected (a transaction; keys on both sides of a migration) is raised: :class:`SlotMigrating`
after a short pause (retry at once), :class:`SlotMoved` (a ``redis.ConnectionError``) for a
moved slot or a failover (the roles' reconnect-with-backoff retries it). Either way the command
did nothing. docs/protocol.md, *Redis Cluster*, says why.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import redis
from redis.crc import key_slot

from groundwatch import keys
from groundwatch.errors import ConfigError, ServerError
from groundwatch.settings import Settings

DEFAULT_USER = "operator"  # whom the CLI logs in as on a secured embedded server


@dataclass(frozen=True)
class EmbeddedInfo:
    port: int
    pid: int
    data_dir: Path
    ca_cert: Path | None = None  # set when the server speaks TLS only
    client_cert: Path | None = None  # set when it demands client certificates (mutual TLS)
    client_key: Path | None = None
    secure: bool = False  # users have passwords, in credentials_file()

    @property
    def url(self) -> str:
        """The URL without credentials."""
        scheme = "rediss" if self.ca_cert else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"


def state_file(settings: Settings) -> Path:
    return settings.data_dir / "server.json"


def credentials_file(settings: Settings) -> Path:
    """Passwords of the embedded server's users, {user: password} (mode 0600)."""
    return settings.data_dir / "credentials.json"


def write_embedded(
    settings: Settings,
    port: int,
    pid: int,
    *,
    ca_cert: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    secure: bool = False,
) -> None:
    paths = {"ca_cert": ca_cert, "client_cert": client_cert, "client_key": client_key}
    state: dict[str, Any] = {"port": port, "pid": pid, "secure": secure}
    state.update({k: str(v) for k, v in paths.items() if v is not None})
    state_file(settings).write_text(json.dumps(state))


def read_embedded(settings: Settings) -> EmbeddedInfo | None:
    """The embedded server recorded under data_dir, if its process is still alive."""
    try:
        state = json.loads(state_file(settings).read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None

    def path(name: str) -> Path | None:
        return Path(state[name]) if state.get(name) else None

    return EmbeddedInfo(
        port=int(state["port"]),
        pid=int(state["pid"]),
        data_dir=settings.data_dir,
        ca_cert=path("ca_cert"),
        client_cert=path("client_cert"),
        client_key=path("client_key"),
        secure=bool(state.get("secure")),
    )


def read_credentials(path: Path) -> dict[str, str]:
    """{user: password} from a credentials file (a JSON object); {} when it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(
            f'credentials file {path} is not readable JSON ({e}); it holds {{"user": "password", ...}}'
        ) from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f'credentials file {path} must hold a JSON object {{"user": "password", ...}}')
    return {str(k): v for k, v in data.items()}


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner may read (mode 0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to a file left over from a crash
    os.replace(tmp, path)


def write_credentials(path: Path, passwords: dict[str, str]) -> None:
    """Merge `passwords` into the credentials file (mode 0600)."""
    merged = {**read_credentials(path), **passwords}
    write_private(path, json.dumps(merged, indent=1, sort_keys=True) + "\n")


def without_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}"


def user_url(base: str, user: str, password: str) -> str:
    """`base` (scheme://host:port/db, no credentials) with user:password in it."""
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"


def redis_url(settings: Settings) -> str:
    if settings.redis_url:
        return settings.redis_url
    info = read_embedded(settings)
    if info is None:
        raise ServerError(
            f"no Redis to talk to: REDIS_URL is not set and no embedded server runs under "
            f"{settings.data_dir}/. Start one with `groundwatch up`, or set REDIS_URL=redis://host:port"
        )
    if not info.secure:
        return info.url
    user = settings.redis_user or DEFAULT_USER
    passwords = read_credentials(credentials_file(settings))
    if user not in passwords:
        raise ConfigError(
            f"the embedded server is secured, but {credentials_file(settings)} holds no password for "
            f"user {user!r} (it has: {', '.join(sorted(passwords)) or 'none'}). Choose one with "
            "GROUNDWATCH_REDIS_USER, or create the role users with `groundwatch acl apply`"
        )
    return user_url(info.url, user, passwords[user])


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py's ssl_* arguments for a rediss:// URL: verify the certificate AND the host name."""
    if not url.startswith("rediss://"):
        if settings.tls_cert is not None:
            raise ConfigError(
                f"a client certificate is set (GROUNDWATCH_TLS_CERT) but {redact(url)} is not TLS; "
                "use rediss://"
            )
        return {}
    info = read_embedded(settings)
    ca = settings.tls_ca_cert or (info.ca_cert if info else None)
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and info is not None and info.client_cert is not None:
        cert, key = info.client_cert, info.client_key
    options: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if ca is not None:
        options["ssl_ca_certs"] = str(ca)
    if cert is not None:
        options["ssl_certfile"], options["ssl_keyfile"] = str(cert), str(key)
    return options


def local_url(port: int) -> str:
    """The URL of a plain server on this machine's loopback (a bench's or a test's own)."""
    return f"redis://127.0.0.1:{port}/0"


def client_for(
    url: str,
    *,
    settings: Settings | None = None,
    decode_responses: bool = False,
    timeout_s: float | None = 30.0,
) -> redis.Redis:
    """A client of `url`, TLS verified as `settings` say, without connect()'s first PING (for
    clients made in a loop or a child process against a server known to run)."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        socket_timeout=timeout_s,
        health_check_interval=30,
        command_packer=_PACKER,
        **tls_options(settings or Settings(), url),
    )


class _Packer:
    """redis-py's command packer, except that a large argument (a tile: hundreds of KB) goes to
    the socket as its own chunk instead of being copied into one buffer with the rest. hiredis's
    packer copies every argument; for a tile that is a fresh allocation of its size per command,
    which on a busy machine costs more than sending it."""

    CUTOFF = 6000  # redis-py's own buffer cutoff

    def __init__(self) -> None:
        from redis.connection import (
            HIREDIS_PACK_AVAILABLE,
            Encoder,
            HiredisRespSerializer,
            PythonRespSerializer,
        )

        self._chunked = PythonRespSerializer(self.CUTOFF, Encoder("utf-8", "strict", False).encode)
        self._small = HiredisRespSerializer() if HIREDIS_PACK_AVAILABLE else self._chunked

    def pack(self, *args: Any) -> list[Any]:
        for a in args:
            if isinstance(a, bytes | bytearray | memoryview) and len(a) > self.CUTOFF:
                return list(self._chunked.pack(*args))
        return list(self._small.pack(*args))


_PACKER = _Packer()


def connect(
    settings: Settings,
    *,
    decode_responses: bool = False,
    timeout_s: float = 30.0,
    url: str | None = None,
    home: str | None = None,
) -> redis.Redis:
    """A client for the configured Redis (or `url`); raises ServerError with a fix when it is
    unreachable or refuses the credentials.

    On a cluster the client serves the slot of `home` (a key; default: the keys of the settings'
    feed), wherever that slot is served now; on one server `home` does not matter."""
    url = url or redis_url(settings)
    client = client_for(url, settings=settings, decode_responses=decode_responses, timeout_s=timeout_s)
    try:
        client.ping()
        clustered = _cluster_enabled(client)
    except redis.AuthenticationError as e:
        raise ServerError(
            f"Redis at {redact(url)} refused the login: {e}. Check the user:password in REDIS_URL "
            f"(or {credentials_file(settings)} for the embedded server)"
        ) from e
    except redis.RedisError as e:
        hint = "Is it running?"
        text = str(e).lower()
        if "certificate" in text or "ssl" in text:
            hint = (
                "The TLS handshake failed: give the CA that signed the server's certificate with "
                "GROUNDWATCH_TLS_CA_CERT (and a client certificate with GROUNDWATCH_TLS_CERT/_KEY if "
                "the server demands one); the host name in the URL must be one the certificate names"
            )
        elif "noauth" in text or "authentication required" in text:
            hint = "The server wants a password: put user:password in REDIS_URL"
        elif url.startswith("redis://") and "connection reset" in text:
            hint = "Does the server speak TLS only? Then use rediss://"
        raise ServerError(f"cannot reach Redis at {redact(url)}: {e}. {hint}") from e
    if not clustered:
        return client
    topology = Topology(client)
    client.close()
    return topology.client(home or keys.frames(settings.feed))


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


# --- Redis Cluster -----------------------------------------------------------------------------

log = logging.getLogger("groundwatch.connection")

# Replies that say the slot is not (or not only, or not yet) served where the command went; the
# last is a blocked command (XREADGROUP BLOCK, a DAG) whose master just became a replica.
REDIRECTIONS = ("MOVED ", "ASK ", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "UNBLOCKED force unblock")
REFRESH_MIN_S = 0.1  # CLUSTER SLOTS at most this often, however many connections fail at once
MIGRATION_PAUSE_S = 0.05  # before a refused command of a migrating slot is raised (SlotMigrating)
REPLICA_RECHECK_S = 5.0  # how stale a "no replicas" may be before CLUSTER SLOTS is read again
MIGRATION_WAIT_S = 60.0  # how long a transaction retries on a migrating slot before it gives up
# Commands that begin or end a transaction: their ASK cannot be followed either.
TRANSACTION_COMMANDS = ("WATCH", "MULTI", "EXEC", "DISCARD", "UNWATCH")


class SlotMoved(redis.ConnectionError):
    """The slot is served elsewhere now (MOVED), is being migrated (ASK, TRYAGAIN) or its shard is
    failing over (CLUSTERDOWN, MASTERDOWN). The command did nothing: retry it after a pause."""


class SlotMigrating(SlotMoved):
    """The slot is being migrated and the command cannot be redirected (a transaction, or keys
    on both nodes): it did nothing. Raised after a short pause; retry it as it is, at once, until
    the migration ends (then the slot's new master answers)."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cluster_enabled(client: redis.Redis) -> bool:
    """CLUSTER SLOTS answers on a cluster node and is refused on one server (rather than INFO
    cluster, so that the roles need no INFO)."""
    try:
        client.execute_command("CLUSTER", "SLOTS")
    except redis.exceptions.NoPermissionError:
        return False  # a user without +cluster|slots: a plain client (groundwatch acl grants it)
    except redis.ResponseError as e:
        if "cluster support disabled" in str(e).lower():
            return False
        raise
    return True


@dataclass(frozen=True)
class SlotRange:
    first: int
    last: int
    master: tuple[str, int]
    replicas: int


class Topology:
    """Which master serves which slot (CLUSTER SLOTS), and one client per slot in use.

    Made from a client on any node; its connection settings (credentials, TLS, timeouts) are
    used for every node."""

    def __init__(self, seed: redis.Redis) -> None:
        pool = seed.connection_pool
        self._class = pool.connection_class
        self._kwargs = {k: v for k, v in pool.connection_kwargs.items() if k not in ("host", "port")}
        self._seed_host = str(pool.connection_kwargs.get("host", "127.0.0.1"))
        self._nodes: list[tuple[str, int]] = [
            (self._seed_host, int(pool.connection_kwargs.get("port", 6379)))
        ]
        self._ranges: list[SlotRange] = []
        self._moved: dict[int, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._refreshed = 0.0
        self._clients: dict[int, redis.Redis] = {}
        # while a slot is migrated: commands sent on to the target after ASK, and commands
        # refused because they could not be (SlotMigrating); for logs and tests
        self.asks_followed = 0
        self.migration_refusals = 0
        self.refresh(force=True)
        if not self._ranges:
            raise ServerError(f"the cluster at {self._nodes[0][0]}:{self._nodes[0][1]} serves no slots yet")

    # -- the slot map ----------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Read CLUSTER SLOTS from the first node that answers; keep the old map if none does."""
        with self._lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_MIN_S:
                return
            self._refreshed = time.monotonic()
            for host, port in list(self._nodes):
                try:
                    reply = self._ask(host, port, "CLUSTER", "SLOTS")
                except redis.RedisError:
                    continue
                ranges, nodes = [], []
                for entry in reply:
                    first, last, master, *replicas = entry
                    owner = (_text(master[0]) or host, int(master[1]))
                    ranges.append(SlotRange(int(first), int(last), owner, len(replicas)))
                    nodes += [owner, *((_text(r[0]) or host, int(r[1])) for r in replicas)]
                if not ranges:
                    continue  # a node that does not know the cluster (yet)
                self._ranges = sorted(ranges, key=lambda r: r.first)
                self._moved.clear()
                self._nodes = list(dict.fromkeys([*nodes, *self._nodes]))
                return

    def _ask(self, host: str, port: int, *command: Any) -> Any:
        conn = self._class(**{**self._kwargs, "host": host, "port": port, "socket_connect_timeout": 2.0})
        try:
            conn.send_command(*command)
            return conn.read_response()
        finally:
            conn.disconnect()

    def _range(self, slot: int) -> SlotRange | None:
        i = bisect.bisect_right([r.first for r in self._ranges], slot) - 1
        if i >= 0 and self._ranges[i].first <= slot <= self._ranges[i].last:
            return self._ranges[i]
        return None

    def owner(self, slot: int) -> tuple[str, int] | None:
        """The master serving `slot` as far as we know; None when no master does."""
        if slot in self._moved:
            return self._moved[slot]
        found = self._range(slot)
        return None if found is None else found.master

    def replicas(self, slot: int) -> int:
        """The replicas CLUSTER SLOTS lists for the slot's master. It leaves out a replica that
        has replicated nothing yet (a cluster without writes), so no replicas is checked again
        every REPLICA_RECHECK_S."""
        found = self._range(slot)
        if (
            found is not None
            and found.replicas == 0
            and time.monotonic() - self._refreshed > REPLICA_RECHECK_S
        ):
            self.refresh(force=True)
            found = self._range(slot)
        return 0 if found is None else found.replicas

    def moved(self, reply: str, host: str) -> None:
        """Record `MOVED <slot> <host>:<port>` (host may be empty: the node we asked)."""
        try:
            _, slot, where = reply.split()[:3]
            new_host, _, port = where.rpartition(":")
            self._moved[int(slot)] = (new_host or host, int(port))
        except ValueError:
            pass
        self.refresh()

    def nodes(self) -> list[tuple[str, int]]:
        """Every node of the cluster that is not failed, masters and replicas (CLUSTER NODES:
        CLUSTER SLOTS leaves out a replica that has not replicated anything yet)."""
        for host, port in self.masters():
            try:
                reply = _text(self._ask(host, port, "CLUSTER", "NODES"))
            except redis.RedisError:
                continue
            out = []
            for line in reply.splitlines():
                fields = line.split()
                if len(fields) < 3 or {"fail", "noaddr", "handshake"} & set(fields[2].split(",")):
                    continue
                address = fields[1].split("@", 1)[0]
                node_host, _, node_port = address.rpartition(":")
                out.append((node_host or host, int(node_port)))
            return out
        raise ServerError("no master of the cluster answers CLUSTER NODES")

    def masters(self) -> list[tuple[str, int]]:
        return list(dict.fromkeys(r.master for r in self._ranges))

    # -- clients -----------------------------------------------------------------------------------

    def client(self, key: str) -> redis.Redis:
        """The client of `key`'s slot (one per slot, shared)."""
        slot = key_slot(key.encode())
        with self._lock:
            if slot not in self._clients:
                pool = redis.ConnectionPool(
                    connection_class=_slot_class(self._class),
                    **self._kwargs,
                    host=self._seed_host,
                    port=self._nodes[0][1],
                    gw_topology=self,
                    gw_slot=slot,
                )
                self._clients[slot] = redis.Redis(connection_pool=pool)
            return self._clients[slot]

    def plain_connection(self, host: str, port: int) -> Any:
        """A connection to one node, with the client's settings (not bound to a slot)."""
        return self._class(**{**self._kwargs, "host": host, "port": port})

    def node_client(self, host: str, port: int) -> redis.Redis:
        """A client on one node (for per-shard reads such as SCAN)."""
        return redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=self._class, **self._kwargs, host=host, port=port
            )
        )


class _SlotConnection:
    """Mixed in before a redis-py connection class: connects to the master of one slot, and
    follows the slot while it moves.

    It remembers the commands whose replies are still to come (one for a command, many for a
    pipeline), and whether it is inside a transaction (WATCH or MULTI until EXEC, DISCARD or
    UNWATCH). A command outside a transaction answered ASK (its key has already been migrated)
    is sent again, after ASKING, to the migration's target, and that reply is returned in its
    place. In a transaction ASK cannot be followed (the WATCH and the queued commands are on this
    node), and TRYAGAIN (keys on both nodes, or a new key among several) cannot be served
    anywhere until the migration ends: both are raised as :class:`SlotMigrating` after
    MIGRATION_PAUSE_S, so every caller's retry loop is paced."""

    host: str
    port: int
    _sock: Any  # the connection class's

    def __init__(self, *, gw_topology: Topology, gw_slot: int, **kwargs: Any) -> None:
        self._topology = gw_topology
        self._slot = gw_slot
        self._next: list[tuple[Any, ...]] = []  # commands being sent
        self._awaiting: deque[tuple[Any, ...]] = deque()  # sent, reply not read yet, in order
        self._in_transaction = False
        self._elsewhere: Any = None  # a connection to where a redirection pointed, kept for the next
        super().__init__(**kwargs)

    def connect(self) -> None:
        if self._sock:
            return
        owner = self._topology.owner(self._slot)
        if owner is None:
            self._topology.refresh()
            raise SlotMoved(f"no master serves slot {self._slot} right now (a failover in progress?)")
        self.host, self.port = owner
        try:
            super().connect()  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self._topology.refresh()
            raise

    def disconnect(self, *args: Any) -> None:
        self._awaiting.clear()
        self._next = []
        self._in_transaction = False
        if self._elsewhere is not None:
            self._elsewhere.disconnect()
            self._elsewhere = None
        super().disconnect(*args)  # type: ignore[misc]

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        self._next = [args]
        super().send_command(*args, **kwargs)  # type: ignore[misc]

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        self._next = [tuple(c) for c in commands]
        return super().pack_commands(commands)  # type: ignore[misc]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        # Taken before sending: a health check's PING goes first, with its own bookkeeping.
        sending, self._next = self._next, []
        if self._sock and self._topology.owner(self._slot) != (self.host, self.port):
            in_transaction = self._in_transaction
            self.disconnect()  # and the send below connects to the slot's master
            if in_transaction:
                # Not a silent reconnect: a WATCH sent on this connection would not hold over there.
                raise SlotMoved(f"slot {self._slot} moved away from {self.host}:{self.port}")
        super().send_packed_command(command, check_health)  # type: ignore[misc]
        self._awaiting.extend(sending)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        command = self._awaiting.popleft() if self._awaiting else None  # None: a pushed message
        name = _text(command[0]).upper().split(" ", 1)[0] if command else ""
        in_transaction = self._in_transaction or name in TRANSACTION_COMMANDS
        if name in ("WATCH", "MULTI"):
            self._in_transaction = True
        elif name in ("EXEC", "DISCARD", "UNWATCH"):
            self._in_transaction = False
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except redis.ResponseError as e:
            text = str(e)
            if not text.startswith(REDIRECTIONS):
                raise
            if command is not None and not in_transaction and text.startswith(("ASK ", "MOVED ")):
                # The command did nothing here: send it to the node the reply names (once: a
                # redirection from there is raised). MOVED: our slot has moved (this connection
                # reconnects before its next command) or the key is another slot's.
                if text.startswith("MOVED "):
                    self._topology.moved(text, self.host)
                return self._follow(text, command, *args, **kwargs)
            self._redirected(text, e)

    def _redirected(self, text: str, error: Exception) -> NoReturn:
        if text.startswith(("ASK ", "TRYAGAIN")):
            self._topology.migration_refusals += 1
            time.sleep(MIGRATION_PAUSE_S)
            # The reply was read whole: the connection stays usable outside a pipeline, but a
            # pipeline's further replies are not read, so it is dropped either way.
            self.disconnect()
            raise SlotMigrating(
                f"{text} (from {self.host}:{self.port}): slot {self._slot} is being migrated and this "
                "cannot be redirected; retry"
            ) from error
        if text.startswith("MOVED "):
            self._topology.moved(text, self.host)
        else:
            self._topology.refresh()
        self.disconnect()
        raise SlotMoved(f"{text} (from {self.host}:{self.port}); retry after a pause") from error

    def _follow(self, text: str, command: tuple[Any, ...], *args: Any, **kwargs: Any) -> Any:
        """Send `command` to the node named in `ASK|MOVED <slot> <host>:<port>` (after ASKING
        for ASK) and return its reply."""
        asking = text.startswith("ASK ")
        where = text.split()[2]
        host, _, port = where.rpartition(":")
        target = (host or self.host, int(port))
        if self._elsewhere is None or (self._elsewhere.host, self._elsewhere.port) != target:
            if self._elsewhere is not None:
                self._elsewhere.disconnect()
            self._elsewhere = self._topology.plain_connection(*target)
        try:
            if asking:
                self._elsewhere.send_command("ASKING")
                self._elsewhere.read_response()
            self._elsewhere.send_command(*command)
            reply = self._elsewhere.read_response(*args, **kwargs)
            if asking:
                self._topology.asks_followed += 1
            return reply
        except redis.ResponseError as e:
            if not str(e).startswith(REDIRECTIONS):
                raise
            self._redirected(str(e), e)
        except (redis.ConnectionError, redis.TimeoutError):
            self._elsewhere.disconnect()
            self._elsewhere = None
            self._topology.refresh()
            raise


_slot_classes: dict[type, type] = {}


def _slot_class(base: type) -> type:
    if base not in _slot_classes:
        _slot_classes[base] = type(f"Slot{base.__name__}", (_SlotConnection, base), {})
    return _slot_classes[base]


def _topology(client: redis.Redis) -> Topology | None:
    found = client.connection_pool.connection_kwargs.get("gw_topology")
    return found if isinstance(found, Topology) else None


def is_cluster(client: redis.Redis) -> bool:
    return _topology(client) is not None


def migration_counts(client: redis.Redis) -> tuple[int, int]:
    """(commands that followed ASK, commands refused as SlotMigrating) of every client made from
    the same connect() as `client`; (0, 0) on one server."""
    topology = _topology(client)
    return (0, 0) if topology is None else (topology.asks_followed, topology.migration_refusals)


def on_slot(client: redis.Redis, key: str) -> redis.Redis:
    """The client of the node holding `key`'s slot, with `client`'s settings: `client` itself on
    one server (and when `key` is in `client`'s own slot)."""
    topology = _topology(client)
    if topology is None:
        return client
    return topology.client(key)


def every_node(client: redis.Redis) -> list[redis.Redis]:
    """One client per node, masters and replicas (for what each node keeps to itself, such as
    ACL users); [client] on one server."""
    topology = _topology(client)
    if topology is None:
        return [client]
    return [topology.node_client(host, port) for host, port in topology.nodes()]


def shards(client: redis.Redis) -> list[redis.Redis]:
    """One client per master (for per-shard reads such as SCAN); [client] on one server."""
    topology = _topology(client)
    if topology is None:
        return [client]
    return [topology.node_client(host, port) for host, port in topology.masters()]


def feeds_on_every_shard(client: redis.Redis, prefix: str, per_shard: int = 1) -> list[str]:
    """Feed names `<prefix><n>` (n = 0, 1, ...), the first `per_shard` whose slot each master
    serves, masters in slot order; on one server the first `per_shard` names. For spreading
    feeds over a cluster (the demo); names only, nothing is written."""
    topology = _topology(client)
    if topology is None:
        return [keys.check_name("feed", f"{prefix}{n}") for n in range(per_shard)]
    masters = topology.masters()
    found: dict[tuple[str, int], list[str]] = {m: [] for m in masters}
    for n in range(100_000):  # 16384 slots: a few thousand names reach every master
        name = keys.check_name("feed", f"{prefix}{n}")
        got = found.get(topology.owner(key_slot(keys.frames(name).encode())) or ("", 0))
        if got is not None and len(got) < per_shard:
            got.append(name)
            if all(len(v) == per_shard for v in found.values()):
                return [f for m in masters for f in found[m]]
    raise ServerError(f"no feed names {prefix}<n> reach every master: {found}")


def wait_for_replica(client: redis.Redis, stats_key: str, timeout_ms: int = 2000) -> int | None:
    """After an acknowledged write in `client`'s slot: wait until a replica of the slot's master
    has it, so a failover (replication is asynchronous) cannot lose it. WAIT counts the writes of
    its own connection, and a pool hands out any connection, so one connection bumps the
    `replica_syncs` counter of `stats_key` (a hash of the slot) and WAITs: a replica that has
    that write has every earlier one. None on one server or without replicas; else how many
    replicas have it (0: timed out, logged)."""
    topology = _topology(client)
    if topology is None:
        return None
    slot = int(client.connection_pool.connection_kwargs["gw_slot"])
    if topology.replicas(slot) == 0:
        return None
    with client.pipeline(transaction=False) as pipe:
        pipe.hincrby(stats_key, "replica_syncs", 1)
        pipe.execute_command("WAIT", 1, timeout_ms)
        got = int(pipe.execute()[1])
    if got == 0:
        log.warning(
            "no replica of slot %d confirmed a write within %d ms: a failover now could lose it",
            slot,
            timeout_ms,
        )
    return got


def watch_and_read(
    pipe: Any, watched: Sequence[str], *commands: Sequence[Any], raise_errors: bool = True
) -> list[Any]:
    """WATCH `watched` on a transaction pipeline and run `commands` (reads) after it, in one round
    trip; returns their replies (callbacks applied, as the pipeline's own immediate commands).

    redis-py sends WATCH and every command after it one round trip each; a commit that reads a
    handful of keys under WATCH spent most of its time waiting for those. Afterwards the pipeline
    is in its watching state, on the connection the WATCH went on: ``pipe.multi()`` and
    ``pipe.execute()`` go on as usual (a WatchError when a watched key changed). An error reply
    raises once every reply has been read, so the connection stays usable; with `raise_errors`
    False it is returned in its place instead (a ResponseError)."""
    if pipe.watching or pipe.command_stack:
        raise RuntimeError("watch_and_read starts a pipeline's transaction: call it first")
    names = [str(c[0]) for c in commands]
    cmds = [("WATCH", *watched), *commands] if watched else list(commands)
    conn = pipe.connection or pipe.connection_pool.get_connection("WATCH", pipe.shard_hint)
    pipe.connection = conn
    pipe.watching = bool(watched)
    try:
        conn.send_packed_command(conn.pack_commands(cmds))
        replies: list[Any] = []
        for name in (["WATCH"] if watched else []) + names:
            try:
                replies.append(pipe.parse_response(conn, name))
            except redis.ResponseError as e:
                replies.append(e)
    except (redis.ConnectionError, redis.TimeoutError):
        conn.disconnect()
        pipe.reset()
        raise
    out = replies[1:] if watched else replies
    checked = replies if raise_errors else replies[: len(replies) - len(out)]  # the WATCH's, at least
    for reply in checked:
        if isinstance(reply, redis.ResponseError):
            pipe.reset()
            raise reply
    return out
