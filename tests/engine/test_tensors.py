"""AI.TENSORSET / AI.TENSORGET: every type, every data format, every error of the protocol."""

from __future__ import annotations

import numpy as np
import pytest
import redis
from engine_helpers import WRONGTYPE, err

NUMERIC = {
    "FLOAT": np.float32,
    "DOUBLE": np.float64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "BOOL": np.bool_,
}


@pytest.mark.parametrize("dtype", sorted(NUMERIC))
def test_blob_round_trip_every_numeric_type(engine: redis.Redis, dtype: str) -> None:
    arr: np.ndarray = (np.arange(6) % 2).astype(NUMERIC[dtype]).reshape(2, 3)
    assert engine.execute_command("AI.TENSORSET", "t", dtype, 2, 3, "BLOB", arr.tobytes()) == b"OK"
    meta = engine.execute_command("AI.TENSORGET", "t", "META", "BLOB")
    assert meta == [b"dtype", dtype.encode(), b"shape", [2, 3], b"blob", arr.tobytes()]
    assert engine.execute_command("AI.TENSORGET", "t") == meta
    assert engine.execute_command("AI.TENSORGET", "t", "BLOB") == arr.tobytes()
    assert engine.execute_command("AI.TENSORGET", "t", "META") == meta[:4]


@pytest.mark.parametrize(
    "dtype,values,expected",
    [
        ("FLOAT", ["4", "0.5", "-1.25"], [b"4", b"0.5", b"-1.25"]),
        ("DOUBLE", ["0.1", "1e300", "-3"], [b"0.1", b"1e+300", b"-3"]),
        ("INT8", ["-128", "127", "0"], [-128, 127, 0]),
        ("INT16", ["-32768", "32767", "5"], [-32768, 32767, 5]),
        ("INT32", ["-2147483648", "2147483647", "1"], [-2147483648, 2147483647, 1]),
        ("INT64", ["-9223372036854775808", "9223372036854775807", "2"], [-(2**63), 2**63 - 1, 2]),
        ("UINT8", ["0", "255", "7"], [0, 255, 7]),
        ("UINT16", ["0", "65535", "9"], [0, 65535, 9]),
        ("BOOL", ["1", "0", "1"], [1, 0, 1]),
        ("STRING", ["a", "", "hello"], [b"a", b"", b"hello"]),
    ],
)
def test_values_round_trip(engine: redis.Redis, dtype: str, values: list[str], expected: list) -> None:
    assert engine.execute_command("AI.TENSORSET", "t", dtype, 3, "VALUES", *values) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == expected
    assert engine.execute_command("AI.TENSORGET", "t", "META", "VALUES") == [
        b"dtype",
        dtype.encode(),
        b"shape",
        [3],
        b"values",
        expected,
    ]


def test_float_values_are_shortest_round_trip(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 3, "VALUES", "0.1", "3.14159", "1e-7")
    got = [float(v) for v in engine.execute_command("AI.TENSORGET", "t", "VALUES")]
    assert np.array(got, dtype=np.float32).tolist() == np.array([0.1, 3.14159, 1e-7], np.float32).tolist()
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES")[0] == b"0.1"


def test_type_is_case_insensitive_and_no_data_is_zeros(engine: redis.Redis) -> None:
    assert engine.execute_command("ai.tensorset", "t", "float", 2, 2) == b"OK"
    assert engine.execute_command("AI.TENSORGET", "t", "meta", "blob") == [
        b"dtype",
        b"FLOAT",
        b"shape",
        [2, 2],
        b"blob",
        bytes(16),
    ]
    engine.execute_command("AI.TENSORSET", "s", "STRING", 2)
    assert engine.execute_command("AI.TENSORGET", "s", "VALUES") == [b"", b""]


def test_string_blob(engine: redis.Redis) -> None:
    assert engine.execute_command("AI.TENSORSET", "t", "STRING", 2, "BLOB", b"ab\x00c\x00") == b"OK"
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == [b"ab", b"c"]
    assert engine.execute_command("AI.TENSORGET", "t", "BLOB") == b"ab\x00c\x00"


def test_overwrite_replaces_tensor(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "INT32", 1, "VALUES", 1)
    engine.execute_command("AI.TENSORSET", "t", "INT64", 2, "VALUES", 5, 6)
    assert engine.execute_command("AI.TENSORGET", "t", "META", "VALUES") == [
        b"dtype",
        b"INT64",
        b"shape",
        [2],
        b"values",
        [5, 6],
    ]
    assert engine.type("t") == b"AI_TENSOR"


@pytest.mark.parametrize(
    "args,message",
    [
        (["FLOAT16", 1], "invalid data type"),
        (["FLOAT", 0], "invalid or negative value found in tensor shape"),
        (["FLOAT", -2], "invalid or negative value found in tensor shape"),
        (["FLOAT", "x"], "invalid or negative value found in tensor shape"),
        (["FLOAT", 2, "VALUES", 1], "wrong number of values was given in 'AI.TENSORSET' command"),
        (["FLOAT", 1, "VALUES", 1, 2], "wrong number of values was given in 'AI.TENSORSET' command"),
        (
            ["FLOAT", 1, "BLOB"],
            "a single binary string should come after the BLOB argument in 'AI.TENSORSET' command",
        ),
        (
            ["FLOAT", 1, "BLOB", b"1234", b"5678"],
            "a single binary string should come after the BLOB argument in 'AI.TENSORSET' command",
        ),
        (["FLOAT", 2, "BLOB", b"1234"], "data length does not match tensor shape and type"),
        (["INT8", 1, "BLOB", b"12"], "data length does not match tensor shape and type"),
        (["FLOAT", 1, "VALUES", "abc"], "invalid value"),
        (["DOUBLE", 1, "VALUES", "1e400"], "invalid value"),
        (["INT8", 1, "VALUES", "128"], "invalid value"),
        (["INT8", 1, "VALUES", "1.5"], "invalid value"),
        (["UINT8", 1, "VALUES", "-1"], "invalid value"),
        (["UINT16", 1, "VALUES", "65536"], "invalid value"),
        (["INT32", 1, "VALUES", "2147483648"], "invalid value"),
        (["INT64", 1, "VALUES", "9223372036854775808"], "invalid value"),
        (["BOOL", 1, "VALUES", "2"], "invalid value"),
        (["BOOL", 2, "BLOB", b"\x01\x02"], "BOOL tensor elements must be 0 or 1"),
        (
            ["STRING", 2, "BLOB", b"a\x00"],
            "Number of string elements in data blob does not match tensor length",
        ),
        (
            ["STRING", 1, "BLOB", b"abc"],
            "Number of string elements in data blob does not match tensor length",
        ),
        (["STRING", 1, "VALUES", b"a\x00b"], "C-string value contains null character"),
    ],
)
def test_tensorset_errors(engine: redis.Redis, args: list, message: str) -> None:
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "t", *args)
    assert err(e.value) == message
    assert engine.exists("t") == 0


def test_tensorset_arity_and_wrongtype(engine: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "t", "FLOAT")
    assert "wrong number of arguments" in err(e.value)
    engine.set("str", "x")
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORSET", "str", "FLOAT", 1)
    assert err(e.value) == WRONGTYPE
    assert engine.get("str") == b"x"


def test_tensorget_errors(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 1)
    cases = [
        (["t", "PICKLE"], "unsupported data format"),
        (["t", "BLOB", "VALUES"], "both BLOB and VALUES specified"),
        (["t", "VALUES", "BLOB"], "both BLOB and VALUES specified"),
        (["missing"], "tensor key is empty or in a different shard"),
    ]
    for args, message in cases:
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command("AI.TENSORGET", *args)
        assert err(e.value) == message
    engine.set("str", "x")
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.TENSORGET", "str")
    assert err(e.value) == WRONGTYPE


def test_memory_usage_reports_tensor_bytes(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "small", "FLOAT", 1)
    engine.execute_command("AI.TENSORSET", "big", "FLOAT", 1000, 100)
    small = engine.memory_usage("small")
    big = engine.memory_usage("big")
    assert big - small >= 400_000 - 4


def test_redisai_client_tensor_round_trip(engine: redis.Redis) -> None:
    import redisai

    con = redisai.Client(port=engine.connection_pool.connection_kwargs["port"])
    arr = np.random.default_rng(1).random((3, 4)).astype(np.float32)
    assert con.tensorset("x", arr) == "OK"
    np.testing.assert_array_equal(con.tensorget("x"), arr)
    con.tensorset("v", [1, 2, 3], dtype="int32", shape=(3,))
    assert list(con.tensorget("v", as_numpy=False)["values"]) == [1, 2, 3]
    meta = con.tensorget("x", meta_only=True)
    assert meta["dtype"] == "FLOAT" and list(meta["shape"]) == [3, 4]


def test_copy_command_copies_tensors(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "INT32", 2, "VALUES", 4, 5)
    assert engine.copy("t", "t2") is True
    engine.execute_command("AI.TENSORSET", "t", "INT32", 1, "VALUES", 9)
    assert engine.execute_command("AI.TENSORGET", "t2", "VALUES") == [4, 5]
    assert engine.execute_command("AI.TENSORGET", "t", "VALUES") == [9]
    engine.delete("t")
    assert engine.execute_command("AI.TENSORGET", "t2", "META", "VALUES") == [
        b"dtype",
        b"INT32",
        b"shape",
        [2],
        b"values",
        [4, 5],
    ]
