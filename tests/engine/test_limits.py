"""The engine's bounds and its security model on a real redis-server (docs/engine-limits.md):
scripts act with their caller's ACL rights and Redis's OOM rules, key listings show only what
the caller may read, backends load only from the operator's folders, device queues, queue
lengths, replies and a request's allocations are bounded, and MODEL_EXECUTION_TIMEOUT stops
runaway scripts and models."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import redis
import torch
from engine_helpers import DOUBLE, err, scripted_blob

from groundwatch.server import RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

Factory = Callable[..., RedisServer]

SCRIPT = """
def run(tensors: List[Tensor], keys: List[str], args: List[str]):
    words: List[str] = args[1:]
    redis.execute(args[0], words)
    return tensors[0]

def get(tensors: List[Tensor], keys: List[str], args: List[str]):
    v = redis.execute("GET", keys[0])
    return tensors[0]

def model(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(args[0], tensors, 1)[0]

def fill(tensors: List[Tensor], keys: List[str], args: List[str]):
    for i in range(int(args[0])):
        redis.execute("SET", keys[0] + str(i), args[1])
    return tensors[0]

def spin(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    for i in range(int(args[0])):
        x = x + 1
    return x

def forever(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    while bool(x.sum() > -1.0):
        x = x + 1
    return x

def nested(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(keys[0], tensors, 1)[0]
"""
ENTRY_POINTS = ["run", "get", "model", "fill", "spin", "forever", "nested"]


def store(r: redis.Redis, key: str = "s", device: str = "CPU") -> None:
    r.execute_command(
        "AI.SCRIPTSTORE", key, device, "ENTRY_POINTS", len(ENTRY_POINTS), *ENTRY_POINTS, "SOURCE", SCRIPT
    )


def script(r: redis.Redis, fn: str, keys: Sequence[str], args: Sequence[object], key: str = "s") -> object:
    scopes: list[object] = ["KEYS", len(keys), *keys] if keys else []
    return r.execute_command(
        "AI.SCRIPTEXECUTE", key, fn, *scopes, "INPUTS", 1, "x", "ARGS", len(args), *args, "OUTPUTS", 1, "y",
    )  # fmt: skip


def as_user(server: RedisServer, name: str) -> redis.Redis:
    return redis.Redis(port=server.port, username=name, password="pw", socket_timeout=60)


# ==== Scripts act with their caller's rights ==================================================

SCRIPT_USER_RULES = ["on", ">pw", "~*", "+ai.scriptstore", "+ai.scriptexecute", "+ai.tensorset"]


def test_a_script_cannot_give_its_user_more_rights(engine: redis.Redis, redis_server: RedisServer) -> None:
    engine.acl_deluser("mallory")
    engine.execute_command("ACL", "SETUSER", "mallory", "reset", *SCRIPT_USER_RULES)
    try:
        m = as_user(redis_server, "mallory")
        m.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 1)
        store(m)
        for cmd in (["ACL", "SETUSER", "mallory", "+@all"], ["FLUSHALL"], ["SET", "k", "v"]):
            with pytest.raises(redis.ResponseError) as e:
                script(m, "run", [], cmd)
            assert "not allowed from a script" in err(e.value) or "NOPERM" in err(e.value), (cmd, e.value)
        # Nothing changed: the user still has only its rules, the data is all there.
        rules = engine.acl_getuser("mallory")
        assert "+@all" not in " ".join(map(str, rules.values()))
        with pytest.raises(redis.ResponseError):
            m.execute_command("SET", "k", "v")
        assert engine.exists("x") == 1 and engine.exists("k") == 0
        m.close()
    finally:
        engine.acl_deluser("mallory")


def test_a_script_reaches_only_the_keys_and_commands_its_user_may(
    engine: redis.Redis, redis_server: RedisServer
) -> None:
    engine.set("secret:1", "s")
    engine.set("app:1", "a")
    engine.execute_command("AI.MODELSTORE", "secret:m", "TORCH", "CPU", "BLOB", DOUBLE)
    engine.execute_command("AI.MODELSTORE", "app:m", "TORCH", "CPU", "BLOB", DOUBLE)
    engine.acl_deluser("app")
    engine.execute_command(
        "ACL", "SETUSER", "app", "reset", "on", ">pw", "~app:*", "~x", "~y", "~s",
        "+ai.scriptstore", "+ai.scriptexecute", "+ai.tensorset", "+ai.tensorget", "+get", "+set",
    )  # fmt: skip
    try:
        a = as_user(redis_server, "app")
        a.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 3)
        store(a)
        # Its own keys: reads, writes and model runs work.
        assert script(a, "run", [], ["SET", "app:2", "v"]) == b"OK"
        assert engine.get("app:2") == b"v"
        assert script(a, "get", ["app:1"], []) == b"OK"
        assert script(a, "model", [], ["app:m"]) == b"OK"
        assert a.execute_command("AI.TENSORGET", "y", "VALUES") == [b"6"]
        # Declared keys are Redis's to check; keys a script reaches on its own are checked against the
        # same user: refused with NOPERM, nothing written.
        with pytest.raises(redis.exceptions.NoPermissionError):
            script(a, "get", ["secret:1"], [])
        for fn, args in (
            ("run", ["SET", "secret:1", "stolen"]),
            ("run", ["GET", "secret:1"]),
            ("run", ["DEL", "app:1"]),
            ("model", ["secret:m"]),  # a key the command did not declare
        ):
            with pytest.raises(redis.ResponseError) as e:
                script(a, fn, [], args)
            assert "NOPERM" in err(e.value), (fn, args, e.value)
        assert engine.get("secret:1") == b"s" and engine.get("app:1") == b"a"
        a.close()
    finally:
        engine.acl_deluser("app")


@pytest.mark.parametrize(
    "cmd",
    [
        ["CONFIG", "SET", "maxmemory", "1"],
        ["ACL", "SETUSER", "default", "nopass"],
        ["MODULE", "LIST"],
        ["DEBUG", "SLEEP", "0"],
        ["SHUTDOWN", "NOSAVE"],
        ["MULTI"],
        ["BLPOP", "q", "0"],
        ["SUBSCRIBE", "c"],
        ["AI.CONFIG", "LOADBACKEND", "TORCH", "x.so"],
        ["eval", "return 1", "0"],
    ],
)
def test_commands_that_make_no_sense_in_a_script_are_refused(engine: redis.Redis, cmd: list[str]) -> None:
    """Even for a user with every right (the default user here)."""
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 1)
    store(engine)
    with pytest.raises(redis.ResponseError) as e:
        script(engine, "run", [], cmd)
    assert f"redis.execute {cmd[0]}: this command is not allowed from a script" in err(e.value)
    assert engine.ping() and engine.config_get("maxmemory")["maxmemory"] == "0"


def test_modelscan_lists_only_readable_keys(engine: redis.Redis, redis_server: RedisServer) -> None:
    for key in ("app:m", "secret:m"):
        engine.execute_command("AI.MODELSTORE", key, "TORCH", "CPU", "TAG", key, "BLOB", DOUBLE)
    engine.execute_command("AI.SCRIPTSTORE", "app:s", "CPU", "ENTRY_POINTS", 1, "run", "SOURCE", SCRIPT)
    engine.execute_command("AI.SCRIPTSTORE", "secret:s", "CPU", "ENTRY_POINTS", 1, "run", "SOURCE", SCRIPT)
    engine.acl_deluser("lister")
    engine.execute_command(
        "ACL", "SETUSER", "lister", "reset", "on", ">pw", "%R~app:*", "+ai._modelscan", "+ai._scriptscan"
    )
    try:
        c = as_user(redis_server, "lister")
        assert sorted(c.execute_command("AI._MODELSCAN")) == [[b"app:m", b"app:m"]]
        assert [k for k, _ in c.execute_command("AI._SCRIPTSCAN")] == [b"app:s"]
        c.close()
        # The default user (all keys) still sees everything.
        assert sorted(k for k, _ in engine.execute_command("AI._MODELSCAN")) == [b"app:m", b"secret:m"]
    finally:
        engine.acl_deluser("lister")


def test_a_script_obeys_maxmemory(server_factory: Factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port, socket_timeout=60)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 1)
    store(r)
    used = r.info("memory")["used_memory"]
    r.config_set("maxmemory", used + 4 * 1024 * 1024)
    # 400 SETs of 64 KiB: 25 MiB, far past the 4 MiB left. Redis's deny-oom refuses the SET
    # that finds memory over the limit, and the script fails with it.
    with pytest.raises(redis.ResponseError) as e:
        script(r, "fill", ["k"], [400, "v" * 65536])
    assert "redis.execute SET: OOM command not allowed" in err(e.value)
    r.config_set("maxmemory", 0)
    written = len(r.keys("k*"))
    assert 0 < written < 400
    r.close()
    server.stop()


# ==== Backends only from the operator's folders ===============================================


def backend_so(engine_module: Path) -> Path:
    return engine_module.parent / "backends" / "redisai_torch" / "redisai_torch.so"


def test_loadbackend_refuses_paths_outside_the_backends_folders(
    server_factory: Factory, engine_module: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(backend_so(engine_module), elsewhere / "redisai_torch.so")
    allowed = tmp_path / "backends"
    (allowed / "redisai_torch").mkdir(parents=True)
    os.symlink(elsewhere / "redisai_torch.so", allowed / "redisai_torch" / "link.so")
    server = server_factory(module_args=("BACKENDSPATH", str(allowed)))
    r = redis.Redis(port=server.port)
    refused = [
        str(elsewhere / "redisai_torch.so"),  # absolute, outside
        "redisai_torch/link.so",  # a symlink inside that points outside
        "../elsewhere/redisai_torch.so",  # .. out of the folder
    ]
    for path in refused:
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", path)
        assert "is outside the backends folders set at load time" in err(e.value), path
    # BACKENDSPATH changed at run time moves where names are looked up, not where loading is allowed.
    r.execute_command("AI.CONFIG", "BACKENDSPATH", str(elsewhere))
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", "redisai_torch.so")
    assert "outside" in err(e.value)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)  # lazy load: same rule
    assert err(e.value) == "could not load the TORCH backend"
    assert "ai_Torch_version" not in r.info("modules")
    # A real file under the load-time folder loads.
    shutil.copy(backend_so(engine_module), allowed / "redisai_torch" / "redisai_torch.so")
    r.execute_command("AI.CONFIG", "BACKENDSPATH", str(allowed))
    assert r.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", "redisai_torch/redisai_torch.so") == b"OK"
    assert r.info("modules")["ai_Torch_version"].startswith("2.")
    r.close()
    server.stop()


# ==== Bounded resources =======================================================================


def worker_threads(server: RedisServer) -> int:
    assert server.process is not None
    names = []
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue
    return sum(1 for n in names if n.startswith("ai_"))


def test_device_queues_are_capped_and_device_names_normalised(server_factory: Factory) -> None:
    server = server_factory(module_args=("MAX_DEVICE_QUEUES", "4", "THREADS_PER_QUEUE", "2"))
    r = redis.Redis(port=server.port, socket_timeout=60)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 1)
    # One device, many spellings: one queue.
    for i, device in enumerate(["CPU:1", "cpu:01", "CPU:0001"]):
        store(r, f"s{i}", device)
        assert script(r, "spin", [], [1], key=f"s{i}") == b"OK"
    assert r.execute_command("AI.SCRIPTGET", "s1", "META")[1] == b"cpu:01"  # kept as sent
    assert worker_threads(server) == 2 * 2  # CPU:1's and the CPU queue's (started at load)
    outcomes = []
    for i in range(2, 40):
        store(r, f"d{i}", f"CPU:{i}")
        try:
            outcomes.append(script(r, "spin", [], [1], key=f"d{i}"))
        except redis.ResponseError as e:
            outcomes.append(err(e))
    # The CPU queue exists from load, CPU:1 was just made: room for two more.
    assert outcomes[:2] == [b"OK"] * 2
    assert all(
        "too many device queues" in str(o) and "MAX_DEVICE_QUEUES is 4" in str(o) for o in outcomes[2:]
    )
    assert worker_threads(server) == 4 * 2
    # Devices in use keep working.
    assert script(r, "spin", [], [1], key="s0") == b"OK"
    assert r.ping()
    r.close()
    server.stop()


def test_a_full_queue_answers_an_error(server_factory: Factory) -> None:
    server = server_factory(module_args=("MAX_QUEUE_LENGTH", "2"))
    r = redis.Redis(port=server.port, socket_timeout=60)
    # Requests for this model wait for company up to MINBATCHTIMEOUT: they sit in the queue.
    r.execute_command(
        "AI.MODELSTORE", "m", "TORCH", "CPU", "BATCHSIZE", 8, "MINBATCHSIZE", 8, "MINBATCHTIMEOUT", 3000,
        "BLOB", DOUBLE,
    )  # fmt: skip
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 1, 1, "VALUES", 1)
    results: list[object] = []

    def client(i: int) -> None:
        c = redis.Redis(port=server.port, socket_timeout=60)
        try:
            results.append(c.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, f"y{i}"))
        except redis.ResponseError as e:
            results.append(err(e))
        c.close()

    waiting = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 10
    while r.info("modules").get("ai_CPU_queue_depth", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert r.info("modules")["ai_CPU_queue_depth"] == 2
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y9")
    assert "is full (MAX_QUEUE_LENGTH 2 requests)" in err(e.value)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.DAGEXECUTE", "LOAD", 1, "x", "|>", "AI.TENSORGET", "x", "VALUES")
    assert "is full" in err(e.value)
    for t in waiting:
        t.join()
    assert results == [b"OK", b"OK"] and r.exists("y9") == 0
    # Drained: the queue takes requests again.
    assert r.execute_command("AI.DAGEXECUTE", "LOAD", 1, "x", "|>", "AI.TENSORGET", "x", "VALUES") == [[b"1"]]
    r.close()
    server.stop()


def test_maxmemory_refuses_a_large_tensorset_and_dag(server_factory: Factory) -> None:
    server = server_factory(extra_config=(("maxmemory", "200mb"),))
    r = redis.Redis(port=server.port, socket_timeout=60)
    # 300 MB of zeros: no data sent, but 300 MB to allocate.
    with pytest.raises(redis.exceptions.OutOfMemoryError) as e:
        r.execute_command("AI.TENSORSET", "big", "FLOAT", 75_000_000)
    assert "command not allowed: it needs 300000000 bytes" in str(e.value)
    # A DAG of 4 x 80 MB: each fits alone, together they do not.
    dag = ["AI.DAGEXECUTE", "PERSIST", 1, "a"]
    for name in "abcd":
        dag += ["|>", "AI.TENSORSET", name, "FLOAT", 20_000_000]
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        r.execute_command(*dag)
    assert r.exists("big", "a") == 0
    assert r.info("memory")["used_memory"] < 50 * 1024 * 1024
    # What fits still works.
    assert r.execute_command("AI.TENSORSET", "ok", "FLOAT", 1_000_000) == b"OK"
    r.close()
    server.stop()


def test_a_dags_model_outputs_count_against_maxmemory(server_factory: Factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port, socket_timeout=60)
    r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 4_000_000)  # 16 MB
    r.config_set("maxmemory", r.info("memory")["used_memory"] + 40 * 1024 * 1024)
    dag = ["AI.DAGEXECUTE", "LOAD", 1, "x", "PERSIST", 1, "y4"]
    src = "x"
    for i in range(5):  # 5 outputs of 16 MB: 80 MB
        dag += ["|>", "AI.MODELEXECUTE", "m", "INPUTS", 1, src, "OUTPUTS", 1, f"y{i}"]
        src = f"y{i}"
    reply = r.execute_command(*dag)
    failed = [i for i, x in enumerate(reply) if isinstance(x, redis.exceptions.OutOfMemoryError)]
    assert len(failed) == 1 and 0 < failed[0] < 5, reply
    assert reply[: failed[0]] == [b"OK"] * failed[0] and all(x == b"NA" for x in reply[failed[0] + 1 :])
    assert r.exists("y4") == 0
    r.config_set("maxmemory", 0)
    assert r.execute_command(*dag)[:5] == [b"OK"] * 5
    r.close()
    server.stop()


def test_replies_are_bounded(server_factory: Factory) -> None:
    server = server_factory(module_args=("MAX_REPLY_BYTES", str(20 * 1024 * 1024)))
    r = redis.Redis(port=server.port, socket_timeout=60)
    r.execute_command("AI.TENSORSET", "t", "FLOAT", 2_000_000)  # 8 MB
    rss_before = r.info("memory")["used_memory_rss"]
    # 64 TENSORGETs of one 8 MB tensor would be 512 MB of replies.
    dag = ["AI.DAGEXECUTE_RO", "LOAD", 1, "t"] + ["|>", "AI.TENSORGET", "t", "BLOB"] * 64
    reply = r.execute_command(*dag)
    assert reply[:2] == [b"\0" * 8_000_000] * 2
    assert "MAX_REPLY_BYTES" in str(reply[2]) and all(x == b"NA" for x in reply[3:])
    del reply
    assert r.info("memory")["used_memory_rss"] - rss_before < 200 * 1024 * 1024
    # VALUES of a large tensor: refused with a pointer to BLOB; BLOB itself is the tensor's size.
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.TENSORGET", "t", "VALUES")
    assert "MAX_REPLY_BYTES" in err(e.value) and "use BLOB" in err(e.value)
    assert len(r.execute_command("AI.TENSORGET", "t", "BLOB")) == 8_000_000
    assert r.info("modules")["ai_max_reply_bytes"] == 20 * 1024 * 1024
    r.close()
    server.stop()


# ==== MODEL_EXECUTION_TIMEOUT =================================================================


class Spin(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(100_000_000):
            x = x + 1
        return x


def test_execution_timeout_stops_scripts_and_models(server_factory: Factory) -> None:
    server = server_factory(module_args=("MODEL_EXECUTION_TIMEOUT", "500"))
    r = redis.Redis(port=server.port, socket_timeout=120)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 1)
    r.execute_command("AI.MODELSTORE", "spin", "TORCH", "CPU", "BLOB", scripted_blob(Spin()))
    store(r)
    other = redis.Redis(port=server.port, socket_timeout=10)
    for fn, keys, args in (("spin", [], [10**9]), ("forever", [], []), ("nested", ["spin"], [])):
        start = time.monotonic()
        pings: list[bool] = []

        def ping_meanwhile(out: list[bool] = pings) -> None:
            time.sleep(0.2)  # while the run is under way
            out.append(bool(other.ping()))

        t = threading.Thread(target=ping_meanwhile)
        t.start()
        with pytest.raises(redis.ResponseError) as e:
            script(r, fn, keys, args)
        elapsed = time.monotonic() - start
        t.join()
        assert "execution timed out" in err(e.value) and "MODEL_EXECUTION_TIMEOUT (500 ms)" in err(e.value)
        # Stopped near the timeout: 10**9 iterations would take many minutes.
        assert elapsed < 30, (fn, elapsed)
        assert pings == [True]
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.MODELEXECUTE", "spin", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    assert "execution timed out" in err(e.value)
    info = dict(zip(*[iter(r.execute_command("AI.INFO", "spin"))] * 2, strict=True))
    assert info[b"errors"] >= 2
    # The worker is free again: short runs work, on the same single worker thread.
    assert script(r, "spin", [], [3]) == b"OK"
    assert r.execute_command("AI.TENSORGET", "y", "VALUES") == [b"4"]
    r.close()
    other.close()
    server.stop()
