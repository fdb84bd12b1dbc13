"""The core's own subcommands: `up`, `down`, `status`, `subscribe` and `acl`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from groundwatch import connection
from groundwatch.errors import ConfigError, ServerError
from groundwatch.server import SNAPSHOT_CONFIG, LocalCluster, RedisServer
from groundwatch.settings import Settings
from groundwatch.tls import TlsFiles

if TYPE_CHECKING:  # acl imports the engine client (numpy, redisai): only where it is used
    from groundwatch import acl

ACL_FILE = "users.acl"  # under the data dir, for `up --secure`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "up",
        help="start the embedded redis-server with the engine, data under .groundwatch/",
        description="Start redis-server with the engine on 127.0.0.1 (protected mode; DEBUG and "
        "MODULE LOAD disabled). --tls: TLS only, with a CA and certificate made under the data dir. "
        "--secure: TLS plus passwords for the default user and the role users (docs/security.md).",
    )
    p.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    p.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops the server")
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="a local Redis Cluster of N masters (3 or more) with a replica each, the engine on every node, "
        "data under DATA_DIR/cluster/; stays attached, Ctrl-C stops it",
    )
    p.add_argument(
        "--tls", action="store_true", help="TLS only (no plain TCP port); certificates under DATA_DIR/tls"
    )
    p.add_argument(
        "--mtls",
        action="store_true",
        help="mutual TLS: clients also need a certificate of the CA (implies --tls)",
    )
    p.add_argument(
        "--secure",
        action="store_true",
        help="--tls, and passwords for the default user and the role users (DATA_DIR/credentials.json, 0600)",
    )
    p.add_argument("--new-certs", action="store_true", help="make a new CA and certificates (rotation)")
    p.set_defaults(handler=cmd_up)

    p = sub.add_parser("down", help="stop the embedded redis-server (it saves its data first)")
    p.set_defaults(handler=cmd_down)

    p = sub.add_parser(
        "status", help="per feed: stream length, lag, pending, dead letters, throughput, models"
    )
    p.add_argument("--feed", dest="feed", default=None, help="only this feed")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser(
        "subscribe", help="print a feed's results as they are published (SUBSCRIBE), one GeoJSON per line"
    )
    p.add_argument(
        "--feed", dest="feed", default=None, help="feed name (default: GROUNDWATCH_FEED or 'default')"
    )
    p.add_argument(
        "--channel",
        choices=("both", "detections", "scenes"),
        default="both",
        help="per-tile detections, merged scenes, or both (default)",
    )
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (default: never)")
    p.add_argument(
        "--timeout-s", type=float, default=0.0, help="give up after this long (status 1; default: never)"
    )
    p.set_defaults(handler=cmd_subscribe)

    _register_acl(sub)


def torch_backend_path(engine_module: Path) -> Path:
    """Where the build puts the TORCH backend next to the engine module."""
    return engine_module.parent / "backends" / "redisai_torch" / "redisai_torch.so"


def engine_args(settings: Settings) -> tuple[str, ...]:
    """The engine's load-time arguments from the settings (the engine reads no environment)."""
    args = [
        "THREADS_PER_QUEUE",
        str(settings.threads_per_queue),
        "INTRA_OP_PARALLELISM",
        str(settings.intra_op_threads),
        "BACKEND_MEMORY_LIMIT",
        str(settings.backend_memory_limit_mb),
    ]
    if settings.torch_cpu_cache_mb is not None:  # else the engine's default, which follows maxmemory
        args += ["TORCH_CPU_CACHE_MB", str(settings.torch_cpu_cache_mb)]
    args += ["TORCH", str(torch_backend_path(settings.engine_module.resolve()))]
    return tuple(args)


def embedded_server(
    settings: Settings, port: int = 0, *, tls: TlsFiles | None = None, acl_file: Path | None = None
) -> RedisServer:
    """The embedded default: AOF on (no acknowledged work lost on a crash), RDB snapshots too;
    127.0.0.1 in protected mode, DEBUG and MODULE LOAD off. `tls`: TLS only. `acl_file`: the
    users (passwords as hashes) of a secured server.

    The TORCH backend is loaded at start (the TORCH load-time argument), so no client ever
    needs AI.CONFIG LOADBACKEND on this server.
    """
    extra: tuple[tuple[str, str], ...] = (
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("save", "300 1"),
        *SNAPSHOT_CONFIG,
    )
    if acl_file is not None:
        extra += (("aclfile", str(acl_file)),)
    return RedisServer(
        data_dir=settings.data_dir.resolve(),
        port=port,
        tls=tls,
        debug_command="no",
        engine_module=settings.engine_module,
        module_args=engine_args(settings),
        extra_config=extra,
    )


def secure_admin(settings: Settings) -> tuple[Path, bool]:
    """The ACL file of a secured embedded server and whether it is new. A new one holds only the
    default user (the administrator), with a generated password saved in the credentials file;
    `add_role_users` fills in the roles once the server runs. An existing one is kept as it is:
    `groundwatch acl apply` changes it with ACL SAVE."""
    from groundwatch import acl

    path = settings.data_dir.resolve() / ACL_FILE
    if path.exists():
        return path, False
    creds = connection.credentials_file(settings)
    admin = connection.read_credentials(creds).get("default") or acl.new_password()
    connection.write_credentials(creds, {"default": admin})
    connection.write_private(path, acl.default_user_line(admin) + "\n")
    return path, True


def add_role_users(settings: Settings) -> None:
    """ACL SETUSER the five roles as the default user, passwords kept or generated, and ACL SAVE
    (the rules this server's Redis version knows: acl.apply leaves out newer commands)."""
    from groundwatch import acl

    roles = acl.roles()
    creds = connection.credentials_file(settings)
    passwords, _ = acl.choose_passwords(roles, connection.read_credentials(creds))
    connection.write_credentials(creds, passwords)
    client = connection.connect(settings.replace(redis_user="default"))
    try:
        acl.apply(client, roles, passwords)
    finally:
        client.close()
    keep_private(settings)


def keep_private(settings: Settings) -> None:
    """ACL SAVE writes the ACL file world-readable (hashes only, but still): only ours again."""
    path = settings.data_dir.resolve() / ACL_FILE
    if path.exists():
        path.chmod(0o600)


def connect_hints(info: connection.EmbeddedInfo, settings: Settings) -> list[str]:
    """How to reach the embedded server with redis-cli and from clients (no password shown)."""
    cli = ["redis-cli", "-p", str(info.port)]
    env = [f"export REDIS_URL={info.url}"]
    if info.ca_cert is not None:
        cli[1:1] = ["--tls", "--cacert", str(info.ca_cert)]
        env.append(f"export GROUNDWATCH_TLS_CA_CERT={info.ca_cert}")
    if info.client_cert is not None and info.client_key is not None:
        cli[1:1] = ["--cert", str(info.client_cert), "--key", str(info.client_key)]
        env += [
            f"export GROUNDWATCH_TLS_CERT={info.client_cert}",
            f"export GROUNDWATCH_TLS_KEY={info.client_key}",
        ]
    lines = []
    if info.secure:
        creds = connection.credentials_file(settings).resolve()
        lines.append(
            f"  every user has a password: {creds} (mode 0600); the CLI logs in as operator by itself"
        )
        lines.append(
            f"  {shlex.join([*cli, '--user', 'operator', '--askpass'])}   # password: see {creds.name}"
        )
        env[0] = f"export REDIS_URL={info.url.replace('://', '://USER:PASSWORD@')}"
        lines.append("  (or GROUNDWATCH_REDIS_USER=viewer|publisher|consumer|loader for a role)")
    else:
        lines.append(f"  {shlex.join(cli)}")
    if info.ca_cert is not None:
        lines.append(f"  CA certificate: {info.ca_cert}")
    return lines + [f"  {e}" for e in env]


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    if args.cluster:
        return _up_cluster(settings, args.cluster)
    running = connection.read_embedded(settings)
    if running is not None:
        print(f"already running on port {running.port}, data in {running.data_dir}")
        print("\n".join(connect_hints(running, settings)))
        return 0
    tls_files = None
    if args.tls or args.mtls or args.secure:
        from groundwatch import tls

        tls_files = tls.ensure(settings.data_dir.resolve() / "tls", mutual=args.mtls, renew=args.new_certs)
    elif args.new_certs:
        raise ConfigError("--new-certs makes TLS certificates: use it with --tls, --mtls or --secure")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if args.secure:
        settings.data_dir.chmod(0o700)  # credentials, ACL file, keys, data: the owner's alone
    acl_file, new_users = secure_admin(settings) if args.secure else (None, False)
    server = embedded_server(settings, args.port, tls=tls_files, acl_file=acl_file)
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
    connection.write_embedded(
        settings,
        server.port,
        pid,
        ca_cert=tls_files.ca_cert if tls_files else None,
        client_cert=tls_files.client_cert if tls_files else None,
        client_key=tls_files.client_key if tls_files else None,
        secure=args.secure,
    )
    if new_users:
        add_role_users(settings)
    info = connection.read_embedded(settings)
    assert info is not None
    mode = "TLS only" if tls_files else "plain TCP"
    if args.secure:
        mode += ", passwords"
    print(
        f"groundwatch: redis-server with the engine on 127.0.0.1:{server.port} ({mode}), data in {server.data_dir}"
    )
    print("\n".join(connect_hints(info, settings)))
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
    from groundwatch import enginestats, status

    client = connection.connect(settings, decode_responses=True)
    print(status.render(status.collect(client, feed=args.feed)))
    print("\n".join(enginestats.render(enginestats.read(client))))
    return 0


def cmd_subscribe(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import keys

    channels = {
        "detections": [keys.detections(settings.feed)],
        "scenes": [keys.scenes(settings.feed)],
        "both": [keys.detections(settings.feed), keys.scenes(settings.feed)],
    }[args.channel]
    client = connection.connect(settings, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(*channels)
    print(f"subscribed to {', '.join(channels)}", file=sys.stderr, flush=True)
    seen = 0
    deadline = time.monotonic() + args.timeout_s if args.timeout_s > 0 else None
    try:
        while not args.count or seen < args.count:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                print(
                    f"{seen} of {args.count or 'any'} messages within {args.timeout_s:g} s", file=sys.stderr
                )
                return 1
            message = pubsub.get_message(timeout=wait)
            if message is not None and message.get("type") == "message":
                print(message["data"], flush=True)
                seen += 1
    finally:
        pubsub.close()
    return 0


# --- acl -----------------------------------------------------------------------------------


def _register_acl(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: the same options on `acl` and `acl apply`, and the second parser does not reset
    # what the first one read.
    common.add_argument(
        "--roles", default=argparse.SUPPRESS, help="comma-separated roles (default: all five)"
    )
    common.add_argument(
        "--feeds",
        default=argparse.SUPPRESS,
        help="limit publisher and consumer to these feeds (comma-separated)",
    )
    common.add_argument(
        "--user", default=argparse.SUPPRESS, help="user name instead of the role's (one role only: --roles)"
    )
    p = sub.add_parser(
        "acl",
        parents=[common],
        help="print (or apply) the ACL users of the roles publisher, consumer, loader, viewer, operator",
        description="Print the ACL SETUSER rules of groundwatch's roles: explicit allow-lists of commands, "
        "key patterns and channels (docs/security.md). `groundwatch acl apply` applies them with passwords.",
    )
    p.add_argument("--markdown", action="store_true", help="the role table of docs/security.md")
    p.set_defaults(handler=cmd_acl)
    actions = p.add_subparsers(dest="acl_action", metavar="ACTION", title="actions")
    a = actions.add_parser(
        "apply",
        parents=[common],
        help="ACL SETUSER the roles on the server, with passwords generated or from a file",
        description="Apply the roles' rules (ACL SETUSER ... reset: earlier rules and passwords of these "
        "users go). Passwords come from --passwords, else the credentials file, else are generated "
        "(secrets); they are never printed unless --show-passwords. New ones go to the credentials "
        "file (mode 0600): --credentials, by default DATA_DIR/credentials.json for the embedded server.",
    )
    a.add_argument("--dry-run", action="store_true", help="print the commands, change nothing")
    a.add_argument(
        "--passwords", type=Path, default=None, help='JSON file {"user": "password"} to take them from'
    )
    a.add_argument("--credentials", type=Path, default=None, help="write the passwords to this file (0600)")
    a.add_argument("--rotate", action="store_true", help="new passwords for every user applied")
    a.add_argument("--show-passwords", action="store_true", help="print the passwords (as REDIS_URLs)")
    a.set_defaults(handler=cmd_acl_apply)


def _selected(args: argparse.Namespace) -> list[acl.Role]:
    from groundwatch import acl

    def split(value: str | None) -> list[str] | None:
        return None if value is None else [v.strip() for v in value.split(",") if v.strip()]

    names = split(getattr(args, "roles", None))
    feeds = split(getattr(args, "feeds", None))
    roles = acl.roles(names if names is not None else acl.ROLE_NAMES, feeds=feeds)
    user = getattr(args, "user", None)
    if user is not None:
        if len(roles) != 1:
            raise ConfigError("--user names one user: choose its role with --roles ROLE")
        roles = [acl.renamed(roles[0], user)]
    return roles


def cmd_acl(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import acl

    roles = _selected(args)
    print(acl.render_markdown(roles) if args.markdown else acl.render(roles))
    return 0


def cmd_acl_apply(settings: Settings, args: argparse.Namespace) -> int:
    from groundwatch import acl

    roles = _selected(args)
    embedded = not settings.redis_url
    target = args.credentials or (connection.credentials_file(settings) if embedded else None)
    source = args.passwords or target
    known = connection.read_credentials(source) if source is not None else {}
    passwords, new = acl.choose_passwords(roles, known, rotate=args.rotate)
    if new and target is None and not args.show_passwords and not args.dry_run:
        raise ConfigError(
            f"new passwords for {', '.join(new)} would be lost: give --credentials FILE (written 0600), "
            "--passwords FILE with theirs, or --show-passwords"
        )
    if args.dry_run:
        for role in roles:
            shown = passwords[role.name] if args.show_passwords else "***"
            print(acl.command_line(role.setuser(shown)))
        return 0
    # Applying needs ACL SETUSER: on the secured embedded server, log in as its default user.
    admin = settings if settings.redis_url or settings.redis_user else settings.replace(redis_user="default")
    client = connection.connect(admin)
    saved = acl.apply(client, roles, passwords)
    if embedded:
        keep_private(settings)
    if target is not None:
        connection.write_credentials(target, passwords)
    base = connection.without_credentials(connection.redis_url(admin))
    for role in roles:
        url = connection.user_url(base, role.name, passwords[role.name])
        shown = url if args.show_passwords else connection.redact(url)
        print(f"{role.name}: REDIS_URL={shown} ({'new' if role.name in new else 'kept'} password)")
    if target is not None:
        print(f"passwords in {target} (mode 0600)")
    print(
        "saved in the server's ACL file"
        if saved
        else "the server has no ACL file: these users last until it restarts (apply again after each start)"
    )
    return 0


def local_cluster(settings: Settings, data_dir: Path, masters: int) -> LocalCluster:
    """The cluster of `groundwatch up --cluster N` and `groundwatch demo --cluster` (not started):
    `masters` masters with a replica each, the engine on every node with the settings' arguments."""
    return LocalCluster(
        data_dir,
        masters=masters,
        replicas=1,
        engine_module=settings.engine_module,
        module_args=engine_args(settings),
    )


def _up_cluster(settings: Settings, masters: int) -> int:
    """`groundwatch up --cluster N`: for trying groundwatch on a cluster; in the foreground."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    cluster = local_cluster(settings, settings.data_dir.resolve() / "cluster", masters).start()
    print(f"groundwatch: a Redis Cluster of {masters} masters with a replica each, the engine on every node")
    print(f"  ports {', '.join(str(n.port) for n in cluster.nodes)}; data in {cluster.data_dir}")
    print(f"  export REDIS_URL={cluster.url}   (any node will do)")
    print("  Ctrl-C stops it; `groundwatch up --cluster N` again starts it on the same data")
    try:
        while all(n.running() for n in cluster.nodes):
            time.sleep(1)
        print("a node exited; stopping the cluster", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()
