"""Persistence and replication of the three data types: DEBUG RELOAD, restart from RDB and from
AOF (with and without the RDB preamble, so both rdb_save and aof_rewrite are exercised),
DUMP/RESTORE, and a replica that receives execute results as AI.TENSORSET."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import redis
import torch
from engine_helpers import DOUBLE, ENTRY_POINTS, LINEAR, SCRIPT, Linear, store_script

TENSORS = {
    "t_float": ("FLOAT", [2, 2], ["1.5", "-2", "0.25", "3"]),
    "t_double": ("DOUBLE", [3], ["0.1", "2", "-7.5"]),
    "t_int8": ("INT8", [2], ["-5", "7"]),
    "t_int16": ("INT16", [1], ["-300"]),
    "t_int32": ("INT32", [1, 2], ["1", "70000"]),
    "t_int64": ("INT64", [1], ["-9000000000"]),
    "t_uint8": ("UINT8", [2], ["0", "255"]),
    "t_uint16": ("UINT16", [1], ["65535"]),
    "t_bool": ("BOOL", [3], ["1", "0", "1"]),
    "t_string": ("STRING", [2], ["hello", "world"]),
}


def populate(r: redis.Redis) -> None:
    for key, (dtype, shape, values) in TENSORS.items():
        r.execute_command("AI.TENSORSET", key, dtype, *shape, "VALUES", *values)
    r.execute_command(
        "AI.MODELSTORE",
        "lin",
        "TORCH",
        "CPU",
        "TAG",
        "v2",
        "BATCHSIZE",
        8,
        "MINBATCHSIZE",
        2,
        "MINBATCHTIMEOUT",
        5,
        "BLOB",
        LINEAR,
    )
    store_script(r, "scr")


def snapshot(r: redis.Redis) -> dict:
    out = {key: r.execute_command("AI.TENSORGET", key, "META", "BLOB") for key in TENSORS}
    out["lin"] = r.execute_command("AI.MODELGET", "lin", "META", "BLOB")
    out["scr"] = r.execute_command("AI.SCRIPTGET", "scr", "META", "SOURCE")
    return out


def check_models_still_run(r: redis.Redis) -> None:
    x = np.random.default_rng(3).random((2, 4)).astype(np.float32)
    r.execute_command("AI.TENSORSET", "x", "FLOAT", 2, 4, "BLOB", x.tobytes())
    r.execute_command("AI.MODELEXECUTE", "lin", "INPUTS", 1, "x", "OUTPUTS", 1, "y")
    got = np.frombuffer(r.execute_command("AI.TENSORGET", "y", "BLOB"), dtype=np.float32).reshape(2, 3)
    with torch.no_grad():
        want = Linear()(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, want)
    r.execute_command("AI.SCRIPTEXECUTE", "scr", "double", "INPUTS", 1, "x", "OUTPUTS", 1, "z")
    z = np.frombuffer(r.execute_command("AI.TENSORGET", "z", "BLOB"), dtype=np.float32)
    np.testing.assert_array_equal(z, (x * 2).ravel())


def test_debug_reload(engine: redis.Redis) -> None:
    populate(engine)
    before = snapshot(engine)
    assert engine.execute_command("DEBUG", "RELOAD") == b"OK"
    assert snapshot(engine) == before
    assert engine.type("lin") == b"AI__MODEL" and engine.type("scr") == b"AI_SCRIPT"
    check_models_still_run(engine)


def test_restart_from_rdb(server_factory) -> None:
    server = server_factory()
    r = redis.Redis(port=server.port)
    populate(r)
    before = snapshot(r)
    r.save()
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert snapshot(r) == before
    check_models_still_run(r)
    r.close()
    server.stop()


def test_rdb_with_small_model_chunks(server_factory) -> None:
    server = server_factory(module_args=("MODEL_CHUNK_SIZE", "512"))
    r = redis.Redis(port=server.port)
    populate(r)
    before = snapshot(r)
    r.execute_command("DEBUG", "RELOAD")
    assert snapshot(r) == before
    r.close()
    server.stop()


def aof_text(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.rglob("*.aof*")) if p.is_file())


def test_restart_from_aof_and_execute_outputs_logged_as_tensorset(server_factory) -> None:
    server = server_factory(extra_config=(("appendonly", "yes"), ("appendfsync", "always")))
    r = redis.Redis(port=server.port)
    populate(r)
    r.execute_command("AI.TENSORSET", "in", "FLOAT", 2, "VALUES", 1, 2)
    r.execute_command("AI.MODELSTORE", "dbl", "TORCH", "CPU", "BLOB", DOUBLE)
    r.execute_command("AI.MODELEXECUTE", "dbl", "INPUTS", 1, "in", "OUTPUTS", 1, "out")
    r.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "in",
        "PERSIST",
        1,
        "dagout",
        "|>",
        "AI.MODELEXECUTE",
        "dbl",
        "INPUTS",
        1,
        "in",
        "OUTPUTS",
        1,
        "dagout",
    )
    before = snapshot(r)
    text = aof_text(server.data_dir)
    assert b"AI.MODELEXECUTE" not in text.upper() and b"AI.DAGEXECUTE" not in text.upper()
    assert b"out" in text and b"dagout" in text
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert snapshot(r) == before
    assert r.execute_command("AI.TENSORGET", "out", "VALUES") == [b"2", b"4"]
    assert r.execute_command("AI.TENSORGET", "dagout", "VALUES") == [b"2", b"4"]
    check_models_still_run(r)
    r.close()
    server.stop()


def test_aof_rewrite_without_rdb_preamble(server_factory) -> None:
    server = server_factory(
        extra_config=(("appendonly", "yes"), ("aof-use-rdb-preamble", "no")),
        module_args=("MODEL_CHUNK_SIZE", "1000"),
    )
    r = redis.Redis(port=server.port)
    populate(r)
    r.execute_command("AI.SCRIPTSET", "old", "CPU", "TAG", "t", "SOURCE", SCRIPT)
    before = snapshot(r)
    old = r.execute_command("AI.SCRIPTGET", "old", "META", "SOURCE")
    r.bgrewriteaof()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"]:
            break
        time.sleep(0.05)
    text = aof_text(server.data_dir)
    assert b"AI.MODELSTORE" in text and b"AI.SCRIPTSTORE" in text and b"AI.TENSORSET" in text
    assert b"MINBATCHTIMEOUT" in text and b"ENTRY_POINTS" in text
    r.close()
    server.restart()
    r = redis.Redis(port=server.port)
    assert snapshot(r) == before
    assert r.execute_command("AI.SCRIPTGET", "old", "META", "SOURCE") == old
    check_models_still_run(r)
    r.close()
    server.stop()


def test_dump_restore(engine: redis.Redis) -> None:
    populate(engine)
    for key in [*TENSORS, "lin", "scr"]:
        payload = engine.dump(key)
        assert payload
        assert engine.restore(key + "_copy", 0, payload) == b"OK"
    for key in TENSORS:
        assert engine.execute_command(
            "AI.TENSORGET", key + "_copy", "META", "BLOB"
        ) == engine.execute_command("AI.TENSORGET", key, "META", "BLOB")
    assert engine.execute_command("AI.MODELGET", "lin_copy") == engine.execute_command("AI.MODELGET", "lin")
    assert engine.execute_command("AI.SCRIPTGET", "scr_copy") == engine.execute_command("AI.SCRIPTGET", "scr")
    assert engine.execute_command("AI.SCRIPTGET", "scr_copy", "META")[5] == [e.encode() for e in ENTRY_POINTS]


def test_restore_of_garbage_is_refused(engine: redis.Redis) -> None:
    engine.execute_command("AI.TENSORSET", "t", "FLOAT", 1)
    payload = bytearray(engine.dump("t"))
    payload[12] ^= 0xFF
    try:
        engine.restore("t2", 0, bytes(payload))
    except redis.ResponseError:
        pass
    assert engine.ping()


def wait_for(predicate, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_replica_receives_execute_outputs_as_tensorset(server_factory) -> None:
    master = server_factory()
    replica = server_factory()
    m = redis.Redis(port=master.port)
    s = redis.Redis(port=replica.port)
    s.execute_command("REPLICAOF", "127.0.0.1", master.port)
    wait_for(lambda: s.info("replication").get("master_link_status") == "up")
    m.execute_command("AI.MODELSTORE", "dbl", "TORCH", "CPU", "BLOB", DOUBLE)
    store_script(m, "scr")
    m.execute_command("AI.TENSORSET", "in", "FLOAT", 2, "VALUES", 1, 2)
    m.execute_command("AI.MODELEXECUTE", "dbl", "INPUTS", 1, "in", "OUTPUTS", 1, "out")
    m.execute_command("AI.SCRIPTEXECUTE", "scr", "double", "INPUTS", 1, "in", "OUTPUTS", 1, "sout")
    m.execute_command(
        "AI.DAGEXECUTE",
        "LOAD",
        1,
        "in",
        "PERSIST",
        1,
        "dout",
        "|>",
        "AI.MODELEXECUTE",
        "dbl",
        "INPUTS",
        1,
        "in",
        "OUTPUTS",
        1,
        "dout",
    )
    # A script's own redis.execute writes replicate too.
    m.execute_command("AI.SCRIPTEXECUTE", "scr", "set_key", "KEYS", 1, "k", "ARGS", 1, "v", "OUTPUTS", 1, "o")
    assert m.execute_command("WAIT", 1, 10000) == 1
    wait_for(lambda: s.exists("out", "sout", "dout", "k") == 4)
    assert s.get("k") == b"v"
    for key in ("out", "sout", "dout"):
        assert s.execute_command("AI.TENSORGET", key, "VALUES") == [b"2", b"4"]
    assert s.execute_command("AI.MODELGET", "dbl", "BLOB") == DOUBLE
    stats = s.info("commandstats")
    assert "cmdstat_ai.tensorset" in stats and stats["cmdstat_ai.tensorset"]["calls"] >= 5
    assert "cmdstat_ai.modelexecute" not in stats and "cmdstat_ai.dagexecute" not in stats
    assert "cmdstat_ai.scriptexecute" not in stats
    # Deletes replicate verbatim.
    m.execute_command("AI.MODELDEL", "dbl")
    m.execute_command("WAIT", 1, 10000)
    wait_for(lambda: s.exists("dbl") == 0)
    m.close()
    s.close()
    replica.stop()
    master.stop()


def test_shutdown_after_execution_is_clean(server_factory) -> None:
    server = server_factory(module_args=("THREADS_PER_QUEUE", "2"))
    r = redis.Redis(port=server.port)
    populate(r)
    check_models_still_run(r)
    r.close()
    assert server.stop() == 0
    assert "crashed" not in server.log_tail(400)
