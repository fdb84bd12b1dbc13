"""Start and stop a local redis-server with the engine loaded.

This is the embedded default behind `groundwatch up` and the process the test-suite runs
against. It only manages processes and files; it knows nothing of feeds or models.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from groundwatch.errors import ServerError
from groundwatch.tls import TlsFiles

# The environment a redis-server with the engine starts with (unless the caller's sets these).
# libtorch's CPU wheel runs intra-op parallel regions on libgomp, whose idle threads spin for a
# while (GOMP_SPINCOUNT, 300000 rounds by default) after each region before they sleep. A
# redis-server shares its cores with its clients (consumers, the main thread serving streams):
# the spinning burns those cores and delays the work that would feed the next batch. PASSIVE
# makes them sleep at once; measured on 2 cores (docs/performance.md, "Where the time goes"):
# the pipeline's CPU per tile fell from about 60 to 27 ms, the engine's own from 20-50 to 19.
ENGINE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}

# Snapshot settings of the servers `groundwatch up` starts (single and cluster), for an AOF of
# 512 KB frames (docs/performance.md, "Where the time goes"):
# - rdbcompression no: imagery hardly shrinks under LZF, and the AOF rewrite's fork spent about
#   1.2 ms of CPU per tile of the bench's pipeline compressing it (0.3 ms without);
# - auto-aof-rewrite-min-size 512mb: Redis's 64 MB rewrites the AOF every 128 frames, and each
#   rewrite forks (10-14 ms with the main thread stopped, the late tiles setting the p99 at 50%
#   load) and copies the whole dataset; at 512 MB that is once every 1000 frames or so, for an
#   AOF that grows to about 512 MB more than the data before it is compacted.
# The checksum (rdbchecksum) stays on.
SNAPSHOT_CONFIG: tuple[tuple[str, str], ...] = (
    ("rdbcompression", "no"),
    ("auto-aof-rewrite-min-size", "512mb"),
)

INSTALL_HINT = (
    "redis-server was not found on PATH. Install Redis 7 (Debian/Ubuntu: "
    "`sudo apt-get install redis-server`), or run `make setup`, which installs it when run as root."
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process, owned by whoever started it.

    `module_args` follow `--loadmodule engine.so NAME VALUE ...`. `extra_config` are further
    `--name value` pairs (e.g. ("appendonly", "yes")). The data directory survives stop(), so
    a stopped server can be started again on the same RDB/AOF files.

    With `tls`, the server listens on `port` with TLS only (no plain TCP port); with
    `tls.mutual` it also demands a client certificate signed by the CA. `debug_command` is
    Redis's enable-debug-command: "local" lets tests DEBUG RELOAD, `groundwatch up` says "no".
    MODULE LOAD/UNLOAD stay off in every case (the engine is loaded at start).
    """

    data_dir: Path
    port: int = 0
    engine_module: Path | None = None
    module_args: Sequence[str] = ()
    extra_config: Sequence[tuple[str, str]] = ()
    binary: str = "redis-server"
    env: dict[str, str] | None = None
    tls: TlsFiles | None = None
    debug_command: str = "local"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def daemonized(self) -> bool:
        return ("daemonize", "yes") in self.extra_config

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://127.0.0.1:{self.port}/0"

    def command_line(self) -> list[str]:
        exe = shutil.which(self.binary)
        if exe is None:
            raise ServerError(INSTALL_HINT)
        args = [
            exe,
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.log_path),
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--enable-debug-command",
            self.debug_command,
            "--enable-module-command",
            "no",
        ]
        for name, value in self.extra_config:
            args += [f"--{name}", value]
        if self.engine_module is not None:
            args += ["--loadmodule", str(self.engine_module), *self.module_args]
        return args

    def environment(self) -> dict[str, str]:
        """The process's environment: `env` (else this process's), with ENGINE_ENV's variables
        where it does not set them."""
        env = dict(os.environ if self.env is None else self.env)
        for name, value in ENGINE_ENV.items():
            env.setdefault(name, value)
        return env

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.server_cert),
            "--tls-key-file",
            str(self.tls.server_key),
            "--tls-ca-cert-file",
            str(self.tls.ca_cert),
            "--tls-auth-clients",
            "yes" if self.tls.mutual else "no",
        ]

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        """Start the process and wait until it answers PING; raises ServerError with the log."""
        if self.engine_module is not None and not Path(self.engine_module).exists():
            raise ServerError(
                f"engine module {self.engine_module} does not exist; build it with `make engine`"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.environment()
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None and not (self.daemonized and self.process.returncode == 0):
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise ServerError(
                    f"redis-server exited with status {self.process.returncode} on start.\n"
                    f"{err}{self.log_tail()}"
                )
            if self._pings():
                return self
            time.sleep(0.05)
        self.kill()
        raise ServerError(
            f"redis-server did not answer on port {self.port} in {timeout_s}s.\n{self.log_tail()}"
        )

    def _pings(self) -> bool:
        """The server answers: PONG, or NOAUTH when the default user has a password."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
                conn = (
                    raw
                    if self.tls is None
                    else self._tls_context().wrap_socket(raw, server_hostname="127.0.0.1")
                )
                with conn:
                    conn.sendall(b"PING\r\n")
                    return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except (OSError, ssl.SSLError):
            return False

    def _tls_context(self) -> ssl.SSLContext:
        assert self.tls is not None
        # Only "does it answer?": nothing secret goes over it, and the certificate may name
        # other hosts than 127.0.0.1. Clients verify (connection.tls_options).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if self.tls.client_cert is not None and self.tls.client_key is not None:
            context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (redis saves if persistence is on), wait, then SIGKILL. Returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, as far as persistence is concerned."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 60) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").splitlines()
            return "\n".join(text[-lines:])
        return "(no redis log)"


# --- a local Redis Cluster -----------------------------------------------------------------------


@dataclass
class LocalCluster:
    """`masters` masters with `replicas` replicas each, on free loopback ports, the engine loaded
    on every node, created with `redis-cli --cluster create`. For trying it out (`groundwatch up
    --cluster N`) and for the tests; node i's files are under data_dir/node<i>."""

    data_dir: Path
    masters: int = 3
    replicas: int = 1
    engine_module: Path | None = None
    module_args: Sequence[str] = ()
    extra_config: Sequence[tuple[str, str]] = ()
    node_timeout_ms: int = 2000
    env: dict[str, str] | None = None
    nodes: list[RedisServer] = field(default_factory=list, init=False)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout_s: float = 60.0) -> LocalCluster:
        if self.masters < 3 or self.replicas < 0:
            # redis-cli --cluster create refuses fewer than 3 masters
            raise ServerError(
                f"a Redis Cluster needs at least 3 masters (got {self.masters}) and replicas >= 0: "
                "use --cluster 3 or more"
            )
        if shutil.which("redis-cli") is None:
            raise ServerError(INSTALL_HINT.replace("redis-server was", "redis-cli was"))
        config = [
            ("cluster-enabled", "yes"),
            ("cluster-config-file", "nodes.conf"),
            ("cluster-node-timeout", str(self.node_timeout_ms)),
            # a replica of a master that died long ago may still take over: the tests kill masters
            ("cluster-replica-validity-factor", "0"),
            ("appendonly", "yes"),
            ("appendfsync", "everysec"),
            *SNAPSHOT_CONFIG,
            ("repl-diskless-sync-delay", "0"),  # replicas in sync at once, not 5 s later
            *self.extra_config,
        ]
        module = None if self.engine_module is None else Path(self.engine_module).resolve()
        module_args = tuple(self.module_args)
        backend = (
            None if module is None else module.parent / "backends" / "redisai_torch" / "redisai_torch.so"
        )
        if backend is not None and backend.exists() and "TORCH" not in module_args:
            # Loaded at start: loading libtorch on first use blocks a node's main thread for
            # seconds, long enough for its replica to think it dead and take over.
            module_args += ("TORCH", str(backend))
        try:
            for i in range(self.masters * (1 + self.replicas)):
                node_dir = self.data_dir / f"node{i}"
                node_dir.mkdir(parents=True, exist_ok=True)
                ports_file = node_dir / "ports"  # nodes.conf names the ports: keep them over restarts
                if not ports_file.exists():
                    ports_file.write_text(f"{free_port()} {free_port()}")
                port, bus_port = (int(p) for p in ports_file.read_text().split())
                node = RedisServer(
                    data_dir=node_dir,
                    port=port,
                    engine_module=module,
                    module_args=module_args,
                    extra_config=(*config, ("cluster-port", str(bus_port))),
                    env=self.env,
                )
                self.nodes.append(node)
            self._start_nodes(self.nodes)
            if not (self.data_dir / "node0" / "created").exists():
                self._create(timeout_s)
            self.wait_ok(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _start_nodes(nodes: Sequence[RedisServer]) -> None:
        """All at once: each spends a second or two loading libtorch."""
        errors: list[BaseException] = []

        def start(node: RedisServer) -> None:
            try:
                node.start()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=start, args=(n,)) for n in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def _create(self, timeout_s: float) -> None:
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        cmd = ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas)]
        done = subprocess.run([*cmd, "--cluster-yes"], capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise ServerError(f"`{' '.join(cmd)}` failed:\n{done.stdout}{done.stderr}")
        (self.data_dir / "node0" / "created").write_text("")

    def call(self, node: RedisServer, *args: str) -> str:
        """One command on one node through redis-cli (no client library needed here)."""
        done = subprocess.run(
            ["redis-cli", "-p", str(node.port), *args], capture_output=True, text=True, timeout=30
        )
        return done.stdout

    def wait_ok(self, timeout_s: float = 60.0) -> None:
        """Until every running node says cluster_state:ok and sees every slot served, and every
        replica is in sync with its master (a failover before that would lose data)."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = [self.call(n, "CLUSTER", "INFO") for n in self.nodes if n.running()]
            links = [self.call(n, "INFO", "replication") for n in self.nodes if n.running()]
            synced = all("role:master" in r or "master_link_status:up" in r for r in links)
            if (
                states
                and synced
                and all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states)
            ):
                return
            if time.monotonic() > deadline:
                raise ServerError(f"the cluster did not reach cluster_state:ok in {timeout_s}s:\n{states}")
            time.sleep(0.1)

    def roles(self) -> dict[int, str]:
        """Port -> 'master' or 'slave' of every running node."""
        out = {}
        for n in self.nodes:
            if n.running():
                role = self.call(n, "ROLE").split("\n", 1)[0].strip()
                out[n.port] = role
        return out

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(ServerError, OSError):
                node.stop()
