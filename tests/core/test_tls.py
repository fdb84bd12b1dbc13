"""TLS against a real redis-server with the engine: the whole flow over rediss://, and clients
that cannot verify the server (wrong CA, wrong host name, no client certificate) are refused."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from consumers.worker import Consumer
from groundwatch import connection, keys, status, tls
from groundwatch.errors import ServerError
from groundwatch.server import RedisServer
from groundwatch.settings import Settings
from ingest.scene import ingest_file
from loaders.loader import LoadOptions, load
from tests import toymodels
from tests.conftest import server_env
from tests.ingest.conftest import write_tif

FEED = "tls1"


@pytest.fixture
def start_tls(engine_module: Path | None, tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(files: tls.TlsFiles, name: str = "redis") -> RedisServer:
        server = RedisServer(
            data_dir=tmp_path / name, engine_module=engine_module, tls=files, env=server_env()
        ).start()
        started.append(server)
        return server

    yield start
    for s in started:
        s.stop()


def _settings(server: RedisServer, ca: Path | None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "redis_url": server.url,
        "tls_ca_cert": ca,
        "feed": FEED,
        "tile_size": 64,
        "tile_overlap": 16,
        "consumer": "c1",
        "data_dir": server.data_dir / "client",  # no embedded server there: nothing to fall back on
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_the_whole_flow_runs_over_tls(start_tls: Callable[..., RedisServer], tmp_path: Path) -> None:
    files = tls.ensure(tmp_path / "tls")
    server = start_tls(files)
    assert server.url.startswith("rediss://")
    settings = _settings(server, files.ca_cert)
    client = connection.connect(settings)
    info = client.connection_pool.connection_kwargs
    assert info["ssl_check_hostname"] is True and info["ssl_ca_certs"] == str(files.ca_cert)

    model = tmp_path / "m.pt"
    model.write_bytes(toymodels.archive(toymodels.BrightestPixel(), toymodels.metadata()))
    load(client, model, LoadOptions(name="ship", feeds=(FEED,)))
    listener = connection.connect(settings).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(keys.scenes(FEED))
    listener.get_message(timeout=0.5)
    arr = np.full((1, 112, 112), 100, np.uint16)
    arr[0, 50, 50] = 9000
    assert ingest_file(client, settings, write_tif(tmp_path / "s.tif", arr)).tiles == 4
    run = Consumer(connection.connect(settings, timeout_s=60), settings, burst=True).run()
    assert (run.frames_done, run.scenes_done) == (4, 1)
    (figures,) = status.collect(client, feed=FEED)
    assert figures.counters["frames_done"] == 4 and figures.model == "ship:1"
    message = listener.get_message(timeout=5)
    assert message is not None and json.loads(message["data"])["groundwatch"]["kind"] == "scene"
    listener.close()


def test_no_plain_tcp_and_no_unverified_server(start_tls: Callable[..., RedisServer], tmp_path: Path) -> None:
    files = tls.ensure(tmp_path / "tls")
    server = start_tls(files)
    # plain TCP on the TLS port: the server drops the connection
    with pytest.raises(ServerError, match="cannot reach"):
        connection.connect(_settings(server, None, redis_url=server.url.replace("rediss", "redis")))
    # a CA that did not sign the server's certificate
    other = tls.ensure(tmp_path / "other-ca")
    with pytest.raises(ServerError, match="certificate verify failed"):
        connection.connect(_settings(server, other.ca_cert))
    # no CA given: the system's CAs do not know ours either
    with pytest.raises(ServerError, match="certificate verify failed"):
        connection.connect(_settings(server, None))
    assert connection.connect(_settings(server, files.ca_cert)).ping()


def test_the_host_name_is_checked(start_tls: Callable[..., RedisServer], tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    files = tls.ensure(folder)
    # a certificate of our CA, but for another host than 127.0.0.1
    tls.make_leaf(folder, "server", "elsewhere", hosts=("elsewhere.example",))
    server = start_tls(files)
    with pytest.raises(ServerError, match=r"mismatch|doesn.t match|not valid for"):
        connection.connect(_settings(server, files.ca_cert))


def test_mutual_tls_wants_a_client_certificate_of_the_ca(
    start_tls: Callable[..., RedisServer], tmp_path: Path
) -> None:
    files = tls.ensure(tmp_path / "tls", mutual=True)
    assert files.client_cert is not None and files.client_key is not None
    server = start_tls(files)
    with pytest.raises(ServerError):
        connection.connect(_settings(server, files.ca_cert)).ping()
    stranger = tls.ensure(tmp_path / "stranger", mutual=True)
    with pytest.raises(ServerError):
        connection.connect(
            _settings(server, files.ca_cert, tls_cert=stranger.client_cert, tls_key=stranger.client_key)
        )
    ok = _settings(server, files.ca_cert, tls_cert=files.client_cert, tls_key=files.client_key)
    assert connection.connect(ok).ping()


def test_keys_are_private_and_certificates_are_reused(tmp_path: Path) -> None:
    first = tls.ensure(tmp_path / "tls", mutual=True)
    for path in (tmp_path / "tls" / "ca.key", first.server_key, first.client_key):
        assert path is not None and path.stat().st_mode & 0o077 == 0
    ca = first.ca_cert.read_bytes()
    assert tls.ensure(tmp_path / "tls").ca_cert.read_bytes() == ca
    assert tls.ensure(tmp_path / "tls", renew=True).ca_cert.read_bytes() != ca


def test_redis_server_was_built_with_tls(tmp_path: Path) -> None:
    """Debian's redis-server 7.0 speaks TLS: a handshake with our CA succeeds on its tls-port."""
    import ssl

    files = tls.ensure(tmp_path / "tls")
    server = RedisServer(data_dir=tmp_path / "plain", tls=files).start()
    try:
        context = ssl.create_default_context(cafile=str(files.ca_cert))
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"PING\r\n")
                assert s.recv(16) == b"+PONG\r\n"
                assert s.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        server.stop()
