"""AI.INFO, AI.CONFIG, load-time arguments, INFO MODULES sections, command flags and the key
positions that Redis Cluster routes by."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import redis
from engine_helpers import ADD, DOUBLE, err, store_script


def test_ai_info_counts_and_resetstat(engine: redis.Redis) -> None:
    engine.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "TAG", "t", "BLOB", DOUBLE)
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 3, 2)
    for _ in range(3):
        engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    info = engine.execute_command("AI.INFO", "m")
    assert info[:18:2] == [
        b"key",
        b"type",
        b"backend",
        b"device",
        b"tag",
        b"duration",
        b"samples",
        b"calls",
        b"errors",
    ]
    d = dict(zip(info[::2], info[1::2], strict=False))
    assert d[b"key"] == b"m" and d[b"type"] == b"MODEL" and d[b"backend"] == b"TORCH"
    assert d[b"device"] == b"CPU" and d[b"tag"] == b"t"
    assert d[b"calls"] == 3 and d[b"samples"] == 9 and d[b"errors"] == 0 and d[b"duration"] >= 0
    # Ours, after the standard 18: batching figures.
    assert d[b"batches"] == 3 and float(d[b"mean_batch_size"]) == 3.0 and d[b"queue_depth"] == 0
    assert engine.execute_command("AI.INFO", "m", "RESETSTAT") == b"OK"
    d = dict(zip(*[iter(engine.execute_command("AI.INFO", "m"))] * 2, strict=False))
    assert d[b"calls"] == 0 and d[b"samples"] == 0 and d[b"duration"] == 0


def test_ai_info_errors(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 1)
    for key in ("nope", "x"):
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command("AI.INFO", key)
        assert err(e.value) == "cannot find run info for key"


def test_ai_config(engine: redis.Redis) -> None:
    old = engine.execute_command("AI.CONFIG", "GET", "BACKENDSPATH")
    assert old.endswith(b"/backends")
    try:
        assert engine.execute_command("AI.CONFIG", "BACKENDSPATH", "/tmp/somewhere") == b"OK"
        assert engine.execute_command("AI.CONFIG", "GET", "BACKENDSPATH") == b"/tmp/somewhere"
    finally:
        engine.execute_command("AI.CONFIG", "BACKENDSPATH", old)
    assert engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 4096) == b"OK"
    assert engine.execute_command("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == 4096
    engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 1024 * 1024)
    assert engine.execute_command("AI.CONFIG", "GET", "NOPE") is None
    # The backend is already loaded by then (or loads now): OK either way.
    assert (
        engine.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", "redisai_torch/redisai_torch.so") == b"OK"
    )
    cases: list[tuple[list[Any], str]] = [
        (["FOO"], "unsupported subcommand"),
        (["BACKENDSPATH"], "BACKENDSPATH: missing path argument"),
        (["MODEL_CHUNK_SIZE", "abc"], "MODEL_CHUNK_SIZE: invalid chunk size"),
        (["MODEL_CHUNK_SIZE", 0], "MODEL_CHUNK_SIZE: invalid chunk size"),
        (["LOADBACKEND", "TF", "x.so"], "unsupported backend"),
    ]
    for args, message in cases:
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command("AI.CONFIG", *args)
        assert err(e.value) == message


def test_loadbackend_bad_path_on_fresh_server(server_factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.CONFIG", "LOADBACKEND", "TORCH", "/nonexistent/redisai_torch.so")
    assert err(e.value) == "error loading backend"
    info = r.info("modules")
    assert "ai_Torch_version" not in info
    server.stop()


def test_info_modules_sections(engine: redis.Redis) -> None:
    engine.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 2, 2)
    engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    raw = redis.Redis(port=engine.connection_pool.connection_kwargs["port"])
    raw.set_response_callback("INFO", lambda response, **kwargs: response)
    text = raw.execute_command("INFO", "MODULES").decode()
    raw.close()
    for section in (
        "ai_versions",
        "ai_git",
        "ai_load_time_configs",
        "ai_backends_info",
        "ai_cpu",
        "ai_queues",
    ):
        assert f"# {section}" in text
    info = engine.info("modules")
    assert info["ai_rdb_version"] == 4
    assert info["ai_threads_per_queue"] == 1
    assert info["ai_Torch_version"].startswith("2.")
    assert info["ai_CPU_batches"] >= 1 and info["ai_CPU_queue_depth"] == 0
    assert float(info["ai_CPU_mean_batch_size"]) > 0
    assert any(k.startswith("ai_queue_CPU_bthread") for k in info)


def test_load_time_arguments(server_factory, engine_module: Path) -> None:
    backend = engine_module.parent / "backends" / "redisai_torch" / "redisai_torch.so"
    server = server_factory(
        module_args=(
            "THREADS_PER_QUEUE",
            "3",
            "INTRA_OP_PARALLELISM",
            "1",
            "INTER_OP_PARALLELISM",
            "1",
            "MODEL_CHUNK_SIZE",
            "1024",
            "MODEL_EXECUTION_TIMEOUT",
            "1000",
            "BACKEND_MEMORY_LIMIT",
            "0",
            "BACKENDSPATH",
            str(engine_module.parent / "backends"),
            "TORCH",
            str(backend),
        )
    )
    r = redis.Redis(port=server.port)
    info = r.info("modules")
    assert info["ai_threads_per_queue"] == 3
    assert info["ai_intra_op_parallelism"] == 1 and info["ai_inter_op_parallelism"] == 1
    assert info["ai_model_execution_timeout"] == 1000
    assert "ai_Torch_version" in info  # TORCH loaded at start
    assert r.execute_command("AI.CONFIG", "GET", "MODEL_CHUNK_SIZE") == 1024
    r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 1)
    r.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    info = r.info("modules")
    assert len([k for k in info if k.startswith("ai_queue_CPU_bthread")]) == 3
    server.stop()


def test_command_flags(engine: redis.Redis) -> None:
    raw = engine.execute_command(
        "COMMAND", "INFO", "ai.tensorset", "ai.tensorget", "ai.modelexecute", "ai.dagexecute_ro"
    )
    flags = {
        name: {f.decode() if isinstance(f, bytes) else f for f in entry["flags"]}
        for name, entry in raw.items()
    }
    assert {"write", "denyoom"} <= flags["ai.tensorset"]
    assert "readonly" in flags["ai.tensorget"]
    assert {"write", "denyoom", "movablekeys"} <= flags["ai.modelexecute"]
    assert {"readonly", "movablekeys"} <= flags["ai.dagexecute_ro"]


def test_getkeys_reports_every_key(engine: redis.Redis) -> None:
    raw = redis.Redis(port=engine.connection_pool.connection_kwargs["port"])
    raw.set_response_callback("COMMAND", lambda response, **kwargs: response)

    def keys(*args: object) -> list[bytes]:
        return raw.execute_command("COMMAND", "GETKEYS", *args)

    assert keys("AI.TENSORSET", "t", "FLOAT", 1) == [b"t"]
    assert keys("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT", 5) == [
        b"m",
        b"a",
        b"b",
        b"c",
    ]
    assert keys(
        "AI.SCRIPTEXECUTE",
        "s",
        "fn",
        "KEYS",
        1,
        "k",
        "INPUTS",
        1,
        "i",
        "ARGS",
        2,
        "x",
        "y",
        "OUTPUTS",
        1,
        "o",
    ) == [b"s", b"k", b"i", b"o"]
    assert keys("AI.MODELRUN", "m", "TIMEOUT", 5, "INPUTS", "a", "OUTPUTS", "c") == [b"m", b"a", b"c"]
    # Absurd counts end the scan instead of running past the arguments.
    assert keys("AI.MODELEXECUTE", "m", "INPUTS", 2**40, "a", "OUTPUTS", 1, "c") == [b"m"]
    with pytest.raises(redis.ResponseError):  # no keys found at all: Redis says so
        keys("AI.DAGEXECUTE", "LOAD", 2**40, "a", "|>", "AI.TENSORGET", "a")
    assert keys(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "a",
        "PERSIST",
        1,
        "p",
        "ROUTING",
        "r",
        "|>",
        "AI.MODELEXECUTE",
        "m",
        "INPUTS",
        1,
        "a",
        "OUTPUTS",
        1,
        "p",
        "|>",
        "AI.SCRIPTEXECUTE",
        "s",
        "fn",
        "KEYS",
        1,
        "k",
        "INPUTS",
        1,
        "p",
        "OUTPUTS",
        1,
        "q",
    ) == [b"a", b"p", b"r", b"m", b"s", b"k"]


def test_getkeys_leaves_out_a_dags_local_tensor_names(engine: redis.Redis) -> None:
    raw = redis.Redis(port=engine.connection_pool.connection_kwargs["port"])
    raw.set_response_callback("COMMAND", lambda response, **kwargs: response)
    ops = [
        *("|>", "AI.TENSORSET", "in", "FLOAT", 1, "VALUES", 2),
        *("|>", "AI.MODELEXECUTE", "{f}m", "INPUTS", 1, "in", "OUTPUTS", 1, "out"),
        *("|>", "AI.SCRIPTEXECUTE", "{f}s", "fn", "KEYS", 1, "{f}k", "INPUTS", 1, "out", "OUTPUTS", 1, "o2"),
        *("|>", "AI.TENSORGET", "o2", "VALUES"),
    ]
    for command in ("AI.DAGEXECUTE", "AI.DAGEXECUTE_RO"):
        got = raw.execute_command("COMMAND", "GETKEYS", command, "ROUTING", "{f}route", *ops)
        assert got == [b"{f}route", b"{f}m", b"{f}s", b"{f}k"], command
    got = raw.execute_command(
        "COMMAND", "GETKEYS", "AI.DAGEXECUTE", "LOAD", 1, "{f}x", "PERSIST", 1, "o2", *ops
    )
    assert got == [b"{f}x", b"o2", b"{f}m", b"{f}s", b"{f}k"]
    legacy = (
        "|>",
        "AI.TENSORSET",
        "in",
        "FLOAT",
        1,
        "VALUES",
        2,
        "|>",
        "AI.MODELRUN",
        "{f}m",
        "INPUTS",
        "in",
    )
    for command in ("AI.DAGRUN", "AI.DAGRUN_RO"):
        assert raw.execute_command("COMMAND", "GETKEYS", command, "LOAD", 1, "{f}x", *legacy) == [
            b"{f}x",
            b"{f}m",
        ], command
    with pytest.raises(redis.ResponseError):  # a DAG of local tensors only has no key at all
        raw.execute_command(
            "COMMAND", "GETKEYS", "AI.DAGEXECUTE", "TIMEOUT", 5, *ops[:8], "|>", "AI.TENSORGET", "in"
        )


def test_scan_commands_list_models_and_scripts(engine: redis.Redis) -> None:
    engine.execute_command("AI.MODELSTORE", "m1", "TORCH", "CPU", "TAG", "x", "BLOB", ADD)
    engine.execute_command("AI.MODELSTORE", "m2", "TORCH", "CPU", "BLOB", ADD)
    store_script(engine, "s1")
    assert sorted(engine.execute_command("AI._MODELSCAN")) == [[b"m1", b"x"], [b"m2", b""]]
    assert engine.execute_command("AI._SCRIPTSCAN") == [[b"s1", b""]]


def test_cluster_routes_execute_commands_by_all_their_keys(server_factory) -> None:
    from groundwatch.server import free_port

    server = server_factory(extra_config=(("cluster-enabled", "yes"), ("cluster-port", str(free_port()))))
    r = redis.Redis(port=server.port)
    r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    deadline = time.monotonic() + 30
    while r.execute_command("CLUSTER", "INFO").decode().find("cluster_state:ok") < 0:
        assert time.monotonic() < deadline, "cluster did not come up"
        time.sleep(0.05)
    r.execute_command("AI.MODELSTORE", "{a}m", "TORCH", "CPU", "BLOB", DOUBLE)
    r.execute_command("AI.TENSORSET", "{a}x", "FLOAT", 1, "VALUES", 2)
    assert r.execute_command("AI.MODELEXECUTE", "{a}m", "INPUTS", 1, "{a}x", "OUTPUTS", 1, "{a}y") == b"OK"
    cross = [
        ["AI.MODELEXECUTE", "{a}m", "INPUTS", 1, "{a}x", "OUTPUTS", 1, "{b}y"],
        [
            "AI.DAGEXECUTE",
            "LOAD",
            1,
            "{a}x",
            "PERSIST",
            1,
            "{b}y",
            "|>",
            "AI.MODELEXECUTE",
            "{a}m",
            "INPUTS",
            1,
            "{a}x",
            "OUTPUTS",
            1,
            "{b}y",
        ],
        [
            "AI.DAGEXECUTE",
            "ROUTING",
            "{b}",
            "|>",
            "AI.MODELEXECUTE",
            "{a}m",
            "INPUTS",
            1,
            "t",
            "OUTPUTS",
            1,
            "u",
        ],
    ]
    for cmd in cross:
        with pytest.raises(redis.ResponseError) as e:
            r.execute_command(*cmd)
        assert "CROSSSLOT" in str(e.value)
    assert r.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "{a}x",
        "PERSIST",
        1,
        "{a}z",
        "|>",
        "AI.MODELEXECUTE",
        "{a}m",
        "INPUTS",
        1,
        "{a}x",
        "OUTPUTS",
        1,
        "{a}z",
    ) == [b"OK"]
    # The consumers' DAG: local names `in`/`out` hash to other slots but are not keys.
    consumer_dag = [
        *("AI.DAGEXECUTE", "ROUTING", "{a}route", "|>", "AI.TENSORSET", "in", "FLOAT", 1, "VALUES", 3),
        *(
            "|>",
            "AI.MODELEXECUTE",
            "{a}m",
            "INPUTS",
            1,
            "in",
            "OUTPUTS",
            1,
            "out",
            "|>",
            "AI.TENSORGET",
            "out",
            "VALUES",
        ),
    ]
    assert r.execute_command(*consumer_dag) == [b"OK", b"OK", [b"6"]]
    assert r.exists("in") == 0 and r.exists("out") == 0
    r.close()
    server.stop()


def test_backend_loads_on_first_use_from_backendspath(server_factory, engine_module: Path) -> None:
    server = server_factory(module_args=("BACKENDSPATH", "/nonexistent/backends"))
    r = redis.Redis(port=server.port)
    assert r.execute_command("AI.CONFIG", "GET", "BACKENDSPATH") == b"/nonexistent/backends"
    # Tensors need no backend.
    assert r.execute_command("AI.TENSORSET", "x", "FLOAT", 1, "VALUES", 2) == b"OK"
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE)
    assert err(e.value) == "could not load the TORCH backend"
    assert "ai_Torch_version" not in r.info("modules")
    r.execute_command("AI.CONFIG", "BACKENDSPATH", str(engine_module.parent / "backends"))
    assert r.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", DOUBLE) == b"OK"
    assert r.info("modules")["ai_Torch_version"].startswith("2.")
    assert r.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 1, "x", "OUTPUTS", 1, "y") == b"OK"
    assert r.execute_command("AI.TENSORGET", "y", "VALUES") == [b"4"]
    r.close()
    server.stop()


def test_bad_load_time_argument_refuses_to_load(server_factory) -> None:
    from groundwatch.errors import ServerError

    for args in (("THREADS_PER_QUEUE", "0"), ("NOPE", "1"), ("MODEL_CHUNK_SIZE",)):
        with pytest.raises(ServerError) as e:
            server_factory(module_args=args)
        assert "initialization failed" in str(e.value) or "Module" in str(e.value)
