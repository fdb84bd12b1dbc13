"""The core's own subcommands: `up`, `down` and `status`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from groundwatch import connection
from groundwatch.errors import ServerError
from groundwatch.server import RedisServer
from groundwatch.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the embedded redis-server with the engine, data under .groundwatch/")
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="stop the embedded redis-server (it saves its data first)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser(
        "status", help="per feed: stream length, lag, pending, dead letters, throughput, models"
    )
    p.add_argument("--feed", dest="feed", default=None, help="only this feed")
    p.set_defaults(handler=cmd_status)


def torch_backend_path(engine_module: Path) -> Path:
    """Where the build puts the TORCH backend next to the engine module."""
    return engine_module.parent / "backends" / "redisai_torch" / "redisai_torch.so"


def embedded_server(settings: Settings, port: int = 0) -> RedisServer:
    """The embedded default: AOF on (no acknowledged work lost on a crash), RDB snapshots too.

    The TORCH backend is loaded at start (the TORCH load-time argument), so no client ever
    needs AI.CONFIG LOADBACKEND on this server.
    """
    return RedisServer(
        data_dir=settings.data_dir.resolve(),
        port=port,
        engine_module=settings.engine_module,
        module_args=(
            "THREADS_PER_QUEUE",
            str(settings.threads_per_queue),
            "INTRA_OP_PARALLELISM",
            str(settings.intra_op_threads),
            "TORCH",
            str(torch_backend_path(settings.engine_module.resolve())),
        ),
        extra_config=(("appendonly", "yes"), ("appendfsync", "everysec"), ("save", "300 1")),
    )


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    running = connection.read_embedded(settings)
    if running is not None:
        print(f"already running on port {running.port}: redis-cli -p {running.port}")
        return 0
    server = embedded_server(settings, args.port)
    if not args.foreground:
        # Detach: the server outlives this command; `groundwatch down` stops it.
        server.extra_config = (
            *server.extra_config,
            ("daemonize", "yes"),
            ("pidfile", str(server.data_dir / "redis.pid")),
        )
    server.start()
    pid = server.process.pid if server.process else 0
    if not args.foreground:
        deadline = time.monotonic() + 10
        pidfile = server.data_dir / "redis.pid"
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pid = int(pidfile.read_text().strip())
    connection.write_embedded(settings, server.port, pid)
    print(f"groundwatch: redis-server with the engine on port {server.port}, data in {server.data_dir}")
    print(f"  redis-cli -p {server.port}")
    print(f"  export REDIS_URL=redis://127.0.0.1:{server.port}/0")
    if args.foreground:
        try:
            assert server.process is not None
            server.process.wait()
        except KeyboardInterrupt:
            server.stop()
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    info = connection.read_embedded(settings)
    if info is None:
        print("no embedded server is running", file=sys.stderr)
        return 0
    import os
    import signal

    os.kill(info.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(info.pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    else:
        raise ServerError(
            f"redis-server (pid {info.pid}) did not stop within 30 s; see {info.data_dir}/redis.log"
        )
    connection.state_file(settings).unlink(missing_ok=True)
    print(f"stopped the embedded server (port {info.port}); its data stays in {info.data_dir}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import status

    client = connection.connect(settings, decode_responses=True)
    print(status.render(status.collect(client, feed=args.feed)))
    return 0
