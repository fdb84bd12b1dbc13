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
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from groundwatch.errors import ServerError
from groundwatch.tls import TlsFiles

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
        env = dict(os.environ if self.env is None else self.env)
        self.process = subprocess.Popen(
            self.command_line(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
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
