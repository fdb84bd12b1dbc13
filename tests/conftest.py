"""Fixtures: a real redis-server with the engine loaded, on a free port, for the whole session.

`redis_server` is the shared server; `r` is a client on it, flushed before each test. Tests
that need a server of their own (persistence, replication, crashes) use `server_factory`.
When a test fails, the tail of every server log it used is attached to its report.

Options: `--engine PATH` loads another build of the module (e.g. the ASan build);
`--no-engine` runs plain Redis (engine tests then fail with a message saying why).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from groundwatch.server import RedisServer
from groundwatch.settings import REPO_ROOT

DEFAULT_ENGINE = REPO_ROOT / "engine" / "build" / "engine.so"
_servers_in_use: list[RedisServer] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--engine", default=str(DEFAULT_ENGINE), help="engine module to load")
    parser.addoption("--no-engine", action="store_true", help="run redis-server without the engine")
    parser.addoption(
        "--fuzz-frames",
        type=int,
        default=1000,
        help="randomised frames fed to a consumer in tests/consumers/test_fuzz_consumer.py (the issue's full run: 10000)",
    )


def engine_path(config: pytest.Config) -> Path | None:
    if config.getoption("--no-engine"):
        return None
    return Path(config.getoption("--engine")).resolve()


def server_env() -> dict[str, str]:
    """The environment for redis-server; an ASan build needs its runtime preloaded."""
    env = dict(os.environ)
    preload = os.environ.get("GW_TEST_LD_PRELOAD")
    if preload:
        env["LD_PRELOAD"] = preload
        # Redis sizes RESTORE/RDB strings with ztrymalloc and handles NULL (a crafted length is a
        # load error); ASan must return NULL too instead of aborting on a huge request.
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0:allocator_may_return_null=1")
    return env


@pytest.fixture(scope="session")
def engine_module(pytestconfig: pytest.Config) -> Path | None:
    return engine_path(pytestconfig)


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory: pytest.TempPathFactory, engine_module: Path | None) -> Iterator[object]:
    """Call it to start a fresh server: factory(module_args=(...), extra_config=((k, v),))."""
    started: list[RedisServer] = []
    counter = itertools.count()

    def make(
        module_args: tuple[str, ...] = (),
        extra_config: tuple[tuple[str, str], ...] = (),
        with_engine: bool = True,
        data_dir: Path | None = None,
    ) -> RedisServer:
        server = RedisServer(
            data_dir=data_dir or tmp_path_factory.mktemp(f"redis{next(counter)}"),
            engine_module=engine_module if with_engine else None,
            module_args=module_args,
            extra_config=extra_config,
            env=server_env(),
        )
        started.append(server)
        _servers_in_use.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(server_factory: Callable[..., RedisServer]) -> RedisServer:
    return server_factory()


@pytest.fixture
def r(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the shared server, flushed before the test."""
    if not redis_server.running():
        redis_server.start()
    client = redis.Redis(port=redis_server.port, socket_timeout=60)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def engine(r: redis.Redis, engine_module: Path | None) -> redis.Redis:
    """A client on a server that has the engine loaded; fails clearly when it is not built."""
    modules = {m[b"name"] if isinstance(m, dict) else m[1] for m in r.module_list()}
    if b"ai" not in modules:
        pytest.fail(
            f"the engine module is not loaded (looked for {engine_module}); build it with `make engine`"
        )
    return r


_started_before: dict[str, int] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """Attach the log of the shared server and of every server the failing test started."""
    if call.when == "setup":
        _started_before[item.nodeid] = len(_servers_in_use)
    outcome = yield
    report = outcome.get_result()
    if report.failed and _servers_in_use:
        own = _servers_in_use[_started_before.get(item.nodeid, 0) :]
        shown = [_servers_in_use[0], *(s for s in own if s is not _servers_in_use[0])]
        for server in shown:
            report.sections.append((f"redis-server :{server.port} log", server.log_tail()))
