"""AI.DAGEXECUTE / AI.DAGEXECUTE_RO / AI.DAGRUN: local tensors, LOAD/PERSIST/ROUTING/TIMEOUT,
the per-op replies, failure semantics and every listed error; scripts run from the module side."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from engine_helpers import ADD, DOUBLE, SCRIPT, err, store_script


def setf(r: redis.Redis, key: str, values: list[float]) -> None:
    r.execute_command("AI.TENSORSET", key, "FLOAT", len(values), "VALUES", *values)


@pytest.fixture
def models(engine: redis.Redis) -> redis.Redis:
    engine.execute_command("AI.MODELSTORE", "add", "TORCH", "CPU", "BLOB", ADD)
    engine.execute_command("AI.MODELSTORE", "dbl", "TORCH", "CPU", "BLOB", DOUBLE)
    setf(engine, "a", [1, 2])
    return engine


def test_dag_local_tensors_and_persist(models: redis.Redis) -> None:
    reply = models.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "a",
        "PERSIST",
        1,
        "out",
        "|>",
        "AI.TENSORSET",
        "b",
        "FLOAT",
        2,
        "VALUES",
        10,
        20,
        "|>",
        "AI.MODELEXECUTE",
        "add",
        "INPUTS",
        2,
        "a",
        "b",
        "OUTPUTS",
        1,
        "sum",
        "|>",
        "AI.MODELEXECUTE",
        "dbl",
        "INPUTS",
        1,
        "sum",
        "OUTPUTS",
        1,
        "out",
        "|>",
        "AI.TENSORGET",
        "out",
        "VALUES",
        "|>",
        "AI.TENSORGET",
        "sum",
        "META",
    )
    assert reply == [b"OK", b"OK", b"OK", [b"22", b"44"], [b"dtype", b"FLOAT", b"shape", [2]]]
    assert models.execute_command("AI.TENSORGET", "out", "VALUES") == [b"22", b"44"]
    # Names that were not PERSISTed stay local to the DAG.
    assert models.exists("b", "sum") == 0


def test_dag_routing_only_and_ro(models: redis.Redis) -> None:
    reply = models.execute_command(
        "AI.DAGEXECUTE_RO",
        "ROUTING",
        "{tag}",
        "|>",
        "AI.TENSORSET",
        "x",
        "INT32",
        1,
        "VALUES",
        7,
        "|>",
        "AI.TENSORGET",
        "x",
        "VALUES",
    )
    assert reply == [b"OK", [7]]
    reply = models.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "a",
        "TIMEOUT",
        60000,
        "|>",
        "AI.MODELEXECUTE",
        "dbl",
        "INPUTS",
        1,
        "a",
        "OUTPUTS",
        1,
        "y",
        "|>",
        "AI.TENSORGET",
        "y",
        "VALUES",
    )
    assert reply == [b"OK", [b"2", b"4"]]


def test_dag_failure_marks_later_ops_na_and_persists_nothing(models: redis.Redis) -> None:
    reply = models.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "a",
        "PERSIST",
        1,
        "early",
        "|>",
        "AI.TENSORSET",
        "early",
        "FLOAT",
        1,
        "VALUES",
        1,
        "|>",
        "AI.TENSORSET",
        "bad",
        "FLOAT",
        3,
        "VALUES",
        1,
        2,
        3,
        "|>",
        "AI.MODELEXECUTE",
        "add",
        "INPUTS",
        2,
        "a",
        "bad",
        "OUTPUTS",
        1,
        "c",
        "|>",
        "AI.TENSORGET",
        "c",
        "VALUES",
    )
    assert reply[0] == b"OK" and reply[1] == b"OK"
    assert isinstance(reply[2], redis.ResponseError)
    assert reply[3] == b"NA"
    assert models.exists("early") == 0


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["|>", "AI.TENSORSET", "x", "FLOAT", 1],
            "AI.DAGEXECUTE and AI.DAGEXECUTE_RO commands must contain at least one out of ROUTING, LOAD, PERSIST keywords",
        ),
        (["LOAD", 1, "a"], "missing arguments for 'AI.DAGEXECUTE' command"),
        (["LOAD", 1, "a", "PERSIST", 1, "b"], "DAG is empty"),
        (["LOAD", 1, "a", "ROUTING", "r", "|>"], "Invalid DAG command. Unexpected argument:  |>"),
        (
            ["LOAD", 1, "a", "BAD_ARG", "|>", "AI.TENSORGET", "a"],
            "Invalid DAG command. Unexpected argument:  BAD_ARG",
        ),
        (
            ["LOAD", 1, "a", "LOAD", 1, "a", "|>", "AI.TENSORGET", "a"],
            "Invalid DAG command. Unexpected argument:  LOAD",
        ),
        (["LOAD", 1, "a", "|>", "|>", "AI.TENSORGET", "a"], "Unsupported command within DAG"),
        (
            ["LOAD", "x", "a", "|>", "AI.TENSORGET", "a"],
            "invalid or negative value found in number of keys to LOAD",
        ),
        (
            ["PERSIST", 0, "a", "|>", "AI.TENSORGET", "a"],
            "invalid or negative value found in number of keys to PERSIST",
        ),
        (["ROUTING", "r", "TIMEOUT", 0, "|>", "AI.TENSORSET", "a", "FLOAT", 1], "Invalid value for TIMEOUT"),
        (
            ["ROUTING", "r", "LOAD", 5, "a", "|>", "AI.TENSORGET", "a"],
            "number of keys to LOAD into DAG does not match the number of given arguments",
        ),
        (["LOAD", 1, "a", "PERSIST", 1, "a", "ROUTING"], "Missing ROUTING value"),
        (["PERSIST", 2, "x", "x", "|>", "AI.TENSORSET", "x", "FLOAT", 1], "PERSIST keys must be unique"),
        (
            [
                "LOAD",
                1,
                "a",
                "|>",
                "AI.MODELEXECUTE",
                "dbl",
                "INPUTS",
                1,
                "a",
                "OUTPUTS",
                1,
                "y",
                "TIMEOUT",
                5,
            ],
            "TIMEOUT not allowed within a DAG command",
        ),
        (["LOAD", 1, "a", "|>", "SET", "x", "y"], "Unsupported command within DAG"),
        (["LOAD", 1, "a", "|>", "AI.TENSORGET", "nope"], "INPUT key cannot be found in DAG"),
        (
            ["LOAD", 1, "a", "|>", "AI.MODELEXECUTE", "dbl", "INPUTS", 1, "nope", "OUTPUTS", 1, "y"],
            "INPUT key cannot be found in DAG",
        ),
        (["PERSIST", 1, "zzz", "|>", "AI.TENSORSET", "x", "FLOAT", 1], "PERSIST key cannot be found in DAG"),
        (
            ["LOAD", 1, "a", "|>", "AI.MODELRUN", "dbl", "INPUTS", "a", "OUTPUTS", "y"],
            "Deprecated AI.MODELRUN cannot be used in AI.DAGEXECUTE command",
        ),
        (
            ["LOAD", 1, "missing", "|>", "AI.TENSORGET", "missing"],
            "tensor key is empty or in a different shard",
        ),
        (["LOAD", 1, "a", "|>", "AI.TENSORSET", "x", "FLOAT16", 1], "invalid data type"),
        (
            ["LOAD", 1, "a", "|>", "AI.MODELEXECUTE", "nomodel", "INPUTS", 1, "a", "OUTPUTS", 1, "y"],
            "model key is empty",
        ),
    ],
)
def test_dag_errors(models: redis.Redis, args: list, message: str) -> None:
    with pytest.raises(redis.ResponseError) as e:
        models.execute_command("AI.DAGEXECUTE", *args)
    assert err(e.value) == message


def test_dag_ro_errors(models: redis.Redis) -> None:
    store_script(models)
    with pytest.raises(redis.ResponseError) as e:
        models.execute_command("AI.DAGEXECUTE_RO", "PERSIST", 1, "x", "|>", "AI.TENSORSET", "x", "FLOAT", 1)
    assert err(e.value) == "PERSIST cannot be specified in a read-only DAG"
    with pytest.raises(redis.ResponseError) as e:
        models.execute_command(
            "AI.DAGEXECUTE_RO",
            "LOAD",
            1,
            "a",
            "|>",
            "AI.SCRIPTEXECUTE",
            "s",
            "double",
            "INPUTS",
            1,
            "a",
            "OUTPUTS",
            1,
            "y",
        )
    assert err(e.value) == "AI.SCRIPTEXECUTE command cannot be specified in a read-only DAG"


def test_deprecated_dagrun_with_modelrun(models: redis.Redis) -> None:
    reply = models.execute_command(
        "AI.DAGRUN",
        "LOAD",
        1,
        "a",
        "PERSIST",
        1,
        "y",
        "|>",
        "AI.MODELRUN",
        "dbl",
        "INPUTS",
        "a",
        "OUTPUTS",
        "y",
        "|>",
        "AI.TENSORGET",
        "y",
        "VALUES",
    )
    assert reply == [b"OK", [b"2", b"4"]]
    assert models.execute_command(
        "AI.DAGRUN_RO", "|>", "AI.TENSORSET", "z", "INT8", 1, "|>", "AI.TENSORGET", "z", "VALUES"
    ) == [b"OK", [0]]


def test_dag_with_script_ops(models: redis.Redis) -> None:
    store_script(models)
    reply = models.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "a",
        "PERSIST",
        1,
        "r",
        "|>",
        "AI.SCRIPTEXECUTE",
        "s",
        "add_args",
        "INPUTS",
        1,
        "a",
        "ARGS",
        1,
        "0.5",
        "OUTPUTS",
        1,
        "t",
        "|>",
        "AI.MODELEXECUTE",
        "dbl",
        "INPUTS",
        1,
        "t",
        "OUTPUTS",
        1,
        "r",
        "|>",
        "AI.TENSORGET",
        "r",
        "VALUES",
    )
    assert reply == [b"OK", b"OK", [b"3", b"5"]]


def test_redisai_client_dag(models: redis.Redis) -> None:
    import numpy as np
    import redisai

    con = redisai.Client(port=models.connection_pool.connection_kwargs["port"])
    dag = con.dag(load=["a"], persist=["out"])
    dag.modelexecute("dbl", inputs=["a"], outputs=["out"])
    dag.tensorget("out")
    result = dag.execute()
    assert result[0] == "OK"
    np.testing.assert_array_equal(result[1], np.array([2, 4], dtype=np.float32))
    np.testing.assert_array_equal(con.tensorget("out"), np.array([2, 4], dtype=np.float32))


# ---- Scripts, from the module's side -----------------------------------------------------------


def test_script_store_get_execute(engine: redis.Redis) -> None:
    from engine_helpers import ENTRY_POINTS, SCRIPT

    store_script(engine, "s")
    meta = engine.execute_command("AI.SCRIPTGET", "s", "META")
    assert meta == [b"device", b"CPU", b"tag", b"", b"Entry Points", [e.encode() for e in ENTRY_POINTS]]
    assert engine.execute_command("AI.SCRIPTGET", "s") == [*meta, b"source", SCRIPT.encode()]
    assert engine.execute_command("AI.SCRIPTGET", "s", "SOURCE") == SCRIPT.encode()
    setf(engine, "a", [1, 2])
    assert (
        engine.execute_command("AI.SCRIPTEXECUTE", "s", "double", "INPUTS", 1, "a", "OUTPUTS", 1, "b")
        == b"OK"
    )
    assert engine.execute_command("AI.TENSORGET", "b", "VALUES") == [b"2", b"4"]
    assert engine.type("s") == b"AI_SCRIPT"
    info = engine.execute_command("AI.INFO", "s")
    assert info[:4] == [b"key", b"s", b"type", b"SCRIPT"] and info[info.index(b"samples") + 1] == -1
    assert info[info.index(b"calls") + 1] == 1
    assert engine.execute_command("AI.SCRIPTDEL", "s") == b"OK"
    assert engine.exists("s") == 0


def test_script_calls_redis_and_model(engine: redis.Redis) -> None:
    store_script(engine, "s")
    engine.execute_command("AI.MODELSTORE", "dbl", "TORCH", "CPU", "BLOB", DOUBLE)
    setf(engine, "a", [3])
    assert (
        engine.execute_command(
            "AI.SCRIPTEXECUTE", "s", "set_key", "KEYS", 1, "k", "ARGS", 1, "hello", "OUTPUTS", 1, "o"
        )
        == b"OK"
    )
    assert engine.get("k") == b"hello"
    assert (
        engine.execute_command(
            "AI.SCRIPTEXECUTE", "s", "call_model", "KEYS", 1, "dbl", "INPUTS", 1, "a", "OUTPUTS", 1, "o"
        )
        == b"OK"
    )
    assert engine.execute_command("AI.TENSORGET", "o", "VALUES") == [b"6"]


def test_script_errors(engine: redis.Redis) -> None:
    setf(engine, "a", [1])
    cases: list[tuple[list[Any], str]] = [
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "SOURCE", "x"],
            "wrong number of arguments for 'AI.SCRIPTSTORE' command",
        ),
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "NO_ENTRY_POINTS", 1, "f", "SOURCE", "x"],
            "Insufficient arguments, missing script entry points",
        ),
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", "x", "f", "SOURCE", "x"],
            "Non numeric entry points number provided to AI.SCRIPTSTORE command",
        ),
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 5, "f", "SOURCE", "x"],
            "Insufficient arguments, missing script entry points",
        ),
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 2, "double", "nope", "SOURCE", SCRIPT],
            "Function nope does not exist in the given script.",
        ),
        (
            ["AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCES", "x"],
            "Insufficient arguments, missing script SOURCE",
        ),
        (["AI.SCRIPTSTORE", "s", "XPU", "ENTRY_POINTS", 1, "f", "SOURCE", "x"], "Invalid DEVICE"),
        (["AI.SCRIPTGET", "nope"], "script key is empty"),
        (["AI.SCRIPTDEL", "nope"], "script key is empty"),
        (["AI.SCRIPTEXECUTE", "nope", "f", "INPUTS", 1, "a"], "script key is empty"),
    ]
    for cmd, message in cases:
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command(*cmd)
        assert err(e.value) == message
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.SCRIPTSTORE", "s", "CPU", "ENTRY_POINTS", 1, "f", "SOURCE", "def f(:")
    assert len(err(e.value)) > 5
    store_script(engine, "s")
    execute_cases: list[tuple[list[Any], str]] = [
        (
            ["double", "OUTPUTS", 1, "b"],
            "KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command",
        ),
        (["double"], "KEYS or INPUTS scope must be provided first for AI.SCRIPTEXECUTE command"),
        (["double", "KEYS", 1], "Missing arguments after KEYS keyword"),
        (["double", "KEYS", "x", "k"], "Invalid or negative value found in number of KEYS"),
        (
            ["double", "KEYS", 2, "k"],
            "Number of pre declared KEYS to be used in the command does not match the number of given arguments",
        ),
        (["double", "KEYS", 1, "k", "ARGS"], "Invalid arguments provided to AI.SCRIPTEXECUTE"),
        (["double", "INPUTS", "OUTPUTS"], "Invalid argument for inputs count in AI.SCRIPTEXECUTE"),
        (
            ["double", "INPUTS", 3, "a"],
            "number of inputs to AI.SCRIPTEXECUTE command does not match the number of given arguments",
        ),
        (
            ["double", "INPUTS", 1, "a", "INPUTS", 1, "a"],
            "Already Encountered INPUTS scope in AI.SCRIPTEXECUTE command",
        ),
        (
            ["double", "INPUTS", 1, "a", "OUTPUTS", 1, "b", "TIMEOUT"],
            "No value provided for TIMEOUT in AI.SCRIPTEXECUTE",
        ),
        (["double", "INPUTS", 1, "a", "OUTPUTS", 1, "b", "TIMEOUT", "TIMEOUT"], "Invalid value for TIMEOUT"),
        (
            ["double", "INPUTS", 1, "a", "BOGUS"],
            "Invalid AI.SCRIPTEXECUTE command. Unexpected argument: BOGUS",
        ),
        # A missing function fails when the script runs (RedisAI 1.2.7), as a reply error.
        (["nope", "INPUTS", 1, "a"], "Function does not exist: nope"),
        (["double", "INPUTS", 1, "missing"], "tensor key is empty or in a different shard"),
    ]
    for args, message in execute_cases:
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command("AI.SCRIPTEXECUTE", "s", *args)
        assert err(e.value) == message, args
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.SCRIPTEXECUTE", "s")
    assert err(e.value) == "wrong number of arguments for 'AI.SCRIPTEXECUTE' command"
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.SCRIPTEXECUTE", "s", "fail", "INPUTS", 1, "a", "OUTPUTS", 1, "b")
    assert engine.exists("b") == 0


def test_deprecated_scriptset_and_scriptrun(engine: redis.Redis) -> None:
    src = "def double(tensors: List[Tensor], keys: List[str], args: List[str]):\n    return tensors[0] * 2\n"
    assert engine.execute_command("AI.SCRIPTSET", "s", "CPU", "TAG", "t", "SOURCE", src) == b"OK"
    setf(engine, "a", [2])
    assert engine.execute_command("AI.SCRIPTRUN", "s", "double", "INPUTS", "a", "OUTPUTS", "b") == b"OK"
    assert engine.execute_command("AI.TENSORGET", "b", "VALUES") == [b"4"]
    assert engine.execute_command("AI._SCRIPTSCAN") == [[b"s", b"t"]]


def test_redisai_client_script_round_trip(engine: redis.Redis) -> None:
    import numpy as np
    import redisai
    from engine_helpers import ENTRY_POINTS, SCRIPT

    con = redisai.Client(port=engine.connection_pool.connection_kwargs["port"])
    assert con.scriptstore("s", "CPU", SCRIPT, entry_points=ENTRY_POINTS) == "OK"
    con.tensorset("a", np.array([1.5], dtype=np.float32))
    assert con.scriptexecute("s", "double", inputs=["a"], outputs=["b"]) == "OK"
    np.testing.assert_array_equal(con.tensorget("b"), np.array([3.0], dtype=np.float32))
    assert con.scriptget("s", meta_only=True)["device"] == "CPU"
