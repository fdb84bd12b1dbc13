"""TorchScript scripts on a real redis-server: entry points, redis.execute, redisAI.model_execute,
the reply helpers RedisAI documented for script authors, compile errors, and the redisai client."""

from __future__ import annotations

import io
import os
from collections.abc import Callable

import numpy as np
import pytest
import redis
import torch

from groundwatch.server import RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

SCRIPT = r"""
def bar(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + tensors[1]

def bar_variadic(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0]
    rest = tensors[1:]
    return a + rest[0] + rest[1]

def split(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 2, tensors[0] - 1

def scaled(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * float(args[0])
"""

REDIS_SCRIPT = r"""
def int_set_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    key = keys[0]
    value = int(args[0])
    redis.execute("SET", key, str(value))
    res = redis.execute("GET", key)
    return redis_string_int_to_tensor(res)

def float_get(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redis_string_float_to_tensor(redis.execute("GET", keys[0]))

def incr(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redis_int_to_tensor(redis.execute("INCRBY", keys[0], args[0]))

def list_values(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redis_int_list_to_tensor(redis.execute("LRANGE", keys[0], "0", "-1"))

def hash_values(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redis_hash_to_tensor(redis.execute("HVALS", keys[0]))

def list_length(tensors: List[Tensor], keys: List[str], args: List[str]):
    values = redis.asList(redis.execute("LRANGE", keys[0], "0", "-1"))
    return torch.tensor(len(values))

def own_helper(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] + redis_value_plus_one(redis.execute("GET", keys[0]))

def redis_value_plus_one(value: Any):
    return torch.tensor(int(str(value)) + 1)

def no_output(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0], args[0])

def bad_command(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0])
    return tensors[0]

def wrong_type(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("LPUSH", keys[0], "x")
    return tensors[0]

def ping(tensors: List[Tensor], keys: List[str], args: List[str]):
    return torch.tensor(len(str(redis.execute("PING"))))
"""

MODEL_SCRIPT = r"""
def pre_model_post(tensors: List[Tensor], keys: List[str], args: List[str]):
    a = tensors[0].float() / 2
    out = redisAI.model_execute(keys[0], [a, tensors[1]], 1)
    return out[0].sum(dim=1)

def one_input(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(keys[0], [tensors[0]], 1)[0]

def two_outputs(tensors: List[Tensor], keys: List[str], args: List[str]):
    return redisAI.model_execute(keys[0], tensors, 2)[0]
"""


class Mul(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def tensorset(r: redis.Redis, key: str, array: np.ndarray, dtype: str = "FLOAT") -> None:
    r.execute_command("AI.TENSORSET", key, dtype, *array.shape, "BLOB", np.ascontiguousarray(array).tobytes())


def values(r: redis.Redis, key: str) -> tuple[bytes, list[int], list[object]]:
    reply = r.execute_command("AI.TENSORGET", key, "META", "VALUES")
    fields = dict(zip(reply[::2], reply[1::2], strict=False))
    return fields[b"dtype"], [int(d) for d in fields[b"shape"]], fields[b"values"]


def store(r: redis.Redis, key: str, source: str, *entry_points: str) -> None:
    assert (
        r.execute_command(
            "AI.SCRIPTSTORE", key, "CPU", "ENTRY_POINTS", len(entry_points), *entry_points, "SOURCE", source
        )
        == b"OK"
    )


def test_tensor_entry_points(engine: redis.Redis) -> None:
    store(engine, "s", SCRIPT, "bar", "bar_variadic", "split", "scaled")
    tensorset(engine, "a", np.array([1, 2], dtype=np.float32))
    tensorset(engine, "b", np.array([10, 20], dtype=np.float32))
    tensorset(engine, "c", np.array([100, 200], dtype=np.float32))
    engine.execute_command("AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "y")
    assert values(engine, "y") == (b"FLOAT", [2], [b"11", b"22"])
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "s", "bar_variadic", "INPUTS", 3, "a", "b", "c", "OUTPUTS", 1, "y"
    )
    assert values(engine, "y")[2] == [b"111", b"222"]
    engine.execute_command("AI.SCRIPTEXECUTE", "s", "split", "INPUTS", 1, "a", "OUTPUTS", 2, "d", "m")
    assert values(engine, "d")[2] == [b"2", b"4"]
    assert values(engine, "m")[2] == [b"0", b"1"]
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "s", "scaled", "INPUTS", 1, "a", "ARGS", 1, "0.5", "OUTPUTS", 1, "h"
    )
    assert values(engine, "h")[2] == [b"0.5", b"1"]


def test_redis_execute_and_reply_helpers(engine: redis.Redis) -> None:
    store(
        engine,
        "rs{1}",
        REDIS_SCRIPT,
        "int_set_get",
        "float_get",
        "incr",
        "list_values",
        "hash_values",
        "list_length",
        "own_helper",
        "ping",
    )
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "rs{1}", "int_set_get", "KEYS", 1, "x{1}", "ARGS", 1, "3", "OUTPUTS", 1, "y{1}"
    )
    assert values(engine, "y{1}") == (b"INT64", [], [3])
    assert engine.get("x{1}") == b"3"

    engine.set("f{1}", "2.5")
    engine.execute_command("AI.SCRIPTEXECUTE", "rs{1}", "float_get", "KEYS", 1, "f{1}", "OUTPUTS", 1, "y{1}")
    assert values(engine, "y{1}")[2] == [b"2.5"]

    engine.set("n{1}", 40)
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "rs{1}", "incr", "KEYS", 1, "n{1}", "ARGS", 1, "2", "OUTPUTS", 1, "y{1}"
    )
    assert values(engine, "y{1}")[2] == [42]
    assert engine.get("n{1}") == b"42"

    engine.rpush("l{1}", 4, 5, 6)
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "rs{1}", "list_values", "KEYS", 1, "l{1}", "OUTPUTS", 1, "y{1}"
    )
    assert values(engine, "y{1}") == (b"INT64", [3, 1], [4, 5, 6])
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "rs{1}", "list_length", "KEYS", 1, "l{1}", "OUTPUTS", 1, "y{1}"
    )
    assert values(engine, "y{1}")[2] == [3]

    engine.hset("h{1}", mapping={"a": 7, "b": 8})
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "rs{1}", "hash_values", "KEYS", 1, "h{1}", "OUTPUTS", 1, "y{1}"
    )
    assert sorted(int(v) for v in values(engine, "y{1}")[2]) == [7, 8]  # type: ignore[call-overload]

    tensorset(engine, "t{1}", np.array([1], dtype=np.int64), "INT64")
    engine.execute_command(
        "AI.SCRIPTEXECUTE",
        "rs{1}",
        "own_helper",
        "KEYS",
        1,
        "n{1}",
        "INPUTS",
        1,
        "t{1}",
        "OUTPUTS",
        1,
        "y{1}",
    )
    assert values(engine, "y{1}")[2] == [44]

    engine.execute_command("AI.SCRIPTEXECUTE", "rs{1}", "ping", "KEYS", 1, "{1}", "OUTPUTS", 1, "y{1}")
    assert values(engine, "y{1}")[2] == [4]


def test_script_without_outputs_still_runs_its_commands(engine: redis.Redis) -> None:
    store(engine, "rs", REDIS_SCRIPT, "no_output")
    assert (
        engine.execute_command("AI.SCRIPTEXECUTE", "rs", "no_output", "KEYS", 1, "k", "ARGS", 1, "v") == b"OK"
    )
    assert engine.get("k") == b"v"


def test_redis_errors_fail_the_script(engine: redis.Redis) -> None:
    store(engine, "rs", REDIS_SCRIPT, "bad_command", "wrong_type")
    tensorset(engine, "a", np.ones(1, dtype=np.float32))
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTEXECUTE", "rs", "bad_command", "KEYS", 1, "k", "INPUTS", 1, "a", "OUTPUTS", 1, "y"
        )
    assert "SET" in str(err.value) or "arguments" in str(err.value)
    engine.set("str", "x")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTEXECUTE", "rs", "wrong_type", "KEYS", 1, "str", "INPUTS", 1, "a", "OUTPUTS", 1, "y"
        )
    assert "WRONGTYPE" in str(err.value)
    assert engine.exists("y") == 0
    assert engine.ping()


def test_model_execute_from_a_script(engine: redis.Redis) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Mul()), buf)
    engine.execute_command("AI.MODELSTORE", "mul{m}", "TORCH", "CPU", "BLOB", buf.getvalue())
    store(engine, "ms{m}", MODEL_SCRIPT, "pre_model_post")
    tensorset(engine, "a{m}", np.array([[2, 4], [6, 8]], dtype=np.uint8), "UINT8")
    tensorset(engine, "b{m}", np.array([[1, 10], [100, 1000]], dtype=np.float32))
    engine.execute_command(
        "AI.SCRIPTEXECUTE",
        "ms{m}",
        "pre_model_post",
        "KEYS",
        1,
        "mul{m}",
        "INPUTS",
        2,
        "a{m}",
        "b{m}",
        "OUTPUTS",
        1,
        "y{m}",
    )
    assert values(engine, "y{m}") == (b"FLOAT", [2], [b"21", b"4300"])
    info = engine.execute_command("AI.INFO", "mul{m}")
    fields = dict(zip(info[::2], info[1::2], strict=False))
    assert fields[b"calls"] == 1
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTEXECUTE",
            "ms{m}",
            "pre_model_post",
            "KEYS",
            1,
            "nomodel{m}",
            "INPUTS",
            2,
            "a{m}",
            "b{m}",
            "OUTPUTS",
            1,
            "y2{m}",
        )
    assert "model key is empty" in str(err.value)


def test_model_execute_counts_are_checked(engine: redis.Redis) -> None:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Mul()), buf)
    engine.execute_command("AI.MODELSTORE", "mul{m}", "TORCH", "CPU", "BLOB", buf.getvalue())
    store(engine, "ms{m}", MODEL_SCRIPT, "one_input", "two_outputs")
    tensorset(engine, "b{m}", np.array([1, 2], dtype=np.float32))
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTEXECUTE",
            "ms{m}",
            "one_input",
            "KEYS",
            1,
            "mul{m}",
            "INPUTS",
            1,
            "b{m}",
            "OUTPUTS",
            1,
            "y{m}",
        )
    assert "2 inputs" in str(err.value) and "1 were given" in str(err.value)
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTEXECUTE",
            "ms{m}",
            "two_outputs",
            "KEYS",
            1,
            "mul{m}",
            "INPUTS",
            2,
            "b{m}",
            "b{m}",
            "OUTPUTS",
            1,
            "y{m}",
        )
    assert "1 output" in str(err.value) and "2 were expected" in str(err.value)
    assert engine.exists("y{m}") == 0
    assert engine.ping()


def test_compile_error_carries_the_reason(engine: redis.Redis) -> None:
    source = (
        "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return no_such_fn(tensors[0])\n"
    )
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.SCRIPTSTORE", "bad", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", source)
    # libtorch's text with each newline turned into a space (so it may start with one).
    assert str(err.value).lstrip().startswith("undefined value no_such_fn"), str(err.value)
    assert "line 2" in str(err.value)
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.SCRIPTSTORE", "bad", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", "def f(:\n")
    assert str(err.value)
    assert engine.exists("bad") == 0


def test_missing_entry_point_is_refused(engine: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command(
            "AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 2, "bar", "nope", "SOURCE", SCRIPT
        )
    assert "nope" in str(err.value)
    assert engine.exists("s") == 0


def test_script_on_gpu_fails_cleanly(engine: redis.Redis) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here")
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.SCRIPTSTORE", "s", "GPU", "ENTRY_POINTS", 1, "bar", "SOURCE", SCRIPT)
    assert "GPU" in str(err.value) or "CUDA" in str(err.value)


def test_runtime_error_in_a_script(engine: redis.Redis) -> None:
    store(engine, "s", SCRIPT, "bar")
    tensorset(engine, "a", np.ones(2, dtype=np.float32))
    tensorset(engine, "b", np.ones(3, dtype=np.float32))
    with pytest.raises(redis.ResponseError) as err:
        engine.execute_command("AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "y")
    assert "size of tensor" in str(err.value)
    with pytest.raises(redis.ResponseError):
        engine.execute_command("AI.SCRIPTEXECUTE", "s", "bar", "INPUTS", 1, "a", "OUTPUTS", 1, "y")
    assert engine.exists("y") == 0


def test_redisai_client_scripts(engine: redis.Redis) -> None:
    redisai = pytest.importorskip("redisai")
    client = redisai.Client(connection_pool=engine.connection_pool)
    assert client.scriptstore("s{c}", "CPU", SCRIPT, entry_points=["bar", "scaled"], tag="t1") == "OK"
    client.tensorset("a{c}", np.array([1.5, 2.5], dtype=np.float32))
    client.tensorset("b{c}", np.array([1.0, 1.0], dtype=np.float32))
    assert (
        client.scriptexecute("s{c}", "bar", keys=["{c}"], inputs=["a{c}", "b{c}"], outputs=["y{c}"]) == "OK"
    )
    np.testing.assert_array_equal(client.tensorget("y{c}"), np.array([2.5, 3.5], dtype=np.float32))
    assert client.scriptexecute("s{c}", "scaled", inputs=["a{c}"], args=["2"], outputs=["z{c}"]) == "OK"
    np.testing.assert_array_equal(client.tensorget("z{c}"), np.array([3.0, 5.0], dtype=np.float32))
    meta = client.scriptget("s{c}", meta_only=True)
    assert meta["device"] == "CPU" and meta["tag"] == "t1"


OLD_SCRIPT = r"""
def bar(a, b):
    return a + b

def bar_variadic(a, args: List[Tensor]):
    return args[0] + args[1]
"""


def test_deprecated_scriptset_and_scriptrun(engine: redis.Redis) -> None:
    """Scripts written for AI.SCRIPTSET/AI.SCRIPTRUN take their tensors as parameters."""
    assert engine.execute_command("AI.SCRIPTSET", "old", "CPU", "SOURCE", OLD_SCRIPT) == b"OK"
    tensorset(engine, "a", np.array([1, 2], dtype=np.float32))
    tensorset(engine, "b", np.array([10, 20], dtype=np.float32))
    tensorset(engine, "c", np.array([100, 200], dtype=np.float32))
    engine.execute_command("AI.SCRIPTRUN", "old", "bar", "INPUTS", "a", "b", "OUTPUTS", "y")
    assert values(engine, "y")[2] == [b"11", b"22"]
    engine.execute_command(
        "AI.SCRIPTRUN", "old", "bar_variadic", "INPUTS", "a", "$", "b", "c", "OUTPUTS", "z"
    )
    assert values(engine, "z")[2] == [b"110", b"220"]


CONCURRENT_SCRIPT = r"""
def step(tensors: List[Tensor], keys: List[str], args: List[str]):
    n = redis_int_to_tensor(redis.execute("INCR", keys[0]))
    out = redisAI.model_execute(keys[1], [tensors[0], tensors[0]], 1)
    return out[0] + n
"""


def test_concurrent_scripts_keep_their_own_context(server_factory: Callable[..., RedisServer]) -> None:
    """Four workers run scripts at once; each script's redis.execute and model_execute act for
    its own request (the call context is per thread)."""
    import threading

    server = server_factory(module_args=("THREADS_PER_QUEUE", "4"))
    r = redis.Redis(port=server.port)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Mul()), buf)
    r.execute_command("AI.MODELSTORE", "mul{c}", "TORCH", "CPU", "BLOB", buf.getvalue())
    store(r, "cs{c}", CONCURRENT_SCRIPT, "step")
    rounds, clients = 25, 6
    failures: list[str] = []

    def client(c: int) -> None:
        conn = redis.Redis(port=server.port, socket_timeout=60)
        x = np.full(4, float(c), dtype=np.float32)
        tensorset(conn, f"x{c}{{c}}", x)
        for i in range(1, rounds + 1):
            conn.execute_command(
                "AI.SCRIPTEXECUTE", "cs{c}", "step", "KEYS", 2, f"n{c}{{c}}", "mul{c}",
                "INPUTS", 1, f"x{c}{{c}}", "OUTPUTS", 1, f"y{c}{{c}}",
            )  # fmt: skip
            got = values(conn, f"y{c}{{c}}")[2]
            if got != [str(c * c + i).encode()] * 4:
                failures.append(f"client {c} round {i}: {got}")
                return
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures[:3]
    for c in range(clients):
        assert r.get(f"n{c}{{c}}") == str(rounds).encode()
    r.close()


def test_no_resident_growth_over_many_runs(engine: redis.Redis) -> None:
    """Models and scripts (with redis.execute, model_execute and a failing run) over and over:
    redis-server's resident set settles instead of growing with the number of runs."""
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Mul()), buf)
    engine.execute_command("AI.MODELSTORE", "mul{g}", "TORCH", "CPU", "BLOB", buf.getvalue())
    store(engine, "cs{g}", CONCURRENT_SCRIPT, "step")
    tensorset(engine, "x{g}", np.ones((32, 32), dtype=np.float32))
    pipe_args = [
        ("AI.MODELEXECUTE", "mul{g}", "INPUTS", 2, "x{g}", "x{g}", "OUTPUTS", 1, "y{g}"),
        (
            "AI.SCRIPTEXECUTE",
            "cs{g}",
            "step",
            "KEYS",
            2,
            "n{g}",
            "mul{g}",
            "INPUTS",
            1,
            "x{g}",
            "OUTPUTS",
            1,
            "z{g}",
        ),
    ]

    def rounds(n: int) -> None:
        for _ in range(n):
            for args in pipe_args:
                engine.execute_command(*args)
            with pytest.raises(redis.ResponseError):
                engine.execute_command("AI.MODELEXECUTE", "mul{g}", "INPUTS", 1, "x{g}", "OUTPUTS", 1, "w{g}")

    def rss() -> int:
        return int(engine.info("memory")["used_memory_rss"])

    rounds(300)
    before = rss()
    rounds(1500)
    after = rss()
    assert engine.get("n{g}") == b"1800"
    if os.environ.get("GW_TEST_LD_PRELOAD"):  # `make test-asan`: the quarantine keeps freed memory
        return
    assert after - before < 8 * 1024 * 1024, (before, after)


def test_script_calling_redis_inside_a_dag(engine: redis.Redis) -> None:
    store(engine, "rs{d}", REDIS_SCRIPT, "int_set_get")
    reply = engine.execute_command(
        "AI.DAGEXECUTE", "ROUTING", "{d}",
        "|>", "AI.SCRIPTEXECUTE", "rs{d}", "int_set_get", "KEYS", 1, "k{d}", "ARGS", 1, "7", "OUTPUTS", 1, "o",
        "|>", "AI.TENSORGET", "o", "VALUES",
    )  # fmt: skip
    assert reply == [b"OK", [7]]
    assert engine.get("k{d}") == b"7"
    assert engine.exists("o") == 0  # DAG-local
