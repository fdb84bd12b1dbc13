"""RedisAI 1.2.7 compatibility, one test per fact of ../shared/spec/redisai-protocol-corrections.md:
arity errors quoting argv[0], minimum argument counts, the device rule and devices kept as sent,
the orders of checks of MODELSTORE/MODELSET/TENSORSET/TENSORGET/DAG LOAD/SCRIPTRUN, SCRIPTSTORE's
entry-point signatures, VALUES rules, redis.execute's error texts, backend texts with CR/LF
replaced one for one, INFO MODULES, AI.INFO's extra word and best-effort script calls."""

from __future__ import annotations

import errno
import os
import re
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from engine_helpers import ADD, DOUBLE, WRONGTYPE, err

from groundwatch.server import RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


def error_of(r: redis.Redis, *args: object) -> str:
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command(*args)
    return err(e.value)


# ---- Arity ------------------------------------------------------------------------------------

SHORT: list[tuple[str, list[Any]]] = [
    ("AI.TENSORSET", []),
    ("AI.TENSORSET", ["k"]),
    ("AI.TENSORSET", ["k", "FLOAT"]),
    ("AI.TENSORGET", []),
    ("AI.TENSORGET", ["k", "META", "BLOB", "VALUES"]),
    ("AI.MODELSTORE", ["m", "TORCH", "BLOB", "x"]),
    ("AI.MODELSET", ["m", "TORCH"]),
    ("AI.MODELGET", []),
    ("AI.MODELDEL", []),
    ("AI.MODELEXECUTE", ["m", "INPUTS", 1, "a", "OUTPUTS", 1]),
    ("AI.MODELRUN", ["m", "INPUTS", "a", "OUTPUTS"]),
    ("AI.SCRIPTSTORE", ["s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE"]),
    ("AI.SCRIPTSET", ["s", "CPU", "SOURCE"]),
    ("AI.SCRIPTGET", []),
    ("AI.SCRIPTDEL", []),
    ("AI.SCRIPTEXECUTE", ["s"]),
    ("AI.SCRIPTRUN", ["s", "f"]),
    ("AI.DAGRUN", []),
    ("AI.DAGRUN_RO", []),
    ("AI.INFO", []),
    ("AI.INFO", ["k", "RESETSTAT", "x"]),
    ("AI.CONFIG", []),
    ("AI.CONFIG", ["LOADBACKEND", "TORCH"]),
    ("AI.CONFIG", ["GET"]),
    ("AI._MODELSCAN", ["x"]),
    ("AI._SCRIPTSCAN", ["x"]),
]


def spellings(name: str) -> list[str]:
    """Upper case, lower case and a mixed case: the reply quotes whichever was sent."""
    mixed = "".join(c.lower() if i % 2 else c for i, c in enumerate(name))
    return [name, name.lower(), mixed]


@pytest.mark.parametrize("name,args", SHORT, ids=[f"{n}-{len(a)}" for n, a in SHORT])
def test_arity_error_quotes_the_command_as_sent(engine: redis.Redis, name: str, args: list) -> None:
    for sent in spellings(name):
        assert error_of(engine, sent, *args) == f"wrong number of arguments for '{sent}' command"


def test_minimum_argument_counts(engine: redis.Redis) -> None:
    # One argument more than each short form above is no longer an arity error.
    assert error_of(engine, "AI.MODELSTORE", "m", "TORCH", "BLOB", "x", "y") == "Invalid DEVICE"
    assert (
        error_of(engine, "AI.MODELSET", "m", "TORCH", "CPU") == "Insufficient arguments, missing model BLOB"
    )
    assert (
        error_of(engine, "AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCES", "x")
        == "Insufficient arguments, missing script SOURCE"
    )
    assert (
        error_of(engine, "AI.TENSORSET", "k", "FLOAT", "x")
        == "invalid or negative value found in tensor shape"
    )
    assert error_of(engine, "AI.TENSORGET", "k") == "tensor key is empty or in a different shard"
    assert error_of(engine, "AI.CONFIG", "LOADBACKEND", "TF", "x.so") == "unsupported backend"
    assert engine.execute_command("AI.CONFIG", "GET", "NOPE") is None


# ---- Devices ----------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["TPU", "CPU:x", "CPUX", "CPU:123456", "cpu:-1", "GPU:1a", "CPU0", ""])
def test_invalid_devices(engine: redis.Redis, device: str) -> None:
    assert error_of(engine, "AI.MODELSTORE", "m", "TORCH", device, "BLOB", DOUBLE) == "Invalid DEVICE"
    assert (
        error_of(engine, "AI.SCRIPTSTORE", "s", device, "ENTRY_POINTS", 1, "f", "SOURCE", "x")
        == "Invalid DEVICE"
    )
    assert engine.exists("m", "s") == 0


def test_gpu_devices_pass_the_device_rule(engine: redis.Redis) -> None:
    for device in ("gpu", "GPU:", "Gpu:12345"):
        try:
            engine.execute_command("AI.MODELSTORE", "m", "TORCH", device, "BLOB", DOUBLE)
        except redis.ResponseError as e:  # no CUDA here: the backend says so, not the parser
            assert err(e) != "Invalid DEVICE" and ("GPU" in err(e) or "CUDA" in err(e)), err(e)


@pytest.mark.parametrize("device", ["cpu", "Cpu:", "CPU:12345", "cpu:007"])
def test_device_kept_as_sent(engine: redis.Redis, device: str) -> None:
    assert engine.execute_command("AI.MODELSTORE", "m", "TORCH", device, "BLOB", DOUBLE) == b"OK"
    script = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] + 1\n"
    engine.execute_command("AI.SCRIPTSTORE", "s", device, "ENTRY_POINTS", 1, "f", "SOURCE", script)
    assert engine.execute_command("AI.MODELGET", "m", "META")[3] == device.encode()
    assert engine.execute_command("AI.SCRIPTGET", "s", "META")[1] == device.encode()
    for key in ("m", "s"):
        info = engine.execute_command("AI.INFO", key)
        assert info[info.index(b"device") + 1] == device.encode()
    # The DUMP payload (the v4 RDB encoding) carries it unchanged, as a C string.
    assert device.encode() + b"\x00" in engine.dump("m") and device.encode() + b"\x00" in engine.dump("s")
    # It runs on the queue of the upper-cased device.
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 2)
    engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    engine.execute_command("AI.SCRIPTEXECUTE", "s", "f", "INPUTS", 1, "y", "OUTPUTS", 1, "z")
    assert engine.execute_command("AI.TENSORGET", "z", "VALUES") == [b"5"]
    name, colon, index = device.upper().partition(":")  # the index without leading zeros
    queue = name + (("_" + (index.lstrip("0") or "0")) if index else ("_" if colon else ""))
    fields = engine.info("modules")
    assert f"ai_queue_{queue}_bthread_n1_used_cpu_total" in fields
    if device != device.upper():  # one queue per upper-cased device, none under the sent case
        assert not any(k.startswith(f"ai_queue_{device.replace(':', '_')}_") for k in fields)
    # DEBUG RELOAD (RDB save and load) keeps it.
    engine.execute_command("DEBUG", "RELOAD")
    assert engine.execute_command("AI.MODELGET", "m", "META")[3] == device.encode()
    assert engine.execute_command("AI.SCRIPTGET", "s", "META")[1] == device.encode()


def test_device_kept_as_sent_in_aof(server_factory: Callable[..., RedisServer]) -> None:
    server = server_factory(extra_config=(("appendonly", "yes"), ("aof-use-rdb-preamble", "no")))
    r = redis.Redis(port=server.port)
    r.execute_command("AI.MODELSTORE", "m", "TORCH", "cpu:1", "BLOB", DOUBLE)
    r.execute_command(
        "AI.SCRIPTSTORE", "s", "Cpu", "ENTRY_POINTS", 1, "f", "SOURCE",
        "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0]\n",
    )  # fmt: skip
    r.bgrewriteaof()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        time.sleep(0.05)
    text = b"".join(p.read_bytes() for p in sorted(server.data_dir.rglob("*.aof*")) if p.is_file())
    assert b"$5\r\ncpu:1\r\n" in text and b"$3\r\nCpu\r\n" in text
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert r.execute_command("AI.MODELGET", "m", "META")[3] == b"cpu:1"
    assert r.execute_command("AI.SCRIPTGET", "s", "META")[1] == b"Cpu"
    r.close()
    server.stop()


# ---- AI.MODELSTORE / AI.MODELSET --------------------------------------------------------------

MODELSTORE_ORDER: list[tuple[list[Any], str]] = [
    (["FOO", "TPU", "BATCHSIZE", "x", "BLOB", b"x"], "unsupported backend"),
    (["TORCH", "TPU", "BATCHSIZE", "x", "BLOB", b"x"], "Invalid DEVICE"),
    (["TORCH", "CPU", "BATCHSIZE", -1, "MINBATCHSIZE", "x", "BLOB", b"x"], "Invalid argument for BATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHSIZE", "x", "BLOB", b"x"], "Invalid argument for MINBATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHSIZE", 2, "MINBATCHTIMEOUT", "x", "BLOB", b"x"], "MINBATCHSIZE specified without BATCHSIZE"),
    (["TORCH", "CPU", "BATCHSIZE", 0, "MINBATCHSIZE", 1, "BLOB", b"x"], "MINBATCHSIZE specified without BATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHTIMEOUT", "x", "BLOB", b"x"], "Invalid argument for MINBATCHTIMEOUT"),
    (["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHTIMEOUT", 5, "BLOB", b"x"], "MINBATCHTIMEOUT specified without MINBATCHSIZE"),
    (["TORCH", "CPU", "TAG", "t", "BATCHSIZE", 2], "Insufficient arguments, missing model BLOB"),
    (["TORCH", "CPU", "INPUTS", 1, "a", "BLOOB", b"x"], "INPUTS argument should not be specified for this backend"),
    (["TORCH", "CPU", "TAG", "t", "BLOOB", b"x"], "Invalid argument, expected BLOB"),
    (["TF", "CPU", "INPUTS", 1, "a", "OUTPUTS", 1, "b", "BLOB", b"x"], "Could not load backend"),
    (["TFLITE", "CPU", "BLOB", b"x"], "Could not load backend"),
    (["ONNX", "cpu", "BATCHSIZE", 2, "BLOB", b"x"], "Could not load backend"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", MODELSTORE_ORDER)
def test_modelstore_order_of_checks(engine: redis.Redis, args: list, message: str) -> None:
    assert error_of(engine, "AI.MODELSTORE", "m", *args) == message
    assert engine.exists("m") == 0


def test_modelstore_zero_minbatch_values_alone_are_accepted(engine: redis.Redis) -> None:
    args = ["TORCH", "CPU", "MINBATCHSIZE", 0, "MINBATCHTIMEOUT", 0, "BLOB", DOUBLE]
    assert engine.execute_command("AI.MODELSTORE", "m", *args) == b"OK"
    meta = engine.execute_command("AI.MODELGET", "m", "META")
    assert meta[7] == 0 and meta[9] == 0 and meta[15] == 0


def test_modelstore_checks_the_key_type_last(engine: redis.Redis) -> None:
    engine.set("m", "x")
    # A blob libtorch refuses is reported before the key's type ...
    message = error_of(engine, "AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"not a model")
    assert message != WRONGTYPE and "zip" in message
    # ... and a good one is built, then refused for the key.
    assert error_of(engine, "AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE) == WRONGTYPE
    assert engine.get("m") == b"x"


MODELSET_ORDER: list[tuple[list[Any], str]] = [
    (["FOO", "CPU", "BLOB", b"x"], "unsupported backend"),
    (["TF", "ABCDEFGHIJK", "INPUTS", "a", "OUTPUTS", "b", "BLOB", b"x"], "Invalid DEVICE"),
    (["TF", "blob", "INPUTS", "a", "OUTPUTS", "b", "BLOB", b"x"], "Invalid DEVICE"),
    (["TORCH", "MinBatchTimeout", "BLOB", b"x"], "Invalid DEVICE"),
    (["TFLITE", "CPU", "BATCHSIZE", "x", "BLOB", b"x"], "Auto-batching not supported by the TFLITE backend"),
    (["TORCH", "CPU", "BATCHSIZE", "x", "BLOB", b"x"], "Invalid argument for BATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHSIZE", "x", "BLOB", b"x"], "MINBATCHSIZE specified without BATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHSIZE", 0, "BLOB", b"x"], "MINBATCHSIZE specified without BATCHSIZE"),
    (["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHSIZE", "x", "BLOB", b"x"], "Invalid argument for MINBATCHSIZE"),
    (["TORCH", "CPU", "MINBATCHTIMEOUT", "x", "BLOB", b"x"], "MINBATCHTIMEOUT specified without BATCHSIZE"),
    (["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHTIMEOUT", "x", "BLOB", b"x"], "MINBATCHTIMEOUT specified without MINBATCHSIZE"),
    (["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHSIZE", 1, "MINBATCHTIMEOUT", "x", "BLOB", b"x"], "Invalid argument for MINBATCHTIMEOUT"),
    (["TORCH", "CPU", "INPUTS", "a", "OUTPUTS", "b"], "Insufficient arguments, missing model BLOB"),
    (["TF", "CPU", "INPUTS", "a", "OUTPUTS", "b", "BLOB"], "Insufficient arguments, missing model BLOB"),
    (["TF", "CPU", "BLOB", b"x"], "Insufficient arguments, INPUTS and OUTPUTS not specified"),
    (["TF", "CPU", "TAG", "t", "OUTPUTS", "b", "BLOB", b"x"], "INPUTS not specified"),
    (["TF", "CPU", "INPUTS", "a", "BLOB", b"x"], "OUTPUTS not specified"),
    # A successful parse for a backend this build does not have; MODELSET's device rule is loose.
    (["TF", "tpu", "TAG", "t", "BATCHSIZE", 4, "INPUTS", "a", "OUTPUTS", "b", "BLOB", b"x"], "Could not load backend"),
    (["TF", "0123456789", "INPUTS", "a", "OUTPUTS", "b", "BLOB", b"x"], "Could not load backend"),
    (["TFLITE", "CPU", "INPUTS", "a", "BLOB", b"x"], "Could not load backend"),
    (["ONNX", "CPU", "BLOB", b"x"], "Could not load backend"),
]  # fmt: skip


@pytest.mark.parametrize("args,message", MODELSET_ORDER)
def test_modelset_order_of_checks(engine: redis.Redis, args: list, message: str) -> None:
    assert error_of(engine, "AI.MODELSET", "m", *args) == message
    assert engine.exists("m") == 0


def test_modelset_keeps_the_device_as_sent(engine: redis.Redis) -> None:
    args = ["TORCH", "cpu", "TAG", "t", "INPUTS", "a", "b", "OUTPUTS", "c", "BLOB", ADD]
    assert engine.execute_command("AI.MODELSET", "m", *args) == b"OK"
    assert engine.execute_command("AI.MODELGET", "m", "META")[:6] == [
        b"backend",
        b"TORCH",
        b"device",
        b"cpu",
        b"tag",
        b"t",
    ]


# ---- AI.SCRIPTSTORE entry points --------------------------------------------------------------

SIGNATURES = """
def good(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0]

def two(tensors: List[Tensor], keys: List[str]):
    return tensors[0]

def four(tensors: List[Tensor], keys: List[str], args: List[str], more: List[str]):
    return tensors[0]

def ints(tensors: List[Tensor], keys: List[str], args: List[int]):
    return tensors[0]

def plain(a, b, c):
    return a
"""


def expected_type_error(fn: str) -> str:
    return (
        f"Wrong inputs type in function {fn}. Expected signature similar to: "
        f"def {fn}(tensors: List[Tensor], keys: List[str], args: List[str])"
    )


@pytest.mark.parametrize(
    "entry_points,message",
    [
        (["nope"], "Function nope does not exist in the given script."),
        (["two"], "Wrong number of inputs in function two. Expected 3 but was 2"),
        (["four"], "Wrong number of inputs in function four. Expected 3 but was 4"),
        (["ints"], expected_type_error("ints")),
        (["plain"], expected_type_error("plain")),
        # The first failure, in the order given, is the reply.
        (["good", "ints", "two", "nope"], expected_type_error("ints")),
        (["good", "nope", "two"], "Function nope does not exist in the given script."),
    ],
)
def test_scriptstore_checks_entry_point_signatures(
    engine: redis.Redis, entry_points: list, message: str
) -> None:
    args = ["s", "CPU", "ENTRY_POINTS", len(entry_points), *entry_points, "SOURCE", SIGNATURES]
    assert error_of(engine, "AI.SCRIPTSTORE", *args) == message
    assert engine.exists("s") == 0
    assert (
        engine.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "good", "SOURCE", SIGNATURES)
        == b"OK"
    )


# ---- Tensors ----------------------------------------------------------------------------------


def test_tensorset_opens_the_key_before_parsing(engine: redis.Redis) -> None:
    engine.set("str", "x")
    for args in (["FLOAT16", 1], ["FLOAT", 0], ["FLOAT", 1, "VALUES", 1, 2], ["BOOL", 1, "BLOB", b"\x02"]):
        assert error_of(engine, "AI.TENSORSET", "str", *args) == WRONGTYPE
    assert engine.get("str") == b"x"


def test_bool_values_other_than_0_or_1_are_invalid_values(engine: redis.Redis) -> None:
    for value in ("2", "-1", "true"):
        assert error_of(engine, "AI.TENSORSET", "t", "BOOL", 1, "VALUES", value) == "invalid value"
    assert (
        error_of(engine, "AI.TENSORSET", "t", "BOOL", 1, "BLOB", b"\x02")
        == "BOOL tensor elements must be 0 or 1"
    )


def test_string_values_may_carry_their_terminating_nul(engine: redis.Redis) -> None:
    assert (
        engine.execute_command("AI.TENSORSET", "t", "STRING", 3, "VALUES", b"str\x00", b"", b"\x00") == b"OK"
    )
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == [b"str", b"", b""]
    assert engine.execute_command("AI.TENSORGET", "t", "BLOB") == b"str\x00\x00\x00"
    for bad in (b"a\x00b", b"ab\x00\x00", b"\x00a"):
        assert (
            error_of(engine, "AI.TENSORSET", "t2", "STRING", 1, "VALUES", bad)
            == "C-string value contains null character"
        )


def test_signed_values_take_the_whole_range(engine: redis.Redis) -> None:
    cases = [
        ("INT8", -128, -129),
        ("INT16", -32768, -32769),
        ("INT32", -(2**31), -(2**31) - 1),
        ("INT64", -(2**63), None),
    ]
    for dtype, lowest, beyond in cases:
        engine.execute_command("AI.TENSORSET", "t", dtype, 3, "VALUES", lowest, -1, 5)
        assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == [lowest, -1, 5]
        if beyond is not None:
            assert error_of(engine, "AI.TENSORSET", "t", dtype, 1, "VALUES", beyond) == "invalid value"
    assert (
        error_of(engine, "AI.TENSORSET", "t", "INT64", 1, "VALUES", "-9223372036854775809") == "invalid value"
    )


def test_float_values_beyond_range_store_inf(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 3, "VALUES", "1e40", "-1e39", "3.4028234e38")
    blob = engine.execute_command("AI.TENSORGET", "t", "BLOB")
    inf = float("inf")
    values = struct.unpack("<3f", blob)
    assert values[0] == inf and values[1] == -inf and values[2] == pytest.approx(3.4028234e38)
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES")[:2] == [b"inf", b"-inf"]


def test_tensorget_looks_the_key_up_before_the_options(engine: redis.Redis) -> None:
    assert (
        error_of(engine, "AI.TENSORGET", "missing", "PICKLE") == "tensor key is empty or in a different shard"
    )
    engine.set("str", "x")
    assert error_of(engine, "AI.TENSORGET", "str", "BLOB", "VALUES") == WRONGTYPE
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 1)
    assert error_of(engine, "AI.TENSORGET", "t", "PICKLE") == "unsupported data format"
    # In a DAG the format is parsed with the DAG, before any key is looked at.
    assert (
        error_of(engine, "AI.DAGEXECUTE", "LOAD", 1, "t", "|>", "AI.TENSORGET", "nokey", "PICKLE")
        == "unsupported data format"
    )


# ---- DAG LOAD ---------------------------------------------------------------------------------


def test_dag_load_order_and_texts(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "a", "FLOAT", 1, "VALUES", 1)
    engine.execute_command("AI.TENSORSET", "b", "FLOAT", 1, "VALUES", 2)
    engine.set("str", "x")
    tail = ["|>", "AI.TENSORGET", "a", "VALUES"]
    cases: list[tuple[list[Any], str]] = [
        (["ROUTING", "r", "TIMEOUT", 5, "LOAD", 1], "missing arguments after LOAD keyword in DAG command"),
        (["LOAD", 0, "a", *tail], "invalid or negative value found in number of keys to LOAD"),
        (["LOAD", "two", "a", *tail], "invalid or negative value found in number of keys to LOAD"),
        # Keys are fetched one by one: a bad one fails at once, even when too few are given.
        (["LOAD", 5, "a", "missing", *tail], "tensor key is empty or in a different shard"),
        (["LOAD", 5, "a", "str", *tail], WRONGTYPE),
        (
            ["LOAD", 3, "a", "b", *tail],
            "number of keys to LOAD into DAG does not match the number of given arguments",
        ),
    ]
    for args, message in cases:
        assert error_of(engine, "AI.DAGEXECUTE", *args) == message, args
    assert engine.execute_command("AI.DAGEXECUTE", "LOAD", 2, "a", "b", *tail) == [[b"1"]]


# ---- AI.SCRIPTRUN -----------------------------------------------------------------------------

OLD = """
def bar(a, b):
    return a + b

def variadic(a, rest: List[Tensor]):
    return a + rest[0] + rest[1]
"""


def test_scriptrun_sections(engine: redis.Redis) -> None:
    assert engine.execute_command("AI.SCRIPTSET", "s", "CPU", "SOURCE", OLD) == b"OK"
    for key, value in (("a", 1), ("b", 10), ("c", 100)):
        engine.execute_command("AI.TENSORSET", key, "FLOAT", 1, "VALUES", value)
    cases: list[tuple[list[Any], str]] = [
        (["nokey", "bar", "BOGUS"], "script key is empty"),
        (["s", "bar", "TIMEOUT", 5, "TIMEOUT", 5, "INPUTS", "a", "b", "OUTPUTS", "y"], "Already encountered an TIMEOUT section in SCRIPTRUN"),
        (["s", "bar", "OUTPUTS", "y", "INPUTS", "a", "b"], "Already encountered an INPUTS section in SCRIPTRUN"),
        (["s", "bar", "INPUTS", "a", "INPUTS", "b", "OUTPUTS", "y"], "Already encountered an INPUTS keyword in SCRIPTRUN"),
        (["s", "bar", "INPUTS", "a", "b", "OUTPUTS", "y", "OUTPUTS", "z"], "Already encountered an OUTPUTS keyword in SCRIPTRUN"),
        (["s", "bar", "INPUTS", "a", "OUTPUTS", "$", "y"], "Encountered a variable size list of tensors outside of input section"),
        (["s", "bar", "$", "INPUTS", "a", "OUTPUTS", "y"], "Encountered a variable size list of tensors outside of input section"),
        (["s", "variadic", "INPUTS", "a", "$", "b", "$", "c", "OUTPUTS", "y"], "Already encountered a variable size list of tensors"),
        (["s", "bar", "BOGUS", "INPUTS", "a", "b", "OUTPUTS", "y"], "Unrecongnized parameter to SCRIPTRUN"),
        # Every argument is parsed before a tensor is fetched.
        (["s", "bar", "INPUTS", "missing", "b", "OUTPUTS", "y", "OUTPUTS", "z"], "Already encountered an OUTPUTS keyword in SCRIPTRUN"),
        (["s", "bar", "INPUTS", "missing", "b", "OUTPUTS", "y"], "tensor key is empty or in a different shard"),
    ]  # fmt: skip
    for args, message in cases:
        assert error_of(engine, "AI.SCRIPTRUN", *args) == message, args
    assert engine.exists("y", "z") == 0
    engine.execute_command(
        "AI.SCRIPTRUN", "s", "variadic", "TIMEOUT", 1000, "INPUTS", "a", "$", "b", "c", "OUTPUTS", "y"
    )
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"111"]


# ---- Best-effort calls ------------------------------------------------------------------------

BEST_EFFORT = """
def entry(tensors: List[Tensor], keys: List[str], args: List[str]):
    return tensors[0] * 2

def helper(a, b):
    return a - b

def rest(a, others: List[Tensor]):
    return a + others[0] + others[1]

def takes_int(a, n: int):
    return a * n
"""


def test_functions_that_are_not_entry_points_run_best_effort(engine: redis.Redis) -> None:
    engine.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "entry", "SOURCE", BEST_EFFORT)
    for key, value in (("a", 10), ("b", 3), ("c", 100)):
        engine.execute_command("AI.TENSORSET", key, "FLOAT", 1, "VALUES", value)
    engine.execute_command("AI.SCRIPTEXECUTE", "s", "helper", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "y")
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"7"]
    engine.execute_command(
        "AI.SCRIPTEXECUTE", "s", "rest", "KEYS", 1, "k", "INPUTS", 3, "a", "b", "c", "OUTPUTS", 1, "y"
    )
    assert engine.execute_command("AI.TENSORGET", "y", "VALUES") == [b"113"]
    cases = [
        ("nope", ["a"], "Function does not exist: nope"),
        ("helper", ["a"], "Wrong number of inputs provided to function: helper"),
        ("takes_int", ["a"], "Unsupported input type in function definition: takes_int"),
    ]
    for fn, inputs, message in cases:
        args = ["AI.SCRIPTEXECUTE", "s", fn, "INPUTS", len(inputs), *inputs, "OUTPUTS", 1, "z"]
        assert error_of(engine, *args) == message
    assert engine.exists("z") == 0
    # Inside a DAG the op fails and the later ones are not run.
    reply = engine.execute_command(
        "AI.DAGEXECUTE", "LOAD", 1, "a", "|>", "AI.SCRIPTEXECUTE", "s", "nope", "INPUTS", 1, "a", "OUTPUTS", 1, "o",
        "|>", "AI.TENSORGET", "o", "VALUES",
    )  # fmt: skip
    assert isinstance(reply[0], redis.ResponseError) and err(reply[0]) == "Function does not exist: nope"
    assert reply[1] == b"NA"


# ---- Scripts calling Redis; backend error texts -----------------------------------------------

CALLS = """
def arity(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("SET", keys[0])
    return tensors[0]

def wrongtype(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("LPUSH", keys[0], "x")
    return tensors[0]

def unknown(tensors: List[Tensor], keys: List[str], args: List[str]):
    redis.execute("NO.SUCH.COMMAND", keys[0])
    return tensors[0]
"""


def test_redis_execute_error_texts(engine: redis.Redis) -> None:
    entry_points = ["arity", "wrongtype", "unknown"]
    engine.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 3, *entry_points, "SOURCE", CALLS)
    engine.execute_command("AI.TENSORSET", "a", "FLOAT", 1)
    engine.set("str", "x")

    def run(fn: str, key: str) -> str:
        return error_of(
            engine, "AI.SCRIPTEXECUTE", "s", fn, "KEYS", 1, key, "INPUTS", 1, "a", "OUTPUTS", 1, "y"
        )

    # No reply: strerror(errno) of the call (EINVAL for a wrong argument count).
    assert f"Redis command returned an error: {os.strerror(errno.EINVAL)}" in run("arity", "k")
    assert "Redis command returned an error: Invalid argument" in run("arity", "k")
    assert f"Redis command returned an error: {os.strerror(errno.ENOENT)}" in run("unknown", "k")
    # An error reply: its text.
    assert f"Redis command returned an error: {WRONGTYPE}" in run("wrongtype", "str")
    # The interpreter's traceback: its newline and the two-space indent give three spaces.
    assert "(most recent call last):   File" in run("arity", "k")
    assert engine.exists("y") == 0 and engine.get("str") == b"x"


def test_backend_error_texts_replace_cr_and_lf_one_for_one(engine: redis.Redis) -> None:
    # libtorch quotes the failing source lines; CRLF line endings show up in its text.
    src = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\r\n\treturn no_such_fn(tensors[0])\r\n"
    message = error_of(engine, "AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", src)
    assert "\n" not in message and "\r" not in message
    # CR, LF: two spaces; the tab stays; nothing is folded or trimmed (libtorch's text starts and
    # ends with a newline).
    assert "args: List[str]):  \treturn no_such_fn(tensors[0])" in message, repr(message)
    assert message.startswith(" undefined value no_such_fn:") and message.endswith(" "), repr(message)


# ---- INFO MODULES and AI.INFO -----------------------------------------------------------------


def raw_info(port: int) -> str:
    raw = redis.Redis(port=port)
    raw.set_response_callback("INFO", lambda response, **kwargs: response)
    text: str = raw.execute_command("INFO", "MODULES").decode()
    raw.close()
    return text


def test_info_modules_sections_names_and_cpu_figures(server_factory: Callable[..., RedisServer]) -> None:
    server = server_factory(module_args=("THREADS_PER_QUEUE", "2"))
    text = raw_info(server.port)
    sections = re.findall(r"^# ai_(\w+)", text, re.M)
    assert sections[:5] == ["versions", "git", "load_time_configs", "backends_info", "cpu"], sections
    fields: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("# "):
            current = line[2:].strip()
            fields[current] = {}
        elif ":" in line:
            k, v = line.split(":", 1)
            fields[current][k] = v.strip()
    assert fields["ai_versions"] == {
        "ai_RedisAI_version": "1.2.7",
        "ai_low_level_API_version": "1",
        "ai_rdb_version": "4",
    }
    cpu = list(fields["ai_cpu"].items())
    names = [k for k, _ in cpu]
    assert names[:6] == [
        "ai_self_used_cpu_sys",
        "ai_self_used_cpu_user",
        "ai_children_used_cpu_sys",
        "ai_children_used_cpu_user",
        "ai_main_thread_used_cpu_sys",
        "ai_main_thread_used_cpu_user",
    ]
    # The CPU queue and its workers exist from load, before any request.
    assert names[6:] == ["ai_queue_CPU_bthread_n1_used_cpu_total", "ai_queue_CPU_bthread_n2_used_cpu_total"]
    for _, value in cpu:
        assert re.fullmatch(r"\d+\.\d{6}", value), value
    values = dict(cpu)
    # The process has used at least what its main thread used, and the server has run a while.
    total = float(values["ai_self_used_cpu_user"]) + float(values["ai_self_used_cpu_sys"])
    main = float(values["ai_main_thread_used_cpu_user"]) + float(values["ai_main_thread_used_cpu_sys"])
    assert total >= main > 0
    # The project's own figures follow.
    assert "queues" in sections[5:]
    assert fields["ai_queues"]["ai_CPU_queue_depth"] == "0"
    server.stop()


def test_ai_info_ignores_a_third_word_other_than_resetstat(engine: redis.Redis) -> None:
    engine.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1)
    engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    info = engine.execute_command("AI.INFO", "m", "RESETSTATS")
    assert info[:4] == [b"key", b"m", b"type", b"MODEL"] and info[info.index(b"calls") + 1] == 1
    assert engine.execute_command("AI.INFO", "m", "resetstat") == b"OK"
    info = engine.execute_command("AI.INFO", "m", "whatever")
    assert info[info.index(b"calls") + 1] == 0
