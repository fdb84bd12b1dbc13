"""AI.MODELSTORE / MODELGET / MODELDEL / MODELEXECUTE and their deprecated forms, from the module's
side: replies, every listed error, chunking, MULTI/Lua refusal and the redisai client."""

from __future__ import annotations

import numpy as np
import pytest
import redis
import torch
from engine_helpers import ADD, DOUBLE, LINEAR, WRONGTYPE, Linear, err


def store(r: redis.Redis, key: str = "m", blob: bytes = ADD, *extra: object) -> None:
    assert r.execute_command("AI.MODELSTORE", key, "TORCH", "CPU", *extra, "BLOB", blob) == b"OK"


def setf(r: redis.Redis, key: str, values: list[float], shape: tuple[int, ...] | None = None) -> None:
    shape = shape or (len(values),)
    r.execute_command("AI.TENSORSET", key, "FLOAT", *shape, "VALUES", *values)


def getf(r: redis.Redis, key: str) -> list[float]:
    return [float(v) for v in r.execute_command("AI.TENSORGET", key, "VALUES")]


def test_store_get_meta_and_blob(engine: redis.Redis) -> None:
    store(engine, "m", ADD, "TAG", "v1", "BATCHSIZE", 4, "MINBATCHSIZE", 2, "MINBATCHTIMEOUT", 10)
    meta = engine.execute_command("AI.MODELGET", "m", "META")
    assert meta == [
        b"backend",
        b"TORCH",
        b"device",
        b"CPU",
        b"tag",
        b"v1",
        b"batchsize",
        4,
        b"minbatchsize",
        2,
        b"inputs",
        [b"a", b"b"],
        b"outputs",
        [b""],
        b"minbatchtimeout",
        10,
    ]
    assert engine.execute_command("AI.MODELGET", "m", "META", "BLOB") == [*meta, b"blob", ADD]
    assert engine.execute_command("AI.MODELGET", "m") == [*meta, b"blob", ADD]
    assert engine.execute_command("AI.MODELGET", "m", "BLOB") == ADD
    assert engine.type("m") == b"AI__MODEL"


def test_device_is_kept_as_sent_and_chunks_concatenate(engine: redis.Redis) -> None:
    half = len(DOUBLE) // 2
    assert (
        engine.execute_command("AI.MODELSTORE", "m", "torch", "cpu:0", "BLOB", DOUBLE[:half], DOUBLE[half:])
        == b"OK"
    )
    assert engine.execute_command("AI.MODELGET", "m", "META")[3] == b"cpu:0"
    assert engine.execute_command("AI.MODELGET", "m", "BLOB") == DOUBLE


def test_modelget_returns_chunks_above_model_chunk_size(engine: redis.Redis) -> None:
    store(engine, "m", DOUBLE)
    try:
        chunk = 1000
        engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", chunk)
        chunks = engine.execute_command("AI.MODELGET", "m", "BLOB")
        assert isinstance(chunks, list)
        assert len(chunks) == len(DOUBLE) // chunk + 1
        assert b"".join(chunks) == DOUBLE
        # An exact multiple ends with an empty chunk.
        engine.execute_command(
            "AI.CONFIG", "MODEL_CHUNK_SIZE", len(DOUBLE) // 2 if len(DOUBLE) % 2 == 0 else len(DOUBLE)
        )
        got = engine.execute_command("AI.MODELGET", "m", "BLOB")
        if len(DOUBLE) % 2 == 0:
            assert got[-1] == b"" and b"".join(got) == DOUBLE and len(got) == 3
        else:
            assert got == DOUBLE
    finally:
        engine.execute_command("AI.CONFIG", "MODEL_CHUNK_SIZE", 511 * 1024 * 1024)


@pytest.mark.parametrize(
    "args,message",
    [
        # RedisAI's other backends parse, then cannot be loaded in this build.
        (["TF", "CPU", "BLOB", b"x"], "Could not load backend"),
        (["ONNX", "CPU", "BLOB", b"x"], "Could not load backend"),
        (["FOO", "CPU", "BLOB", b"x"], "unsupported backend"),
        (["TORCH", "TPU", "BLOB", b"x"], "Invalid DEVICE"),
        (["TORCH", "CPU:x", "BLOB", b"x"], "Invalid DEVICE"),
        (["TORCH", "CPU", "BATCHSIZE", "x", "BLOB", b"x"], "Invalid argument for BATCHSIZE"),
        (
            ["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHSIZE", "y", "BLOB", b"x"],
            "Invalid argument for MINBATCHSIZE",
        ),
        (
            ["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHSIZE", 1, "MINBATCHTIMEOUT", "z", "BLOB", b"x"],
            "Invalid argument for MINBATCHTIMEOUT",
        ),
        (["TORCH", "CPU", "MINBATCHSIZE", 2, "BLOB", b"x"], "MINBATCHSIZE specified without BATCHSIZE"),
        (
            ["TORCH", "CPU", "BATCHSIZE", 2, "MINBATCHTIMEOUT", 2, "BLOB", b"x"],
            "MINBATCHTIMEOUT specified without MINBATCHSIZE",
        ),
        (["TORCH", "CPU"], "wrong number of arguments for 'AI.MODELSTORE' command"),
        (["TORCH", "CPU", "TAG", "t"], "Insufficient arguments, missing model BLOB"),
        (["TORCH", "CPU", "BLOB"], "wrong number of arguments for 'AI.MODELSTORE' command"),
        (["TORCH", "CPU", "TAG", "t", "BLOB"], "Insufficient arguments, missing model BLOB"),
        (["TORCH", "CPU", "BLOOB", b"x"], "Invalid argument, expected BLOB"),
        (
            ["TORCH", "CPU", "INPUTS", 1, "a", "BLOB", b"x"],
            "INPUTS argument should not be specified for this backend",
        ),
        (
            ["TORCH", "CPU", "OUTPUTS", 1, "a", "BLOB", b"x"],
            "OUTPUTS argument should not be specified for this backend",
        ),
    ],
)
def test_modelstore_errors(engine: redis.Redis, args: list, message: str) -> None:
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELSTORE", "m", *args)
    assert err(e.value) == message
    assert engine.exists("m") == 0


def test_modelstore_garbage_blob_reports_libtorch_reason(engine: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELSTORE", "m", "TORCH", "CPU", "BLOB", b"not a model")
    assert len(err(e.value)) > 10
    assert engine.exists("m") == 0


def test_modelget_modeldel_errors(engine: redis.Redis) -> None:
    for cmd in (["AI.MODELGET", "nope"], ["AI.MODELDEL", "nope"]):
        with pytest.raises(redis.ResponseError) as e:
            engine.execute_command(*cmd)
        assert err(e.value) == "model key is empty"
    engine.set("str", "x")
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELGET", "str")
    assert err(e.value) == WRONGTYPE


def test_modeldel(engine: redis.Redis) -> None:
    store(engine)
    assert engine.execute_command("AI.MODELDEL", "m") == b"OK"
    assert engine.exists("m") == 0


def test_modelexecute_matches_torch(engine: redis.Redis) -> None:
    store(engine, "lin", LINEAR)
    x = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 5, 4, "BLOB", x.tobytes())
    assert engine.execute_command("AI.MODELEXECUTE", "lin", "INPUTS", 1, "x", "OUTPUTS", 1, "y") == b"OK"
    meta = engine.execute_command("AI.TENSORGET", "y", "META", "BLOB")
    assert meta[:4] == [b"dtype", b"FLOAT", b"shape", [5, 3]]
    got = np.frombuffer(meta[5], dtype=np.float32).reshape(5, 3)
    with torch.no_grad():
        want = Linear()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)


def test_modelexecute_two_inputs_and_timeout_ok(engine: redis.Redis) -> None:
    store(engine)
    setf(engine, "a", [1, 2])
    setf(engine, "b", [10, 20])
    assert (
        engine.execute_command(
            "AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT", 60000
        )
        == b"OK"
    )
    assert getf(engine, "c") == [11, 22]


@pytest.mark.parametrize(
    "args,message",
    [
        (["m", "INPUTS", 1, "a", "OUTPUTS", 1], "wrong number of arguments for 'AI.MODELEXECUTE' command"),
        (["m", "INPUTZ", 2, "a", "b", "OUTPUTS", 1, "c"], "INPUTS not specified"),
        (["m", "INPUTS", "two", "a", "b", "OUTPUTS", 1, "c"], "Invalid argument for input_count"),
        (["m", "INPUTS", 0, "a", "b", "OUTPUTS", 1, "c"], "Input count must be a positive integer"),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTZ", 1, "c"], "OUTPUTS not specified"),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT", "x"], "Invalid value for TIMEOUT"),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT", -1], "Invalid value for TIMEOUT"),
        (
            ["m", "INPUTS", 2, "a", "missing", "OUTPUTS", 1, "c"],
            "tensor key is empty or in a different shard",
        ),
        (["nomodel", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c"], "model key is empty"),
        (
            ["m", "INPUTS", 1, "a", "OUTPUTS", 1, "c", "x"],
            "Number of keys given as INPUTS here does not match model definition",
        ),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c", "TIMEOUT", 5, "x"], None),
        (["m", "INPUTS", 2, "a", "OUTPUTS", 1, "c", "d"], "OUTPUTS not specified"),
        (
            ["m", "INPUTS", 2, "a", "b", "OUTPUTS", 1],
            "number of output keys to AI.MODELEXECUTE command does not match the number of given arguments",
        ),
        (["m", "timeout", 1000, "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c"], "INPUTS not specified"),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTS", "x", "c"], "Invalid argument for output_count"),
        (["m", "INPUTS", 2, "a", "b", "OUTPUTS", 0, "c"], "Output count must be a positive integer"),
        (
            ["m", "INPUTS", 3, "a", "b", "a", "OUTPUTS", 1, "c"],
            "Number of keys given as INPUTS here does not match model definition",
        ),
        (
            ["m", "INPUTS", 2, "a", "b", "OUTPUTS", 2, "c", "d"],
            "Number of keys given as OUTPUTS here does not match model definition",
        ),
    ],
)
def test_modelexecute_errors(engine: redis.Redis, args: list, message: str | None) -> None:
    store(engine)
    setf(engine, "a", [1])
    setf(engine, "b", [2])
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELEXECUTE", *args)
    if message is not None:
        assert err(e.value) == message
    assert engine.exists("c") == 0


def test_modelexecute_runtime_error_is_reported_and_counted(engine: redis.Redis) -> None:
    store(engine)
    setf(engine, "a", [1, 2, 3])
    setf(engine, "b", [1, 2])
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "b", "OUTPUTS", 1, "c")
    assert "size" in err(e.value)
    info = engine.execute_command("AI.INFO", "m")
    assert info[info.index(b"errors") + 1] == 1
    assert engine.exists("c") == 0


def test_modelexecute_output_onto_wrong_type_key(engine: redis.Redis) -> None:
    store(engine)
    setf(engine, "a", [1])
    engine.set("c", "x")
    with pytest.raises(redis.ResponseError) as e:
        engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c")
    assert err(e.value) == WRONGTYPE


def test_refused_inside_multi_and_lua(engine: redis.Redis) -> None:
    store(engine)
    setf(engine, "a", [1])
    pipe = engine.pipeline(transaction=True)
    pipe.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "a", "a", "OUTPUTS", 1, "c")
    res = pipe.execute(raise_on_error=False)
    assert isinstance(res[0], redis.ResponseError)
    assert err(res[0]) == "Cannot run RedisAI command within a transaction or a LUA script"
    for cmd in (
        "AI.MODELEXECUTE', 'm', 'INPUTS', '2', 'a', 'a', 'OUTPUTS', '1', 'c",
        "AI.DAGEXECUTE', 'LOAD', '1', 'a', '|>', 'AI.TENSORGET', 'a', 'VALUES",
    ):
        with pytest.raises(redis.ResponseError) as e:
            engine.eval(f"return redis.call('{cmd}')", 0)
        assert "Cannot run RedisAI command within a transaction or a LUA script" in err(e.value)
    assert engine.exists("c") == 0


def test_deprecated_modelset_and_modelrun(engine: redis.Redis) -> None:
    assert (
        engine.execute_command(
            "AI.MODELSET", "m", "TORCH", "CPU", "TAG", "old", "INPUTS", "a", "b", "OUTPUTS", "c", "BLOB", ADD
        )
        == b"OK"
    )
    assert engine.execute_command("AI.MODELGET", "m", "META")[5] == b"old"
    setf(engine, "a", [1])
    setf(engine, "b", [2])
    assert engine.execute_command("AI.MODELRUN", "m", "INPUTS", "a", "b", "OUTPUTS", "c") == b"OK"
    assert getf(engine, "c") == [3]
    assert (
        engine.execute_command("AI.MODELRUN", "m", "TIMEOUT", 1000, "INPUTS", "a", "a", "OUTPUTS", "d")
        == b"OK"
    )
    assert getf(engine, "d") == [2]
    assert engine.execute_command("AI._MODELSCAN") == [[b"m", b"old"]]


def test_memory_usage_counts_the_model(engine: redis.Redis) -> None:
    store(engine, "lin", LINEAR)
    assert engine.memory_usage("lin") >= len(LINEAR)


def test_redisai_client_model_round_trip(engine: redis.Redis) -> None:
    import redisai

    con = redisai.Client(port=engine.connection_pool.connection_kwargs["port"])
    assert con.modelstore("m", "TORCH", "CPU", ADD, tag="t1") == "OK"
    meta = con.modelget("m", meta_only=True)
    assert meta["backend"] == "TORCH" and meta["tag"] == "t1" and meta["inputs"] == ["a", "b"]
    con.tensorset("a", np.array([1, 2], dtype=np.float32))
    con.tensorset("b", np.array([3, 4], dtype=np.float32))
    assert con.modelexecute("m", inputs=["a", "b"], outputs=["c"]) == "OK"
    np.testing.assert_array_equal(con.tensorget("c"), np.array([4, 6], dtype=np.float32))
    info = con.infoget("m")
    assert info["key"] == "m" and info["calls"] == 1 and info["samples"] == 2
    assert con.inforeset("m") == "OK"
    assert con.infoget("m")["calls"] == 0
    assert con.modeldel("m") == "OK"


def test_no_memory_growth_over_many_executions(engine: redis.Redis) -> None:
    store(engine, "m", ADD, "BATCHSIZE", 4)
    x = np.ones((2, 256), dtype=np.float32)
    engine.execute_command("AI.TENSORSET", "x", "FLOAT", 2, 256, "BLOB", x.tobytes())

    def burst(n: int) -> None:
        for i in range(n):
            engine.execute_command("AI.MODELEXECUTE", "m", "INPUTS", 2, "x", "x", "OUTPUTS", 1, f"y{i % 4}")
            engine.execute_command(
                "AI.DAGEXECUTE",
                "LOAD",
                1,
                "x",
                "|>",
                "AI.MODELEXECUTE",
                "m",
                "INPUTS",
                2,
                "x",
                "x",
                "OUTPUTS",
                1,
                "z",
                "|>",
                "AI.TENSORGET",
                "z",
                "BLOB",
            )

    burst(100)
    before = engine.info("memory")["used_memory"]
    burst(500)
    after = engine.info("memory")["used_memory"]
    # 1000 requests of 2 KiB tensors each: a leak of even one tensor per request would show as
    # megabytes; allow allocator noise only.
    assert after - before < 512 * 1024, (before, after)


def test_execute_outputs_invalidate_watch(engine: redis.Redis) -> None:
    store(engine, "dbl", DOUBLE)
    setf(engine, "x", [1])
    other = redis.Redis(port=engine.connection_pool.connection_kwargs["port"])
    with engine.pipeline() as pipe:
        pipe.watch("out")
        other.execute_command("AI.MODELEXECUTE", "dbl", "INPUTS", 1, "x", "OUTPUTS", 1, "out")
        pipe.multi()
        pipe.set("flag", 1)
        with pytest.raises(redis.WatchError):
            pipe.execute()
    other.close()
    assert engine.exists("flag") == 0
